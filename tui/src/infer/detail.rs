//! `dml job JOB` and `dml cancel JOB`: one job in detail (its progress per
//! worker, per-image errors, queue and compute time) as text and JSON; pure
//! functions, no IO.

use super::report::{job_json, progress};
use crate::report::render_table;
use crate::sdfs::report::when;
use dml_shared::infer::{JobDetail, JobInfo, Outcome, WorkerProgress};
use serde_json::{Value, json};

/// Mean per query in ms, or "-" without queries.
fn per_query(total_ms: u64, queries: u64) -> String {
    if queries == 0 {
        "-".into()
    } else {
        format!("{:.1}", total_ms as f64 / queries as f64)
    }
}

fn worker_json(w: &WorkerProgress) -> Value {
    json!({
        "worker": w.worker.to_string(),
        "queries": w.queries,
        "images": w.images,
        "errors": w.errors,
        "in_flight": w.in_flight,
        "queue_ms": w.queue_ms,
        "compute_ms": w.compute_ms,
    })
}

/// Every worker's figures added up (worker 0.0.0.0:0).
fn total(workers: &[WorkerProgress]) -> WorkerProgress {
    let mut t = WorkerProgress::new(std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    for w in workers {
        t.queries += w.queries;
        t.images += w.images;
        t.errors += w.errors;
        t.in_flight += w.in_flight;
        t.queue_ms += w.queue_ms;
        t.compute_ms += w.compute_ms;
    }
    t
}

pub fn detail_json(d: &JobDetail) -> Value {
    let t = total(&d.workers);
    let mut v = job_json(&d.info);
    v["workers"] = Value::Array(d.workers.iter().map(worker_json).collect());
    v["in_flight"] = t.in_flight.into();
    v["queue_ms"] = t.queue_ms.into();
    v["compute_ms"] = t.compute_ms.into();
    v["error_results"] = Value::Array(
        d.errors
            .iter()
            .map(|r| {
                let why = match &r.outcome {
                    Outcome::Error(e) => e.as_str(),
                    Outcome::Top(_) => "",
                };
                json!({"index": r.index, "image": r.image, "error": why})
            })
            .collect(),
    );
    v
}

fn header(j: &JobInfo) -> String {
    let mut s = format!(
        "job {}: {} over \"{}\", {} {}, {} errors, {} queries, submitted {}\n",
        j.id,
        j.model,
        j.dataset,
        progress(j),
        j.state.as_str(),
        j.errors,
        j.queries,
        when(j.submitted_ms)
    );
    if let Some(end) = j.finished_ms {
        let secs = end.saturating_sub(j.submitted_ms) as f64 / 1000.0;
        s.push_str(&format!("ended {} after {secs:.1} s\n", when(end)));
    }
    for (what, text) in [("reason", &j.reason), ("stalled", &j.stalled)] {
        if let Some(t) = text {
            s.push_str(&format!("{what}: {t}\n"));
        }
    }
    if let Some(o) = &j.output {
        s.push_str(&format!("output: {o}\n"));
    }
    s
}

pub fn detail_text(d: &JobDetail) -> String {
    let mut s = header(&d.info);
    if d.workers.is_empty() {
        s.push_str("no worker has run a query of it under the current leader\n");
    } else {
        let row = |name: String, w: &WorkerProgress| {
            vec![
                name,
                w.queries.to_string(),
                w.images.to_string(),
                w.errors.to_string(),
                w.in_flight.to_string(),
                per_query(w.queue_ms, w.queries),
                per_query(w.compute_ms, w.queries),
            ]
        };
        let mut rows: Vec<Vec<String>> = d
            .workers
            .iter()
            .map(|w| row(w.worker.to_string(), w))
            .collect();
        rows.push(row("total".into(), &total(&d.workers)));
        s.push_str("per worker, under the current leader (queue and compute: mean ms per query)\n");
        s.push_str(&render_table(
            &[
                "WORKER",
                "QUERIES",
                "IMAGES",
                "ERRORS",
                "IN FLIGHT",
                "QUEUE",
                "COMPUTE",
            ],
            &rows,
        ));
    }
    if !d.errors.is_empty() {
        s.push_str(&format!("first {} errors:\n", d.errors.len()));
        for r in &d.errors {
            if let Outcome::Error(e) = &r.outcome {
                s.push_str(&format!("  {} {}: {e}\n", r.index, r.image));
            }
        }
    } else if d.info.errors > 0 && d.info.output.is_some() {
        s.push_str(&format!(
            "its errors are in its output: dml get-output {}\n",
            d.info.id
        ));
    }
    s
}

/// `dml cancel`: what the cancel did, with the job as it now stands if known.
pub fn cancelled_text(job: u64, released: u32, info: Option<&JobInfo>) -> String {
    let kept = match info {
        Some(j) => format!("{} of {} images done", j.done, j.images),
        None => "its results so far".into(),
    };
    format!(
        "job {job} cancelled: {released} queries in flight released; {kept} (kept: dml get-output {job})\n"
    )
}

pub fn cancelled_json(job: u64, released: u32, info: Option<&JobInfo>) -> Value {
    let mut v = info.map(job_json).unwrap_or_else(|| json!({"id": job}));
    v["released"] = released.into();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use dml_shared::infer::{ImageResult, JobState};

    fn detail() -> JobDetail {
        let a = "10.0.0.1:8001".parse().unwrap();
        let b = "10.0.0.2:8001".parse().unwrap();
        JobDetail {
            info: JobInfo {
                id: 5,
                model: "tiny".into(),
                dataset: "d/".into(),
                images: 40,
                done: 12,
                errors: 1,
                queries: 3,
                state: JobState::Cancelled,
                reason: Some("cancelled after 12 of 40 images".into()),
                submitted_ms: 0,
                finished_ms: Some(2_500),
                output: None,
                stalled: None,
            },
            workers: vec![
                WorkerProgress {
                    queries: 2,
                    images: 8,
                    errors: 1,
                    queue_ms: 100,
                    compute_ms: 400,
                    ..WorkerProgress::new(a)
                },
                WorkerProgress {
                    queries: 1,
                    images: 4,
                    in_flight: 1,
                    compute_ms: 150,
                    ..WorkerProgress::new(b)
                },
            ],
            errors: vec![ImageResult {
                index: 7,
                image: "d/x.png".into(),
                outcome: Outcome::Error("not an image".into()),
            }],
        }
    }

    #[test]
    fn a_job_shows_each_worker_and_a_total_with_mean_times() {
        let t = detail_text(&detail());
        assert!(t.contains("12/40 (30%) cancelled"), "{t}");
        assert!(t.contains("reason: cancelled after 12 of 40 images"), "{t}");
        let row = t.lines().find(|l| l.starts_with("10.0.0.1:8001")).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            ["10.0.0.1:8001", "2", "8", "1", "0", "50.0", "200.0"]
        );
        let total = t.lines().find(|l| l.starts_with("total")).unwrap();
        let cells: Vec<&str> = total.split_whitespace().collect();
        assert_eq!(cells, ["total", "3", "12", "1", "1", "33.3", "183.3"]);
        assert!(t.contains("7 d/x.png: not an image"), "{t}");
        let v = detail_json(&detail());
        assert_eq!(v["state"], "cancelled");
        assert_eq!(v["workers"][1]["in_flight"], 1);
        assert_eq!(
            (v["compute_ms"].as_u64(), v["in_flight"].as_u64()),
            (Some(550), Some(1))
        );
        assert_eq!(v["error_results"][0]["error"], "not an image");
    }

    #[test]
    fn a_cancel_says_what_was_released_and_kept() {
        let d = detail();
        let t = cancelled_text(5, 2, Some(&d.info));
        assert_eq!(
            t,
            "job 5 cancelled: 2 queries in flight released; 12 of 40 images done (kept: dml get-output 5)\n"
        );
        let v = cancelled_json(5, 2, None);
        assert_eq!(
            (v["id"].as_u64(), v["released"].as_u64()),
            (Some(5), Some(2))
        );
    }
}
