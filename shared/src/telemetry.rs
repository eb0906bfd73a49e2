//! Telemetry frames an agent streams to console subscribers.
//!
//! A subscriber sends [`crate::api::Request::Subscribe`]; the agent then
//! writes one [`crate::api::Response::Telemetry`] frame at most every
//! [`MIN_INTERVAL_MS`] on that connection until it closes. Every frame is a
//! compact, complete snapshot (membership, node stats, leader figures, SDFS
//! health), so a dropped frame loses nothing but time; the event log rides
//! along as the events newer than the subscriber last received, or as the
//! recent tail with `resync` set after frames were dropped.

use crate::error::RemoteError;
use crate::id::NodeId;
use crate::infer::{JobInfo, LatencyInfo, ModelInfo, Placement, RateInfo};
use crate::view::{LeaderInfo, MemberInfo};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Shortest time between two frames on one subscription (2 Hz).
pub const MIN_INTERVAL_MS: u64 = 500;

/// One frame of the stream.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    /// Counts frames built by the sending agent (gaps mean drops).
    pub seq: u64,
    /// When the frame was built (Unix ms).
    pub unix_ms: u64,
    /// The sending agent, `None` only in synthetic frames.
    pub agent: Option<NodeId>,
    /// Frames this subscription lost because it read too slowly.
    pub dropped: u64,
    /// Set on the first frame and after drops: `events` is the recent tail,
    /// not only what is new.
    pub resync: bool,
    /// The control plane as the sending agent sees it.
    pub leader: Option<LeaderInfo>,
    /// The sending agent's membership view.
    pub members: Vec<MemberInfo>,
    /// Per-node figures, as fresh as the sending agent has them.
    pub nodes: Vec<NodeStats>,
    /// Figures only the leader has; `None` while they cannot be fetched.
    pub cluster: Option<ClusterFigures>,
    /// Events, oldest first.
    pub events: Vec<TelemetryEvent>,
}

/// One agent's own figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStats {
    pub addr: Option<SocketAddr>,
    /// CPU used by the agent process, percent of one core, over the last period.
    pub cpu_percent: f32,
    /// Resident memory of the agent process, bytes.
    pub rss_bytes: u64,
    /// Bytes of SDFS versions stored on the agent.
    pub sdfs_bytes: u64,
    /// SDFS versions stored on the agent.
    pub sdfs_versions: u64,
    /// Queries the leader has leased to the agent right now.
    pub queries_running: u32,
    /// Age of these figures when the frame was built, ms.
    pub age_ms: u64,
}

/// What the leader knows about the whole cluster. Each part is `Err` with
/// the reason when it could not be fetched (e.g. inference not available).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterFigures {
    pub models: Result<Vec<ModelInfo>, RemoteError>,
    /// C1.
    pub rates: Result<Vec<RateInfo>, RemoteError>,
    /// C2.
    pub latency: Result<Vec<LatencyInfo>, RemoteError>,
    pub jobs: Result<Vec<JobInfo>, RemoteError>,
    /// C5.
    pub placement: Result<Vec<Placement>, RemoteError>,
    pub sdfs: Result<SdfsHealth, RemoteError>,
}

/// SDFS as a whole.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SdfsHealth {
    pub files: u64,
    pub versions: u64,
    pub bytes: u64,
    /// Copies each version should have.
    pub replicas: u32,
    /// Committed versions with fewer copies than `replicas`.
    pub under_replicated: u64,
    /// Under-replicated versions by name and version, at most a few.
    pub under_replicated_sample: Vec<(String, u64, u32)>,
    /// The leader's re-replication.
    pub repair: RepairProgress,
    /// The leader's balance moves this term.
    pub balance: BalanceProgress,
}

/// What the leader's balancer did this term: moves left and done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceProgress {
    /// Moves waiting or running, and their bytes.
    pub pending_moves: u64,
    pub pending_bytes: u64,
    pub in_flight: u64,
    /// Moves recorded, and their bytes.
    pub moved: u64,
    pub moved_bytes: u64,
}

