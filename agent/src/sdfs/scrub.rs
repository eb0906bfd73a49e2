//! Scrub: every `sdfs.scrub_interval`, re-hash each stored copy against the
//! checksum recorded at write time (paced by the repair throttle). A corrupt
//! copy is deleted and re-fetched from another replica named by the metadata.

use super::replicate::{self, Wanted};
use super::stats::Counters;
use super::store::Verdict;
use super::{Ctx, meta};
use std::sync::Arc;
use tokio::sync::watch;

/// What one scrub pass found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubReport {
    pub checked: u64,
    pub corrupt: u64,
    pub repaired: u64,
}

/// Runs a pass every `scrub_interval` until shutdown.
pub async fn task(ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ctx.cfg.scrub_interval) => {}
            _ = shutdown.changed() => return,
        }
        let report = tokio::select! {
            r = run(&ctx) => r,
            _ = shutdown.changed() => return,
        };
        tracing::info!(?report, "SDFS: scrub pass done");
    }
}

/// One pass over every stored copy.
pub async fn run(ctx: &Arc<Ctx>) -> ScrubReport {
    let mut report = ScrubReport::default();
    for m in ctx.store.objects() {
        let (c, m2) = (ctx.clone(), m.clone());
        let verdict = tokio::task::spawn_blocking(move || {
            c.store
                .verify(&m2, c.cfg.chunk_size, |n| c.throttle.take_blocking(n))
        })
        .await;
        Counters::bump(&ctx.counters.scrubbed);
        report.checked += 1;
        match verdict {
            Ok(Ok(Verdict::Intact)) => {}
            Ok(Ok(Verdict::Corrupt | Verdict::Missing)) => {
                // A later plan's put replaced the copy while it was hashed.
                let now = ctx.store.get(&m.name, m.version);
                if now.is_some_and(|n| n.checksum != m.checksum) {
                    continue;
                }
                report.corrupt += 1;
                Counters::bump(&ctx.counters.scrub_corruptions);
                if refetch(ctx, &m.name, m.version, CORRUPT).await {
                    report.repaired += 1;
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "SDFS: scrub cannot read a copy"),
            Err(e) => tracing::warn!(error = %e, "SDFS: scrub task failed"),
        }
    }
    report
}

/// A copy found corrupt while serving it: repair it in the background.
pub fn handle_corrupt(ctx: Arc<Ctx>, name: String, version: u64) {
    tokio::spawn(async move {
        Counters::bump(&ctx.counters.scrub_corruptions);
        refetch(&ctx, &name, version, CORRUPT).await;
    });
}

const CORRUPT: &str = "it no longer matches its recorded checksum";

/// Deletes the local copy (bad because `why`) and fetches it again from
/// another replica of the committed version, checked against the committed
/// checksum. Returns whether a good copy is back.
pub(crate) async fn refetch(ctx: &Ctx, name: &str, version: u64, why: &str) -> bool {
    tracing::warn!(%name, version, agent = %ctx.agent, why, "SDFS: bad copy found; deleting and re-fetching");
    let store = ctx.store.clone();
    let n = name.to_string();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.remove(&n, version)).await {
        tracing::warn!(error = %e, "SDFS: cannot delete a corrupt copy");
        return false;
    }
    let info = match meta::stat(ctx, name).await {
        Ok(info) => info,
        Err(e) => {
            tracing::warn!(%name, version, error = %e, "SDFS: cannot find other replicas");
            return false;
        }
    };
    let Some(v) = info.versions.iter().find(|v| v.version == version) else {
        tracing::info!(%name, version, "SDFS: version no longer committed; not re-fetched");
        return false;
    };
    let want = Wanted {
        name: name.to_string(),
        version,
        size: v.size,
        checksum: v.checksum,
    };
    match replicate::fetch(ctx, &want, &v.replicas).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "SDFS: corrupt copy not repaired");
            false
        }
    }
}
