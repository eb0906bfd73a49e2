//! The sweep's table and JSON: one row per setting.

use super::stats::Row;
use crate::report::render_table;
use serde_json::{Value, json};
use std::path::Path;

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// One line per setting: throughput, C2's query time p50/p95/p99, and its
/// queue and compute parts (medians), in milliseconds.
pub fn text(model: &str, rows: &[Row]) -> String {
    let cells = rows
        .iter()
        .map(|r| {
            vec![
                r.setting.batch.to_string(),
                r.setting.concurrency.to_string(),
                r.images.to_string(),
                r.queries.to_string(),
                format!("{:.1}", r.seconds),
                format!("{:.2}", r.images_per_s),
                ms(r.latency.p50_ms),
                ms(r.latency.p95_ms),
                ms(r.latency.p99_ms),
                ms(r.queue.p50_ms),
                ms(r.compute.p50_ms),
            ]
        })
        .collect::<Vec<_>>();
    let headers = [
        "batch",
        "jobs",
        "images",
        "queries",
        "secs",
        "images/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "queue p50",
        "compute p50",
    ];
    format!(
        "{model}: query time (C2: queue + compute on the worker) per setting\n{}",
        render_table(&headers, &cells)
    )
}

/// The whole run as one JSON object.
pub fn json(model: &str, rows: &[Row], original_batch: u32, chart: Option<&Path>) -> Value {
    json!({
        "model": model,
        "batch_size_restored": original_batch,
        "chart": chart,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::super::stats::{Pcts, Setting};
    use super::*;

    fn row(batch: u32) -> Row {
        let p = Pcts {
            mean_ms: 12.0,
            p50_ms: 10.0,
            p95_ms: 20.0,
            p99_ms: 150.0,
            max_ms: 151.0,
        };
        Row {
            setting: Setting {
                batch,
                concurrency: 1,
            },
            jobs: 1,
            images: 8,
            queries: 8 / batch as usize,
            seconds: 2.0,
            images_per_s: 4.0,
            latency: p,
            queue: p,
            compute: p,
            held: p,
        }
    }

    #[test]
    fn one_line_and_one_json_row_per_setting() {
        let rows = [row(1), row(2)];
        let t = text("tiny", &rows);
        assert_eq!(t.lines().count(), 4, "{t}");
        assert!(t.lines().nth(3).unwrap().starts_with("2 "), "{t}");
        assert!(t.contains("4.00") && t.contains("150"), "{t}");
        let v = json("tiny", &rows, 4, Some(Path::new("c.svg")));
        assert_eq!(v["rows"].as_array().unwrap().len(), 2);
        assert_eq!(v["rows"][1]["batch"], 2);
        assert_eq!(v["rows"][0]["latency"]["p99_ms"], 150.0);
        assert_eq!(
            (v["batch_size_restored"].clone(), v["chart"].clone()),
            (json!(4), json!("c.svg"))
        );
    }
}
