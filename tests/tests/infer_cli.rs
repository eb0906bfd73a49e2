//! The inference side of `dml` against 10 real agents: upload the bundled tiny model,
//! make and load a sample dataset, submit a job, follow it with `dml jobs`, read its
//! output as JSONL and CSV, and check that `rates`, `latency` and `placement` answer
//! with sensible figures. Also bad input to the inference commands, and `dml models
//! fetch` against a local HTTP server (a good file, a corrupt one, a 404).
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
    // `dml` checks batch sizes (invalid: 4), known models (not-found: 3)
    // and model names (invalid: 4) itself; the leader refuses a missing job
    // as not-found (3).
    let cases: [(&[&str], i32, &str); 5] = [
        (&["set-batch-size", "tiny", "0"], 4, "at least 1"),
        (&["set-batch-size", "tiny", "65"], 4, "max_batch"),
        (&["set-batch-size", "vgg", "2"], 3, "unknown model \"vgg\""),
        (&["submit-job", "Bad!", "3"], 4, "model \"Bad!\""),
        (&["get-output", "999"], 3, "there is no job 999"),
    ];
    for (args, code, want) in cases {
        let out = c.dml(0, args).await.unwrap();
        assert_eq!(out.code(), Some(code), "{}", said(&out));
        assert!(out.stderr.contains(want), "{}", said(&out));
    }
    // A batch size within the limit is taken and shown by `dml models`; model
    // names are taken in any case (the course project wrote `ResNet50`).
    ok(&c, 1, &["set-batch-size", "Tiny", "16"]).await;
    let v = ok(&c, 2, &["models", "--json"]).await.json().unwrap();
    let tiny = v
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "tiny")
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(tiny["batch_size"], 16, "{tiny}");
}

/// A file served by [`serve`], and the SHA-256 of its bytes (checked with `sha256sum`).
const GOOD: &[u8] = b"pretend ONNX model, good copy\n";
const GOOD_SHA256: &str = "2d3332ffaae32e37a4b6ad77825b1cf61b997911c85a32a3cb90440f43998680";
const CORRUPT: &[u8] = b"pretend ONNX model, corrupt copy\n";
const CORRUPT_SHA256: &str = "272667ba5c4be42d6890112ba5a6679ca3ae342e7dfb44d5b732c95cf66e4a48";

/// A one-thread HTTP/1.1 server: `/good.onnx`, `/corrupt.onnx`, 404 for the rest.
fn serve() -> std::net::SocketAddr {
    use std::io::{BufRead, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let Ok(read) = conn.try_clone() else { continue };
            let mut reader = std::io::BufReader::new(read);
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let mut header = String::new();
            while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                header.clear();
            }
            let (status, body): (&str, &[u8]) = match request.split_whitespace().nth(1) {
                Some("/good.onnx") => ("200 OK", GOOD),
                Some("/corrupt.onnx") => ("200 OK", CORRUPT),
                _ => ("404 Not Found", b"not here"),
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(body);
        }
    });
    addr
}

#[tokio::test]
async fn models_fetch_installs_only_verified_files() {
    let dir = dml_tests::TestDir::new("models-fetch").unwrap();
    let addr = serve();
    let entry = |name: &str, path: &str, sha: Option<&str>| {
        format!(
            "[[model]]\nname = \"{name}\"\nfile = \"{name}.onnx\"\ninput_size = 32\nresize = 36\n\
             mean = [0.5, 0.5, 0.5]\nstd = [0.5, 0.5, 0.5]\nlabels = \"labels.txt\"\nbatch = 2\n\
             max_batch = 8\nurl = \"http://{addr}/{path}\"\n{}\n",
            sha.map(|s| format!("sha256 = \"{s}\"")).unwrap_or_default()
        )
    };
    let registry = dir.path().join("models.toml");
    std::fs::write(dir.path().join("labels.txt"), "cat\ndog\n").unwrap();
    std::fs::write(
        &registry,
        [
            entry("good", "good.onnx", Some(GOOD_SHA256)),
            entry("corrupt", "corrupt.onnx", Some(GOOD_SHA256)),
            entry("gone", "gone.onnx", Some(GOOD_SHA256)),
            entry("unsigned", "good.onnx", None),
        ]
        .concat(),
    )
    .unwrap();
    let models = dir.path().join("models");
    let (reg, md) = (registry.to_string_lossy(), models.to_string_lossy());
    let fetch = |which: &'static str| {
        let (reg, md) = (reg.to_string(), md.to_string());
        async move {
            dml_tests::run_dml(
                &[
                    "models",
                    "fetch",
                    "--registry",
                    &reg,
                    "--dir",
                    &md,
                    "--models",
                    which,
                    "--json",
                ],
                Duration::from_secs(60),
            )
            .await
            .unwrap()
        }
    };
    let fetched = models.join("fetched");

    let out = fetch("good").await;
    assert_eq!(out.code(), Some(0), "{}", said(&out));
    assert_eq!(std::fs::read(fetched.join("good.onnx")).unwrap(), GOOD);
    assert_eq!(out.json().unwrap()["models"][0]["sha256"], GOOD_SHA256);

    let out = fetch("corrupt").await;
    assert_eq!(out.code(), Some(1), "{}", said(&out));
    assert!(
        out.stderr.contains("corrupt")
            && out.stderr.contains(GOOD_SHA256)
            && out.stderr.contains(CORRUPT_SHA256),
        "{}",
        said(&out)
    );
    let out = fetch("gone").await;
    assert_eq!(out.code(), Some(1), "{}", said(&out));
    assert!(
        out.stderr.contains("gone") && out.stderr.contains("404"),
        "{}",
        said(&out)
    );
    let out = fetch("unsigned").await;
    assert_eq!(out.code(), Some(1), "{}", said(&out));
    assert!(
        out.stderr.contains("unsigned") && out.stderr.contains("no sha256"),
        "{}",
        said(&out)
    );
    // All four at once: one installed, three failures listed, exit 1.
    let out = fetch("good,corrupt,gone,unsigned").await;
    assert_eq!(out.code(), Some(1), "{}", said(&out));
    let v = out.json().unwrap();
    assert_eq!(v["models"][0]["already"], true, "{v}");
    assert!(v["error"].as_str().unwrap().contains("3 of 4"), "{v}");

    // Only the verified file is there: no temp file, nothing from the failures.
    let names: Vec<String> = std::fs::read_dir(&fetched)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["good.onnx"]);
}
