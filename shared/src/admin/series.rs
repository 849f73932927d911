//! `/metrics` without the gauges of things the running config no longer has.
//!
//! The Prometheus recorder keeps every series it was ever handed and cannot delete one. A
//! path or upstream removed by a reload would show its last `up` for ever (an alert on it
//! never clears), and a certificate no longer served its old expiry. So the exposition is
//! filtered as it is rendered: a gauge whose labels name something the binary no longer runs
//! is left out. Counters and histograms stay: they are history, which rates read as such
//! (the flows a reload moved off a path it removed are counted on that path after it is
//! gone). The recorder's entry stays (as many as the config ever named); a thing that comes
//! back sets its gauges anew.

use std::borrow::Cow;

/// The name and labels of one sample line, the labels read as they are asked for.
#[derive(Debug, Clone, Copy)]
pub struct Labels<'a> {
    /// The sample's name (a histogram's `_bucket`, `_sum` and `_count` are their own).
    pub name: &'a str,
    /// Between the braces: `key="value",...`, values escaped as the text format escapes them.
    inner: &'a str,
}

impl<'a> Labels<'a> {
    /// The value of label `key`, unescaped.
    pub fn get(&self, key: &str) -> Option<Cow<'a, str>> {
        pairs(self.inner).find(|(k, _)| *k == key).map(|(_, v)| unescape(v))
    }
}

/// `text` (the Prometheus text format) with only the gauge samples `keep` accepts; comment
/// lines, other samples and gauges without labels stay.
pub fn retain(text: &str, mut keep: impl FnMut(&Labels<'_>) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    // Whether the samples that follow are a gauge's (each family opens with its `# TYPE`).
    let mut gauge = false;
    for line in text.split_inclusive('\n') {
        if let Some(kind) = line.strip_prefix("# TYPE ") {
            gauge = kind.split_whitespace().nth(1) == Some("gauge");
        }
        let labels = if gauge && !line.starts_with('#') { labels_of(line) } else { None };
        if labels.is_none_or(|l| keep(&l)) {
            out.push_str(line);
        }
    }
    out
}

/// The labels of a sample line `name{...} value`, if it has any.
fn labels_of(line: &str) -> Option<Labels<'_>> {
    let open = line.find('{')?;
    let rest = &line[open + 1..];
    Some(Labels { name: &line[..open], inner: &rest[..close_of(rest)] })
}

/// Where the label set that `s` begins ends (its `}`), skipping quoted values; all of `s`
/// when it is not closed.
fn close_of(s: &str) -> usize {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return i,
            _ => {}
        }
    }
    s.len()
}

/// `(key, escaped value)` of each `key="value"` in `inner`.
fn pairs(inner: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut rest = inner;
    std::iter::from_fn(move || {
        let (key, after) = rest.split_once("=\"")?;
        let end = value_end(after);
        let value = &after[..end];
        rest = after.get(end + 1..).unwrap_or("").trim_start_matches(',');
        Some((key.trim(), value))
    })
}

/// Where the quoted value that `s` begins (after its opening quote) ends.
fn value_end(s: &str) -> usize {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return i,
            _ => {}
        }
    }
    s.len()
}

fn unescape(v: &str) -> Cow<'_, str> {
    if !v.contains('\\') {
        return Cow::Borrowed(v);
    }
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            },
            (c, false) => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP up Whether the path is up.\n\
                        # TYPE up gauge\n\
                        up{pool=\"home\",path=\"wan1\"} 1\n\
                        up{pool=\"home\",path=\"gone\"} 0\n\
                        up{pool=\"odd\",path=\"a\\\"}b,c\\\\\"} 1\n\
                        # TYPE connects_total counter\n\
                        connects_total{pool=\"home\",path=\"gone\"} 7\n\
                        reloads_total 3\n";

    #[test]
    fn gauges_of_things_gone_are_left_out_and_the_rest_stays_as_it_was() {
        let kept = retain(TEXT, |l| l.get("path").as_deref() != Some("gone"));
        assert_eq!(kept, TEXT.replace("up{pool=\"home\",path=\"gone\"} 0\n", ""));
    }

    #[test]
    fn values_are_read_unescaped_past_quotes_braces_and_commas() {
        let mut seen = Vec::new();
        let _ = retain(TEXT, |l| {
            seen.push((
                l.get("pool").unwrap().into_owned(),
                l.get("path").unwrap().into_owned(),
                l.get("le").is_some(),
            ));
            true
        });
        assert_eq!(seen[2], ("odd".into(), "a\"}b,c\\".into(), false));
        assert_eq!(seen.len(), 3, "comments, counters and unlabelled samples are not asked about");
    }
}
