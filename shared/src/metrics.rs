//! Process-wide counters for `GET /metrics` (Prometheus text format 0.0.4): webhooks by sender
//! and answer, promotion jobs by pipeline, stage and result with their duration, and the
//! dead-letter depth (asked of the queue at scrape time).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Upper bounds of the job duration histogram, in seconds.
const BUCKETS_S: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS_S.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Families {
    webhooks: BTreeMap<Labels, u64>,
    jobs: BTreeMap<Labels, u64>,
    durations: BTreeMap<Labels, Histogram>,
}

fn families() -> &'static Mutex<Families> {
    static FAMILIES: OnceLock<Mutex<Families>> = OnceLock::new();
    FAMILIES.get_or_init(Default::default)
}

/// A webhook from `sender` answered with `status`.
pub fn webhook(sender: &str, status: u16) {
    let labels = vec![("sender", sender.to_string()), ("answer", status.to_string())];
    *families().lock().unwrap_or_else(|e| e.into_inner()).webhooks.entry(labels).or_default() += 1;
}

/// A promotion job into `pipeline`/`stage` ended an attempt with `result` (the job state:
/// promoted, parked, refused, failed, running = will retry) after `took`.
pub fn promotion_job(pipeline: &str, stage: &str, result: &str, took: Duration) {
    let mut f = families().lock().unwrap_or_else(|e| e.into_inner());
    let labels = vec![("pipeline", pipeline.to_string()), ("stage", stage.to_string())];
    let mut with_result = labels.clone();
    with_result.push(("result", result.to_string()));
    *f.jobs.entry(with_result).or_default() += 1;
    let histogram = f.durations.entry(labels).or_default();
    let seconds = took.as_secs_f64();
    for (i, bound) in BUCKETS_S.iter().enumerate() {
        if seconds <= *bound {
            histogram.counts[i] += 1;
        }
    }
    histogram.count += 1;
    histogram.sum += seconds;
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

/// Everything, in the text format; `queue_depth` and `dead_letters` as the queue counts them
/// (left out when it cannot).
pub fn render(queue_depth: Option<u64>, dead_letters: Option<usize>) -> String {
    let f = families().lock().unwrap_or_else(|e| e.into_inner());
    let mut out = String::new();
    let _ = writeln!(out, "# HELP ferry_webhooks_total Webhooks received, by sender and HTTP answer.");
    let _ = writeln!(out, "# TYPE ferry_webhooks_total counter");
    for (labels, n) in &f.webhooks {
        let _ = writeln!(out, "ferry_webhooks_total{} {n}", label_text(labels, None));
    }
    let _ = writeln!(out, "# HELP ferry_promotion_jobs_total Promotion job attempts, by pipeline, stage and result.");
    let _ = writeln!(out, "# TYPE ferry_promotion_jobs_total counter");
    for (labels, n) in &f.jobs {
        let _ = writeln!(out, "ferry_promotion_jobs_total{} {n}", label_text(labels, None));
    }
    let _ = writeln!(out, "# HELP ferry_promotion_job_duration_seconds Time a promotion job attempt took.");
    let _ = writeln!(out, "# TYPE ferry_promotion_job_duration_seconds histogram");
    for (labels, h) in &f.durations {
        for (i, bound) in BUCKETS_S.iter().enumerate() {
            let le = label_text(labels, Some(("le", bound.to_string())));
            let _ = writeln!(out, "ferry_promotion_job_duration_seconds_bucket{le} {}", h.counts[i]);
        }
        let inf = label_text(labels, Some(("le", "+Inf".into())));
        let _ = writeln!(out, "ferry_promotion_job_duration_seconds_bucket{inf} {}", h.count);
        let _ = writeln!(out, "ferry_promotion_job_duration_seconds_sum{} {}", label_text(labels, None), h.sum);
        let _ = writeln!(out, "ferry_promotion_job_duration_seconds_count{} {}", label_text(labels, None), h.count);
    }
    if let Some(depth) = queue_depth {
        let _ = writeln!(out, "# HELP ferry_queue_depth Jobs in the queue not done yet (waiting or in flight).");
        let _ = writeln!(out, "# TYPE ferry_queue_depth gauge");
        let _ = writeln!(out, "ferry_queue_depth {depth}");
    }
    if let Some(depth) = dead_letters {
        let _ = writeln!(out, "# HELP ferry_dead_letters Jobs in the dead-letter store.");
        let _ = writeln!(out, "# TYPE ferry_dead_letters gauge");
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
        let text = render(Some(7), Some(3));
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
}
