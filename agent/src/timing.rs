//! The agent's internal timing constants, in one place. What an operator
//! may need to change is a config key instead (`membership.*`,
//! `control.*`, `api.handshake_timeout`, `inference.fetch_timeout`, ...);
//! these are fixed by the design, each with why it has its value.

use std::time::Duration;

// API server.

/// A connection idle this long is closed.
/// (Used in `api.rs`.)
pub const API_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a refused connection may take to be told.
/// (Used in `api.rs`.)
pub const API_REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);

// Membership.

/// Window over which byte and packet rates are averaged.
/// (Used in `membership/stats.rs`.)
pub const MEMBERSHIP_RATE_WINDOW: Duration = Duration::from_secs(10);

/// Spacing of the samples the rates are computed from.
/// (Used in `membership/stats.rs`.)
pub const MEMBERSHIP_SAMPLE_EVERY: Duration = Duration::from_millis(500);

// Control plane.

/// Longest a membership list read for gating Raft RPCs is reused.
/// (Used in `control/mod.rs`.)
pub const VIEW_TTL: Duration = Duration::from_millis(100);

/// Longest wait at shutdown for openraft's tasks to release the database.
/// (Used in `control/mod.rs`.)
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// How often the agent checks whether its Raft node stopped on a storage error.
/// (Used in `main.rs`, see `failstop.rs`.)
pub const FAILSTOP_POLL: Duration = Duration::from_millis(250);

/// Longest a fail-stop waits for the agent to leave the group and stop its
/// services before exiting anyway.
/// (Used in `main.rs`.)
pub const FAILSTOP_SHUTDOWN: Duration = Duration::from_secs(5);

/// Longest a worker's lease request waits for work.
/// (Used in `control/task.rs`.)
pub const MAX_LEASE_WAIT: Duration = Duration::from_secs(5);

/// The window of the C1 rates.
/// (Used in `control/scheduler.rs`.)
pub const SCHEDULER_RATE_WINDOW: Duration = Duration::from_secs(10);

/// What fair sharing charges per image of a model no query has measured
/// yet: until one completes, its queries count as much as any other's.
/// (Used in `control/scheduler.rs`.)
pub const SCHEDULER_UNMEASURED_IMAGE_COST: Duration = Duration::from_millis(100);

/// How long the p99 controller of dynamic batching keeps a query time:
/// a batch size measured under a load that has passed is tried again.
/// (Used in `control/batching.rs`.)
pub const BATCH_TARGET_SAMPLE_AGE: Duration = Duration::from_secs(60);

// Keyring.

/// How often an agent asks the leader whether the cluster's keyring changed:
/// how long a rotation step takes to reach every agent, and an agent that
/// was down to catch up. A request to the leader, answered without secrets
/// when nothing changed.
/// (Used in `keyring.rs`.)
pub const KEYRING_SYNC: Duration = Duration::from_secs(1);

// Inference worker.

/// Pause after a failed lease request (no leader, for instance).
/// (Used in `infer/worker.rs`.)
pub const WORKER_RETRY_PAUSE: Duration = Duration::from_millis(300);

/// How often a worker sends its C2 histograms with a lease request: how
/// soon a new leader has them back.
/// (Used in `infer/worker.rs`.)
pub const WORKER_FIGURES_EVERY: Duration = Duration::from_secs(2);

/// How often a query waiting for a host compute slot also tries the slots
/// other than the one it waits on (a slot freed with no waiter on it stays
/// idle at most this long).
/// (Used in `infer/slots.rs`.)
pub const SLOT_RECHECK: Duration = Duration::from_millis(2);

/// Likewise for a worker waiting for a place on deck (the next query's
/// lease): the query running meanwhile hides the wait, so less often.
/// (Used in `infer/slots.rs`.)
pub const DECK_RECHECK: Duration = Duration::from_millis(10);

/// Between two tries at loading ONNX Runtime when it is missing.
/// (Used in `infer/worker.rs`.)
pub const RUNTIME_RETRY: Duration = Duration::from_secs(30);

// Telemetry.

/// A subscriber that takes this long to accept one frame is disconnected.
/// (Used in `telemetry/mod.rs`.)
pub const TELEMETRY_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Period of the own CPU/memory sample and of the leader figures.
/// (Used in `telemetry/mod.rs`.)
pub const TELEMETRY_SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Period of the leader watch (a change becomes an event).
/// (Used in `telemetry/mod.rs`.)
pub const LEADER_EVERY: Duration = Duration::from_millis(500);

/// Time allowed for one member's stats.
/// (Used in `telemetry/mod.rs`.)
pub const NODE_TIMEOUT: Duration = Duration::from_millis(400);

// Metrics endpoint.

/// Pause after a failed accept (out of file descriptors, for instance).
/// (Used in `metrics/http.rs`.)
pub const METRICS_ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// Time allowed for each source of figures during a scrape.
/// (Used in `metrics/scrape.rs`.)
pub const SOURCE_TIMEOUT: Duration = Duration::from_secs(2);