/// The leader's re-replication: what is left and how fast it goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairProgress {
    /// Copies missing from live agents (running ones included), as of the
    /// leader's last scan less those finished since.
    pub pending_copies: u64,
    /// Their bytes.
    pub pending_bytes: u64,
    /// Copies running.
    pub in_flight: u64,
    /// Copies finished per second, over the last few seconds.
    pub copies_per_sec: u64,
    /// Bytes copied per second, over the same seconds.
    pub bytes_per_sec: u64,
}

impl RepairProgress {
    /// When the pending copies will be done at the current rate: whichever
    /// of the copies and the bytes takes longer. `None` with nothing left or
    /// no rate yet.
    pub fn eta(&self) -> Option<std::time::Duration> {
        if self.pending_copies == 0 {
            return None;
        }
        let by = |left: u64, rate: u64| (rate > 0).then(|| left as f64 / rate as f64);
        let secs = match (
            by(self.pending_copies, self.copies_per_sec),
            by(self.pending_bytes, self.bytes_per_sec),
        ) {
            (Some(a), Some(b)) => a.max(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return None,
        };
        Some(std::time::Duration::from_secs_f64(secs))
    }
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Join,
    Leave,
    Failure,
    Suspect,
    /// A suspect refuted its suspicion.
    Refuted,
    /// This agent re-joined under a new identity.
    Rejoin,
    LeaderChange,
    /// SDFS re-replication (a repair copy).
    Repair,
    JobStart,
    JobFinish,
    /// Anything else worth a line.
    Info,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Join => "join",
            EventKind::Leave => "leave",
            EventKind::Failure => "failure",
            EventKind::Suspect => "suspect",
            EventKind::Refuted => "refuted",
            EventKind::Rejoin => "rejoin",
            EventKind::LeaderChange => "leader",
            EventKind::Repair => "repair",
            EventKind::JobStart => "job start",
            EventKind::JobFinish => "job done",
            EventKind::Info => "info",
        }
    }
}

/// One line of the event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TelemetryEvent {
    /// Increasing per sending agent; lets a subscriber drop repeats.
    pub seq: u64,
    pub unix_ms: u64,
    pub kind: EventKind,
    pub text: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{self, Kind};

    #[test]
    fn repair_eta_follows_the_slower_of_copies_and_bytes() {
        let p = RepairProgress {
            pending_copies: 100,
            pending_bytes: 1000,
            in_flight: 4,
            copies_per_sec: 50,
            bytes_per_sec: 100,
        };
        assert_eq!(p.eta(), Some(std::time::Duration::from_secs(10)));
        let fast_bytes = RepairProgress {
            bytes_per_sec: 10_000,
            ..p
        };
        assert_eq!(fast_bytes.eta(), Some(std::time::Duration::from_secs(2)));
        let no_rate = RepairProgress {
            copies_per_sec: 0,
            bytes_per_sec: 0,
            ..p
        };
        assert_eq!(no_rate.eta(), None);
        assert_eq!(RepairProgress::default().eta(), None);
    }

    #[test]
    fn a_full_frame_round_trips() {
        let id = NodeId::new("127.0.0.1:8001".parse().unwrap(), 7);
        let frame = Frame {
            seq: 3,
            unix_ms: 1000,
            agent: Some(id),
            dropped: 2,
            resync: true,
            leader: None,
            members: Vec::new(),
            nodes: vec![NodeStats {
                addr: Some(id.addr),
                cpu_percent: 1.5,
                rss_bytes: 10,
                ..NodeStats::default()
            }],
            cluster: Some(ClusterFigures {
                models: Err(RemoteError::new(
                    crate::error::ErrorKind::Unavailable,
                    "inference is not available in this build",
                )),
                rates: Ok(Vec::new()),
                latency: Ok(Vec::new()),
                jobs: Ok(Vec::new()),
                placement: Ok(Vec::new()),
                sdfs: Ok(SdfsHealth {
                    files: 1,
                    under_replicated_sample: vec![("a".into(), 1, 2)],
                    ..SdfsHealth::default()
                }),
            }),
            events: vec![TelemetryEvent {
                seq: 1,
                unix_ms: 5,
                kind: EventKind::LeaderChange,
                text: "x".into(),
            }],
        };
        let resp = crate::api::Response::Telemetry(Box::new(frame));
        let b = wire::encode(Kind::Response, &resp);
        assert_eq!(
            wire::decode::<crate::api::Response>(Kind::Response, &b).unwrap(),
            resp
        );
    }
}
