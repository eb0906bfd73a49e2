//! The replicated part of inference: jobs, their per-image results and the
//! batch size of each model (C3). Part of the Raft state machine, so job
//! progress survives a leader failover; leases live only in the leader's
//! memory (`scheduler.rs`).

use dml_shared::infer::{ImageResult, JobId, JobInfo, JobState, Outcome};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One job: a model over a fixed list of SDFS images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub model: String,
    pub dataset: String,
    /// The dataset's SDFS names; image `i` of the job is `images[i % len]`
    /// (a job may ask for more images than the dataset has).
    pub images: Vec<String>,
    /// Images in the job.
    pub count: u32,
    /// Results by image index; an index is set at most once. Emptied once
    /// the output is stored in SDFS (`output`), so the replicated state
    /// stays bounded; `done` keeps the count.
    pub results: BTreeMap<u32, Outcome>,
    /// Images with a result.
    pub done: u32,
    /// Accepted query results that brought at least one new image.
    pub queries: u64,
    /// Results that are errors.
    pub errors: u32,
    pub state: JobState,
    pub reason: Option<String>,
    pub submitted_ms: u64,
    pub finished_ms: Option<u64>,
    pub output: Option<String>,
    /// Weight in fair sharing of worker time (`submit-job --weight`), at least 1.
    pub weight: u32,
}

impl Job {
    pub fn info(&self, id: JobId) -> JobInfo {
        JobInfo {
            id,
            model: self.model.clone(),
            dataset: self.dataset.clone(),
            images: self.count,
            done: self.done,
            errors: self.errors,
            queries: self.queries,
            state: self.state,
            reason: self.reason.clone(),
            submitted_ms: self.submitted_ms,
            finished_ms: self.finished_ms,
            output: self.output.clone(),
            stalled: None,
        }
    }

    /// Every result so far, by index.
    pub fn results(&self) -> Vec<ImageResult> {
        self.results
            .iter()
            .map(|(i, o)| ImageResult {
                index: *i,
                image: self.image(*i).to_string(),
                outcome: o.clone(),
            })
            .collect()
    }

    /// Image indices still without a result.
    pub fn missing(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.count).filter(|i| !self.results.contains_key(i))
    }

    /// The SDFS name of image `index`.
    pub fn image(&self, index: u32) -> &str {
        match self.images.len() {
            0 => "",
            n => &self.images[index as usize % n],
        }
    }
}

/// Every job, the batch sizes set with C3 and the dynamic batching settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobsState {
    pub next_job: JobId,
    pub jobs: BTreeMap<JobId, Job>,
    /// Batch size per model, where C3 changed it from the registry's default.
    pub batch: BTreeMap<String, u32>,
    /// Dynamic batching per model, where it was set (default: no delay, no target).
    pub policy: BTreeMap<String, BatchPolicy>,
}

/// How the leader forms a model's batches (`dml set-batch-size --max-queue-delay
/// --p99-target`); the batch size (C3) is the largest batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchPolicy {
    /// Longest a partial batch waits for more images, in ms (0: none).
    pub max_queue_delay_ms: u64,
    /// p99 query time to keep to by choosing the batch size, in ms.
    pub p99_target_ms: Option<u64>,
}

/// Why a job cannot be cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotRunning {
    #[error("there is no job {0}")]
    NoSuchJob(JobId),
    #[error("job {job} has already ended ({}): only a running job can be cancelled", state.as_str())]
    Ended { job: JobId, state: JobState },
}

/// What applying a completion did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// Images that had no result before.
    pub new: u32,
    /// This completion finished the job.
    pub finished: bool,
}

impl JobsState {
    /// Adds a job of weight 1.
    pub fn submit(
        &mut self,
        model: &str,
        dataset: &str,
        images: Vec<String>,
        count: u32,
        now: u64,
    ) -> JobId {
        self.submit_weighted(model, dataset, images, count, 1, now)
    }

