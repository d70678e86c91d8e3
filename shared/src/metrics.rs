//! Process-wide counters for `GET /metrics` (Prometheus text format 0.0.4): webhooks by sender
//! and answer, promotion jobs by pipeline, stage and result with their duration, registry copies
//! (duration, bytes moved), gate waits, and the gauges asked of the stores at scrape time (queue
//! and dead-letter depth, promotions parked at a gate).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::config::{Config, Gate};
use crate::ledger::PromotionRecord;

/// Upper bounds of the job and copy duration histograms, in seconds.
const BUCKETS_S: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
/// Upper bounds of the gate wait histogram, in seconds: a soak takes minutes, an approval hours
/// or days.
const GATE_WAIT_BUCKETS_S: [f64; 10] =
    [1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4.0 * 3600.0, 12.0 * 3600.0, 86400.0, 7.0 * 86400.0];

type Labels = Vec<(&'static str, String)>;

struct Histogram {
    bounds: &'static [f64],
    /// Observations at or below each bound (cumulative, as exposed).
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram { bounds, counts: vec![0; bounds.len()], count: 0, sum: 0.0 }
    }

    fn observe(&mut self, took: Duration) {
        let seconds = took.as_secs_f64();
        for (i, bound) in self.bounds.iter().enumerate() {
            if seconds <= *bound {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

#[derive(Default)]
struct Families {
    webhooks: BTreeMap<Labels, u64>,
    jobs: BTreeMap<Labels, u64>,
    durations: BTreeMap<Labels, Histogram>,
    copy_durations: BTreeMap<Labels, Histogram>,
    copied_bytes: BTreeMap<Labels, u64>,
    gate_waits: BTreeMap<Labels, Histogram>,
}

fn families() -> std::sync::MutexGuard<'static, Families> {
    static FAMILIES: OnceLock<Mutex<Families>> = OnceLock::new();
    FAMILIES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner())
}

fn stage_labels(pipeline: &str, stage: &str) -> Labels {
    vec![("pipeline", pipeline.to_string()), ("stage", stage.to_string())]
}

/// A webhook from `sender` answered with `status`.
pub fn webhook(sender: &str, status: u16) {
    let labels = vec![("sender", sender.to_string()), ("answer", status.to_string())];
    *families().webhooks.entry(labels).or_default() += 1;
}

/// A promotion job into `pipeline`/`stage` ended an attempt with `result` (the job state:
/// promoted, parked, refused, failed, running = will retry) after `took`.
pub fn promotion_job(pipeline: &str, stage: &str, result: &str, took: Duration) {
    let mut f = families();
    let labels = stage_labels(pipeline, stage);
    let mut with_result = labels.clone();
    with_result.push(("result", result.to_string()));
    *f.jobs.entry(with_result).or_default() += 1;
    f.durations.entry(labels).or_insert_with(|| Histogram::new(&BUCKETS_S)).observe(took);
}

/// A registry copy (or ACR import) into `pipeline`/`stage` ended after `took`, having moved
/// `bytes` (`None` when it failed: what a failed copy moved is not known).
pub fn copy(pipeline: &str, stage: &str, took: Duration, bytes: Option<u64>) {
    let mut f = families();
    let labels = stage_labels(pipeline, stage);
    f.copy_durations.entry(labels.clone()).or_insert_with(|| Histogram::new(&BUCKETS_S)).observe(took);
    // Present from the first copy on, so a rate over it starts at 0 rather than at the first byte.
    *f.copied_bytes.entry(labels).or_default() += bytes.unwrap_or(0);
}

/// A promotion parked at `gate` of `pipeline`/`stage` was let through after `waited`.
pub fn gate_wait(pipeline: &str, stage: &str, gate: &str, waited: Duration) {
    let mut labels = stage_labels(pipeline, stage);
    labels.push(("gate", gate.to_string()));
    families().gate_waits.entry(labels).or_insert_with(|| Histogram::new(&GATE_WAIT_BUCKETS_S)).observe(waited);
}

/// Parked promotions by pipeline, stage and gate, counted from the ledger at scrape time.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Waiting(BTreeMap<Labels, u64>);

impl Waiting {
    /// Every configured stage with a gate that parks (approval, after, soak) starts at 0, so
    /// the series exists before anything waits; each parked record adds 1 under the gate it last
    /// waited at (the stage's configured gate when it recorded none).
    pub fn count(config: &Config, parked: &[PromotionRecord]) -> Self {
        let mut counts = BTreeMap::new();
        let configured =
            |pipeline: &str, stage: &str| config.pipeline(pipeline).and_then(|p| p.stage(stage)).map(|(_, s)| s.gate);
        for pipeline in &config.pipelines {
            for stage in &pipeline.stages {
                if let Some(gate) = parking_gate(stage.gate) {
                    let mut labels = stage_labels(pipeline.name.get_ref(), stage.name.get_ref());
                    labels.push(("gate", gate.to_string()));
                    counts.insert(labels, 0);
                }
            }
        }
        for record in parked {
            let recorded = record.gates.iter().rev().find(|d| d.decision == "wait").map(|d| d.gate.clone());
            let gate = recorded
                .or_else(|| configured(&record.pipeline, &record.stage).and_then(parking_gate).map(String::from))
                .unwrap_or_else(|| "unknown".into());
            let mut labels = stage_labels(&record.pipeline, &record.stage);
            labels.push(("gate", gate));
            *counts.entry(labels).or_default() += 1;
        }
        Waiting(counts)
    }
}

/// The gate's name as gate decisions record it, for the gates that park a promotion.
fn parking_gate(gate: Gate) -> Option<&'static str> {
    match gate {
        Gate::Auto => None,
        Gate::Approval => Some("approval"),
        Gate::After => Some("after"),
        Gate::Soak => Some("soak"),
    }
}

/// What the stores say at scrape time; each left out of the output when its store cannot answer.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Jobs not done yet (SQLite queue only).
    pub queue_depth: Option<u64>,
    pub dead_letters: Option<usize>,
    pub waiting: Option<Waiting>,
}

