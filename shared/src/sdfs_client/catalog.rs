//! Metadata-only flows: ls, count, nodes, delete, and a node's holdings;
//! plus settling a change the leader appended but could not confirm.

use super::{Count, Phase, Progress, ProgressFn, Sdfs, no_progress};
use crate::api::Response;
use crate::client::{Client, unexpected};
use crate::error::{Error, Result};
use crate::sdfs::{
    BalancePlan, ChangeOutcome, FileInfo, Glob, Holding, LIST_PAGE_MAX, MetaRequest, MetaResponse,
    validate_name,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Pause between two questions about an unconfirmed change.
const SETTLE_POLL: Duration = Duration::from_millis(200);

impl Sdfs {
    /// A file's committed versions (oldest first) and their replicas.
    pub async fn ls(&self, name: &str) -> Result<FileInfo> {
        validate_name(name)?;
        match self.meta(MetaRequest::Stat { name: name.into() }).await? {
            MetaResponse::File(f) if f.versions.is_empty() => {
                Err(Error::NotFound { name: name.into() })
            }
            MetaResponse::File(f) => Ok(f),
            other => Err(unexpected(Response::Control(other.into()))),
        }
    }

    /// Files whose names match `glob`, in name order.
    pub async fn ls_all(&self, glob: &str) -> Result<Vec<FileInfo>> {
        let mut all = Vec::new();
        self.ls_all_pages(glob, |page| all.extend(page)).await?;
        Ok(all)
    }

    /// Files whose names match `glob`, in name order, handed to `each` a
    /// page at a time as the leader answers ([`MetaRequest::ListPage`]):
    /// the first names arrive at once however many match.
    pub async fn ls_all_pages(
        &self,
        glob: &str,
        mut each: impl FnMut(Vec<FileInfo>),
    ) -> Result<()> {
        let matcher = Glob::new(glob)?;
        let mut after: Option<String> = None;
        loop {
            let req = MetaRequest::ListPage {
                glob: glob.into(),
                after: after.clone(),
                limit: LIST_PAGE_MAX,
            };
            match self.meta(req).await? {
                MetaResponse::FilesPage { mut files, next } => {
                    files.retain(|f| {
                        !f.versions.is_empty()
                            && matcher.is_match(&f.name)
                            && after.as_ref().is_none_or(|a| f.name > *a)
                    });
                    if !files.is_empty() {
                        each(files);
                    }
                    match next {
                        // A cursor that does not move on would never end.
                        Some(n) if after.as_ref().is_none_or(|a| n > *a) => after = Some(n),
                        Some(n) => {
                            return Err(Error::unexpected(format!(
                                "the leader's listing did not move past \"{}\"",
                                crate::sdfs::printable(&n)
                            )));
                        }
                        None => return Ok(()),
                    }
                }
                other => return Err(unexpected(Response::Control(other.into()))),
            }
        }
    }

    /// Every file in the store.
    pub async fn files(&self) -> Result<Vec<FileInfo>> {
        self.ls_all("*").await
    }

    /// The versions each agent holds, by agent address.
    pub async fn nodes(&self) -> Result<Vec<(SocketAddr, Vec<Holding>)>> {
        match self.meta(MetaRequest::Nodes).await? {
            MetaResponse::Nodes(mut n) => {
                n.sort_by_key(|(a, _)| *a);
                Ok(n)
            }
            other => Err(unexpected(Response::Control(other.into()))),
        }
    }

    /// The balance plan as the leader sees it now; started unless `dry_run`.
    pub async fn balance(&self, dry_run: bool) -> Result<BalancePlan> {
        match self.meta(MetaRequest::Balance { dry_run }).await? {
            MetaResponse::Balance(p) => Ok(p),
            other => Err(unexpected(Response::Control(other.into()))),
        }
    }

    /// Files, versions and bytes in the store.
    pub async fn count(&self) -> Result<Count> {
        match self.meta(MetaRequest::Count).await? {
            MetaResponse::Count {
                files,
                versions,
                bytes,
            } => Ok(Count {
                files,
                versions,
                bytes,
            }),
            other => Err(unexpected(Response::Control(other.into()))),
        }
    }

    /// Deletes every version of `name`.
    pub async fn delete(&self, name: &str) -> Result<()> {
        self.delete_with(name, &no_progress).await
    }

    /// [`Sdfs::delete`], telling `progress` ([`Phase::Settling`]) when the
    /// leader could not confirm the delete and its outcome is awaited.
    pub async fn delete_with(&self, name: &str, progress: ProgressFn<'_>) -> Result<()> {
        validate_name(name)?;
        match self.meta(MetaRequest::Delete { name: name.into() }).await? {
            MetaResponse::Done => Ok(()),
            MetaResponse::DeleteUnconfirmed { term, through, .. } => {
                progress(Progress {
                    phase: Phase::Settling,
                    done: 0,
                    total: 0,
                });
                let ask = MetaRequest::DeleteOutcome {
                    name: name.into(),
                    term,
                    through,
                };
                self.settle(
                    ask,
                    || Error::DeleteLost { name: name.into() },
                    |waited| Error::DeleteUnsettled {
                        name: name.into(),
                        waited,
                    },
                )
                .await
            }
            other => Err(unexpected(Response::Control(other.into()))),
        }
    }

    /// What `node` (default: this client's agent) stores on its disk.
    pub async fn store(&self, node: Option<SocketAddr>) -> Result<Vec<Holding>> {
        let mut c = Client::new(node.unwrap_or(self.agent)).with_timeout(self.opts.call_timeout);
        let mut h = c.holdings().await?;
        h.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
        Ok(h)
    }

    /// Asks `ask` what became of a commit or delete the leader appended but
    /// no majority confirmed, until the answer is final (`lost` if it never
    /// takes effect) or `leader_wait` has passed (`unsettled`): a change
    /// reported failed never takes effect later.
    pub(super) async fn settle(
        &self,
        ask: MetaRequest,
        lost: impl Fn() -> Error,
        unsettled: impl Fn(Duration) -> Error,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            tokio::time::sleep(SETTLE_POLL).await;
            match self.meta(ask.clone()).await {
                Ok(MetaResponse::Outcome(ChangeOutcome::Committed)) => return Ok(()),
                Ok(MetaResponse::Outcome(ChangeOutcome::Failed)) => return Err(lost()),
                // Still pending, or no leader can answer yet.
                Ok(MetaResponse::Outcome(ChangeOutcome::Pending)) | Err(_) => {}
                Ok(other) => return Err(unexpected(Response::Control(other.into()))),
            }
            if start.elapsed() >= self.opts.leader_wait {
                let waited = Duration::from_millis(start.elapsed().as_millis() as u64);
                return Err(unsettled(waited));
            }
        }
    }
}