    /// Adds a job; `weight` is its weight in fair sharing (0 counts as 1).
    pub fn submit_weighted(
        &mut self,
        model: &str,
        dataset: &str,
        images: Vec<String>,
        count: u32,
        weight: u32,
        now: u64,
    ) -> JobId {
        let id = self.next_job.max(1);
        self.next_job = id + 1;
        let count = if images.is_empty() { 0 } else { count };
        let state = if count == 0 {
            JobState::Done
        } else {
            JobState::Running
        };
        self.jobs.insert(
            id,
            Job {
                model: model.into(),
                dataset: dataset.into(),
                images,
                count,
                results: BTreeMap::new(),
                done: 0,
                queries: 0,
                errors: 0,
                state,
                reason: None,
                submitted_ms: now,
                finished_ms: (state == JobState::Done).then_some(now),
                output: None,
                weight: weight.max(1),
            },
        );
        id
    }

    /// Records the results of one query. Images already done, indices out
    /// of range and results for a job that is no longer running are ignored,
    /// so a repeated or late completion is never counted twice.
    pub fn complete(&mut self, job: JobId, results: &[ImageResult], now: u64) -> Accepted {
        let none = Accepted {
            new: 0,
            finished: false,
        };
        let Some(j) = self.jobs.get_mut(&job) else {
            return none;
        };
        if j.state != JobState::Running {
            return none;
        }
        let mut new = 0;
        for r in results {
            if r.index < j.count && !j.results.contains_key(&r.index) {
                j.errors += u32::from(matches!(r.outcome, Outcome::Error(_)));
                j.results.insert(r.index, r.outcome.clone());
                j.done += 1;
                new += 1;
            }
        }
        if new > 0 {
            j.queries += 1;
        }
        let finished = j.done == j.count;
        if finished {
            j.state = JobState::Done;
            j.finished_ms = Some(now);
        }
        Accepted { new, finished }
    }

    /// Stops a running job for good; false if it was not running.
    pub fn fail(&mut self, job: JobId, reason: &str, now: u64) -> bool {
        match self.jobs.get_mut(&job) {
            Some(j) if j.state == JobState::Running => {
                j.state = JobState::Failed;
                j.reason = Some(reason.into());
                j.finished_ms = Some(now);
                true
            }
            _ => false,
        }
    }

    /// Cancels a running job: it takes no more results, and those it has
    /// stay. Refused if there is no such job or it has ended.
    pub fn cancel(&mut self, job: JobId, now: u64) -> Result<(), NotRunning> {
        match self.jobs.get_mut(&job) {
            Some(j) if j.state == JobState::Running => {
                j.state = JobState::Cancelled;
                j.reason = Some(format!("cancelled after {} of {} images", j.done, j.count));
                j.finished_ms = Some(now);
                Ok(())
            }
            Some(j) => Err(NotRunning::Ended {
                job,
                state: j.state,
            }),
            None => Err(NotRunning::NoSuchJob(job)),
        }
    }

    /// Records where a finished job's output is stored and drops its
    /// results from the replicated state (they are read from SDFS then).
    pub fn set_output(&mut self, job: JobId, name: &str) {
        if let Some(j) = self.jobs.get_mut(&job)
            && j.state != JobState::Running
        {
            j.output = Some(name.into());
            j.results.clear();
        }
    }

    /// Changes `model`'s dynamic batching: each `Some` setting replaces the
    /// old one (a target of 0 clears it).
    pub fn set_policy(&mut self, model: &str, delay_ms: Option<u64>, target_ms: Option<u64>) {
        let p = self.policy.entry(model.to_string()).or_default();
        if let Some(d) = delay_ms {
            p.max_queue_delay_ms = d;
        }
        if let Some(t) = target_ms {
            p.p99_target_ms = (t > 0).then_some(t);
        }
    }

    /// `model`'s dynamic batching settings.
    pub fn policy(&self, model: &str) -> BatchPolicy {
        self.policy.get(model).copied().unwrap_or_default()
    }

