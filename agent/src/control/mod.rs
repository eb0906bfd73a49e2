//! The replicated control plane: Raft (openraft 0.9) among the configured
//! voters, persisted in redb, holding the SDFS metadata. The Raft leader is
//! the cluster leader; every agent (voter or not) accepts metadata requests
//! and forwards them to it.
//!
//! Replicated state (pure):
//! - [`types`]: the openraft type config, the commands of the log, voter ids.
//! - [`state`]: the metadata state machine (a plain struct).
//! - [`jobs`]: its inference part: jobs, per-image results, batch sizes.
//! - [`placement`]: consistent hashing of names over agents.
//! - [`store`]: the redb log, vote and snapshot storage.
//! - [`network`]: Raft RPCs over the agent TCP port.
//! - [`voters`]: the voter's Raft node id, and a voter that lost its state
//!   rejoining under a new one.
//!
//! The leader's own state, owned by one task per leader term:
//! - [`task`]: the leader task and its supervisor. The supervisor (one per
//!   voter) watches Raft's metrics and runs a leader task while this voter
//!   leads, a new one per term, dropped when the term ends. The task owns
//!   the [`core::LeaderCore`] and is fed one `Input` enum: requests with a
//!   oneshot reply, membership events, Raft metric changes, ticks, and the
//!   results of the Raft writes, transfers and output stores it spawned.
//! - [`core`]: the leader core (pure, takes `now`): the scheduler, the put
//!   plans, the read lease, and the bookkeeping of the maintenance pass
//!   (stale puts to expire, repair copies in flight, outputs being stored).
//! - [`serve`]: what the leader does with each request (pure): answer,
//!   append, or wait for a view, a plan's outcome or work; `serve/batch.rs`
//!   plans and commits batched puts (group commit).
//! - [`ports`]: what the leader task reaches outside itself (Raft, the
//!   state, membership, transfers), as one trait, and the agent's ports.
//! - [`plans`]: put plans answered before their entry commits (pure).
//! - [`lease`]: the read lease (pure).
//! - [`scheduler`]: query leases, fair-time dispatch and dynamic batching, C1/C2/C5 (pure).
//! - [`batching`]: the batch size a model's p99 target picks (pure).
//! - [`progress`]: each job's progress per worker, queue and compute time (pure).
//! - [`repair`]: the repair planner (pure).
//! - [`balance`]: the balance planner: copies moved toward the placement the
//!   alive agents give (pure).
//! - [`workers`]: which inference workers can run queries, and why a job stalls (pure).
//! - [`keyring`]: `dml keyring` changes and fetches at the leader (pure).
//!
//! The request path:
//! - [`forward`]: the leader task serves it here, or it goes on to the leader.
//! - this file: [`ControlPlane`] (start and stop) and [`ControlHandle`] (what
//!   the API calls); `Inner` holds what the request path and the tasks share:
//!   the settings, the Raft and state-machine handles, membership, the
//!   current leader task's handle, and the repair progress that telemetry
//!   reads.

pub mod balance;
pub mod batching;
pub mod core;
pub mod error;
pub mod forward;
pub mod jobs;
pub mod keyring;
pub mod lease;
pub mod network;
pub mod placement;
pub mod plans;
pub(crate) mod ports;
pub mod progress;
pub mod repair;
pub mod scheduler;
pub mod serve;
#[cfg(test)]
mod sim;
pub mod state;
pub mod store;
pub mod task;
pub mod types;
pub mod voters;
pub mod workers;

use crate::membership::driver::MembershipHandle;
use crate::timing::{CLOSE_WAIT, VIEW_TTL};
use dml_shared::api::{LeaderInfo, Response};
use dml_shared::config::{Config, ControlConfig, InferenceConfig, SdfsConfig};
use dml_shared::control::ControlRequest;
use dml_shared::infer::InferRequest;
use dml_shared::models::Registry;
use dml_shared::sdfs::MetaRequest;
pub use error::ControlError;
use openraft::{BasicNode, Raft, SnapshotPolicy};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use store::SharedSm;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use types::{TypeConfig, voter_id};

/// Largest snapshot segment sent in one Raft RPC, well under the frame limit.
const SNAPSHOT_CHUNK: u64 = 1 << 20;
/// Log entries sent in one AppendEntries: a few MB of batched puts at most.
const MAX_PAYLOAD_ENTRIES: u64 = 32;