/// Label values escaped as the text format requires (backslash, quote, newline).
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn label_text(labels: &[(&'static str, String)], extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{}\"", escape(&v)));
    }
    if parts.is_empty() { String::new() } else { format!("{{{}}}", parts.join(",")) }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn samples(out: &mut String, name: &str, kind: &str, help: &str, series: &BTreeMap<Labels, u64>) {
    header(out, name, kind, help);
    for (labels, n) in series {
        let _ = writeln!(out, "{name}{} {n}", label_text(labels, None));
    }
}

fn histograms(out: &mut String, name: &str, help: &str, series: &BTreeMap<Labels, Histogram>) {
    header(out, name, "histogram", help);
    for (labels, h) in series {
        for (bound, n) in h.bounds.iter().zip(&h.counts) {
            let _ = writeln!(out, "{name}_bucket{} {n}", label_text(labels, Some(("le", bound.to_string()))));
        }
        let _ = writeln!(out, "{name}_bucket{} {}", label_text(labels, Some(("le", "+Inf".into()))), h.count);
        let _ = writeln!(out, "{name}_sum{} {}", label_text(labels, None), h.sum);
        let _ = writeln!(out, "{name}_count{} {}", label_text(labels, None), h.count);
    }
}

/// Everything, in the text format.
pub fn render(gauges: &Gauges) -> String {
    let f = families();
    let mut out = String::new();
    samples(&mut out, "ferry_webhooks_total", "counter", "Webhooks received, by sender and HTTP answer.", &f.webhooks);
    let help = "Promotion job attempts, by pipeline, stage and result.";
    samples(&mut out, "ferry_promotion_jobs_total", "counter", help, &f.jobs);
    let help = "Time a promotion job attempt took.";
    histograms(&mut out, "ferry_promotion_job_duration_seconds", help, &f.durations);
    let help = "Time the registry copy (or ACR import) of a promotion or rollback took, failed ones included.";
    histograms(&mut out, "ferry_copy_duration_seconds", help, &f.copy_durations);
    let help = "Bytes Ferry sent to target registries: blobs the target lacked, and every manifest pushed \
                (0 for copy = \"acr-import\", where the registry copies).";
    samples(&mut out, "ferry_copied_bytes_total", "counter", help, &f.copied_bytes);
    let help = "Time a parked promotion waited at its gate before the gate let it through.";
    histograms(&mut out, "ferry_gate_wait_seconds", help, &f.gate_waits);
    if let Some(waiting) = &gauges.waiting {
        let help = "Promotions parked at a gate now, by the gate they wait at.";
        samples(&mut out, "ferry_promotions_waiting", "gauge", help, &waiting.0);
    }
    if let Some(depth) = gauges.queue_depth {
        header(&mut out, "ferry_queue_depth", "gauge", "Jobs in the queue not done yet (waiting or in flight).");
        let _ = writeln!(out, "ferry_queue_depth {depth}");
    }
    if let Some(depth) = gauges.dead_letters {
        header(&mut out, "ferry_dead_letters", "gauge", "Jobs in the dead-letter store.");
        let _ = writeln!(out, "ferry_dead_letters {depth}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_labels_escaped() {
        promotion_job("unit-\"p\"", "dev", "promoted", Duration::from_millis(300));
        promotion_job("unit-\"p\"", "dev", "failed", Duration::from_secs(20));
        let text = render(&Gauges { queue_depth: Some(7), dead_letters: Some(3), waiting: None });
        assert!(
            text.contains(
                "ferry_promotion_jobs_total{pipeline=\"unit-\\\"p\\\"\",stage=\"dev\",result=\"promoted\"} 1"
            ),
            "{text}"
        );
        let bucket = |le: &str| {
            let prefix = format!(
                "ferry_promotion_job_duration_seconds_bucket{{pipeline=\"unit-\\\"p\\\"\",stage=\"dev\",le=\"{le}\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .unwrap_or_else(|| panic!("{le}: {text}"))
                .to_string()
        };
        assert_eq!(
            (bucket("0.25"), bucket("0.5"), bucket("30"), bucket("+Inf")),
            ("0".into(), "1".into(), "2".into(), "2".into())
        );
        assert!(text.contains("ferry_dead_letters 3") && text.contains("ferry_queue_depth 7"), "{text}");
    }

    fn parked(pipeline: &str, stage: &str, waited_at: Option<&str>) -> PromotionRecord {
        let gates = waited_at
            .map(|gate| crate::ledger::GateDecision {
                gate: gate.into(),
                decision: "wait".into(),
                detail: String::new(),
                at_ms: 1,
            })
            .into_iter()
            .collect();
        PromotionRecord {
            gates,
            ..PromotionRecord::sample(pipeline, stage, crate::ledger::PromotionState::AwaitingGate)
        }
    }

    #[test]
    fn waiting_counts_every_gated_stage_and_each_parked_promotion_by_its_gate() {
        let config = Config::parse(
            r#"
[registries."127.0.0.1:5001"]
plain_http = true
[registries."127.0.0.1:5002"]
plain_http = true
[[pipelines]]
name = "unit-waiting"
source = "127.0.0.1:5001/shop/api"
  [[pipelines.stages]]
  name = "dev"
  target = "127.0.0.1:5002/dev/api"
  [[pipelines.stages]]
  name = "prod"
  target = "127.0.0.1:5002/prod/api"
  gate = "approval"
"#,
            "ferry.toml",
        )
        .expect("config parses");
        let gauges = |parked: &[PromotionRecord]| Gauges {
            waiting: Some(Waiting::count(&config, parked)),
            ..Default::default()
        };
        let idle = render(&gauges(&[]));
        assert!(
            idle.contains("ferry_promotions_waiting{pipeline=\"unit-waiting\",stage=\"prod\",gate=\"approval\"} 0\n"),
            "{idle}"
        );
        assert!(!idle.contains("stage=\"dev\",gate="), "an auto stage never parks: {idle}");
        let parked = [
            parked("unit-waiting", "prod", Some("approval")),
            parked("unit-waiting", "prod", None),
            parked("unit-gone", "qa", Some("soak")),
        ];
        let busy = render(&gauges(&parked));
        for line in [
            "ferry_promotions_waiting{pipeline=\"unit-waiting\",stage=\"prod\",gate=\"approval\"} 2\n",
            "ferry_promotions_waiting{pipeline=\"unit-gone\",stage=\"qa\",gate=\"soak\"} 1\n",
        ] {
            assert!(busy.contains(line), "{line} in:\n{busy}");
        }
    }

    #[test]
    fn copies_and_gate_waits_are_rendered_as_histograms_and_a_byte_counter() {
        copy("unit-copy", "dev", Duration::from_millis(200), Some(1000));
        copy("unit-copy", "dev", Duration::from_secs(2), None);
        copy("unit-copy", "dev", Duration::from_secs(1), Some(24));
        gate_wait("unit-copy", "prod", "approval", Duration::from_secs(7200));
        let text = render(&Gauges::default());
        let dev = "pipeline=\"unit-copy\",stage=\"dev\"";
        for line in [
            format!("ferry_copied_bytes_total{{{dev}}} 1024\n"),
            format!("ferry_copy_duration_seconds_bucket{{{dev},le=\"0.25\"}} 1\n"),
            format!("ferry_copy_duration_seconds_bucket{{{dev},le=\"1\"}} 2\n"),
            format!("ferry_copy_duration_seconds_bucket{{{dev},le=\"+Inf\"}} 3\n"),
            format!("ferry_copy_duration_seconds_count{{{dev}}} 3\n"),
            "ferry_gate_wait_seconds_bucket{pipeline=\"unit-copy\",stage=\"prod\",gate=\"approval\",le=\"3600\"} 0\n"
                .into(),
            "ferry_gate_wait_seconds_bucket{pipeline=\"unit-copy\",stage=\"prod\",gate=\"approval\",le=\"14400\"} 1\n"
                .into(),
            "ferry_gate_wait_seconds_sum{pipeline=\"unit-copy\",stage=\"prod\",gate=\"approval\"} 7200\n".into(),
        ] {
            assert!(text.contains(&line), "{line} in:\n{text}");
        }
        for family in [
            "ferry_copy_duration_seconds histogram",
            "ferry_copied_bytes_total counter",
            "ferry_gate_wait_seconds histogram",
        ] {
            assert!(text.contains(&format!("# TYPE {family}\n")), "{family}: {text}");
        }
        assert!(!text.contains("ferry_promotions_waiting"), "no ledger answer, no gauge: {text}");
    }
}
