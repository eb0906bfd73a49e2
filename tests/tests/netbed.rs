//! Issue 18 on the namespace test bed: five agents on five hosts and the test client on a
//! sixth, so every request crosses a (virtual) network, and partitions are real drop rules
//! in both directions. Needs root, `ip` and `nft` (installed by `scripts/setup.sh`).

use anyhow::{Context, Result, ensure};
use dml_shared::NodeId;
use dml_tests::agent::Agent;
use dml_tests::events::EventKind;
use dml_tests::netbed::Bed;
use dml_tests::sdfs::{READY, SdfsCluster, SdfsOptions, api, content};
use dml_tests::view::wait_not_live;
use dml_tests::wait::wait_for;
use std::time::{Duration, Instant};

const AGENTS: usize = 5;
const CLIENT: usize = AGENTS;

/// The leader's host is cut off from the other agents (both directions; the client still
/// reaches it). The majority elects a new leader and commits; the old leader says it has
/// no majority; after healing one leader remains, the majority's members kept their
/// identities and declared none of each other failed, and every file reads back everywhere.
#[test]
fn a_cut_off_leader_is_replaced_and_the_heal_keeps_the_majority_identities() -> Result<()> {
    let bed = Bed::create(AGENTS + 1)?;
    let hosts = bed.hosts()[..AGENTS].to_vec();
    bed.block_on_in(CLIENT, || async {
        let mut opts = SdfsOptions::new(AGENTS);
        opts.hosts = hosts;
        let c = SdfsCluster::start_with("netbed-partition", opts).await?;
        let all: Vec<usize> = (0..AGENTS).collect();
        let before = c.leader_index(&all, READY).await?;
        c.must_put(before, "before", &content::text("before", 10_000))
            .await?;
        let ids_before: Vec<_> = current_ids(&c, &all).await?;

        let rest: Vec<usize> = all.iter().copied().filter(|&i| i != before).collect();
        let t0 = Instant::now();
        bed.partition(&[before], &rest)?;
        let new = wait_for(
            "the majority to elect a new leader",
            READY,
            Duration::from_millis(100),
            async || {
                let l = c.check_leader(&rest).await?;
                ensure!(
                    l != c.addrs[before],
                    "the cut-off agent a{before} still leads"
                );
                c.index_of(l)
            },
        )
        .await
        .with_context(|| format!("rules:\n{}", bed.rules()))?;
        let during = content::text("during", 20_000);
        c.must_put(rest[0], "during", &during).await?;
        eprintln!(
            "new leader a{new} committed a put {:.1} s after the cut",
            t0.elapsed().as_secs_f64()
        );
        // The cut-off agent no longer claims the term without a majority.
        let cut_off = c.addrs[before];
        wait_for(
            "the cut-off leader to stop claiming a majority",
            READY,
            Duration::from_millis(250),
            async || {
                let info = api::leader_info(cut_off).await?;
                ensure!(
                    info.leader != Some(cut_off) || info.unacked_ms.is_some(),
                    "a{before} still claims to lead, acknowledged: {info:?}"
                );
                Ok(())
            },
        )
        .await?;

        // Both sides have removed the other before the heal, as in a long partition.
        let majority: Vec<&Agent> = rest.iter().map(|&i| c.agent(i)).collect();
        wait_not_live(&majority, &[ids_before[before]], READY).await?;
        let rest_ids: Vec<NodeId> = rest.iter().map(|&i| ids_before[i]).collect();
        wait_not_live(&[c.agent(before)], &rest_ids, READY).await?;

        bed.heal()?;
        let t1 = Instant::now();
        c.wait_ready(READY).await?;
        eprintln!(
            "one view and one leader {:.1} s after healing",
            t1.elapsed().as_secs_f64()
        );
        for &i in &all {
            c.must_get(i, "before", &content::text("before", 10_000))
                .await?;
            c.must_get(i, "during", &during).await?;
        }
        let ids_after = current_ids(&c, &all).await?;
        for &i in &rest {
            ensure!(
                ids_after[i] == ids_before[i],
                "majority member a{i} changed identity: {} → {}",
                ids_before[i],
                ids_after[i]
            );
            let failed: Vec<String> = c
                .agent(i)
                .events()?
                .into_iter()
                .filter(|e| e.event == EventKind::Failed && rest.contains(&index(&c, e)))
                .map(|e| e.member.to_string())
                .collect();
            ensure!(
                failed.is_empty(),
                "a{i} declared majority members failed: {failed:?}"
            );
        }
        Ok(())
    })
}

async fn current_ids(c: &SdfsCluster, among: &[usize]) -> Result<Vec<NodeId>> {
    let mut v = Vec::new();
    for &i in among {
        v.push(c.agent(i).current_id().await?);
    }
    Ok(v)
}

/// The agent index of an event's member (`usize::MAX` if none).
fn index(c: &SdfsCluster, e: &dml_tests::events::Event) -> usize {
    c.index_of(e.member.addr).unwrap_or(usize::MAX)
}