/// What the control plane needs from the agent's config.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This agent's address (as listed in the voters).
    pub me: SocketAddr,
    pub voters: Vec<SocketAddr>,
    pub control: ControlConfig,
    pub sdfs: SdfsConfig,
    /// Copies of each SDFS version (`Config::replicas`).
    pub replicas: usize,
    pub inference: InferenceConfig,
    pub registry: Arc<Registry>,
    /// The agent's data directory (scratch files of the leader's tasks).
    pub data_dir: std::path::PathBuf,
    /// `security.encrypt_tcp`: keyring secrets travel only encrypted.
    pub encrypt_tcp: bool,
}

impl Settings {
    pub fn from_config(cfg: &Config, me: SocketAddr, registry: Arc<Registry>) -> Self {
        Self {
            me,
            voters: cfg.voters(),
            control: cfg.control.clone(),
            sdfs: cfg.sdfs.clone(),
            replicas: cfg.replicas(),
            inference: cfg.inference.clone(),
            registry,
            data_dir: cfg.data_dir.clone(),
            encrypt_tcp: cfg.security.encrypt_tcp,
        }
    }

    pub fn is_voter(&self) -> bool {
        self.voters.contains(&self.me)
    }

    /// How long a request waits for a leader or a commit: three election
    /// timeouts (a failover, with a split vote) plus one RPC.
    pub fn leader_wait(&self) -> Duration {
        self.control.election_timeout_max * 3 + self.control.rpc_timeout
    }
}

/// Shared by the handle and the tasks.
pub(crate) struct Inner {
    pub s: Settings,
    /// Unset on a non-voter, and on a voter with a blank store until it has
    /// chosen its id (`voters.rs`).
    pub raft: OnceLock<Raft<TypeConfig>>,
    /// This voter's Raft node id, once chosen.
    pub id: OnceLock<u64>,
    /// A voter with a blank store learned that the cluster exists.
    pub knows_cluster: AtomicBool,
    /// The leader is replacing a voter that lost its state.
    pub replacing: AtomicBool,
    pub sm: Option<SharedSm>,
    pub membership: MembershipHandle,
    /// The leader task of the current term while this voter leads.
    pub leader: watch::Receiver<Option<task::LeaderHandle>>,
    /// Re-replication's progress (this agent leading), read by telemetry.
    pub repair: watch::Sender<dml_shared::telemetry::RepairProgress>,
    /// Balance's moves (this agent leading), read by the metrics.
    pub balance: watch::Sender<balance::BalanceProgress>,
    /// The one route to the leader for requests this agent forwards (it
    /// caches the leader and holds the pooled connections).
    pub router: dml_shared::router::LeaderRouter,
    /// The state machine's digest last hashed, and the hash running.
    pub digest: Arc<Mutex<forward::Digest>>,
    /// The membership list last read to gate Raft RPCs, and when.
    pub view: Mutex<Option<(std::time::Instant, Arc<Vec<dml_shared::api::MemberInfo>>)>>,
    /// Raft RPCs of this voter that failed (unreachable, timed out, refused).
    pub rpc_failures: Arc<AtomicU64>,
}

/// Cheap to clone; reaches the control plane. The default handle belongs
/// to an agent with no voters configured: every call says so.
#[derive(Clone, Default)]
pub struct ControlHandle {
    inner: Option<Arc<Inner>>,
}

impl ControlHandle {
    /// Who leads, as this agent knows it (a non-voter asks the voters),
    /// with the state digest when it is at hand (the API's answer).
    pub async fn leader_info(&self) -> LeaderInfo {
        self.leader_info_with(true).await
    }

    /// [`ControlHandle::leader_info`] without the state digest (this agent's
    /// own telemetry, metrics and health, which never show it).
    pub async fn leader_status(&self) -> LeaderInfo {
        self.leader_info_with(false).await
    }

    async fn leader_info_with(&self, digest: bool) -> LeaderInfo {
        match &self.inner {
            Some(i) => i.leader_info(digest).await,
            None => LeaderInfo {
                leader: None,
                term: 0,
                voters: Vec::new(),
                is_voter: false,
                last_applied: None,
                applied_digest: None,
                unacked_ms: None,
                raft_ids: Vec::new(),
            },
        }
    }

