//! Carrying out the console's [`Action`]s through the same client API as the
//! `dml` commands (`dml_shared::client` and `dml_shared::sdfs_client`); each
//! result comes back as text for the footer or a popup.

use super::app::Action;
use super::fmt::bytes;
use dml_shared::client::Client;
use dml_shared::infer::{InferRequest, InferResponse, Outcome};
use dml_shared::sdfs::printable;
use dml_shared::sdfs_client::{Sdfs, no_progress};
use dml_shared::{ErrorKind, RemoteError};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

/// The commands `:` accepts, for the usage error.
pub const COMMANDS: &str = "help, members, id, leader, stats, join, leave, put, get, delete, ls, \
    ls-all, store, get-versions, sdfs files|nodes|count, submit-job, jobs, get-output, \
    set-batch-size, models, rates, latency, placement";

/// Why a console command failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("type a command: {COMMANDS}")]
    NoCommand,
    #[error("unknown command \"{0}\"; try one of: {COMMANDS}")]
    UnknownCommand(String),
    #[error("usage: {cmd} {args}")]
    Usage { cmd: String, args: &'static str },
    #[error("{what} \"{value}\" is not a number")]
    NotANumber { what: &'static str, value: String },
    #[error("unexpected answer {0}")]
    Unexpected(String),
    #[error(transparent)]
    Client(#[from] dml_shared::Error),
}

impl ExecError {
    /// An answer of the wrong variant (a bug or a version skew).
    fn unexpected(answer: impl std::fmt::Debug) -> Self {
        ExecError::Unexpected(format!("{answer:?}"))
    }

    /// What kind of failure it is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ExecError::NoCommand
            | ExecError::UnknownCommand(_)
            | ExecError::Usage { .. }
            | ExecError::NotANumber { .. } => ErrorKind::Invalid,
            ExecError::Unexpected(_) => ErrorKind::Internal,
            ExecError::Client(e) => e.kind(),
        }
    }
}

impl From<ExecError> for RemoteError {
    fn from(e: ExecError) -> Self {
        RemoteError::new(e.kind(), e.to_string())
    }
}

/// A short name for an action, for error messages.
pub fn describe(a: &Action) -> String {
    match a {
        Action::SetBatchSize { model, size } => format!("set-batch-size {model} {size}"),
        Action::Submit {
            model,
            count,
            dataset,
        } => format!("submit-job {model} {count} --dataset {dataset}"),
        Action::Command(w) => w.join(" "),
    }
}

/// Runs `a` against `agent`; `Ok` is the text to show.
pub async fn run(agent: SocketAddr, a: Action) -> Result<String, ExecError> {
    match a {
        Action::SetBatchSize { model, size } => set_batch(agent, &model, size).await,
        Action::Submit {
            model,
            count,
            dataset,
        } => submit(agent, model, count, dataset).await,
        Action::Command(w) => command(agent, &w).await,
    }
}

async fn infer(agent: SocketAddr, req: InferRequest) -> Result<InferResponse, ExecError> {
    Ok(Sdfs::new(agent).infer(req).await?)
}

async fn set_batch(agent: SocketAddr, model: &str, size: u32) -> Result<String, ExecError> {
    let req = InferRequest::SetBatchSize {
        model: model.to_string(),
        size,
    };
    // The size before, for the undo hint: the change is cluster-wide.
    let before = match infer(agent, InferRequest::Models).await {
        Ok(InferResponse::Models(ms)) => ms
            .into_iter()
            .find(|m| m.name == model)
            .map(|m| m.batch_size),
        _ => None,
    };
    infer(agent, req).await?;
    Ok(match before {
        Some(b) if b != size => format!(
            "{model}: batch size {b} -> {size} on every worker; undo: :set-batch-size {model} {b}"
        ),
        _ => format!("{model}: batch size set to {size} on every worker"),
    })
}

async fn submit(
    agent: SocketAddr,
    model: String,
    count: u32,
    dataset: String,
) -> Result<String, ExecError> {
    let req = InferRequest::Submit {
        model: model.clone(),
        count: Some(count),
        dataset: dataset.clone(),
        weight: 1,
    };
    match infer(agent, req).await? {
        InferResponse::Submitted { job, images } => Ok(format!(
            "job {job} submitted: {model} over {images} images of {dataset}"
        )),
        other => Err(ExecError::unexpected(other)),
    }
}

fn usage(cmd: &str, args: &'static str) -> ExecError {
    ExecError::Usage {
        cmd: cmd.to_string(),
        args,
    }
}

