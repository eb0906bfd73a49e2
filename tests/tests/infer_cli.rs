//! The inference side of `dml` against 10 real agents: upload the bundled tiny model,
//! make and load a sample dataset, submit a job, follow it with `dml jobs`, read its
//! output as JSONL and CSV, and check that `rates`, `latency` and `placement` answer
//! with sensible figures. Also bad input to the inference commands.
//!
//! Needs the project venv (ONNX Runtime) and the binaries: `bash scripts/setup.sh`,
//! `cargo build --workspace --bins`.

use dml_tests::sdfs::{SdfsCluster, cluster_slot};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Time for a 40-image tiny job on a loaded two-core machine.
const JOB_DEADLINE: Duration = Duration::from_secs(240);
const POLL: Duration = Duration::from_millis(500);
const IMAGES: u32 = 40;
const DATASET_IMAGES: u32 = 12;

fn said(out: &dml_tests::DmlOutput) -> String {
    format!(
        "`{}` exited {:?}\nstdout: {}\nstderr: {}",
        out.command,
        out.code(),
        out.stdout.trim(),
        out.stderr.trim()
    )
}

/// Runs `dml` through agent `i`, failing the test unless it exits 0.
async fn ok(c: &SdfsCluster, i: usize, args: &[&str]) -> dml_tests::DmlOutput {
    let out = c.dml(i, args).await.unwrap();
    assert_eq!(out.code(), Some(0), "{}", said(&out));
    out
}

fn job_of(jobs: &Value, id: u64) -> Option<&Value> {
    jobs.as_array()?.iter().find(|j| j["id"] == id)
}