    /// Serves a control-plane request here if this agent leads, else sends
    /// it on to the leader (waiting up to [`Settings::leader_wait`] for one);
    /// `leader_only`: served here or refused with `NotLeader`.
    pub async fn control(&self, req: ControlRequest, leader_only: bool) -> Response {
        match &self.inner {
            Some(i) => i.control(req, leader_only).await,
            None => Response::Error(ControlError::NotConfigured.into()),
        }
    }

    /// [`ControlHandle::control`] for SDFS metadata.
    pub async fn meta(&self, req: MetaRequest) -> Response {
        self.control(ControlRequest::Sdfs(req), false).await
    }

    /// [`ControlHandle::control`] for inference.
    pub async fn infer(&self, req: InferRequest) -> Response {
        self.control(ControlRequest::Infer(req), false).await
    }

    /// Handles one Raft RPC from another voter. One that membership holds
    /// failed (or departed) is refused: a leader whose own traffic still gets
    /// out while nothing reaches it (a one-way partition) cannot keep its
    /// followers, so they elect a leader clients can reach.
    /// `from`: the address the connection came from (`None`: the local
    /// socket, this host). Only voters' addresses may send Raft RPCs.
    pub async fn raft_rpc(&self, rpc: Vec<u8>, from: Option<IpAddr>) -> Response {
        let Some(inner) = self.inner.as_ref().filter(|i| i.s.is_voter()) else {
            return Response::Error(dml_shared::RemoteError::new(
                dml_shared::ErrorKind::Refused,
                "this agent is not a control-plane voter",
            ));
        };
        if let Some(ip) = from
            && !from_voter(ip, inner.voter_addrs())
        {
            return Response::Error(dml_shared::RemoteError::new(
                dml_shared::ErrorKind::Refused,
                format!(
                    "Raft RPCs are taken only from the control-plane voters' addresses; {ip} is not one"
                ),
            ));
        }
        let msg = match network::decode(&rpc) {
            Ok(m) => m,
            Err(e) => return Response::Error(e),
        };
        if let Some(r) = voters::serve_own(inner, &msg) {
            return r;
        }
        let (Some(raft), Some(me)) = (inner.raft.get(), inner.id.get()) else {
            return network::reply(&network::RaftReply::Failed(
                "this voter's Raft node is starting".into(),
            ));
        };
        // Only the Raft configuration's voters (or a configured voter's
        // bootstrap id, before the configuration is known) may ask for votes:
        // anyone else holding the key could otherwise bump every term. (An
        // append from an unknown id may be a leader whose configuration this
        // voter has yet to receive, so appends are not refused for that.)
        if let network::RaftRpc::Vote(v) = &msg.rpc
            && let Some(candidate) = v.vote.leader_id().voted_for()
            && inner.voter_addr(candidate).is_none()
        {
            return network::reply(&network::RaftReply::Failed(format!(
                "Raft node {candidate} is not a voter of this cluster"
            )));
        }
        let refuse = async |sender: u64| {
            let addr = inner.voter_addr(sender)?;
            inner
                .departed(addr)
                .await
                .then(|| format!("membership at {} holds voter {addr} failed", inner.s.me))
        };
        network::serve(raft, *me, msg, refuse).await
    }

    /// Re-replication's progress while this agent leads.
    pub fn repair_progress(&self) -> dml_shared::telemetry::RepairProgress {
        self.inner
            .as_ref()
            .map_or_else(Default::default, |i| match i.leader.borrow().is_some() {
                true => *i.repair.borrow(),
                false => Default::default(),
            })
    }

    /// Balance's moves while this agent leads (this term's).
    pub fn balance_progress(&self) -> balance::BalanceProgress {
        self.inner
            .as_ref()
            .map_or_else(Default::default, |i| match i.leader.borrow().is_some() {
                true => *i.balance.borrow(),
                false => Default::default(),
            })
    }

    /// This voter's Raft log bounds (tests and diagnostics); `None` on a non-voter.
    pub fn log_status(&self) -> Option<LogStatus> {
        let inner = self.inner.as_ref()?;
        let m = inner.raft.get()?.metrics().borrow().clone();
        Some(LogStatus {
            rpc_failures: inner.rpc_failures.load(Ordering::Relaxed),
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            snapshot: m.snapshot.map(|l| l.index),
            purged: m.purged.map(|l| l.index),
            fatal: match m.running_state {
                Err(openraft::error::Fatal::Stopped) | Ok(()) => None,
                Err(e) => Some(e.to_string()),
            },
        })
    }

