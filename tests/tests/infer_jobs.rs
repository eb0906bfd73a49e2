//! Job control against real agents: `dml cancel` stops a running job for
//! good (committed in Raft), releases its leases so other jobs proceed, and
//! keeps its partial output; `dml submit-job --wait` follows a job to its end
//! and exits with its result (0 when done, 1 after a cancel from another
//! process); `dml job` shows a job's progress per worker. Also the typed
//! errors of a cancel (unknown job, ended job, read-only credential).
//!
//! Needs the project venv (ONNX Runtime) and the binaries: `bash scripts/setup.sh`,
//! `cargo build --workspace --bins`.

use dml_shared::infer::{InferRequest, InferResponse, JobState};
use dml_tests::infer::{Images, infer, job, jobs, prepare, set_batch, wait_job};
use dml_tests::sdfs::{SdfsCluster, cluster_slot};
use std::collections::BTreeSet;
use std::time::Duration;

/// Time for a few images of the tiny model on a loaded two-core machine.
const PROGRESS: Duration = Duration::from_secs(180);
/// Longest a `--wait` may follow its job here.
const FOLLOW: Duration = Duration::from_secs(300);
/// A job far too long to end by itself during the test (one image a query).
const ENDLESS: &str = "200000";
const DATASET: &str = "datasets/jobs/";
const NOT_FOUND: i32 = 3;
const REFUSED: i32 = 7;
const CONFLICT: i32 = 8;

fn said(out: &dml_tests::DmlOutput) -> String {
    format!(
        "`{}` exited {:?}\nstdout: {}\nstderr: {}",
        out.command,
        out.code(),
        out.stdout.trim(),
        out.stderr.trim()
    )
}