fn arg<'a>(w: &'a [String], i: usize, cmd: &str, args: &'static str) -> Result<&'a str, ExecError> {
    w.get(i).map(String::as_str).ok_or_else(|| usage(cmd, args))
}

fn number<T: std::str::FromStr>(s: &str, what: &'static str) -> Result<T, ExecError> {
    s.parse().map_err(|_| ExecError::NotANumber {
        what,
        value: s.to_string(),
    })
}

/// One `dml` command line (without `dml`).
pub async fn command(agent: SocketAddr, w: &[String]) -> Result<String, ExecError> {
    let sdfs = Sdfs::new(agent);
    let mut client = Client::new(agent);
    let Some(cmd) = w.first().map(String::as_str) else {
        return Err(ExecError::NoCommand);
    };
    let mut out = String::new();
    match cmd {
        "help" => {
            out = format!(
                "commands (as dml's, without \"dml\"): {COMMANDS}; keys: press ? (Esc closes)"
            );
        }
        "members" => {
            let ms = client.members().await?;
            let _ = writeln!(out, "{} members", ms.len());
            for m in ms {
                let _ = writeln!(out, "{} {} inc {}", m.id, m.state.as_str(), m.incarnation);
            }
        }
        "id" => {
            let i = client.id().await?;
            let _ = write!(
                out,
                "{} incarnation {} joined {}",
                i.id, i.incarnation, i.joined
            );
        }
        "leader" => {
            let l = client.leader().await?;
            let _ = write!(
                out,
                "leader {} term {} ({} voters)",
                l.leader.map_or_else(|| "none".into(), |a| a.to_string()),
                l.term,
                l.voters.len()
            );
        }
        "stats" => {
            let s = client.stats().await?;
            let _ = write!(
                out,
                "sent {:.0} B/s, received {:.0} B/s, probes {}, suspicions {}, refuted {}",
                s.bytes_sent_per_s, s.bytes_recv_per_s, s.probes_sent, s.suspicions, s.refuted
            );
        }
        "join" => {
            client.join().await?;
            out.push_str("joining");
        }
        "leave" => {
            client.leave().await?;
            out.push_str("left the group");
        }
        "put" => {
            let args = "LOCALFILE SDFSNAME";
            let local = arg(w, 1, cmd, args)?;
            let name = arg(w, 2, cmd, args)?;
            let r = sdfs.put(Path::new(local), name, &no_progress).await?;
            let _ = write!(
                out,
                "{} version {} ({}) on {} holders",
                printable(&r.name),
                r.version,
                bytes(r.size),
                r.holders.len()
            );
        }
        "get" => {
            let args = "SDFSNAME LOCALFILE";
            let name = arg(w, 1, cmd, args)?;
            let local = arg(w, 2, cmd, args)?;
            let r = sdfs.get(name, Path::new(local), &no_progress).await?;
            let _ = write!(
                out,
                "{} version {} ({}) from {} to {}",
                printable(&r.name),
                r.version,
                bytes(r.size),
                r.from,
                r.path.display()
            );
        }
        "delete" => {
            let name = arg(w, 1, cmd, "SDFSNAME")?;
            sdfs.delete(name).await?;
            let _ = write!(out, "{} deleted", printable(name));
        }
        "ls" => {
            let name = arg(w, 1, cmd, "SDFSNAME")?;
            let f = sdfs.ls(name).await?;
            let _ = writeln!(out, "{}: {} versions", printable(&f.name), f.versions.len());
            for v in f.versions {
                let holders: Vec<String> = v.replicas.iter().map(ToString::to_string).collect();
                let _ = writeln!(
                    out,
                    "v{} {} on {}",
                    v.version,
                    bytes(v.size),
                    holders.join(" ")
                );
            }
        }
        "ls-all" | "files" => {
            let glob = w.get(1).map_or("*", String::as_str);
            files(&mut out, sdfs.ls_all(glob).await?);
        }
        "store" => {
            let node = match w.get(1) {
                Some(n) => Some(number::<SocketAddr>(n, "node")?),
                None => None,
            };
            let h = sdfs.store(node).await?;
            let _ = writeln!(out, "{} versions stored", h.len());
            for h in h {
                let _ = writeln!(
                    out,
                    "{} v{} {}",
                    printable(&h.name),
                    h.version,
                    bytes(h.size)
                );
            }
        }
        "get-versions" => {
            let args = "SDFSNAME N LOCALPATH [--merge]";
            let name = arg(w, 1, cmd, args)?;
            let n: usize = number(arg(w, 2, cmd, args)?, "N")?;
            let path = arg(w, 3, cmd, args)?;
            let merge = w.iter().any(|a| a == "--merge");
            let r = sdfs
                .get_versions(name, n, Path::new(path), merge, &no_progress)
                .await?;
            let _ = write!(out, "{} versions of {name} to {path}", r.versions.len());
        }
        "sdfs" => match w.get(1).map(String::as_str) {
            Some("files") => files(&mut out, sdfs.files().await?),
            Some("count") => {
                let c = sdfs.count().await?;
                let _ = write!(
                    out,
                    "{} files, {} versions, {}",
                    c.files,
                    c.versions,
                    bytes(c.bytes)
                );
            }
            Some("nodes") => {
                for (a, h) in sdfs.nodes().await? {
                    let total: u64 = h.iter().map(|h| h.size).sum();
                    let _ = writeln!(out, "{a}: {} versions, {}", h.len(), bytes(total));
                }
            }
            _ => return Err(usage(cmd, "files|nodes|count")),
        },
        "submit-job" => {
            let args = "MODEL NUM_IMAGES [--dataset PREFIX]";
            let model = dml_shared::models::model_key(arg(w, 1, cmd, args)?);
            let n: u32 = number(arg(w, 2, cmd, args)?, "NUM_IMAGES")?;
            let dataset = w
                .iter()
                .position(|a| a == "--dataset")
                .and_then(|i| w.get(i + 1))
                .cloned()
                .unwrap_or_else(|| super::app::DEFAULT_DATASET.to_string());
            return submit(agent, model, n, dataset).await;
        }
        "set-batch-size" => {
            let args = "MODEL N";
            let model = dml_shared::models::model_key(arg(w, 1, cmd, args)?);
            let n: u32 = number(arg(w, 2, cmd, args)?, "N")?;
            return set_batch(agent, &model, n).await;
        }
        "jobs" => match infer(agent, InferRequest::Jobs).await? {
            InferResponse::Jobs(jobs) => {
                let _ = writeln!(out, "{} jobs", jobs.len());
                for j in jobs {
                    let _ = writeln!(
                        out,
                        "#{} {} {} {}/{} images, {} errors",
                        j.id,
                        j.model,
                        j.state.as_str(),
                        j.done,
                        j.images,
                        j.errors
                    );
                }
            }
            other => return Err(ExecError::unexpected(other)),
        },
        "cancel" => {
            let job: u64 = number(arg(w, 1, cmd, "JOB")?, "JOB")?;
            match infer(agent, InferRequest::Cancel { job }).await? {
                InferResponse::Cancelled { job, released } => {
                    let _ = write!(
                        out,
                        "job {job} cancelled; {released} queries in flight released"
                    );
                }
                other => return Err(ExecError::unexpected(other)),
            }
        }
        "job" => {
            let job: u64 = number(arg(w, 1, cmd, "JOB")?, "JOB")?;
            match infer(agent, InferRequest::Job { job }).await? {
                InferResponse::Job(d) => {
                    let j = &d.info;
                    let _ = writeln!(
                        out,
                        "job {} {} {}/{} images, {} errors",
                        j.id,
                        j.state.as_str(),
                        j.done,
                        j.images,
                        j.errors
                    );
                    for w in &d.workers {
                        let _ = writeln!(
                            out,
                            "{}: {} queries, {} images, {} errors, {} in flight",
                            w.worker, w.queries, w.images, w.errors, w.in_flight
                        );
                    }
                }
                other => return Err(ExecError::unexpected(other)),
            }
        }
        "get-output" => {
            let job: u64 = number(arg(w, 1, cmd, "JOB")?, "JOB")?;
            match infer(agent, InferRequest::Output { job }).await? {
                InferResponse::Output { job, results } => {
                    let _ = writeln!(
                        out,
                        "job {} {}: {} results",
                        job.id,
                        job.state.as_str(),
                        results.len()
                    );
                    for r in results {
                        let what = match r.outcome {
                            Outcome::Top(p) => p.first().map_or_else(String::new, |p| {
                                format!("{} {:.3}", p.label, p.score)
                            }),
                            Outcome::Error(e) => format!("error: {e}"),
                        };
                        let _ = writeln!(out, "{} {}: {what}", r.index, r.image);
                    }
                }
                other => return Err(ExecError::unexpected(other)),
            }
        }
        "models" => match infer(agent, InferRequest::Models).await? {
            InferResponse::Models(ms) => {
                for m in ms {
                    let _ = writeln!(
                        out,
                        "{} batch {} (max {})",
                        m.name, m.batch_size, m.max_batch
                    );
                }
            }
            other => return Err(ExecError::unexpected(other)),
        },
        "rates" => match infer(agent, InferRequest::Rates).await? {
            InferResponse::Rates(rs) => {
                for r in rs {
                    let _ = writeln!(
                        out,
                        "{}: {:.1} queries/s, {:.1} images/s, {} queries",
                        r.model, r.queries_per_s, r.images_per_s, r.queries_total
                    );
                }
            }
            other => return Err(ExecError::unexpected(other)),
        },
        "latency" => match infer(agent, InferRequest::Latency).await? {
            InferResponse::Latency(ls) => {
                for l in ls {
                    let _ = writeln!(
                        out,
                        "{}: n {} avg {:.1} std {:.1} p50 {:.1} p90 {:.1} p95 {:.1} p99 {:.1} ms; queue avg {:.1} p99 {:.1}, compute avg {:.1} p99 {:.1} ms",
                        l.model,
                        l.count,
                        l.mean_ms,
                        l.stddev_ms,
                        l.p50_ms,
                        l.p90_ms,
                        l.p95_ms,
                        l.p99_ms,
                        l.queue.mean_ms,
                        l.queue.p99_ms,
                        l.compute.mean_ms,
                        l.compute.p99_ms
                    );
                }
            }
            other => return Err(ExecError::unexpected(other)),
        },
        "placement" => match infer(agent, InferRequest::Placement).await? {
            InferResponse::Placement(ps) => {
                for p in ps {
                    let ws: Vec<String> =
                        p.workers.iter().map(|(a, q)| format!("{a}×{q}")).collect();
                    let _ = writeln!(
                        out,
                        "job {} {} (weight {}, {:.0}% of queries, {:.0}% of worker time): {}",
                        p.job,
                        p.model,
                        p.weight,
                        p.query_share * 100.0,
                        p.time_share * 100.0,
                        ws.join(" ")
                    );
                }
            }
            other => return Err(ExecError::unexpected(other)),
        },
        other => {
            return Err(ExecError::UnknownCommand(other.to_string()));
        }
    }
    let out = out.trim_end().to_string();
    Ok(if out.is_empty() {
        format!("{cmd}: done")
    } else {
        out
    })
}

