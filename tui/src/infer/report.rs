//! Tables and JSON for `dml jobs`, `rates`, `latency`, `placement`,
//! `set-batch-size` and `submit-job`; pure functions, no IO.

use crate::report::render_table;
use crate::sdfs::report::when;
use dml_shared::infer::{JobInfo, LatencyInfo, ModelInfo, Placement, RateInfo, Spread};
use serde_json::{Value, json};

/// Share of a job's images with a result, in percent (100 for an empty job).
pub fn percent(done: u32, images: u32) -> f64 {
    if images == 0 {
        100.0
    } else {
        f64::from(done) * 100.0 / f64::from(images)
    }
}

/// "12/40 (30%)".
pub fn progress(j: &JobInfo) -> String {
    format!(
        "{}/{} ({:.0}%)",
        j.done,
        j.images,
        percent(j.done, j.images).floor()
    )
}

pub fn submitted_text(job: u64, model: &str, images: u32, dataset: &str) -> String {
    format!("job {job}: {model} over {images} images of \"{dataset}\"\n")
}

pub fn submitted_json(job: u64, model: &str, images: u32, dataset: &str) -> Value {
    json!({"job": job, "model": model, "images": images, "dataset": dataset})
}

pub fn job_json(j: &JobInfo) -> Value {
    json!({
        "id": j.id,
        "model": j.model,
        "dataset": j.dataset,
        "images": j.images,
        "done": j.done,
        "percent": percent(j.done, j.images),
        "errors": j.errors,
        "queries": j.queries,
        "state": j.state.as_str(),
        "reason": j.reason,
        "stalled": j.stalled,
        "submitted_ms": j.submitted_ms,
        "finished_ms": j.finished_ms,
        "output": j.output,
    })
}

pub fn jobs_json(jobs: &[JobInfo]) -> Value {
    Value::Array(jobs.iter().map(job_json).collect())
}

