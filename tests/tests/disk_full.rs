//! A full disk on one agent, with real processes: every agent has a small file system of
//! its own ([`dml_tests::small_disk`]) and a ballast fills one of them. Needs root (tmpfs
//! mounts); build the binaries first: `cargo build --workspace --bins`.

use anyhow::{Context, Result, ensure};
use dml_shared::config::SdfsConfig;
use dml_tests::sdfs::{READY, SDFS_POLL, SdfsCluster, SdfsOptions, api, cluster_slot, content};
use dml_tests::wait_for;
use std::time::{Duration, Instant};

const AGENTS: usize = 5;
/// Each agent's own file system.
const DISK: u64 = 64 << 20;
/// `sdfs.disk_reserve` in this test.
const RESERVE: u64 = 16 << 20;
/// Bound on the full agent's Raft log failing and the agent exiting: redb first fills the
/// free pages of its file (up to 90 s of puts with short names, in trials).
const FAIL_STOP: Duration = Duration::from_secs(120);

/// Bytes of padding in the names of the puts that wait for the Raft log to fail.
const LONG_NAME: usize = 900;

/// One acknowledged put: name, bytes.
type Acked = Vec<(String, Vec<u8>)>;

/// Puts `name` through `via`; its bytes and the holders' failures.
async fn put(
    c: &SdfsCluster,
    via: usize,
    name: &str,
    acked: &mut Acked,
) -> Result<Vec<(std::net::SocketAddr, String)>> {
    let bytes = content::text(name, 20_000);
    let deadline = Instant::now() + READY;
    loop {
        match c.client_put(via, name, &bytes).await? {
            Ok(r) => {
                acked.push((name.to_string(), bytes));
                return Ok(r.failed);
            }
            // A put that changed nothing or did not commit (a leader that missed a quorum
            // round on a loaded machine, or stepped down while a voter stopped): a client
            // tries again, as the error says.
            Err(e)
                if ["nothing was changed", "retry the put"]
                    .iter()
                    .any(|w| e.to_string().contains(w))
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(SDFS_POLL).await;
            }
            Err(e) => return Err(e).with_context(|| format!("put of \"{name}\" through a{via}")),
        }
    }
}

/// One agent's disk fills: first to below `sdfs.disk_reserve`, where SDFS refuses copies
/// (naming the full disk) but the Raft log still has room; then to ENOSPC, where the Raft
/// log fails and the agent exits non-zero saying its disk is full. Puts through the others
/// commit throughout, without the full agent as a holder. Once the ballast is gone and the
/// agent is started again (as a supervisor would), it catches up and serves: every
/// acknowledged put reads back byte-exact through it, and new copies land on it.
#[tokio::test]
async fn a_full_disk_refuses_copies_then_stops_its_agent_which_serves_again_once_freed()
-> Result<()> {
    let _slot = cluster_slot().await;
    let mut opts = SdfsOptions::new(AGENTS);
    opts.disk_bytes = Some(DISK);
    opts.sdfs = SdfsConfig {
        disk_reserve: RESERVE,
        ..opts.sdfs
    };
    let mut c = SdfsCluster::start_with("disk-full", opts).await?;
    let r = fill_one(&mut c).await;
    if r.is_err() {
        c.cluster.keep_dir();
    }
    r
}

async fn fill_one(c: &mut SdfsCluster) -> Result<()> {
    let all: Vec<usize> = (0..AGENTS).collect();
    let leader = c.leader_index(&all, READY).await?;
    let full = (leader + 1) % AGENTS;
    let addr = c.addrs[full];
    let others: Vec<usize> = all.iter().copied().filter(|&i| i != full).collect();
    let mut acked = Acked::new();
    let mut n = 0;

    // Below the reserve: copies refused, the agent stays up and its Raft log follows.
    c.disk(full)?.fill_leaving(RESERVE / 2)?;
    let mut refused = Vec::new();
    while refused.is_empty() {
        ensure!(n < 20, "20 puts and none placed a copy on a{full}");
        let via = others[n % others.len()];
        let name = format!("reserve/f{n}");
        n += 1;
        let failed = put(c, via, &name, &mut acked).await?;
        refused.extend(failed.into_iter().filter(|(a, _)| *a == addr));
        let info = c
            .file(via, &name)
            .await?
            .context("an acknowledged put is listed")?;
        let holders = &info.versions[0].replicas;
        ensure!(
            !holders.contains(&addr),
            "a{full} holds {name}: {holders:?}"
        );
    }
    let why = &refused[0].1;
    ensure!(
        why.contains(&format!("disk full on agent {addr}"))
            && why.contains("sdfs.disk_reserve keeps"),
        "the refusal does not say the disk is full: {why}"
    );
    ensure!(c.cluster.agents[full].is_running(), "a{full} stopped early");
    let what = format!("a{full}'s Raft log to follow the leader's");
    wait_for(&what, READY, SDFS_POLL, async || {
        let mine = api::leader_info(addr).await?.last_applied;
        let lead = api::leader_info(c.addrs[leader]).await?.last_applied;
        ensure!(
            mine == lead,
            "a{full} applied {mine:?}, the leader {lead:?}"
        );
        Ok(())
    })
    .await?;

    // Full: the Raft log cannot grow, the agent fails-stop; puts through the others commit.
    c.disk(full)?.fill()?;
    let deadline = Instant::now() + FAIL_STOP;
    let status = loop {
        if let Some(s) = c.cluster.agents[full].try_exit()? {
            break s;
        }
        ensure!(
            Instant::now() < deadline,
            "a{full} still runs {FAIL_STOP:?} after its disk filled"
        );
        let via = others[n % others.len()];
        // Long names make long log entries, so the Raft log outgrows its file sooner.
        let name = format!("full/f{n}/{}", "x".repeat(LONG_NAME));
        n += 1;
        put(c, via, &name, &mut acked).await?;
        tokio::time::sleep(SDFS_POLL).await;
    };
    ensure!(!status.success(), "a{full} exited with {status}");
    let log = c.agent(full).stderr();
    ensure!(
        log.contains("disk full: the control plane's store")
            && log.contains("control/raft.redb")
            && log.contains("this agent exits"),
        "a{full}'s log does not say its disk is full:\n{}",
        c.agent(full).stderr_tail(20)
    );
    if let Some(line) = log
        .lines()
        .find(|l| l.contains("disk full: the control plane"))
    {
        eprintln!("a{full} ({status}): {line}");
    }
    for (i, via) in others.iter().enumerate().take(2) {
        put(c, *via, &format!("down/f{i}"), &mut acked).await?;
    }

    // Freed and restarted: it catches up, serves every acknowledged put, and stores again.
    c.disk(full)?.free()?;
    c.restart(full).await?;
    c.wait_ready(READY).await?;
    for (name, bytes) in &acked {
        c.must_get(full, name, bytes).await?;
    }
    let mut stored = false;
    for i in 0..20 {
        let name = format!("after/f{i}");
        let failed = put(c, full, &name, &mut acked).await?;
        ensure!(failed.is_empty(), "{name}: {failed:?}");
        let info = c.file(full, &name).await?.context("listed")?;
        if info.versions[0].replicas.contains(&addr) {
            stored = true;
            break;
        }
    }
    ensure!(stored, "no new copy landed on a{full}");
    Ok(())
}