    /// The applied metadata on this voter (tests and diagnostics).
    pub fn with_state<T>(&self, f: impl FnOnce(&state::MetaState) -> T) -> Option<T> {
        let sm = self.inner.as_ref()?.sm.as_ref()?;
        Some(store::read_sm(sm, |d| f(&d.state)))
    }
}

/// `members` lists identities at `addr`, and none of them is live. An
/// address it does not list (a view still being learned) is not departed.
pub(crate) fn departed_in(members: &[dml_shared::api::MemberInfo], addr: SocketAddr) -> bool {
    let mut at = members.iter().filter(|m| m.id.addr == addr).peekable();
    at.peek().is_some() && at.all(|m| !m.state.is_live())
}

impl Inner {
    /// This voter's Raft node id (its bootstrap id until one is chosen).
    pub(crate) fn id(&self) -> u64 {
        self.id
            .get()
            .copied()
            .unwrap_or_else(|| voter_id(self.s.me))
    }

    /// The configured voters and the Raft configuration's nodes.
    fn voter_addrs(&self) -> Vec<SocketAddr> {
        let mut addrs = self.s.voters.clone();
        if let Some(raft) = self.raft.get() {
            let m = raft.metrics().borrow().membership_config.clone();
            addrs.extend(
                m.membership()
                    .nodes()
                    .filter_map(|(_, n)| n.addr.parse::<SocketAddr>().ok()),
            );
        }
        addrs
    }

    /// The address of Raft node `id`: from the membership config, else the
    /// configured voter whose bootstrap id it is.
    pub(crate) fn voter_addr(&self, id: u64) -> Option<SocketAddr> {
        if let Some(raft) = self.raft.get()
            && let Some(Ok(a)) = raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .get_node(&id)
                .map(|n| n.addr.parse())
        {
            return Some(a);
        }
        self.s.voters.iter().copied().find(|v| voter_id(*v) == id)
    }

    /// Whether membership lists identities at `addr` and none of them is
    /// live (all failed or departed). The list is read at most every
    /// [`VIEW_TTL`].
    pub(crate) async fn departed(&self, addr: SocketAddr) -> bool {
        let cached = self
            .view
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|(at, _)| at.elapsed() < VIEW_TTL)
            .map(|(_, m)| m.clone());
        let members = match cached {
            Some(m) => m,
            None => {
                let m = Arc::new(self.membership.members().await.unwrap_or_default());
                *self.view.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((std::time::Instant::now(), m.clone()));
                m
            }
        };
        departed_in(&members, addr)
    }
}

/// Where a voter's log stands: entries after `purged` up to `last_log_index`
/// are stored; `snapshot` covers everything up to its index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogStatus {
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub snapshot: Option<u64>,
    pub purged: Option<u64>,
    /// Raft RPCs to other voters that failed, since the agent started.
    pub rpc_failures: u64,
    /// Why the Raft node stopped on its own (a storage error, such as a full
    /// disk): openraft never restarts it, so the agent exits (`crate::failstop`).
    pub fatal: Option<String>,
}

/// The running control plane; [`ControlPlane::shutdown`] stops it.
pub struct ControlPlane {
    handle: ControlHandle,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// The store, closed last at shutdown (voters only).
    db: Option<Arc<redb::Database>>,
}

