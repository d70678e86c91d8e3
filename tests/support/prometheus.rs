//! A strict reader of the Prometheus text exposition format (what `GET /metrics` answers), for
//! tests that check Ferry's metrics without a Prometheus server.

/// A metric sample: name, labels, value.
pub type Sample = (String, Vec<(String, String)>, f64);

/// `GET /metrics` from 127.0.0.1:`port` (with `Authorization: Bearer token` when given): the
/// body, and its samples parsed strictly. Panics unless the answer is 200.
pub fn scrape(port: u16, token: Option<&str>) -> (String, Vec<Sample>) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics listener");
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, text) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP answer: {response:?}"));
    assert!(head.starts_with("HTTP/1.1 200"), "GET /metrics: {head}");
    (text.to_string(), parse_prometheus(text))
}

/// The value of the first sample named `name` carrying all of `labels`, if any.
pub fn sample_value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.0 == name && labels.iter().all(|(k, v)| s.1.iter().any(|(sk, sv)| sk == k && sv == v)))
        .map(|s| s.2)
}

/// Parses the Prometheus text format strictly: every line a `# HELP`/`# TYPE` comment or a
/// sample `name{label="value",…} number` of a family declared by a preceding `# TYPE`, every
/// family with a `# HELP`, every histogram series with cumulative buckets ending in `+Inf`, a
/// `_sum` and a `_count` equal to the `+Inf` bucket; panics on anything else.
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    let is_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .enumerate()
                .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
    };
    let mut typed: Vec<(String, String)> = Vec::new();
    let mut helped: Vec<String> = Vec::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, what) = (parts.next().unwrap(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            assert!(is_name(name), "bad metric name in {line:?}");
            match kind {
                "HELP" => {
                    assert!(!helped.iter().any(|n| n == name), "HELP twice for {name}");
                    helped.push(name.to_string());
                }
                "TYPE" => {
                    assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&what), "{line:?}");
                    assert!(!typed.iter().any(|(n, _)| n == name), "TYPE twice for {name}");
                    typed.push((name.to_string(), what.to_string()));
                }
                _ => panic!("unknown comment {line:?}"),
            }
            continue;
        }
        assert!(!line.trim().is_empty(), "empty line in the exposition");
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("no value in {line:?}"));
        let name = &line[..name_end];
        assert!(is_name(name), "bad sample name in {line:?}");
        let mut labels = Vec::new();
        let mut rest = &line[name_end..];
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices().peekable();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                if c == '}' {
                    end = Some(i);
                    break;
                }
                let key_start = i;
                let mut key_end = i;
                let mut c = c;
                while c != '=' {
                    let (j, next) = chars.next().unwrap_or_else(|| panic!("unterminated label in {line:?}"));
                    key_end = j;
                    c = next;
                }
                let key = &inner[key_start..key_end];
                assert!(is_name(key), "bad label name {key:?} in {line:?}");
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "label value not quoted in {line:?}");
                let mut value = String::new();
                loop {
                    match chars.next().unwrap_or_else(|| panic!("unterminated value in {line:?}")).1 {
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            Some('n') => value.push('\n'),
                            other => panic!("bad escape {other:?} in {line:?}"),
                        },
                        '"' => break,
                        c => value.push(c),
                    }
                }
                labels.push((key.to_string(), value));
                if chars.peek().map(|(_, c)| *c) == Some(',') {
                    chars.next();
                }
            }
            let end = end.unwrap_or_else(|| panic!("unterminated labels in {line:?}"));
            rest = &inner[end + 1..];
        }
        let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("no space before the value in {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| panic!("bad value {v:?} in {line:?}")),
        };
        let family = typed
            .iter()
            .find(|(n, kind)| {
                n == name
                    || (kind == "histogram"
                        && [format!("{n}_bucket"), format!("{n}_sum"), format!("{n}_count")].iter().any(|s| s == name))
            })
            .unwrap_or_else(|| panic!("sample {name} has no preceding # TYPE"));
        if family.1 == "histogram" && name.ends_with("_bucket") {
            assert!(labels.iter().any(|(k, _)| k == "le"), "a bucket without le: {line:?}");
        }
        samples.push((name.to_string(), labels, value));
    }
    for (name, _) in &typed {
        assert!(helped.contains(name), "{name} has a TYPE but no HELP");
    }
    for (family, _) in typed.iter().filter(|(_, kind)| kind == "histogram") {
        check_histogram(family, &samples);
    }
    samples
}