fn files(out: &mut String, files: Vec<dml_shared::sdfs::FileInfo>) {
    let _ = writeln!(out, "{} files", files.len());
    for f in files {
        let size = f.versions.last().map_or(0, |v| v.size);
        let _ = writeln!(
            out,
            "{}: {} versions, newest {}",
            printable(&f.name),
            f.versions.len(),
            bytes(size)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(ToString::to_string).collect()
    }

    #[tokio::test]
    async fn a_bad_command_line_is_invalid_before_any_agent_is_asked() {
        // Nothing listens here: each error comes before a connection.
        let agent = SocketAddr::from(([127, 0, 0, 1], 9));
        let fail = async |w: &[&str]| command(agent, &words(w)).await.unwrap_err();
        let e = fail(&[]).await;
        assert!(matches!(e, ExecError::NoCommand), "{e}");
        let e = fail(&["frobnicate"]).await;
        assert_eq!(
            e.to_string().split(';').next(),
            Some("unknown command \"frobnicate\"")
        );
        // :help answers without an agent.
        let help = command(agent, &words(&["help"])).await.unwrap();
        assert!(
            help.contains("submit-job") && help.contains("press ?"),
            "{help}"
        );
        let e = fail(&["put", "only-one"]).await;
        assert_eq!(e.to_string(), "usage: put LOCALFILE SDFSNAME");
        let e = fail(&["get-output", "seven"]).await;
        assert_eq!(e.to_string(), "JOB \"seven\" is not a number");
        for w in [
            &[][..],
            &["frobnicate"],
            &["put", "x"],
            &["get-output", "seven"],
        ] {
            let r = RemoteError::from(fail(w).await);
            assert_eq!(r.kind, ErrorKind::Invalid, "{w:?}: {r}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_agent_keeps_its_kind_and_words() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let agent = SocketAddr::from(([127, 0, 0, 1], port));
        let e = command(agent, &words(&["members"])).await.unwrap_err();
        let r = RemoteError::from(e);
        assert_eq!(r.kind, ErrorKind::Unavailable);
        assert!(r.message.contains("cannot reach agent"), "{r}");
    }
}
