//! Scraping a metrics endpoint and parsing the Prometheus text exposition format (0.0.4)
//! strictly, so that a test fails on output a Prometheus server would reject or misread.
//!
//! - [`http_get`]: one HTTP/1.1 request on a fresh connection (raw bytes, so tests can also
//!   send malformed ones), the status code, headers and body.
//! - [`parse`]: the text format into [`Family`]s, or an error naming the line. Checked: `# HELP`
//!   and `# TYPE` syntax and placement (TYPE at most once per name, before its samples; a
//!   known type), metric and label names, label value escapes, duplicate label names, numbers
//!   (incl. `NaN`, `+Inf`), optional integer timestamps, every family's samples contiguous, no
//!   duplicate series, counters' samples non-negative, a final newline.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

/// One sample: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One metric family: what `# HELP` and `# TYPE` said of it, and its samples in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub help: Option<String>,
    /// counter, gauge, histogram, summary or untyped (untyped if no `# TYPE`).
    pub kind: String,
    pub samples: Vec<Sample>,
}

/// A parsed exposition.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub families: Vec<Family>,
}

impl Exposition {
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }

    /// The value of the series `name` with exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.families
            .iter()
            .flat_map(|f| &f.samples)
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// Every sample named `name`.
    pub fn samples(&self, name: &str) -> Vec<&Sample> {
        self.families
            .iter()
            .flat_map(|f| &f.samples)
            .filter(|s| s.name == name)
            .collect()
    }
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// Sends `request` (raw bytes) to `addr` on a new connection, reads the response to EOF.
pub fn http_get(addr: SocketAddr, request: &[u8]) -> Result<Response, String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .and_then(|_| s.set_write_timeout(Some(Duration::from_secs(15))))
        .map_err(|e| e.to_string())?;
    s.write_all(request)
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let text = String::from_utf8(raw).map_err(|e| format!("response is not UTF-8: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {text:?}"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(format!("bad status line {status_line:?}"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status = code
        .parse()
        .map_err(|_| format!("bad status line {status_line:?}"))?;
    let mut headers = BTreeMap::new();
    for l in lines {
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| format!("bad header line {l:?}"))?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    if let Some(len) = headers.get("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad content-length {len:?}"))?;
        if len != body.len() && !request.starts_with(b"HEAD ") {
            return Err(format!(
                "content-length {len} but {} body bytes",
                body.len()
            ));
        }
    }
    Ok(Response {
        status,
        headers,
        body: body.to_string(),
    })
}

/// `GET /metrics` from `addr`, checked (200, the text format's content type) and parsed.
pub fn scrape(addr: SocketAddr) -> Result<Exposition, String> {
    let r = http_get(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: test\r\nAccept: text/plain\r\n\r\n",
    )?;
    if r.status != 200 {
        return Err(format!("GET /metrics: status {}: {}", r.status, r.body));
    }
    let ct = r.headers.get("content-type").cloned().unwrap_or_default();
    if !ct.starts_with("text/plain") || !ct.contains("version=0.0.4") {
        return Err(format!("GET /metrics: content-type {ct:?}"));
    }
    parse(&r.body)
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ if s.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) => s.parse().ok(),
        _ => None,
    }
}

/// Parses `{a="x",b="y"}` at the start of `s`; returns the labels and the rest.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("expected {")?;
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = rest[..eq].trim();
        if !is_name(name, false) || name.starts_with("__") {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or_else(|| format!("label {name}: value not quoted"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("label {name}: unterminated value")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("label {name}: bad escape {other:?}")),
                },
                Some((_, '\n')) => return Err(format!("label {name}: raw newline")),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = rest[end + 1..].trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err("expected , or } after a label".into());
        }
    }
}

/// The family a sample named `name` belongs to, given the declared types.
fn family_of(name: &str, types: &BTreeMap<String, String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if matches!(
                types.get(base).map(String::as_str),
                Some("histogram" | "summary")
            ) {
                return base.to_string();
            }
        }
    }
    name.to_string()
}

