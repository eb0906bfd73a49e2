//! Reading an agent's Prometheus endpoint: one HTTP/1.1 exchange on a plain socket, and a
//! strict parser of the text format. Written here rather than with an HTTP client crate: the
//! tests send malformed and oversized requests on purpose, which client crates refuse to.

use anyhow::{Context, Result, anyhow, ensure};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Time allowed for one HTTP exchange.
pub const HTTP: Duration = Duration::from_secs(10);

/// Status line, headers (lower-case names) and body of one HTTP/1.1 exchange.
pub struct Reply {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// Sends `request` verbatim and reads the whole answer (the server closes the connection).
pub fn http(addr: SocketAddr, request: &[u8]) -> Result<Reply> {
    let mut s = TcpStream::connect_timeout(&addr, HTTP)
        .with_context(|| format!("cannot connect to metrics at {addr}"))?;
    s.set_read_timeout(Some(HTTP))?;
    s.set_write_timeout(Some(HTTP))?;
    s.write_all(request)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).context("answer is not UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no end of headers in {text:?}"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    ensure!(
        parts.next() == Some("HTTP/1.1"),
        "bad status line {status_line:?}"
    );
    let status = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<BTreeMap<_, _>>();
    // A HEAD answer announces the length of a body it does not send.
    if let Some(len) = headers
        .get("content-length")
        .filter(|_| !request.starts_with(b"HEAD "))
    {
        ensure!(
            len.parse::<usize>()? == body.len(),
            "content-length {len} but {} body bytes",
            body.len()
        );
    }
    Ok(Reply {
        status,
        headers,
        body: body.to_string(),
    })
}

/// `GET path`.
pub fn get(addr: SocketAddr, path: &str) -> Result<Reply> {
    http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: dml-tests\r\n\r\n").as_bytes(),
    )
}

/// One scrape: `name{labels}` -> value, and each family's `# TYPE`.
#[derive(Debug, Default)]
pub struct Samples {
    pub values: BTreeMap<String, f64>,
    pub types: BTreeMap<String, String>,
}

impl Samples {
    pub fn contains_key(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// The family's declared type.
    pub fn kind(&self, family: &str) -> Option<&str> {
        self.types.get(family).map(String::as_str)
    }

    /// The samples of `name` (without labels or with any), by their label text.
    pub fn series(&self, name: &str) -> BTreeMap<&str, f64> {
        self.values
            .iter()
            .filter_map(|(k, v)| {
                let labels = k.strip_prefix(name)?;
                (labels.is_empty() || labels.starts_with('{')).then_some((labels, *v))
            })
            .collect()
    }

    /// The sample `key` (`name{labels}`).
    pub fn value(&self, key: &str) -> Result<f64> {
        self.values
            .get(key)
            .copied()
            .ok_or_else(|| anyhow!("no sample {key}"))
    }
}

/// Parses the text format strictly: every `# TYPE` names a known type, every sample line
/// is `name[{labels}] value` with a family declared before it, and no sample repeats.
pub fn parse(text: &str) -> Result<Samples> {
    let mut types = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| anyhow!("bad TYPE line {line:?}"))?;
            ensure!(
                ["counter", "gauge", "summary", "histogram", "untyped"].contains(&kind),
                "unknown type in {line:?}"
            );
            ensure!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "family {name} declared twice"
            );
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| anyhow!("no value in {line:?}"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .with_context(|| format!("bad value in {line:?}"))?,
        };
        let name = series.split('{').next().unwrap_or_default();
        ensure!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if series.contains('{') {
            ensure!(series.ends_with('}'), "unclosed labels in {line:?}");
        }
        let family = ["_sum", "_count", "_bucket"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
            .unwrap_or(name);
        ensure!(
            types.contains_key(family),
            "sample {name} before its # TYPE"
        );
        ensure!(
            samples.insert(series.to_string(), value).is_none(),
            "sample {series} repeated"
        );
    }
    Ok(Samples {
        values: samples,
        types,
    })
}

/// Scrapes and parses `GET /metrics`, checking status and content type.
pub fn scrape(addr: SocketAddr) -> Result<Samples> {
    let r = get(addr, "/metrics")?;
    ensure!(
        r.status == 200,
        "status {} for /metrics: {}",
        r.status,
        r.body
    );
    let ct = r.headers.get("content-type").cloned().unwrap_or_default();
    ensure!(
        ct.starts_with("text/plain") && ct.contains("version=0.0.4"),
        "content type {ct:?}"
    );
    ensure!(
        r.body.ends_with('\n'),
        "the exposition does not end with a newline"
    );
    parse(&r.body)
}

/// The metric names a PromQL expression reads: its identifiers that start
/// with `dml_` or `process_` (the families the agents export). Label names,
/// functions and Prometheus's own `up` are left out; so is text in quotes.
pub fn promql_metrics(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut word = String::new();
    let mut quote = None;
    for c in expr.chars().chain(std::iter::once(' ')) {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
            continue;
        }
        if word.starts_with("dml_") || word.starts_with("process_") {
            names.insert(std::mem::take(&mut word));
        }
        word.clear();
        if c == '"' || c == '\'' || c == '`' {
            quote = Some(c);
        }
    }
    names
}

/// Every `expr` string anywhere in a Grafana dashboard.
pub fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dashboard];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                stack.extend(m.values());
            }
            serde_json::Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    out
}

/// The `expr:` of each rule in a Prometheus rule file whose expressions fit on
/// their line (as `assets/prometheus/alerts.yml` writes them), with the count
/// of `- alert:` entries to check that none was missed.
pub fn rule_exprs(text: &str) -> (Vec<String>, usize) {
    let mut exprs = Vec::new();
    let mut alerts = 0;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("- alert:") {
            alerts += 1;
        } else if let Some(e) = t.strip_prefix("expr:") {
            exprs.push(e.trim().to_string());
        }
    }
    (exprs, alerts)
}

/// The family names of a scrape's samples (`name` of each `name{labels}`).
pub fn sample_names(s: &Samples) -> BTreeSet<String> {
    s.values
        .keys()
        .map(|k| k.split('{').next().unwrap_or(k).to_string())
        .collect()
}

#[cfg(test)]
mod promql_tests {
    use super::*;

    #[test]
    fn names_come_from_identifiers_not_labels_functions_or_strings() {
        let e = r#"histogram_quantile(0.99, sum by (model, le) (rate(dml_infer_query_latency_seconds_bucket{job=~"dml_x"}[5m]))) / process_open_fds"#;
        let names: Vec<String> = promql_metrics(e).into_iter().collect();
        assert_eq!(
            names,
            ["dml_infer_query_latency_seconds_bucket", "process_open_fds"]
        );
        let (exprs, alerts) = rule_exprs("- alert: A\n  expr: up == 0\n- alert: B\n");
        assert_eq!((exprs, alerts), (vec!["up == 0".to_string()], 2));
    }
}
