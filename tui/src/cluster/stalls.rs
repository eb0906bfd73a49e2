//! The jobs part of `dml cluster status`: how many jobs run and which make no
//! progress, with why, asked of the cluster the way `dml jobs` asks.

use dml_shared::infer::{InferRequest, InferResponse, JobInfo, JobState};
use dml_shared::sdfs_client::{Options, Sdfs};
use futures::FutureExt;
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;

/// Time `status` gives the cluster to answer about its jobs (a leader may be being elected).
pub const JOBS_WAIT: Duration = Duration::from_secs(5);

/// The running jobs as far as the cluster could say.
#[derive(Debug, PartialEq, Serialize)]
pub struct JobsReport {
    /// Jobs running now; `None` when no agent told.
    pub running: Option<usize>,
    /// Running jobs that make no progress.
    pub stalled: Vec<Stalled>,
    /// Why the jobs are unknown.
    pub error: Option<String>,
}

/// A running job that makes no progress, and why (the leader's words).
#[derive(Debug, PartialEq, Serialize)]
pub struct Stalled {
    pub job: u64,
    pub model: String,
    pub done: u32,
    pub images: u32,
    pub reason: String,
}

impl JobsReport {
    fn from_jobs(jobs: &[JobInfo]) -> Self {
        let running: Vec<&JobInfo> = jobs
            .iter()
            .filter(|j| j.state == JobState::Running)
            .collect();
        let stalled = running
            .iter()
            .filter_map(|j| {
                Some(Stalled {
                    job: j.id,
                    model: j.model.clone(),
                    done: j.done,
                    images: j.images,
                    reason: j.stalled.clone()?,
                })
            })
            .collect();
        Self {
            running: Some(running.len()),
            stalled,
            error: None,
        }
    }

    fn unknown(error: String) -> Self {
        Self {
            running: None,
            stalled: Vec::new(),
            error: Some(error),
        }
    }

    /// The lines printed under the host table.
    pub fn text(&self) -> String {
        let Some(running) = self.running else {
            let why = self.error.as_deref().unwrap_or("no answer");
            return format!("jobs: unknown ({why})\n");
        };
        if self.stalled.is_empty() {
            return format!("jobs: {running} in progress, none stalled\n");
        }
        let mut s = format!(
            "jobs: {running} in progress, {} stalled:\n",
            self.stalled.len()
        );
        for j in &self.stalled {
            s.push_str(&format!(
                "  job {} ({}, {}/{} done): {}\n",
                j.job, j.model, j.done, j.images, j.reason
            ));
        }
        s
    }
}

/// Asks `agents` (those answering) at once for the jobs; the first answer wins. Gives
/// up after `wait`, saying why, without failing.
pub async fn ask_jobs(agents: &[SocketAddr], wait: Duration) -> JobsReport {
    if agents.is_empty() {
        return JobsReport::unknown("no agent answers its API".into());
    }
    let asks = agents.iter().map(|a| {
        let opts = Options {
            call_timeout: wait,
            leader_wait: wait,
            ..Options::default()
        };
        let sdfs = Sdfs::with_options(*a, opts);
        async move {
            match sdfs.infer(InferRequest::Jobs).await {
                Ok(InferResponse::Jobs(j)) => Ok(j),
                Ok(other) => Err(format!("{a}: unexpected answer {other:?}")),
                Err(e) => Err(format!("{a}: {e:#}")),
            }
        }
        .boxed()
    });
    match tokio::time::timeout(wait, futures::future::select_ok(asks)).await {
        Ok(Ok((jobs, _))) => JobsReport::from_jobs(&jobs),
        Ok(Err(e)) => JobsReport::unknown(format!("no agent told: {e}")),
        Err(_) => JobsReport::unknown(format!("no agent told within {wait:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: u64, state: JobState, stalled: Option<&str>) -> JobInfo {
        JobInfo {
            id,
            model: "resnet50".into(),
            dataset: "datasets/sample/".into(),
            images: 100,
            done: 0,
            errors: 0,
            queries: 0,
            state,
            reason: None,
            submitted_ms: 0,
            finished_ms: None,
            output: None,
            stalled: stalled.map(String::from),
        }
    }

    const WHY: &str = "no worker can run resnet50: ONNX Runtime is not loaded on 4 of 4 workers";

    #[test]
    fn only_running_jobs_that_say_why_are_listed_as_stalled() {
        let r = JobsReport::from_jobs(&[
            job(1, JobState::Done, Some("stale")),
            job(2, JobState::Running, None),
            job(3, JobState::Running, Some(WHY)),
        ]);
        assert_eq!(r.running, Some(2));
        assert_eq!(r.stalled.len(), 1);
        assert_eq!(r.stalled[0].job, 3);
        assert_eq!(
            r.text(),
            format!("jobs: 2 in progress, 1 stalled:\n  job 3 (resnet50, 0/100 done): {WHY}\n")
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["stalled"][0]["reason"], WHY);
        assert_eq!(v["error"], serde_json::Value::Null);
        let r = JobsReport::from_jobs(&[job(2, JobState::Running, None)]);
        assert_eq!(r.text(), "jobs: 1 in progress, none stalled\n");
    }

    #[tokio::test]
    async fn jobs_nobody_tells_are_unknown_with_why() {
        let r = ask_jobs(&[], JOBS_WAIT).await;
        assert_eq!(r.text(), "jobs: unknown (no agent answers its API)\n");
        // An agent that went away: refused, and said so within the wait.
        let gone = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let start = std::time::Instant::now();
        let r = ask_jobs(&[gone], Duration::from_millis(500)).await;
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(r.running, None);
        let e = r.error.unwrap();
        assert!(e.starts_with("no agent told"), "{e}");
    }
}