pub fn jobs_table(jobs: &[JobInfo]) -> String {
    if jobs.is_empty() {
        return "no jobs\n".into();
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.to_string(),
                j.model.clone(),
                j.dataset.clone(),
                progress(j),
                j.state.as_str().into(),
                j.errors.to_string(),
                j.queries.to_string(),
                when(j.submitted_ms),
                j.reason
                    .clone()
                    .or_else(|| j.stalled.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    render_table(
        &[
            "JOB",
            "MODEL",
            "DATASET",
            "PROGRESS",
            "STATE",
            "ERRORS",
            "QUERIES",
            "SUBMITTED",
            "REASON",
        ],
        &rows,
    )
}

pub fn rates_json(rates: &[RateInfo]) -> Value {
    Value::Array(
        rates
            .iter()
            .map(|r| {
                json!({
                    "model": r.model,
                    "queries_per_s": r.queries_per_s,
                    "images_per_s": r.images_per_s,
                    "queries_total": r.queries_total,
                    "images_total": r.images_total,
                    "mean_batch": r.mean_batch,
                })
            })
            .collect(),
    )
}

pub fn rates_table(rates: &[RateInfo]) -> String {
    if rates.is_empty() {
        return "no queries yet\n".into();
    }
    let rows: Vec<Vec<String>> = rates
        .iter()
        .map(|r| {
            vec![
                r.model.clone(),
                format!("{:.2}", r.queries_per_s),
                format!("{:.2}", r.images_per_s),
                r.queries_total.to_string(),
                r.images_total.to_string(),
                format!("{:.1}", r.mean_batch),
            ]
        })
        .collect();
    format!(
        "rates over the last 10 s (BATCH: images per model run); totals since the model's first job\n{}",
        render_table(
            &[
                "MODEL",
                "QUERIES/S",
                "IMAGES/S",
                "QUERIES",
                "IMAGES",
                "BATCH"
            ],
            &rows
        )
    )
}

/// A model's batch size as dispatched: "8", or "4 of 8" when its p99
/// target chose below the largest.
pub fn effective_batch(m: &ModelInfo) -> String {
    if m.effective_batch == m.batch_size {
        m.batch_size.to_string()
    } else {
        format!("{} of {}", m.effective_batch, m.batch_size)
    }
}

/// A model's dynamic batching: "delay 50 ms, p99 target 2000 ms", or "".
pub fn batching_settings(m: &ModelInfo) -> String {
    let mut parts = Vec::new();
    if m.max_queue_delay_ms > 0 {
        parts.push(format!("delay {} ms", m.max_queue_delay_ms));
    }
    if let Some(t) = m.p99_target_ms {
        parts.push(format!("p99 target {t} ms"));
    }
    parts.join(", ")
}

/// `dml set-batch-size`'s answer: what is in force now.
pub fn batching_text(m: &ModelInfo) -> String {
    let mut s = format!(
        "{}: batches of up to {} images for queries not yet dispatched",
        m.name, m.batch_size
    );
    if m.max_queue_delay_ms > 0 {
        s += &format!(
            "; a partial batch waits up to {} ms for more",
            m.max_queue_delay_ms
        );
    }
    if let Some(t) = m.p99_target_ms {
        s += &format!(
            "; p99 target {t} ms: the leader runs batches of {} now",
            m.effective_batch
        );
    }
    s + "\n"
}

pub fn batching_json(m: &ModelInfo) -> Value {
    json!({
        "model": m.name,
        "batch_size": m.batch_size,
        "max_queue_delay_ms": m.max_queue_delay_ms,
        "p99_target_ms": m.p99_target_ms,
        "effective_batch": m.effective_batch,
    })
}

pub fn latency_json(lat: &[LatencyInfo]) -> Value {
    Value::Array(
        lat.iter()
            .map(|l| {
                json!({
                    "model": l.model,
                    "count": l.count,
                    "mean_ms": l.mean_ms,
                    "stddev_ms": l.stddev_ms,
                    "p50_ms": l.p50_ms,
                    "p90_ms": l.p90_ms,
                    "p95_ms": l.p95_ms,
                    "p99_ms": l.p99_ms,
                    "max_ms": l.max_ms,
                    "queue": spread_json(&l.queue),
                    "compute": spread_json(&l.compute),
                })
            })
            .collect(),
    )
}

fn spread_json(s: &Spread) -> Value {
    json!({
        "mean_ms": s.mean_ms,
        "p50_ms": s.p50_ms,
        "p95_ms": s.p95_ms,
        "p99_ms": s.p99_ms,
        "max_ms": s.max_ms,
    })
}

fn ms(v: f64) -> String {
    format!("{v:.1}")
}

pub fn latency_table(lat: &[LatencyInfo]) -> String {
    if lat.is_empty() {
        return "no queries yet\n".into();
    }
    let rows: Vec<Vec<String>> = lat
        .iter()
        .map(|l| {
            vec![
                l.model.clone(),
                l.count.to_string(),
                ms(l.mean_ms),
                ms(l.stddev_ms),
                ms(l.p50_ms),
                ms(l.p90_ms),
                ms(l.p95_ms),
                ms(l.p99_ms),
                ms(l.max_ms),
            ]
        })
        .collect();
    let split: Vec<Vec<String>> = lat
        .iter()
        .flat_map(|l| {
            [("queue", &l.queue), ("compute", &l.compute)].map(|(part, s)| {
                vec![
                    l.model.clone(),
                    part.to_string(),
                    ms(s.mean_ms),
                    ms(s.p50_ms),
                    ms(s.p95_ms),
                    ms(s.p99_ms),
                    ms(s.max_ms),
                ]
            })
        })
        .collect();
    format!(
        "query time (lease at the worker to results), ms\n{}\nof which queue (waiting on the worker) and compute (fetch, preprocess, run), ms\n{}",
        render_table(
            &[
                "MODEL", "QUERIES", "AVG", "STD", "P50", "P90", "P95", "P99", "MAX"
            ],
            &rows
        ),
        render_table(
            &["MODEL", "PART", "AVG", "P50", "P95", "P99", "MAX"],
            &split
        )
    )
}

pub fn placement_json(p: &[Placement]) -> Value {
    Value::Array(
        p.iter()
            .map(|p| {
                json!({
                    "job": p.job,
                    "model": p.model,
                    "workers": p.workers.iter().map(|(a, n)| json!({"worker": a.to_string(), "queries": n})).collect::<Vec<_>>(),
                    "weight": p.weight,
                    "query_share": p.query_share,
                    "time_share": p.time_share,
                })
            })
            .collect(),
    )
}

pub fn placement_table(p: &[Placement]) -> String {
    if p.is_empty() {
        return "no queries running\n".into();
    }
    let rows: Vec<Vec<String>> = p
        .iter()
        .map(|p| {
            let mut workers = p.workers.clone();
            workers.sort();
            let list = workers
                .iter()
                .map(|(a, n)| format!("{a}×{n}"))
                .collect::<Vec<_>>()
                .join(" ");
            vec![
                p.job.to_string(),
                p.model.clone(),
                p.weight.to_string(),
                format!("{:.0}%", p.query_share * 100.0),
                format!("{:.0}%", p.time_share * 100.0),
                p.workers.len().to_string(),
                if list.is_empty() { "-".into() } else { list },
            ]
        })
        .collect();
    format!(
        "{}shares of the queries and of the worker time completed in the last 10 s\n",
        render_table(
            &[
                "JOB",
                "MODEL",
                "WEIGHT",
                "QUERIES",
                "TIME",
                "WORKERS",
                "QUERIES PER WORKER"
            ],
            &rows
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use dml_shared::infer::JobState;

    fn job(done: u32, images: u32, state: JobState) -> JobInfo {
        JobInfo {
            id: 3,
            model: "tiny".into(),
            dataset: "datasets/sample/".into(),
            images,
            done,
            errors: 1,
            queries: 4,
            state,
            reason: None,
            submitted_ms: 0,
            finished_ms: None,
            output: None,
            stalled: None,
        }
    }

    #[test]
    fn jobs_show_progress_as_done_over_images_and_percent() {
        let t = jobs_table(&[job(12, 40, JobState::Running)]);
        assert!(t.contains("12/40 (30%)"), "{t}");
        assert!(t.contains("running"), "{t}");
        let v = jobs_json(&[job(40, 40, JobState::Done)]);
        assert_eq!(v[0]["state"], "done");
        assert_eq!(v[0]["percent"], 100.0);
        assert_eq!(v[0]["errors"], 1);
        assert_eq!(jobs_table(&[]), "no jobs\n");
        // Never rounds up to 100% before the last image.
        assert!(jobs_table(&[job(399, 400, JobState::Running)]).contains("(99%)"));
    }

    #[test]
    fn batching_shows_the_effective_batch_and_the_settings() {
        let mut m = ModelInfo {
            name: "resnet50".into(),
            batch_size: 16,
            max_batch: 32,
            file: "models/resnet50.onnx".into(),
            version: Some(1),
            max_queue_delay_ms: 0,
            p99_target_ms: None,
            effective_batch: 16,
        };
        assert_eq!(effective_batch(&m), "16");
        assert_eq!(batching_settings(&m), "");
        assert_eq!(
            batching_text(&m),
            "resnet50: batches of up to 16 images for queries not yet dispatched\n"
        );
        m.max_queue_delay_ms = 50;
        m.p99_target_ms = Some(2000);
        m.effective_batch = 4;
        assert_eq!(effective_batch(&m), "4 of 16");
        assert_eq!(batching_settings(&m), "delay 50 ms, p99 target 2000 ms");
        let t = batching_text(&m);
        assert!(
            t.contains("waits up to 50 ms") && t.contains("batches of 4 now"),
            "{t}"
        );
        assert_eq!(batching_json(&m)["effective_batch"], 4);
    }

    #[test]
    fn latency_table_lists_every_percentile() {
        let l = LatencyInfo {
            model: "resnet50".into(),
            count: 9,
            mean_ms: 120.25,
            stddev_ms: 3.0,
            p50_ms: 118.0,
            p90_ms: 125.0,
            p95_ms: 126.0,
            p99_ms: 130.0,
            max_ms: 131.0,
            queue: Spread {
                mean_ms: 100.0,
                p50_ms: 99.0,
                p95_ms: 104.0,
                p99_ms: 107.5,
                max_ms: 108.0,
            },
            compute: Spread {
                mean_ms: 20.25,
                ..Spread::default()
            },
        };
        let t = latency_table(std::slice::from_ref(&l));
        let header = t.lines().nth(1).unwrap();
        for col in ["AVG", "STD", "P50", "P90", "P95", "P99"] {
            assert!(header.contains(col), "{t}");
        }
        assert!(t.contains("120.2") || t.contains("120.3"), "{t}");
        let split = t
            .lines()
            .find(|l| l.starts_with("resnet50  queue"))
            .unwrap();
        assert!(split.contains("100.0") && split.contains("107.5"), "{t}");
        assert!(
            t.lines()
                .any(|l| l.contains("compute") && l.contains("20.2")),
            "{t}"
        );
        let v = latency_json(&[l]);
        assert_eq!(v[0]["p99_ms"], 130.0);
        assert_eq!(v[0]["queue"]["p99_ms"], 107.5);
    }

    #[test]
    fn placement_names_workers_and_their_queries() {
        let p = Placement {
            job: 2,
            model: "tiny".into(),
            workers: vec![
                ("127.0.0.1:8003".parse().unwrap(), 2),
                ("127.0.0.1:8001".parse().unwrap(), 1),
            ],
            weight: 2,
            query_share: 0.75,
            time_share: 0.5,
        };
        let t = placement_table(std::slice::from_ref(&p));
        assert!(t.contains("127.0.0.1:8001×1 127.0.0.1:8003×2"), "{t}");
        let v = placement_json(&[p]);
        assert_eq!(v[0]["workers"][0]["queries"], 2);
        assert_eq!(v[0]["weight"], 2);
        assert_eq!(v[0]["time_share"], 0.5);
        assert!(
            t.contains(" 2 ") && t.contains("75%") && t.contains("50%"),
            "{t}"
        );
    }
}
