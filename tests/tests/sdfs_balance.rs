//! SDFS balance with real agents: a load's batches (each on one chain) are spread over
//! the agents by the spread trigger; then three agents that were down while the data
//! went in come back, and the leader moves them their share, while a reader loop reads
//! every file throughout and never fails. `dml sdfs balance --dry-run` lists moves
//! toward the newcomers while they run, and nothing once they are done; `dml sdfs balance`
//! then starts an empty plan.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use anyhow::{Context, Result, ensure};
use dml_shared::sdfs::{MetaRequest, MetaResponse};
use dml_shared::sdfs_client::no_progress;
use dml_tests::sdfs::content::{self, pattern};
use dml_tests::sdfs::{READY, SDFS_POLL, SdfsCluster, SdfsOptions, api, cluster_slot};
use dml_tests::wait_for;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Agents in the cluster; the last [`NEWCOMERS`] (not voters) are down while the data
/// goes in.
const AGENTS: usize = 10;
const NEWCOMERS: usize = 3;
/// Files of [`FILE_BYTES`]: 640 copies over 10 agents, 64 each at an even spread.
const FILES: usize = 160;
const FILE_BYTES: usize = 32 << 10;
/// Each newcomer's bytes once balanced, against an even spread: rendezvous placement of
/// 160 equal files puts about 64 ± 8 copies on an agent.
const SHARE: std::ops::RangeInclusive<f64> = 0.5..=1.5;
/// Bound on each balance finishing: a few hundred small moves; the rest is slack for a
/// loaded two-core machine (the bench measures the speed).
const BALANCE_BOUND: Duration = Duration::from_secs(180);

/// Each live agent's committed bytes, from the leader's metadata.
async fn bytes_per_agent(c: &SdfsCluster) -> Result<BTreeMap<SocketAddr, u64>> {
    let MetaResponse::Nodes(nodes) = api::meta(c.addrs[0], MetaRequest::Nodes).await? else {
        anyhow::bail!("Nodes answered with something else");
    };
    Ok(nodes
        .into_iter()
        .map(|(a, held)| (a, held.iter().map(|h| h.size).sum()))
        .collect())
}

