//! Reading the Prometheus text exposition of a process inside a namespace (`curl` runs in the
//! namespace, since its loopback is not ours).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cmd;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed scrape.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Parses the text format; lines it cannot read are skipped (comments, malformed).
    pub fn parse(text: &str) -> Self {
        Self { samples: text.lines().filter_map(parse_line).collect() }
    }

    /// Samples named `name` whose labels include all of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v)))
    }

    /// The value of the first matching sample.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.matching(name, labels).next().map(|s| s.value)
    }

    /// The sum over matching samples (0 if none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// Whether any sample has this name.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let (labels, after) = parse_labels(&line[open + 1..])?;
            (&line[..open], labels, after)
        }
        None => {
            let sp = line.find(char::is_whitespace)?;
            (&line[..sp], BTreeMap::new(), &line[sp..])
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample { name: name.to_string(), labels, value })
}

/// Parses `k="v",k2="v2"}` and returns the labels and what follows the `}`.
fn parse_labels(s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_string();
        let mut chars = rest[eq + 1..].char_indices();
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        let mut escaped = false;
        let mut end = None;
        for (i, c) in chars {
            match (escaped, c) {
                (true, 'n') => {
                    value.push('\n');
                    escaped = false
                }
                (true, c) => {
                    value.push(c);
                    escaped = false
                }
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                (false, c) => value.push(c),
            }
        }
        let end = end?;
        labels.insert(key, value);
        rest = &rest[eq + 1 + end + 1..];
    }
}

/// Fetches `http://ADDR/metrics` from inside `ns`. A scrape that times out is tried twice
/// more: the scrape only observes, and a full CI run saw one time out after 2 s while a
/// second ingress, idle, had all its probes time out at the same instant (the whole box
/// stalled for seconds, not the ingress under test). A refused connection fails at once.
pub fn scrape(ns: &str, addr: &str) -> Result<Metrics> {
    let url = format!("http://{addr}/metrics");
    let argv = ["curl", "-sSf", "--max-time", "3", "--retry", "2", "--retry-delay", "0", &url];
    let text = cmd::exec_ok(ns, &argv, Duration::from_secs(12)).with_context(|| format!("scraping {url} in {ns}"))?;
    Ok(Metrics::parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_values() {
        let m = Metrics::parse(
            "# TYPE ingress_path_up gauge\n\
             ingress_path_up{pool=\"home\",path=\"wan1\"} 1\n\
             ingress_path_up{pool=\"home\",path=\"wan2\"} 0\n\
             ingress_path_connects_total{pool=\"home\",path=\"wan1\"} 42\n\
             weird{a=\"x\\\"y,}\"} 3.5e0\n\
             plain_total 7\n",
        );
        assert_eq!(m.get("ingress_path_up", &[("path", "wan1")]), Some(1.0));
        assert_eq!(m.get("ingress_path_up", &[("path", "wan2")]), Some(0.0));
        assert_eq!(m.sum("ingress_path_up", &[("pool", "home")]), 1.0);
        assert_eq!(m.get("weird", &[("a", "x\"y,}")]), Some(3.5));
        assert_eq!(m.get("plain_total", &[]), Some(7.0));
        assert_eq!(m.get("missing", &[]), None);
    }
}