#[tokio::test]
async fn a_job_runs_through_the_cli_and_its_figures_are_reported() {
    let _slot = cluster_slot().await;
    let c = SdfsCluster::start("infer-cli", 10).await.unwrap();

    // The model: the bundled tiny.onnx (an empty models dir has no fetched or built one).
    let models_dir = c.local_path("models");
    let md = models_dir.to_string_lossy();
    let out = ok(
        &c,
        0,
        &["models", "upload", "--models", "tiny", "--dir", &md],
    )
    .await;
    assert!(
        out.stdout.contains("tiny: using the bundled model"),
        "{}",
        said(&out)
    );
    // A second upload of the same bytes stores nothing new.
    let out = ok(
        &c,
        3,
        &[
            "models", "upload", "--models", "tiny", "--dir", &md, "--json",
        ],
    )
    .await;
    let v = out.json().unwrap();
    assert_eq!(v["models"][0]["already"], true, "{v}");
    assert_eq!(v["models"][0]["version"], 1, "{v}");

    // The dataset, made locally and loaded into SDFS.
    let data = c.local_path("dataset");
    let d = data.to_string_lossy();
    let count = DATASET_IMAGES.to_string();
    let out = ok(&c, 0, &["dataset", "make", &d, "--count", &count, "--json"]).await;
    assert_eq!(out.json().unwrap()["images"], DATASET_IMAGES);
    ok(&c, 1, &["sdfs", "load", &d, "datasets/sample"]).await;

    // Submit through a non-voter; the leader answers.
    let n = IMAGES.to_string();
    let out = ok(&c, 8, &["submit-job", "tiny", &n, "--json"]).await;
    let v = out.json().unwrap();
    let job = v["job"]
        .as_u64()
        .unwrap_or_else(|| panic!("no job id: {v}"));
    assert_eq!(v["images"], IMAGES, "{v}");

    // Follow it with `dml jobs --json` until it is done.
    let start = Instant::now();
    let mut seen_progress = vec![];
    loop {
        let out = ok(&c, 2, &["jobs", "--json"]).await;
        let jobs = out.json().unwrap();
        let j = job_of(&jobs, job).unwrap_or_else(|| panic!("job {job} not listed: {jobs}"));
        assert_eq!(j["images"], IMAGES, "{j}");
        seen_progress.push(j["done"].as_u64().unwrap());
        match j["state"].as_str().unwrap() {
            "done" => {
                assert_eq!(j["done"], IMAGES, "{j}");
                assert_eq!(j["percent"], 100.0, "{j}");
                break;
            }
            "running" => {}
            other => panic!("job {job} is {other}: {j}"),
        }
        assert!(
            start.elapsed() < JOB_DEADLINE,
            "job {job} not done after {JOB_DEADLINE:?}: {j}"
        );
        tokio::time::sleep(POLL).await;
    }
    assert!(
        seen_progress.windows(2).all(|w| w[0] <= w[1]),
        "progress went back: {seen_progress:?}"
    );

    // The output as JSONL on stdout: one line per image, 5 predictions each.
    let out = ok(&c, 5, &["get-output", &job.to_string()]).await;
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), IMAGES as usize, "{}", said(&out));
    for (i, line) in lines.iter().enumerate() {
        let r: Value = serde_json::from_str(line).unwrap();
        assert_eq!(r["index"], i as u64, "{line}");
        assert!(
            r["image"].as_str().unwrap().starts_with("datasets/sample/"),
            "{line}"
        );
        let p = r["predictions"]
            .as_array()
            .unwrap_or_else(|| panic!("no predictions: {line}"));
        assert_eq!(p.len(), 5, "{line}");
        let scores: Vec<f64> = p.iter().map(|x| x["score"].as_f64().unwrap()).collect();
        assert!(
            scores.windows(2).all(|w| w[0] >= w[1])
                && scores.iter().all(|s| (0.0..=1.0).contains(s)),
            "{line}"
        );
        assert!(!p[0]["label"].as_str().unwrap().is_empty(), "{line}");
    }
    // Images cycle: image i and i + 12 are the same file with the same top label.
    let first: Value = serde_json::from_str(lines[0]).unwrap();
    let again: Value = serde_json::from_str(lines[DATASET_IMAGES as usize]).unwrap();
    assert_eq!(first["image"], again["image"]);
    assert_eq!(
        first["predictions"][0]["class"],
        again["predictions"][0]["class"]
    );

    // The same as CSV in a file: header plus one row per image.
    let csv = c.local_path("out").with_extension("csv");
    let out = ok(
        &c,
        6,
        &["get-output", &job.to_string(), &csv.to_string_lossy()],
    )
    .await;
    assert!(
        out.stdout.contains(&format!("wrote {IMAGES} results")),
        "{}",
        said(&out)
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().count(), IMAGES as usize + 1, "{text}");
    assert!(
        text.starts_with("index,image,error,class_1,label_1,score_1"),
        "{text}"
    );

    // C1: the job's images and queries are counted.
    let rates = ok(&c, 4, &["rates", "--json"]).await.json().unwrap();
    let r = rates
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == "tiny")
        .unwrap_or_else(|| panic!("no tiny in {rates}"));
    assert!(
        r["images_total"].as_u64().unwrap() >= u64::from(IMAGES),
        "{r}"
    );
    let queries = r["queries_total"].as_u64().unwrap();
    assert!(queries > 0, "{r}");
    // C2: one latency sample per query, percentiles in order.
    let lat = ok(&c, 7, &["latency", "--json"]).await.json().unwrap();
    let l = lat
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["model"] == "tiny")
        .unwrap_or_else(|| panic!("no tiny in {lat}"));
    assert!(l["count"].as_u64().unwrap() > 0, "{l}");
    let p: Vec<f64> = ["p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms"]
        .iter()
        .map(|k| l[k].as_f64().unwrap())
        .collect();
    assert!(p[0] > 0.0 && p.windows(2).all(|w| w[0] <= w[1]), "{l}");
    // C5: parses; a finished job holds no worker.
    let place = ok(&c, 9, &["placement", "--json"]).await.json().unwrap();
    let place = place.as_array().unwrap_or_else(|| panic!("{place}"));
    assert!(
        place
            .iter()
            .all(|p| p["job"] != job || p["workers"].as_array().unwrap().is_empty()),
        "{place:?}"
    );
    // The table forms answer too.
    let out = ok(&c, 0, &["jobs"]).await;
    assert!(
        out.stdout.contains(&format!("{IMAGES}/{IMAGES} (100%)")),
        "{}",
        said(&out)
    );
    let out = ok(&c, 0, &["models"]).await;
    assert!(out.stdout.contains("models/tiny.onnx v1"), "{}", said(&out));
}

#[tokio::test]
async fn bad_inference_input_gets_a_clear_error() {
    let _slot = cluster_slot().await;
    let c = SdfsCluster::start("infer-cli-bad", 3).await.unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["set-batch-size", "tiny", "0"], "at least 1"),
        (&["set-batch-size", "tiny", "65"], "max_batch"),
        (&["set-batch-size", "vgg", "2"], "unknown model \"vgg\""),
        (&["submit-job", "Bad!", "3"], "model \"Bad!\""),
        (&["get-output", "999"], "999"),
    ];
    for (args, want) in cases {
        let out = c.dml(0, args).await.unwrap();
        assert_eq!(out.code(), Some(1), "{}", said(&out));
        assert!(out.stderr.contains(want), "{}", said(&out));
    }
    // A batch size within the limit is taken and shown by `dml models`.
    ok(&c, 1, &["set-batch-size", "tiny", "16"]).await;
    let v = ok(&c, 2, &["models", "--json"]).await.json().unwrap();
    let tiny = v
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "tiny")
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(tiny["batch_size"], 16, "{tiny}");
}