impl ControlPlane {
    /// Starts Raft if `settings.me` is a voter (state in `<data_dir>/control/`),
    /// and the supervisor of its leader task. With no voters configured it starts
    /// nothing and its handle refuses every request. A voter with a blank store
    /// first finds out whether the cluster exists (`voters.rs`), in the
    /// background.
    pub async fn start(
        settings: Settings,
        data_dir: &std::path::Path,
        membership: MembershipHandle,
    ) -> Result<Self, ControlError> {
        let (stop, stop_rx) = watch::channel(false);
        if settings.voters.is_empty() {
            return Ok(Self {
                handle: ControlHandle::default(),
                stop,
                tasks: Vec::new(),
                db: None,
            });
        }
        let rpc_failures = Arc::new(AtomicU64::new(0));
        let opened = if settings.is_voter() {
            Some(store::open(&data_dir.join("control"))?)
        } else {
            None
        };
        let (publish, leader) = watch::channel(None);
        let voter = opened.is_some();
        let inner = Arc::new_cyclic(|me| Inner {
            router: forward::router(&settings, me.clone(), voter),
            s: settings,
            raft: OnceLock::new(),
            id: OnceLock::new(),
            knows_cluster: AtomicBool::new(false),
            replacing: AtomicBool::new(false),
            sm: opened.as_ref().map(|(_, _, sm)| sm.clone()),
            membership,
            leader,
            repair: watch::Sender::new(Default::default()),
            balance: watch::Sender::new(Default::default()),
            view: Mutex::new(None),
            digest: Arc::default(),
            rpc_failures,
        });
        let Some((log, sm_store, _)) = opened else {
            return Ok(Self {
                handle: ControlHandle { inner: Some(inner) },
                stop,
                tasks: Vec::new(),
                db: None,
            });
        };
        let db = log.database();
        let stored = log.node_id()?;
        let blank = log.is_blank()?;
        let mut tasks = Vec::new();
        // A kept id, or a store from before ids were kept (its bootstrap id).
        if stored.is_some() || !blank || inner.s.voters.len() == 1 {
            let id = stored.unwrap_or_else(|| voter_id(inner.s.me));
            launch(&inner, log, sm_store, id).await?;
            tasks.push(tokio::spawn(run(inner.clone(), publish, stop_rx)));
        } else {
            {
                let inner = inner.clone();
                tasks.push(tokio::spawn(async move {
                    let mut stop = stop_rx.clone();
                    let Some(d) = voters::choose(&inner, &mut stop).await else {
                        return;
                    };
                    let (id, rejoin) = voters::id_for(&inner, d);
                    if rejoin {
                        inner.knows_cluster.store(true, Ordering::Relaxed);
                        tracing::warn!(
                            id,
                            "this voter's control-plane store is blank but the cluster exists: \
                             it rejoins under a new Raft node id (its old id's votes and entries are lost)"
                        );
                    }
                    let launched = match log.save_node_id(id) {
                        Ok(()) => launch(&inner, log, sm_store, id).await,
                        Err(e) => Err(e.into()),
                    };
                    match launched {
                        Ok(()) => run(inner, publish, stop_rx).await,
                        Err(e) => tracing::error!(error = %e, "cannot start the control plane"),
                    }
                }));
            }
        }
        Ok(Self {
            handle: ControlHandle { inner: Some(inner) },
            stop,
            tasks,
            db: Some(db),
        })
    }

    pub fn handle(&self) -> ControlHandle {
        self.handle.clone()
    }

    /// Stops the leader task, its supervisor and the Raft node.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(raft) = self.handle.inner.as_ref().and_then(|i| i.raft.get())
            && let Err(e) = raft.shutdown().await
        {
            tracing::warn!(error = %e, "Raft node did not stop cleanly");
        }
        // openraft does not join its state-machine task: wait until ours is
        // the last reference, then close the database here, so a restart in
        // this process finds the file unlocked.
        if let Some(db) = self.db {
            let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
            while Arc::strong_count(&db) > 1 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if Arc::strong_count(&db) > 1 {
                tracing::warn!("the control-plane store is still in use after shutdown");
            }
            let _ = tokio::task::spawn_blocking(move || drop(db)).await;
        }
    }
}

/// Starts this voter's Raft node under `id` and saves it in `inner`; the
/// first voter creates the cluster if its log is empty.
async fn launch(
    inner: &Arc<Inner>,
    log: store::LogStore,
    sm_store: store::SmStore,
    id: u64,
) -> Result<(), ControlError> {
    let s = &inner.s;
    let c = &s.control;
    let ms = |d: Duration| d.as_millis() as u64;
    let raft_cfg = openraft::Config {
        cluster_name: "awesomedml".into(),
        heartbeat_interval: ms(c.heartbeat_interval),
        election_timeout_min: ms(c.election_timeout_min),
        election_timeout_max: ms(c.election_timeout_max),
        install_snapshot_timeout: ms(c.rpc_timeout),
        snapshot_policy: SnapshotPolicy::LogsSinceLast(c.snapshot_every),
        // The log holds at most about twice `snapshot_every` entries.
        max_in_snapshot_log_to_keep: c.snapshot_every,
        snapshot_max_chunk_size: SNAPSHOT_CHUNK,
        // openraft bounds each AppendEntries by one heartbeat interval; 300 entries (its
        // default) of batched puts (~100 KB each) to a follower catching up could not arrive
        // in time, and were sent again and again.
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        ..Default::default()
    }
    .validate()
    .map_err(|e| ControlError::RaftConfig(e.to_string()))?;
    let network = network::Network {
        rpc_timeout: c.rpc_timeout,
        min_backoff: c.heartbeat_interval,
        max_backoff: c.election_timeout_min,
        failures: inner.rpc_failures.clone(),
    };
    let raft = Raft::new(id, Arc::new(raft_cfg), network, log, sm_store)
        .await
        .map_err(|e| ControlError::Raft(e.to_string()))?;
    if s.voters.first() == Some(&s.me) && id == voter_id(s.me) {
        initialize(&raft, &s.voters).await;
    }
    let _ = inner.id.set(id);
    let _ = inner.raft.set(raft);
    Ok(())
}

