//! Events read off successive leader figures: job start and finish, and SDFS
//! re-replication (versions falling short of their copies and being repaired).

use dml_shared::infer::JobState;
use dml_shared::telemetry::{ClusterFigures, EventKind};

/// The events between two fetches of the figures. Nothing is reported for
/// what was already there at the first fetch.
pub fn changes(prev: Option<&ClusterFigures>, now: &ClusterFigures) -> Vec<(EventKind, String)> {
    let mut out = Vec::new();
    let Some(prev) = prev else {
        return out;
    };
    if let (Ok(before), Ok(jobs)) = (&prev.jobs, &now.jobs) {
        for j in jobs {
            let old = before.iter().find(|b| b.id == j.id);
            if old.is_none() {
                out.push((
                    EventKind::JobStart,
                    format!(
                        "job {} started: {} over {} images of {}",
                        j.id, j.model, j.images, j.dataset
                    ),
                ));
            }
            let was_running = old.is_none_or(|o| o.state == JobState::Running);
            match j.state {
                JobState::Done if was_running => out.push((
                    EventKind::JobFinish,
                    format!(
                        "job {} done: {} images, {} errors",
                        j.id, j.images, j.errors
                    ),
                )),
                JobState::Cancelled if was_running => out.push((
                    EventKind::JobFinish,
                    format!(
                        "job {} cancelled: {} of {} images done",
                        j.id, j.done, j.images
                    ),
                )),
                JobState::Failed if was_running => out.push((
                    EventKind::JobFinish,
                    format!(
                        "job {} failed: {}",
                        j.id,
                        j.reason.as_deref().unwrap_or("no reason given")
                    ),
                )),
                _ => {}
            }
        }
    }
    if let (Ok(b), Ok(n)) = (&prev.sdfs, &now.sdfs) {
        let (was, is) = (b.under_replicated, n.under_replicated);
        if is > was {
            out.push((
                EventKind::Repair,
                format!("{is} versions under-replicated; re-replicating"),
            ));
        } else if is < was && is > 0 {
            out.push((
                EventKind::Repair,
                format!("re-replicated {} versions, {is} to go", was - is),
            ));
        } else if is < was {
            out.push((
                EventKind::Repair,
                format!("re-replicated {was} versions: every version has its copies"),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use dml_shared::infer::JobInfo;
    use dml_shared::telemetry::SdfsHealth;

    fn job(id: u64, state: JobState) -> JobInfo {
        JobInfo {
            id,
            model: "tiny".into(),
            dataset: "d/".into(),
            images: 10,
            done: 0,
            errors: 0,
            queries: 0,
            state,
            reason: None,
            submitted_ms: 0,
            finished_ms: None,
            output: None,
            stalled: None,
        }
    }

    fn figs(jobs: Vec<JobInfo>, under: u64) -> ClusterFigures {
        ClusterFigures {
            models: Ok(vec![]),
            rates: Ok(vec![]),
            latency: Ok(vec![]),
            jobs: Ok(jobs),
            placement: Ok(vec![]),
            sdfs: Ok(SdfsHealth {
                under_replicated: under,
                ..SdfsHealth::default()
            }),
        }
    }

    #[test]
    fn new_and_finished_jobs_become_events_once() {
        let a = figs(vec![job(1, JobState::Running)], 0);
        assert!(changes(None, &a).is_empty());
        let b = figs(vec![job(1, JobState::Done), job(2, JobState::Running)], 0);
        let ev = changes(Some(&a), &b);
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert_eq!(ev[0].0, EventKind::JobFinish);
        assert!(ev[0].1.starts_with("job 1 done"));
        assert_eq!(ev[1].0, EventKind::JobStart);
        assert!(changes(Some(&b), &b).is_empty());
    }

    #[test]
    fn re_replication_is_reported_as_it_starts_progresses_and_ends() {
        let (a, b, c, d) = (
            figs(vec![], 0),
            figs(vec![], 5),
            figs(vec![], 2),
            figs(vec![], 0),
        );
        assert!(
            changes(Some(&a), &b)[0]
                .1
                .contains("5 versions under-replicated")
        );
        assert!(
            changes(Some(&b), &c)[0]
                .1
                .contains("re-replicated 3 versions, 2 to go")
        );
        assert!(
            changes(Some(&c), &d)[0]
                .1
                .contains("every version has its copies")
        );
        assert!(changes(Some(&a), &a).is_empty());
    }
}