/// `dml sdfs balance --dry-run --json`: (moves, the agents they go to).
async fn dry_run(c: &SdfsCluster) -> Result<(u64, Vec<String>)> {
    let out = c
        .dml(0, &["sdfs", "balance", "--dry-run", "--json"])
        .await?;
    out.ensure_success()?;
    let v = out.json()?;
    ensure!(v["started"] == false, "a dry run started: {v}");
    let moves = v["moves"].as_u64().context("no moves")?;
    let to = v["flows"]
        .as_array()
        .context("no flows")?
        .iter()
        .filter_map(|f| f["to"].as_str().map(str::to_string))
        .collect();
    Ok((moves, to))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_that_join_receive_their_share_while_every_read_succeeds() {
    let _slot = cluster_slot().await;
    let mut c = SdfsCluster::start_with("sdfs-balance", SdfsOptions::new(AGENTS))
        .await
        .unwrap();
    let newcomers: Vec<usize> = (AGENTS - NEWCOMERS..AGENTS).collect();
    for &i in &newcomers {
        c.kill(i).await.unwrap();
    }
    wait_for(
        "the leader to see only the first agents live",
        READY,
        SDFS_POLL,
        async || {
            let n = bytes_per_agent(&c).await?.len();
            ensure!(n == AGENTS - NEWCOMERS, "{n} live");
            Ok(())
        },
    )
    .await
    .unwrap();

    // Equal files of distinct bytes, loaded in batches: each batch lands on one chain.
    let dir = c.local_path("data");
    std::fs::create_dir_all(&dir).unwrap();
    let mut contents = BTreeMap::new();
    for i in 0..FILES {
        let rel = format!("f{i:04}.bin");
        let bytes = pattern(i as u64 + 7, FILE_BYTES);
        content::write_file(&dir.join(&rel), &bytes).unwrap();
        contents.insert(format!("bal/{rel}"), bytes);
    }
    let d = dir.to_string_lossy();
    c.dml(0, &["sdfs", "load", &d, "bal"])
        .await
        .unwrap()
        .ensure_success()
        .unwrap();

    // A reader reads every file, again and again, until the end.
    let contents = Arc::new(contents);
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let reader = {
        let (client, contents) = (c.client(0), contents.clone());
        let (stop, reads, failed) = (stop.clone(), reads.clone(), failed.clone());
        let local = c.local_path("read");
        tokio::spawn(async move {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for (name, bytes) in contents.iter() {
                    let got = client.get(name, &local, &no_progress).await;
                    let ok = match got {
                        Ok(_) => std::fs::read(&local).is_ok_and(|b| b == *bytes),
                        Err(e) => {
                            errors.push(format!("{name}: {e}"));
                            false
                        }
                    };
                    reads.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            errors
        })
    };

    // The batches' chains hold everything: the spread trigger moves the copies to
    // their placement over the live agents.
    wait_for(
        "the loaded data spread over the live agents",
        BALANCE_BOUND,
        SDFS_POLL,
        async || {
            let (moves, _) = dry_run(&c).await?;
            ensure!(moves == 0, "{moves} moves left");
            Ok(())
        },
    )
    .await
    .unwrap();

    // The newcomers come back (empty): the leader plans moves toward them.
    for &i in &newcomers {
        c.restart(i).await.unwrap();
    }
    let names: Vec<String> = newcomers.iter().map(|&i| c.addrs[i].to_string()).collect();
    let listed = wait_for(
        "the dry run to list moves toward the newcomers",
        READY,
        SDFS_POLL,
        async || {
            let (moves, to) = dry_run(&c).await?;
            ensure!(moves > 0, "no move listed");
            ensure!(to.iter().any(|t| names.contains(t)), "moves only to {to:?}");
            Ok(moves)
        },
    )
    .await
    .unwrap();
    let shares = wait_for(
        "the newcomers to hold their share and no move to be left",
        BALANCE_BOUND,
        SDFS_POLL,
        async || {
            let per = bytes_per_agent(&c).await?;
            ensure!(per.len() == AGENTS, "{} live", per.len());
            let mean = per.values().sum::<u64>() as f64 / AGENTS as f64;
            let shares: Vec<f64> = newcomers
                .iter()
                .map(|&i| per.get(&c.addrs[i]).copied().unwrap_or(0) as f64 / mean)
                .collect();
            ensure!(
                shares.iter().all(|s| SHARE.contains(s)),
                "newcomers at {shares:.2?} of even"
            );
            let (moves, _) = dry_run(&c).await?;
            ensure!(moves == 0, "{moves} moves left");
            Ok(shares)
        },
    )
    .await
    .unwrap();

    // Started by hand with nothing left, the plan is empty and says so.
    let out = c.dml(0, &["sdfs", "balance"]).await.unwrap();
    out.ensure_success().unwrap();
    assert!(
        out.stdout.starts_with("started: balanced, no copy to move"),
        "{}",
        out.stdout
    );

    // One more full pass of the reader after the moves, then stop it.
    let seen = reads.load(Ordering::Relaxed);
    wait_for("a full read pass after", READY, SDFS_POLL, async || {
        let now = reads.load(Ordering::Relaxed);
        ensure!(now >= seen + FILES as u64, "{} reads since", now - seen);
        Ok(())
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    let errors = reader.await.unwrap();
    let (reads, failed) = (
        reads.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    eprintln!(
        "{listed} moves listed after the join; newcomers at {shares:.2?} of even; {reads} reads, {failed} failed"
    );
    assert_eq!(failed, 0, "reads failed during the moves: {errors:?}");
    assert!(reads >= 2 * FILES as u64, "only {reads} reads");
}
