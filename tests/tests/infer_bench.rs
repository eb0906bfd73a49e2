//! `dml bench-model` against 3 real agents with the tiny model: a sweep over
//! batch sizes 1 and 2 gives one row per setting with a positive throughput
//! and ordered percentiles, the chart is an SVG with a line per series and a
//! label per point, and the model's batch size is what it was before. A bad
//! batch size is refused before anything runs.
//!
//! Needs the binaries and the project virtualenv (ONNX Runtime):
//! `bash scripts/setup.sh`.

use dml_shared::infer::{InferRequest, InferResponse};
use dml_tests::infer::{Images, infer, prepare, set_batch};
use dml_tests::sdfs::{SdfsCluster, cluster_slot};
use std::net::SocketAddr;
use std::time::Duration;

const DATASET: &str = "datasets/bench/";
const IMAGES: u64 = 8;
/// A whole sweep of tiny jobs on a loaded two-core machine.
const SWEEP: Duration = Duration::from_secs(300);

async fn batch_size(at: SocketAddr) -> u32 {
    match infer(at, InferRequest::Models).await.unwrap() {
        InferResponse::Models(m) => m.iter().find(|m| m.name == "tiny").unwrap().batch_size,
        other => panic!("models answered {other:?}"),
    }
}

#[tokio::test]
async fn bench_model_reports_each_setting_draws_the_curve_and_restores_the_batch_size() {
    let _slot = cluster_slot().await;
    let c = SdfsCluster::start("infer-bench", 3).await.unwrap();
    let at = c.addrs[0];
    prepare(&c, 0, &["tiny"], DATASET, Images::Small(6))
        .await
        .unwrap();
    set_batch(at, "tiny", 3).await.unwrap();

    let chart = c.local_path("chart.svg");
    let chart_s = chart.to_str().unwrap();
    let n = IMAGES.to_string();
    let args = [
        "bench-model",
        "tiny",
        "--batch-sizes",
        "1,2",
        "--images",
        &n,
        "--warmup",
        "3",
        "--dataset",
        DATASET,
        "--chart",
        chart_s,
        "--json",
    ];
    let out = c.agent(1).dml(&args, SWEEP).await.unwrap();
    out.ensure_success().unwrap();
    let v = out.json().unwrap();
    let rows = v["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("no rows: {v}"));
    assert_eq!(rows.len(), 2, "{v}");
    for (row, batch) in rows.iter().zip([1u64, 2]) {
        assert_eq!(
            (row["batch"].as_u64(), row["concurrency"].as_u64()),
            (Some(batch), Some(1)),
            "{row}"
        );
        assert_eq!(row["images"], IMAGES, "{row}");
        assert!(row["images_per_s"].as_f64().unwrap() > 0.0, "{row}");
        // Every query of the setting has its times (a re-dispatched one counts once).
        let queries = row["queries"].as_u64().unwrap();
        assert!((IMAGES / batch..=IMAGES).contains(&queries), "{row}");
        let l = &row["latency"];
        let p = |k: &str| l[k].as_f64().unwrap();
        assert!(p("p50_ms") > 0.0, "{row}");
        assert!(
            p("p50_ms") <= p("p95_ms") && p("p95_ms") <= p("p99_ms") && p("p99_ms") <= p("max_ms"),
            "{row}"
        );
        // C2's query time is its queue and compute parts.
        assert!(row["compute"]["p50_ms"].as_f64().unwrap() > 0.0, "{row}");
    }
    assert_eq!(v["batch_size_restored"], 3, "{v}");
    assert_eq!(batch_size(at).await, 3, "the batch size is back");

    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
        "{svg}"
    );
    // p50 and p99 lines of the one concurrency (each drawn, and its sample in
    // the legend), each point labelled.
    let series = svg.matches(r#"stroke-width="2" points="#).count();
    assert_eq!(series, 4, "{svg}");
    for label in [
        "p50, 1 concurrent job(s)",
        "p99, 1 concurrent job(s)",
        "b=1",
        "b=2",
    ] {
        assert!(svg.contains(label), "no {label:?} in the chart");
    }

    // A batch size above the model's limit is refused; nothing changes.
    let out = c
        .dml(
            2,
            &[
                "bench-model",
                "tiny",
                "--batch-sizes",
                "1,9999",
                "--dataset",
                DATASET,
            ],
        )
        .await
        .unwrap();
    assert_ne!(out.code(), Some(0), "{}", out.stdout);
    assert!(
        out.stderr.contains("9999") && out.stderr.contains("max_batch"),
        "{}",
        out.stderr
    );
    assert_eq!(batch_size(at).await, 3);
}