    /// (queries, images) completed so far by jobs of `model`.
    pub fn totals(&self, model: &str) -> (u64, u64) {
        self.jobs
            .values()
            .filter(|j| j.model == model)
            .fold((0, 0), |(q, i), j| (q + j.queries, i + u64::from(j.done)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dml_shared::infer::Prediction;

    fn ok(index: u32) -> ImageResult {
        ImageResult {
            index,
            image: String::new(),
            outcome: Outcome::Top(vec![Prediction {
                class: 1,
                label: "a".into(),
                score: 0.5,
            }]),
        }
    }

    #[test]
    fn results_are_counted_once_and_finish_the_job() {
        let mut s = JobsState::default();
        let id = s.submit("tiny", "d/", vec!["a".into(), "b".into(), "c".into()], 3, 1);
        assert_eq!(id, 1);
        assert_eq!(
            s.complete(id, &[ok(0), ok(1)], 2),
            Accepted {
                new: 2,
                finished: false
            }
        );
        // A repeat of the same query, and an index out of range: nothing new.
        assert_eq!(s.complete(id, &[ok(1), ok(9)], 3).new, 0);
        let a = s.complete(id, &[ok(1), ok(2)], 4);
        assert_eq!(
            a,
            Accepted {
                new: 1,
                finished: true
            }
        );
        let info = s.jobs[&id].info(id);
        assert_eq!(
            (info.done, info.queries, info.state),
            (3, 2, JobState::Done)
        );
        assert_eq!(info.finished_ms, Some(4));
        // Late results after the end change nothing.
        assert_eq!(s.complete(id, &[ok(0)], 5).new, 0);
        assert_eq!(s.totals("tiny"), (2, 3));
        // Once the output is in SDFS the results leave the replicated state.
        s.set_output(id, "jobs/1/output.jsonl");
        let info = s.jobs[&id].info(id);
        assert!(s.jobs[&id].results.is_empty());
        assert_eq!(
            (info.done, info.output.as_deref()),
            (3, Some("jobs/1/output.jsonl"))
        );
        assert_eq!(s.totals("tiny"), (2, 3));
    }

    #[test]
    fn failed_jobs_take_no_results_and_ids_grow() {
        let mut s = JobsState::default();
        let a = s.submit("tiny", "d/", vec!["x".into()], 1, 1);
        let b = s.submit("tiny", "d/", vec!["y".into(), "z".into()], 5, 1);
        assert!(b > a);
        assert!(s.fail(a, "bad model", 2));
        assert!(!s.fail(a, "again", 3));
        assert_eq!(s.complete(a, &[ok(0)], 4).new, 0);
        assert_eq!(s.jobs[&a].info(a).reason.as_deref(), Some("bad model"));
        // Five images cycling over a dataset of two.
        assert_eq!(s.jobs[&b].missing().count(), 5);
        assert_eq!(s.jobs[&b].image(4), "y");
        assert_eq!(s.jobs[&b].image(3), "z");
        assert_eq!(s.jobs[&b].info(b).images, 5);
    }

    #[test]
    fn a_cancelled_job_keeps_its_results_and_takes_no_more() {
        let mut s = JobsState::default();
        let id = s.submit("tiny", "d/", vec!["x".into()], 4, 1);
        assert_eq!(s.complete(id, &[ok(0), ok(1)], 2).new, 2);
        assert_eq!(s.cancel(id, 3), Ok(()));
        let again = s.cancel(id, 4).unwrap_err();
        assert_eq!(
            again.to_string(),
            "job 1 has already ended (cancelled): only a running job can be cancelled"
        );
        assert_eq!(s.cancel(99, 4), Err(NotRunning::NoSuchJob(99)));
        assert_eq!(s.complete(id, &[ok(2)], 5).new, 0);
        let info = s.jobs[&id].info(id);
        assert_eq!(
            (info.state, info.done, info.finished_ms),
            (JobState::Cancelled, 2, Some(3))
        );
        assert_eq!(
            info.reason.as_deref(),
            Some("cancelled after 2 of 4 images")
        );
        assert_eq!(s.jobs[&id].results().len(), 2);
        // Its partial output may be stored like a finished job's.
        s.set_output(id, "jobs/1/output.jsonl");
        assert_eq!(
            s.jobs[&id].info(id).output.as_deref(),
            Some("jobs/1/output.jsonl")
        );
    }
}
