//! `dml submit-job --wait`: follows a job until it ends. A progress bar when
//! stdout is a terminal; otherwise one line per change (on stderr under
//! `--json`, whose stdout is the final report alone). The job's end decides
//! the exit: done (every image has a result) is success, failed or cancelled
//! is a failure that says so.

use super::report;
use crate::sdfs::PartialFailure;
use anyhow::{Context, Result, anyhow};
use dml_shared::ErrorKind;
use dml_shared::infer::{InferRequest, InferResponse, JobDetail, JobId, JobInfo, JobState};
use dml_shared::sdfs_client::Sdfs;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often the job is asked about.
const POLL: Duration = Duration::from_millis(500);
/// Most often a plain progress line is printed.
const LINE_EVERY: Duration = Duration::from_secs(1);
/// How long the cluster may be unreachable (a leader fail-over) before
/// following gives up.
const UNREACHABLE_FOR: Duration = Duration::from_secs(60);

/// Follows `job` (of `images` images) until it ends and reports how.
pub async fn follow(sdfs: &Sdfs, job: JobId, images: u32, json: bool) -> Result<()> {
    let terminal = !json && std::io::stdout().is_terminal();
    let mut shown = Shown::new(job, images, terminal, json);
    let mut failing: Option<Instant> = None;
    let info = loop {
        match sdfs.infer(InferRequest::Job { job }).await {
            Ok(InferResponse::Job(d)) => {
                failing = None;
                shown.update(&d);
                if d.info.state != JobState::Running {
                    break d.info;
                }
            }
            Ok(other) => return Err(anyhow!("unexpected answer from the agent: {other:?}")),
            Err(e) if transient(e.kind()) => {
                let since = *failing.get_or_insert_with(Instant::now);
                if since.elapsed() >= UNREACHABLE_FOR {
                    return Err(e).with_context(|| format!("follow job {job}"));
                }
            }
            Err(e) => return Err(e).with_context(|| format!("follow job {job}")),
        }
        tokio::time::sleep(POLL).await;
    };
    shown.finish();
    let failure = ended(&info);
    if json {
        let mut v = report::job_json(&info);
        v["elapsed_s"] = (elapsed_ms(&info) as f64 / 1000.0).into();
        if let Some(f) = &failure {
            v["error"] = f.clone().into();
        }
        println!("{v}");
    } else {
        println!("{}", summary(&info));
    }
    match failure {
        None => Ok(()),
        Some(f) => Err(PartialFailure(f).into()),
    }
}

/// Worth asking again: the cluster may answer once a leader is elected.
fn transient(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::Unavailable | ErrorKind::NotLeader)
}

/// Why an ended job is a failure, or `None` if every image has a result.
pub fn ended(j: &JobInfo) -> Option<String> {
    match j.state {
        JobState::Done | JobState::Running => None,
        JobState::Failed => Some(format!(
            "job {} failed: {}",
            j.id,
            j.reason.as_deref().unwrap_or("no reason given")
        )),
        JobState::Cancelled => Some(format!(
            "job {} was cancelled after {} of {} images; their results stay readable with `dml get-output {}`",
            j.id, j.done, j.images, j.id
        )),
    }
}

fn elapsed_ms(j: &JobInfo) -> u64 {
    let end = j.finished_ms.unwrap_or(j.submitted_ms);
    end.saturating_sub(j.submitted_ms)
}

/// The last line: "job 3 done: 40 of 40 images, 0 errors, in 12s".
pub fn summary(j: &JobInfo) -> String {
    format!(
        "job {} {}: {} of {} images, {} errors, in {}",
        j.id,
        j.state.as_str(),
        j.done,
        j.images,
        j.errors,
        dml_tui::units::age_ms(elapsed_ms(j))
    )
}

/// A plain progress line: "job 3: 12/40 (30%) running, 0 errors".
pub fn line(d: &JobDetail) -> String {
    let j = &d.info;
    let mut s = format!(
        "job {}: {} {}, {} errors, {} workers",
        j.id,
        report::progress(j),
        j.state.as_str(),
        j.errors,
        d.workers.iter().filter(|w| w.in_flight > 0).count()
    );
    if let Some(why) = &j.stalled {
        s.push_str(&format!(" (stalled: {why})"));
    }
    s
}

/// What the operator sees while the job runs.
struct Shown {
    bar: Option<ProgressBar>,
    /// Plain lines go to stderr (under `--json`) instead of stdout.
    to_stderr: bool,
    last: Option<(String, Instant)>,
}

impl Shown {
    fn new(job: JobId, images: u32, terminal: bool, json: bool) -> Self {
        let bar = terminal.then(|| {
            let bar = ProgressBar::new(u64::from(images));
            let template =
                "job {prefix} {spinner} [{bar:40.cyan/blue}] {pos}/{len} images ({percent}%) eta {eta} {wide_msg}";
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(job.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self {
            bar,
            to_stderr: json,
            last: None,
        }
    }

    fn update(&mut self, d: &JobDetail) {
        let j = &d.info;
        if let Some(bar) = &self.bar {
            bar.set_length(u64::from(j.images));
            bar.set_position(u64::from(j.done));
            let mut msg = format!("{} errors", j.errors);
            if let Some(why) = &j.stalled {
                msg = format!("stalled: {why}");
            }
            bar.set_message(msg);
            return;
        }
        let text = line(d);
        let due = match &self.last {
            None => true,
            Some((prev, at)) => *prev != text && at.elapsed() >= LINE_EVERY,
        };
        let ended = j.state != JobState::Running;
        if due && !ended {
            let _ = if self.to_stderr {
                writeln!(std::io::stderr(), "{text}")
            } else {
                writeln!(std::io::stdout(), "{text}")
            };
            self.last = Some((text, Instant::now()));
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(state: JobState, done: u32) -> JobInfo {
        JobInfo {
            id: 3,
            model: "tiny".into(),
            dataset: "d/".into(),
            images: 40,
            done,
            errors: 1,
            queries: 5,
            state,
            reason: (state == JobState::Failed).then(|| "no model".into()),
            submitted_ms: 1_000,
            finished_ms: Some(13_500),
            output: None,
            stalled: None,
        }
    }

    #[test]
    fn only_a_done_job_is_a_success_and_the_others_say_why() {
        assert_eq!(ended(&info(JobState::Done, 40)), None);
        let failed = ended(&info(JobState::Failed, 3)).unwrap();
        assert_eq!(failed, "job 3 failed: no model");
        let cancelled = ended(&info(JobState::Cancelled, 12)).unwrap();
        assert!(
            cancelled.starts_with("job 3 was cancelled after 12 of 40 images"),
            "{cancelled}"
        );
        assert_eq!(
            summary(&info(JobState::Done, 40)),
            "job 3 done: 40 of 40 images, 1 errors, in 12s"
        );
        let d = JobDetail {
            info: info(JobState::Running, 12),
            workers: vec![],
            errors: vec![],
        };
        assert_eq!(line(&d), "job 3: 12/40 (30%) running, 1 errors, 0 workers");
    }
}
