//! `dml cluster up|down|status --hosts hosts.toml`: agents on remote hosts,
//! deployed and controlled over SSH, every host in parallel.
//!
//! - [`hosts`]: the hosts file and each host's generated agent config.
//! - [`ssh`]: one SSH session: host key check, login, commands, SFTP uploads.
//! - [`remote`]: the scripts run on the hosts and the systemd unit.
//! - [`stalls`]: the running jobs `status` lists, and why they make no progress.

pub mod hosts;
pub mod remote;
pub mod ssh;
pub mod stalls;

use crate::report::render_table;
use anyhow::{Context, Result, bail};
use dml_shared::client::Client;
use hosts::{Host, Hosts, Launcher};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use sha2::Digest;
use ssh::Ssh;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use dml_tui::cli::cluster::{ClusterCommand, DownArgs, HostsArg, UpArgs};

/// Time allowed for one API probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(700);
/// Pause between two rounds of probes.
const POLL: Duration = Duration::from_millis(200);

/// `key_file`: the cluster key `up` uploads to every host.
/// `context`: the name to save the deployed cluster's context under
/// (default: the hosts file's name without `.toml`).
pub async fn run(
    cmd: &ClusterCommand,
    key_file: Option<&Path>,
    context: Option<&str>,
    json: bool,
) -> Result<()> {
    match cmd {
        ClusterCommand::Up(a) => {
            let key = key_file.context(
                "cluster up needs a cluster key to give the agents: make one with `dml keygen` \
                 or pass --key-file",
            )?;
            let key_text = std::fs::read(key)
                .with_context(|| format!("cannot read cluster key {}", key.display()))?;
            up(a, &key_text, json).await?;
            let name = context.map(str::to_string).unwrap_or_else(|| {
                a.hosts
                    .hosts
                    .file_stem()
                    .map_or("cluster".into(), |s| s.to_string_lossy().into_owned())
            });
            let hosts = Hosts::load(&a.hosts.hosts)?;
            let ctx = crate::context::Context {
                agents: hosts.hosts.iter().map(|h| h.bind).collect(),
                key_file: key.canonicalize().ok(),
            };
            match crate::context::remember(&name, ctx) {
                Ok(path) if !json => {
                    println!("context \"{name}\" is current in {}", path.display())
                }
                Ok(_) => {}
                Err(e) => eprintln!("warning: the context was not saved: {e:#}"),
            }
            Ok(())
        }
        ClusterCommand::Down(a) => down(a, json).await,
        ClusterCommand::Status(a) => status(a, json).await,
    }
}