/// Parses an exposition in the Prometheus text format 0.0.4.
pub fn parse(text: &str) -> Result<Exposition, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the exposition does not end with a newline".into());
    }
    let mut out = Exposition::default();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps: BTreeMap<String, String> = BTreeMap::new();
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let mut series: BTreeSet<(String, Vec<(String, String)>)> = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let err = |why: String| format!("line {}: {why}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next()) {
                (Some("HELP"), Some(name)) => {
                    if !is_name(name, true) {
                        return Err(err("bad metric name in HELP".into()));
                    }
                    let raw = words.next().unwrap_or_default();
                    let mut help = String::new();
                    let mut chars = raw.chars();
                    while let Some(c) = chars.next() {
                        match (c, c == '\\') {
                            (_, true) => match chars.next() {
                                Some('\\') => help.push('\\'),
                                Some('n') => help.push('\n'),
                                other => return Err(err(format!("bad escape in HELP: {other:?}"))),
                            },
                            (c, false) => help.push(c),
                        }
                    }
                    if helps.insert(name.to_string(), help).is_some() {
                        return Err(err(format!("second HELP for {name}")));
                    }
                }
                (Some("TYPE"), Some(name)) => {
                    let kind = words.next().unwrap_or_default().trim();
                    if !is_name(name, true) {
                        return Err(err("bad metric name in TYPE".into()));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(err(format!("unknown type {kind:?}")));
                    }
                    if types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(err(format!("second TYPE for {name}")));
                    }
                    if out.families.iter().any(|f| f.name == name) {
                        return Err(err(format!("TYPE for {name} after its samples")));
                    }
                }
                _ => {} // any other comment
            }
            continue;
        }
        // A sample.
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| err("no value".into()))?;
        let name = &line[..name_end];
        if !is_name(name, true) {
            return Err(err(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(err)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let value = fields
            .next()
            .and_then(parse_value)
            .ok_or_else(|| err("bad or missing value".into()))?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|_| err(format!("bad timestamp {ts:?}")))?;
        }
        if fields.next().is_some() {
            return Err(err("trailing fields".into()));
        }
        let fam = family_of(name, &types);
        let key = (
            name.to_string(),
            labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        );
        if !series.insert(key) {
            return Err(err(format!("duplicate series {name}{labels:?}")));
        }
        let kind = types
            .get(&fam)
            .cloned()
            .unwrap_or_else(|| "untyped".to_string());
        if kind == "counter" && (value.is_nan() || value < 0.0) {
            return Err(err(format!("counter {name} is {value}")));
        }
        let sample = Sample {
            name: name.to_string(),
            labels,
            value,
        };
        match out.families.last_mut() {
            Some(f) if f.name == fam => f.samples.push(sample),
            _ => {
                if !finished.insert(fam.clone()) {
                    return Err(err(format!("samples of {fam} are not together")));
                }
                out.families.push(Family {
                    name: fam.clone(),
                    help: helps.get(&fam).cloned(),
                    kind,
                    samples: vec![sample],
                });
            }
        }
    }
    // A HELP or TYPE with no samples is allowed (an empty family).
    for (name, kind) in &types {
        if out.family(name).is_none() {
            out.families.push(Family {
                name: name.clone(),
                help: helps.get(name).cloned(),
                kind: kind.clone(),
                samples: Vec::new(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "# HELP a_total An \\\\ escaped\\nhelp.\n# TYPE a_total counter\n\
a_total{x=\"1\",y=\"q\\\"uote\\\\ \\n\"} 3\na_total{x=\"2\"} 4 1700000000000\n\
# TYPE g gauge\ng 1.5e3\ng{s=\"a\"} NaN\nu -Inf\n\
# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n";

    #[test]
    fn parses_valid_text() {
        let e = parse(GOOD).unwrap();
        let a = e.family("a_total").unwrap();
        assert_eq!(a.kind, "counter");
        assert_eq!(a.help.as_deref(), Some("An \\ escaped\nhelp."));
        assert_eq!(e.value("a_total", &[("x", "2")]), Some(4.0));
        assert_eq!(
            e.value("a_total", &[("x", "1"), ("y", "q\"uote\\ \n")]),
            Some(3.0)
        );
        assert_eq!(e.value("g", &[]), Some(1500.0));
        assert_eq!(e.family("u").unwrap().kind, "untyped");
        assert_eq!(e.family("h").unwrap().samples.len(), 4);
    }

    #[test]
    fn rejects_invalid_text() {
        for bad in [
            "a 1",                              // no final newline
            "a{b=\"1\"\n",                      // unterminated labels
            "a{b=1} 1\n",                       // unquoted value
            "a{b=\"1\",b=\"2\"} 1\n",           // label twice
            "a{__b=\"1\"} 1\n",                 // reserved label name
            "a{b=\"\\x\"} 1\n",                 // bad escape
            "1a 1\n",                           // bad metric name
            "a one\n",                          // bad value
            "a 1 2 3\n",                        // trailing field
            "a 1 x\n",                          // bad timestamp
            "a 1\na 2\n",                       // duplicate series
            "a 1\nb 1\na{x=\"1\"} 2\n",         // family not contiguous
            "# TYPE a counter\na -1\n",         // negative counter
            "# TYPE a bogus\na 1\n",            // unknown type
            "a 1\n# TYPE a gauge\n",            // TYPE after samples
            "# TYPE a gauge\n# TYPE a gauge\n", // TYPE twice
            "# HELP a x\\y\n",                  // bad HELP escape
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