#[tokio::test]
async fn cancel_stops_a_job_releases_its_leases_and_keeps_its_partial_output() {
    let _slot = cluster_slot().await;
    let c = SdfsCluster::start("infer-jobs", 5).await.unwrap();
    prepare(&c, 0, &["tiny"], DATASET, Images::Small(8))
        .await
        .unwrap();
    set_batch(c.addrs[0], "tiny", 1).await.unwrap();

    // A long job followed by `--wait` in its own process.
    let waiter = {
        let agent = c.addrs[1].to_string();
        tokio::spawn(async move {
            let args = [
                "--agent",
                &agent,
                "submit-job",
                "tiny",
                ENDLESS,
                "--dataset",
                DATASET,
                "--wait",
            ];
            dml_tests::run_dml(&args, FOLLOW).await.unwrap()
        })
    };
    let id = dml_tests::wait::wait_for(
        "the job to be listed",
        PROGRESS,
        Duration::from_millis(200),
        async || match jobs(c.addrs[2]).await?.into_keys().next() {
            Some(id) => Ok(id),
            None => anyhow::bail!("no job yet"),
        },
    )
    .await
    .unwrap();
    wait_job(&c.addrs, id, PROGRESS, "some images done", |j| j.done >= 6)
        .await
        .unwrap();

    // `dml job` shows the workers that ran its queries.
    let out = c.dml(3, &["job", &id.to_string(), "--json"]).await.unwrap();
    assert_eq!(out.code(), Some(0), "{}", said(&out));
    let v = out.json().unwrap();
    let workers = v["workers"].as_array().unwrap_or_else(|| panic!("{v}"));
    let images: u64 = workers.iter().map(|w| w["images"].as_u64().unwrap()).sum();
    let queries: u64 = workers.iter().map(|w| w["queries"].as_u64().unwrap()).sum();
    assert!(images >= 1 && queries >= 1, "{v}");
    assert!(images <= v["done"].as_u64().unwrap(), "{v}");
    assert_eq!(v["state"], "running", "{v}");
    let out = c.dml(4, &["job", &id.to_string()]).await.unwrap();
    assert_eq!(out.code(), Some(0), "{}", said(&out));
    let worker = workers[0]["worker"].as_str().unwrap();
    assert!(
        out.stdout.contains("WORKER")
            && out.stdout.contains(worker)
            && out.stdout.contains("total"),
        "{}",
        said(&out)
    );

    // The console's Enter on the job: its line, then the same per-worker table.
    {
        use dml_tui::console::app::{Action, Event, More};
        use dml_tui::console::exec::{self, Dml};
        let dml = Dml {
            exe: dml_tests::bins::dml_bin().unwrap(),
            key_file: Some(dml_tests::key::path().unwrap()),
        };
        let details = Action::Details {
            title: format!("job #{id}"),
            text: "(its line)".into(),
            more: More::Job(id),
        };
        match exec::run(&dml, c.addrs[1], details).await {
            Event::Done { result: Ok(t), .. } => assert!(
                t.starts_with(&format!("job #{id}\n(its line)\n\n"))
                    && t.contains("WORKER")
                    && t.contains(worker),
                "{t}"
            ),
            other => panic!("wanted the job's workers, got {other:?}"),
        }
    }

    // A read-only credential may look at the job but not cancel it.
    let ro = c.dir().join("read-only.key");
    let ro = ro.to_str().unwrap();
    c.dml(0, &["credential", "--role", "read-only", "--out", ro])
        .await
        .unwrap()
        .ensure_success()
        .unwrap();
    let out = c
        .dml(2, &["--key-file", ro, "cancel", &id.to_string()])
        .await
        .unwrap();
    assert_eq!(out.code(), Some(REFUSED), "{}", said(&out));
    assert!(
        out.stderr
            .contains("a read-only credential cannot cancel a job (needs an admin credential)"),
        "{}",
        said(&out)
    );
    let out = c
        .dml(2, &["--key-file", ro, "job", &id.to_string()])
        .await
        .unwrap();
    assert_eq!(out.code(), Some(0), "{}", said(&out));

    // Cancel from another process, through a follower.
    let out = c.dml(4, &["cancel", &id.to_string()]).await.unwrap();
    assert_eq!(out.code(), Some(0), "{}", said(&out));
    assert!(
        out.stdout.contains(&format!("job {id} cancelled")),
        "{}",
        said(&out)
    );
    let cancelled = job(c.addrs[0], id).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled, "{cancelled:?}");
    let kept = cancelled.done;
    assert!(kept >= 6, "{cancelled:?}");

    // The waiting process ends with the job, and says why it failed.
    let waited = waiter.await.unwrap();
    assert_eq!(waited.code(), Some(1), "{}", said(&waited));
    assert!(
        waited
            .stderr
            .contains(&format!("job {id} was cancelled after")),
        "{}",
        said(&waited)
    );
    assert!(
        waited.stdout.contains(" running, "),
        "plain progress lines: {}",
        said(&waited)
    );

    // Its leases are released: no worker holds a query of it.
    match infer(c.addrs[1], InferRequest::Placement).await.unwrap() {
        InferResponse::Placement(p) => assert!(
            p.iter().all(|p| p.job != id || p.workers.is_empty()),
            "{p:?}"
        ),
        other => panic!("{other:?}"),
    }
    let v = c
        .dml(2, &["job", &id.to_string(), "--json"])
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        (v["state"].as_str(), v["in_flight"].as_u64()),
        (Some("cancelled"), Some(0)),
        "{v}"
    );

    // Other jobs proceed: a new one runs to the end, and `--wait` says so with exit 0.
    let out = c
        .agent(3)
        .dml(
            &[
                "submit-job",
                "tiny",
                "9",
                "--dataset",
                DATASET,
                "--wait",
                "--json",
            ],
            FOLLOW,
        )
        .await
        .unwrap();
    assert_eq!(out.code(), Some(0), "{}", said(&out));
    let v = out.json().unwrap();
    assert_eq!(
        (
            v["state"].as_str(),
            v["done"].as_u64(),
            v["images"].as_u64()
        ),
        (Some("done"), Some(9), Some(9)),
        "{v}"
    );
    assert!(v.get("error").is_none(), "{v}");
    // Meanwhile the cancelled job took no more results.
    let after = job(c.addrs[0], id).await.unwrap();
    assert_eq!(
        (after.state, after.done),
        (JobState::Cancelled, kept),
        "{after:?}"
    );

    // Its partial output stays readable: one line per image it had, each once.
    let out = c.dml(1, &["get-output", &id.to_string()]).await.unwrap();
    assert_eq!(out.code(), Some(1), "{}", said(&out));
    assert!(out.stderr.contains("was cancelled after"), "{}", said(&out));
    let indices: BTreeSet<u64> = out
        .stdout
        .lines()
        .map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            r["index"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(indices.len(), out.stdout.lines().count(), "{}", said(&out));
    assert_eq!(indices.len() as u32, kept, "{}", said(&out));

    // Cancelling again, or a job that does not exist, is a clear typed error.
    let out = c.dml(0, &["cancel", &id.to_string()]).await.unwrap();
    assert_eq!(out.code(), Some(CONFLICT), "{}", said(&out));
    assert!(
        out.stderr.contains(&format!(
            "job {id} has already ended (cancelled): only a running job can be cancelled"
        )),
        "{}",
        said(&out)
    );
    let out = c.dml(0, &["cancel", "9999", "--json"]).await.unwrap();
    assert_eq!(out.code(), Some(NOT_FOUND), "{}", said(&out));
    let v = out.json().unwrap();
    assert_eq!(v["kind"], "not-found", "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("there is no job 9999"),
        "{v}"
    );
}
