//! A small parser of the Prometheus text exposition format (what `/metrics` serves), for
//! assertions such as "the counter of queries by role `shop` reached N".

use std::collections::BTreeMap;

/// One sample line: `name{label="value",…} value [timestamp]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name including any `_total`/`_bucket`/`_sum`/`_count` suffix.
    pub name: String,
    /// Labels, sorted by name.
    pub labels: BTreeMap<String, String>,
    /// The value (`+Inf`, `-Inf`, `NaN` included).
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if present.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    /// True if every `(key, value)` in `labels` is present with that value.
    pub fn matches(&self, labels: &[(&str, &str)]) -> bool {
        labels.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// Parses every sample line of `text`; comments (`# HELP`, `# TYPE`, `# EOF`), blank and
/// malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

/// Sum of the values of samples named `name` whose labels include `labels`.
pub fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && s.matches(labels))
        .map(|s| s.value)
        .sum()
}

/// The samples named `name` whose labels include `labels`.
pub fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| s.name == name && s.matches(labels))
        .collect()
}

/// Lines of `text` that are samples or comments of metrics starting with `prefix`
/// (e.g. `pgmon_`), at most `max` of them, for printing.
pub fn filter_lines(text: &str, prefix: &str, max: usize) -> Vec<String> {
    text.lines()
        .filter(|l| {
            let l = l
                .trim_start_matches("# HELP ")
                .trim_start_matches("# TYPE ");
            l.starts_with(prefix)
        })
        .take(max)
        .map(str::to_string)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let value = parse_value(rest.split_whitespace().next()?)?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` and returns the labels and the text after `}`.
fn parse_labels(mut s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.insert(key, value);
        s = s[end + 1..].trim_start();
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => v.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP pgmon_queries Queries seen.
# TYPE pgmon_queries counter
pgmon_queries_total{role="shop",database="shop"} 400
pgmon_queries_total{database="shop",role="analyst"} 12
pgmon_latency_seconds_bucket{role="shop",le="+Inf"} 7 1700000000000
pgmon_info{version="0.1.0",note="a \"quoted\", comma\\ and\nline"} 1
process_cpu_seconds_total 0.25
go_weird{ } NaN
# EOF
"#;

    #[test]
    fn parses_samples() {
        let s = parse(TEXT);
        assert_eq!(s.len(), 6);
        assert_eq!(sum(&s, "pgmon_queries_total", &[]), 412.0);
        assert_eq!(sum(&s, "pgmon_queries_total", &[("role", "shop")]), 400.0);
        assert_eq!(
            find(&s, "pgmon_latency_seconds_bucket", &[("le", "+Inf")])[0].value,
            7.0
        );
        assert_eq!(s[3].label("note"), Some("a \"quoted\", comma\\ and\nline"));
        assert_eq!(s[4].name, "process_cpu_seconds_total");
        assert!(s[5].value.is_nan() && s[5].labels.is_empty());
    }

    #[test]
    fn filters_lines() {
        let l = filter_lines(TEXT, "pgmon_", 3);
        assert_eq!(l.len(), 3);
        assert!(l[0].starts_with("# HELP pgmon_queries"));
        assert!(filter_lines(TEXT, "nothing_", 10).is_empty());
    }

    #[test]
    fn skips_malformed() {
        assert!(parse("novalue\nbad{x=\"1\" 2\n").is_empty());
    }
}