/// Each series of histogram `family` (its labels besides `le`): buckets in increasing `le`,
/// counts never decreasing, the last bucket `+Inf`, and `_count` equal to it, `_sum` present.
fn check_histogram(family: &str, samples: &[Sample]) {
    let without_le = |labels: &[(String, String)]| -> Vec<(String, String)> {
        labels.iter().filter(|(k, _)| k != "le").cloned().collect()
    };
    let mut series: Vec<Vec<(String, String)>> = Vec::new();
    for (name, labels, _) in samples {
        if name.strip_prefix(family).is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s)) {
            let key = without_le(labels);
            if !series.contains(&key) {
                series.push(key);
            }
        }
    }
    for key in series {
        let of = |suffix: &str| -> Vec<&Sample> {
            samples.iter().filter(|s| s.0 == format!("{family}{suffix}") && without_le(&s.1) == key).collect()
        };
        let buckets: Vec<(f64, f64)> = of("_bucket")
            .iter()
            .map(|s| {
                let le = &s.1.iter().find(|(k, _)| k == "le").expect("bucket has le").1;
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or_else(|_| panic!("le {le:?}")) };
                (le, s.2)
            })
            .collect();
        assert!(!buckets.is_empty(), "{family} {key:?}: no buckets");
        for pair in buckets.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{family} {key:?}: buckets not in increasing le: {buckets:?}");
            assert!(pair[0].1 <= pair[1].1, "{family} {key:?}: buckets not cumulative: {buckets:?}");
        }
        let (last_le, last_count) = *buckets.last().expect("not empty");
        assert!(last_le.is_infinite(), "{family} {key:?}: no +Inf bucket last: {buckets:?}");
        let count = of("_count");
        assert_eq!(count.len(), 1, "{family} {key:?}: one _count");
        assert_eq!(count[0].2, last_count, "{family} {key:?}: _count differs from the +Inf bucket");
        assert_eq!(of("_sum").len(), 1, "{family} {key:?}: one _sum");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "# HELP d_seconds Time.\n# TYPE d_seconds histogram\n\
        d_seconds_bucket{s=\"a\",le=\"1\"} 1\nd_seconds_bucket{s=\"a\",le=\"+Inf\"} 2\n\
        d_seconds_sum{s=\"a\"} 3.5\nd_seconds_count{s=\"a\"} 2\n";

    #[test]
    fn a_well_formed_histogram_is_read() {
        let samples = parse_prometheus(GOOD);
        assert_eq!(sample_value(&samples, "d_seconds_count", &[("s", "a")]), Some(2.0));
        assert_eq!(sample_value(&samples, "d_seconds_bucket", &[("le", "+Inf")]), Some(2.0));
    }

    #[test]
    #[should_panic(expected = "not cumulative")]
    fn buckets_that_decrease_are_refused() {
        parse_prometheus(&GOOD.replace("le=\"1\"} 1", "le=\"1\"} 3"));
    }

    #[test]
    #[should_panic(expected = "no +Inf bucket")]
    fn a_histogram_without_inf_is_refused() {
        parse_prometheus(&GOOD.replace("d_seconds_bucket{s=\"a\",le=\"+Inf\"} 2\n", ""));
    }

    #[test]
    #[should_panic(expected = "_count differs")]
    fn a_count_other_than_the_inf_bucket_is_refused() {
        parse_prometheus(&GOOD.replace("d_seconds_count{s=\"a\"} 2", "d_seconds_count{s=\"a\"} 5"));
    }

    #[test]
    #[should_panic(expected = "one _sum")]
    fn a_histogram_without_sum_is_refused() {
        parse_prometheus(&GOOD.replace("d_seconds_sum{s=\"a\"} 3.5\n", ""));
    }

    #[test]
    #[should_panic(expected = "no HELP")]
    fn a_family_without_help_is_refused() {
        parse_prometheus(&GOOD.replace("# HELP d_seconds Time.\n", ""));
    }
}