/// A started voter's tasks: asking to be a voter again if it runs under a
/// new id, and the leader task's supervisor.
async fn run(
    inner: Arc<Inner>,
    publish: watch::Sender<Option<task::LeaderHandle>>,
    stop: watch::Receiver<bool>,
) {
    if inner.id() != voter_id(inner.s.me) {
        tokio::spawn(voters::rejoin(inner.clone(), stop.clone()));
    }
    task::supervise(inner, publish, stop).await;
}

/// The first voter creates the cluster when its log is empty.
async fn initialize(raft: &Raft<TypeConfig>, voters: &[SocketAddr]) {
    match raft.is_initialized().await {
        Ok(true) => return,
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot tell whether the Raft log is initialized");
            return;
        }
    }
    let members: BTreeMap<u64, BasicNode> = voters
        .iter()
        .map(|v| {
            (
                voter_id(*v),
                BasicNode {
                    addr: v.to_string(),
                },
            )
        })
        .collect();
    match raft.initialize(members).await {
        Ok(()) => tracing::info!(?voters, "control plane initialized"),
        // Another start already did it.
        Err(openraft::error::RaftError::APIError(
            openraft::error::InitializeError::NotAllowed(_),
        )) => {}
        Err(e) => tracing::warn!(error = %e, "cannot initialize the control plane"),
    }
}

/// Whether a connection from `ip` may carry Raft RPCs: it is the host of
/// one of `voters`. (Agents share the cluster key, so the address is what
/// tells a voter from another agent.)
fn from_voter(ip: IpAddr, voters: impl IntoIterator<Item = SocketAddr>) -> bool {
    voters.into_iter().any(|v| v.ip() == ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dml_shared::NodeId;

    #[test]
    fn raft_rpcs_come_only_from_a_voters_address() {
        let voters: Vec<SocketAddr> = ["10.0.0.1:7000", "10.0.0.2:7000"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert!(from_voter("10.0.0.2".parse().unwrap(), voters.clone()));
        assert!(!from_voter("10.0.0.3".parse().unwrap(), voters.clone()));
        assert!(!from_voter("10.0.0.1".parse().unwrap(), []));
    }
    use dml_shared::api::{MemberInfo, MemberState};

    fn member(addr: &str, started: u64, state: MemberState) -> MemberInfo {
        MemberInfo {
            id: NodeId::new(addr.parse().unwrap(), started),
            state,
            incarnation: 0,
            last_heard_ms: None,
            monitors: Vec::new(),
        }
    }

    #[test]
    fn an_address_is_departed_only_when_every_identity_there_is_gone() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(!departed_in(&[], a), "unknown: not departed");
        let failed = member("127.0.0.1:1", 1, MemberState::Failed);
        let left = member("127.0.0.1:1", 2, MemberState::Left);
        let back = member("127.0.0.1:1", 3, MemberState::Alive);
        let suspect = member("127.0.0.1:1", 3, MemberState::Suspect);
        let other = member("127.0.0.1:2", 1, MemberState::Alive);
        assert!(departed_in(&[failed.clone(), other.clone()], a));
        assert!(departed_in(&[failed.clone(), left.clone()], a));
        assert!(!departed_in(&[failed.clone(), back], a), "rejoined");
        assert!(!departed_in(&[failed, suspect], a), "suspect is still live");
        assert!(!departed_in(&[other], a));
    }
}