/// One spinner line per host (hidden under --json or without a terminal).
fn bars(hosts: &Hosts, json: bool) -> Vec<ProgressBar> {
    let target = if json {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let multi = MultiProgress::with_draw_target(target);
    let width = hosts.hosts.iter().map(|h| h.name.len()).max().unwrap_or(4);
    let style =
        ProgressStyle::with_template(&format!("{{prefix:{width}}} {{spinner}} {{wide_msg}}"))
            .expect("valid template");
    hosts
        .hosts
        .iter()
        .map(|h| {
            let pb = multi.add(ProgressBar::new_spinner());
            pb.set_style(style.clone());
            pb.set_prefix(h.name.clone());
            pb.enable_steady_tick(Duration::from_millis(120));
            pb
        })
        .collect()
}

async fn connect(hosts: &Hosts, h: &Host) -> Result<Ssh> {
    Ssh::connect(h, &hosts.auth, &hosts.known_hosts, hosts.connect_timeout)
        .await
        .with_context(|| format!("ssh {}@{}:{}", h.user, h.address, h.ssh_port))
}

/// Result of `up` on one host.
#[derive(Debug, Serialize)]
struct UpReport {
    host: String,
    ssh: String,
    agent: SocketAddr,
    remote_dir: String,
    launcher: Option<String>,
    pid: Option<u32>,
    uploaded_agent: bool,
    /// Where the agent finds ONNX Runtime's library `up` uploaded (`None`: not provisioned).
    ort_dylib: Option<String>,
    uploaded_ort: bool,
    replaced_running: bool,
    node_id: Option<String>,
    members: Option<usize>,
    error: Option<String>,
}

/// SHA-256 of a file, hex.
fn sha256_file(path: &Path) -> Result<String> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

async fn up(a: &UpArgs, key: &[u8], json: bool) -> Result<()> {
    let hosts = Hosts::load(&a.hosts.hosts)?;
    let bin =
        crate::agent_bin::find_agent_bin(a.agent_bin.as_deref().or(hosts.agent_bin.as_deref()))?;
    let bin_for_hash = bin.clone();
    let sha = tokio::task::spawn_blocking(move || sha256_file(&bin_for_hash)).await??;
    let size = std::fs::metadata(&bin)?.len();
    let ort = local_ort(&hosts)?;
    let ort = match ort {
        Some(path) => {
            let p = path.clone();
            let sha = tokio::task::spawn_blocking(move || sha256_file(&p)).await??;
            Some((path, sha))
        }
        None => None,
    };
    let deadline = Instant::now() + Duration::from_secs(a.wait_secs);
    let bars = bars(&hosts, json);
    let jobs = hosts.hosts.iter().zip(&bars).map(|(h, pb)| {
        let (hosts, bin, sha, ort) = (&hosts, &bin, &sha, ort.as_ref());
        async move {
            let mut rep = UpReport {
                host: h.name.clone(),
                ssh: format!("{}@{}:{}", h.user, h.address, h.ssh_port),
                agent: h.bind,
                remote_dir: h.remote_dir.clone(),
                launcher: None,
                pid: None,
                uploaded_agent: false,
                ort_dylib: None,
                uploaded_ort: false,
                replaced_running: false,
                node_id: None,
                members: None,
                error: None,
            };
            let files = Files {
                agent: (bin, sha, size),
                ort,
            };
            if let Err(e) = up_host(hosts, h, files, key, pb, deadline, &mut rep).await {
                rep.error = Some(format!("{e:#}"));
                pb.finish_with_message(format!("failed: {e:#}"));
            }
            rep
        }
    });
    let mut reports: Vec<UpReport> = futures::future::join_all(jobs).await;

    // The cluster as a whole: every healthy agent sees all of them, and a leader.
    let healthy: Vec<usize> = (0..reports.len())
        .filter(|&i| reports[i].error.is_none())
        .collect();
    let want = healthy.len();
    let mut leader = None;
    if want > 0 {
        for &i in &healthy {
            bars[i].set_message(format!("healthy; waiting until it sees {want} members"));
        }
        loop {
            let mut all = true;
            for &i in &healthy {
                let mut c = Client::new(reports[i].agent).with_timeout(PROBE_TIMEOUT);
                let live = c
                    .members()
                    .await
                    .map(|m| m.iter().filter(|m| m.state.is_live()).count())
                    .ok();
                reports[i].members = live;
                all &= live.is_some_and(|n| n >= want);
            }
            if leader.is_none() {
                let mut c = Client::new(reports[healthy[0]].agent).with_timeout(PROBE_TIMEOUT);
                leader = c.leader().await.ok().and_then(|l| l.leader);
            }
            if (all && leader.is_some()) || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
    }
    for (i, r) in reports.iter().enumerate() {
        if r.error.is_none() {
            bars[i].finish_with_message(format!(
                "up: pid {}, sees {} live members",
                r.pid.map_or("?".into(), |p| p.to_string()),
                r.members.map_or("?".into(), |n| n.to_string())
            ));
        }
    }
    for r in &mut reports {
        if r.error.is_none() && r.members.is_none_or(|n| n < want) {
            eprintln!(
                "warning: {} sees {} of {want} agents live before the deadline; \
                 `dml cluster status` shows who sees what",
                r.host,
                r.members.unwrap_or(0)
            );
        }
    }
    if want > 0 && leader.is_none() {
        eprintln!("warning: no control-plane leader before the deadline; `dml leader` asks again");
    }
    let failed = reports.iter().filter(|r| r.error.is_some()).count();
    if json {
        println!(
            "{}",
            serde_json::json!({ "hosts": reports, "leader": leader, "failed": failed })
        );
    } else {
        let rows: Vec<Vec<String>> = reports
            .iter()
            .map(|r| {
                vec![
                    r.host.clone(),
                    r.agent.to_string(),
                    r.launcher.clone().unwrap_or_default(),
                    r.pid.map_or("-".into(), |p| p.to_string()),
                    r.members.map_or("-".into(), |n| n.to_string()),
                    match (&r.ort_dylib, r.uploaded_ort) {
                        (None, _) => "not provisioned".into(),
                        (Some(_), true) => "uploaded".into(),
                        (Some(_), false) => "in place".into(),
                    },
                    r.error.clone().unwrap_or_else(|| "up".into()),
                ]
            })
            .collect();
        print!(
            "{}",
            render_table(
                &[
                    "HOST",
                    "AGENT",
                    "LAUNCHER",
                    "PID",
                    "MEMBERS",
                    "ONNX RUNTIME",
                    "RESULT"
                ],
                &rows
            )
        );
        if let Some(l) = leader {
            println!("control-plane leader: {l}");
        }
    }
    if failed > 0 {
        bail!("{failed} of {} hosts failed", reports.len());
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
/// What `up` uploads besides the key and config: the agent binary (path, SHA-256, size)
/// and ONNX Runtime's library (path, SHA-256), if one was found.
struct Files<'a> {
    agent: (&'a Path, &'a str, u64),
    ort: Option<&'a (PathBuf, String)>,
}

/// ONNX Runtime's library to upload: hosts.toml's `ort_dylib`, else `ORT_DYLIB_PATH`, else
/// the virtualenv above `dml` or the working directory. `None` (with a warning) when there is
/// none: the hosts then need their own (`inference.ort_dylib` in a `config` table).
fn local_ort(hosts: &Hosts) -> Result<Option<PathBuf>> {
    if let Some(p) = &hosts.ort_dylib {
        if !p.is_file() {
            bail!(
                "ort_dylib \"{}\" in the hosts file is not a file",
                p.display()
            );
        }
        return Ok(Some(p.clone()));
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("ORT_DYLIB_PATH \"{}\" is not a file", p.display());
        }
        return Ok(Some(p));
    }
    match dml_shared::ort_lib::search_venvs() {
        Ok(p) => Ok(Some(p)),
        Err(_) => {
            eprintln!(
                "warning: no ONNX Runtime library here (run scripts/setup.sh, or set ort_dylib in \
                 the hosts file): agents run no inference unless their hosts have one"
            );
            Ok(None)
        }
    }
}

async fn up_host(
    hosts: &Hosts,
    h: &Host,
    files: Files<'_>,
    key: &[u8],
    pb: &ProgressBar,
    deadline: Instant,
    rep: &mut UpReport,
) -> Result<()> {
    pb.set_message("connecting");
    let ssh = connect(hosts, h).await?;
    let probe = remote::parse_kv(
        &ssh.run(
            "preparing the remote directory",
            &remote::probe(&h.remote_dir),
        )
        .await?,
    );
    let dir = probe.get("dir").cloned().unwrap_or_default();
    if !dir.starts_with('/') {
        bail!("cannot resolve the remote directory {}", h.remote_dir);
    }
    rep.remote_dir = dir.clone();
    let arch = probe.get("arch").map(String::as_str).unwrap_or("");
    if arch != std::env::consts::ARCH {
        bail!(
            "host is {arch}, this dml-agent is built for {}",
            std::env::consts::ARCH
        );
    }
    let init = probe.get("init").map(String::as_str).unwrap_or("");
    let has_tmux = probe.get("tmux").is_some_and(|t| !t.is_empty());
    let use_systemd = match h.launcher {
        Launcher::Systemd if init != "systemd" => {
            bail!("launcher = \"systemd\" but PID 1 on the host is \"{init}\"")
        }
        Launcher::Systemd => true,
        Launcher::Tmux => false,
        Launcher::Auto => init == "systemd",
    };
    if !use_systemd && !has_tmux {
        bail!("PID 1 is \"{init}\", not systemd, and tmux is not installed on the host");
    }

    pb.set_message("stopping a previous agent, if any");
    let stopped = remote::parse_kv(
        &ssh.run("stopping the previous agent", &remote::stop(&dir, 15))
            .await?,
    );
    rep.replaced_running = stopped.get("outcome").is_some_and(|o| o != "not-running");

    let (bin, sha, size) = files.agent;
    let agent_path = format!("{dir}/bin/dml-agent");
    if probe.get("sha256").map(String::as_str) != Some(sha) {
        let mib = size as f64 / 1048576.0;
        ssh.upload(bin, &agent_path, 0o755, |sent| {
            pb.set_message(format!(
                "uploading dml-agent: {:.0} of {mib:.0} MiB",
                sent as f64 / 1048576.0
            ))
        })
        .await
        .context("uploading dml-agent")?;
        rep.uploaded_agent = true;
    }
    if let Some((lib, lib_sha)) = files.ort {
        let dest = hosts::remote_ort(&dir);
        if probe.get("ort_sha256") != Some(lib_sha) {
            pb.set_message("uploading ONNX Runtime");
            ssh.upload(lib, &dest, 0o644, |_| {})
                .await
                .context("uploading ONNX Runtime's library")?;
            rep.uploaded_ort = true;
        }
        rep.ort_dylib = Some(dest);
    }
    pb.set_message("uploading the cluster key");
    ssh.upload_bytes(key, &format!("{dir}/cluster.key"), 0o600)
        .await
        .context("uploading the cluster key")?;
    pb.set_message("uploading agent.toml");
    let cfg = hosts.agent_config(h, &dir, files.ort.is_some())?;
    ssh.upload_bytes(cfg.as_bytes(), &format!("{dir}/agent.toml"), 0o640)
        .await
        .context("uploading agent.toml")?;

    let port = h.bind.port();
    let started = if use_systemd {
        pb.set_message("starting the systemd unit");
        let unit = remote::unit(&dir, port);
        ssh.upload_bytes(
            unit.as_bytes(),
            &format!("{dir}/{}.service", remote::service_name(port)),
            0o644,
        )
        .await
        .context("uploading the unit")?;
        rep.launcher = Some(format!("systemd {}", remote::service_name(port)));
        ssh.run("starting the unit", &remote::start_systemd(&dir, port))
            .await?
    } else {
        pb.set_message("starting in tmux");
        rep.launcher = Some(format!("tmux {}", remote::service_name(port)));
        ssh.run("starting in tmux", &remote::start_tmux(&dir, port))
            .await?
    };
    rep.pid = remote::parse_kv(&started)
        .get("pid")
        .and_then(|p| p.parse().ok());

    pb.set_message(format!("waiting for the API at {}", h.bind));
    let mut round = 0u32;
    loop {
        let mut c = Client::new(h.bind).with_timeout(PROBE_TIMEOUT);
        let last_err = match c.id().await {
            Ok(info) => {
                rep.node_id = Some(info.id.to_string());
                break;
            }
            Err(e) => e.to_string(),
        };
        round += 1;
        // Now and then, ask the host whether the agent still runs.
        let exited = round.is_multiple_of(5)
            && remote::parse_kv(&ssh.run("checking the agent", &remote::state(&dir)).await?)
                .get("running")
                .is_some_and(|r| r == "0");
        if exited || Instant::now() >= deadline {
            let (_, tail) = ssh.exec(&remote::log_tail(&dir, port)).await?;
            let why = if exited {
                "the agent exited".to_string()
            } else {
                format!("no answer at {} before the deadline ({last_err})", h.bind)
            };
            bail!("{why}; last log lines:\n{}", tail.trim_end());
        }
        tokio::time::sleep(POLL).await;
    }
    pb.set_message("healthy");
    ssh.close().await;
    Ok(())
}

#[derive(Debug, Serialize)]
struct DownReport {
    host: String,
    agent: SocketAddr,
    pid: Option<u32>,
    outcome: String,
    error: Option<String>,
}

async fn down(a: &DownArgs, json: bool) -> Result<()> {
    let hosts = Hosts::load(&a.hosts.hosts)?;
    let bars = bars(&hosts, json);
    let jobs = hosts.hosts.iter().zip(&bars).map(|(h, pb)| {
        let hosts = &hosts;
        async move {
            pb.set_message("connecting");
            let r: Result<(Option<u32>, String)> = async {
                let ssh = connect(hosts, h).await?;
                pb.set_message("stopping (SIGTERM)");
                let out = ssh
                    .run(
                        "stopping the agent",
                        &remote::stop(&h.remote_dir, a.timeout_secs),
                    )
                    .await?;
                ssh.close().await;
                let kv = remote::parse_kv(&out);
                Ok((
                    kv.get("pid").and_then(|p| p.parse().ok()),
                    kv.get("outcome").cloned().unwrap_or_default(),
                ))
            }
            .await;
            let rep = match r {
                Ok((pid, outcome)) => DownReport {
                    host: h.name.clone(),
                    agent: h.bind,
                    pid,
                    outcome,
                    error: None,
                },
                Err(e) => DownReport {
                    host: h.name.clone(),
                    agent: h.bind,
                    pid: None,
                    outcome: "error".into(),
                    error: Some(format!("{e:#}")),
                },
            };
            pb.finish_with_message(rep.error.clone().unwrap_or_else(|| rep.outcome.clone()));
            rep
        }
    });
    let reports: Vec<DownReport> = futures::future::join_all(jobs).await;
    let failed = reports.iter().filter(|r| r.error.is_some()).count();
    if json {
        println!(
            "{}",
            serde_json::json!({ "hosts": reports, "failed": failed })
        );
    } else {
        let rows: Vec<Vec<String>> = reports
            .iter()
            .map(|r| {
                vec![
                    r.host.clone(),
                    r.agent.to_string(),
                    r.pid.map_or("-".into(), |p| p.to_string()),
                    r.error.clone().unwrap_or_else(|| r.outcome.clone()),
                ]
            })
            .collect();
        print!(
            "{}",
            render_table(&["HOST", "AGENT", "PID", "OUTCOME"], &rows)
        );
    }
    if failed > 0 {
        bail!("{failed} of {} hosts failed", reports.len());
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct StatusReport {
    host: String,
    agent: SocketAddr,
    launcher: Option<String>,
    pid: Option<u32>,
    running: Option<bool>,
    answering: bool,
    node_id: Option<String>,
    members: Option<usize>,
    leader: Option<SocketAddr>,
    ssh_error: Option<String>,
    /// Why a stopped agent exited, from its log (`error: ...`; a full disk, say).
    last_error: Option<String>,
}

async fn status(a: &HostsArg, json: bool) -> Result<()> {
    let hosts = Hosts::load(&a.hosts)?;
    let jobs = hosts.hosts.iter().map(|h| {
        let hosts = &hosts;
        async move {
            let remote: Result<std::collections::HashMap<String, String>> = async {
                let ssh = connect(hosts, h).await?;
                let out = ssh
                    .run("reading the agent state", &remote::state(&h.remote_dir))
                    .await?;
                ssh.close().await;
                Ok(remote::parse_kv(&out))
            }
            .await;
            let mut c = Client::new(h.bind).with_timeout(PROBE_TIMEOUT);
            let id = c.id().await.ok();
            let members = c
                .members()
                .await
                .ok()
                .map(|m| m.iter().filter(|m| m.state.is_live()).count());
            let leader = c.leader().await.ok().and_then(|l| l.leader);
            let (launcher, pid, running, ssh_error, last_error) = match remote {
                Ok(kv) => (
                    kv.get("launcher").filter(|l| !l.is_empty()).cloned(),
                    kv.get("pid").and_then(|p| p.parse().ok()),
                    Some(kv.get("running").is_some_and(|r| r == "1")),
                    None,
                    kv.get("last_error").filter(|e| !e.is_empty()).cloned(),
                ),
                Err(e) => (None, None, None, Some(format!("{e:#}")), None),
            };
            StatusReport {
                host: h.name.clone(),
                agent: h.bind,
                launcher,
                pid,
                running,
                answering: id.is_some(),
                node_id: id.map(|i| i.id.to_string()),
                members,
                leader,
                ssh_error,
                last_error,
            }
        }
    });
    let reports: Vec<StatusReport> = futures::future::join_all(jobs).await;
    let answering: Vec<SocketAddr> = reports
        .iter()
        .filter(|r| r.answering)
        .map(|r| r.agent)
        .collect();
    let cluster_jobs = stalls::ask_jobs(&answering, stalls::JOBS_WAIT).await;
    if json {
        println!(
            "{}",
            serde_json::json!({ "hosts": reports, "jobs": cluster_jobs })
        );
    } else {
        let rows: Vec<Vec<String>> = reports
            .iter()
            .map(|r| {
                vec![
                    r.host.clone(),
                    r.agent.to_string(),
                    r.launcher.clone().unwrap_or_else(|| "-".into()),
                    r.pid.map_or("-".into(), |p| p.to_string()),
                    match (r.running, &r.ssh_error) {
                        (_, Some(e)) => format!("ssh error: {e}"),
                        (Some(true), _) => "running".into(),
                        _ => match &r.last_error {
                            Some(e) => format!("not running: {e}"),
                            None => "not running".into(),
                        },
                    },
                    if r.answering {
                        "answering"
                    } else {
                        "no answer"
                    }
                    .into(),
                    r.members.map_or("-".into(), |n| n.to_string()),
                    r.leader.map_or("-".into(), |l| l.to_string()),
                ]
            })
            .collect();
        print!(
            "{}",
            render_table(
                &[
                    "HOST", "AGENT", "LAUNCHER", "PID", "PROCESS", "API", "MEMBERS", "LEADER"
                ],
                &rows
            )
        );
        print!("{}", cluster_jobs.text());
    }
    Ok(())
}
