//! `dml-tests`: a harness that spawns the real AwesomeDML binaries on 127.0.0.1,
//! used by the cluster tests in `tests/tests/` and by the bench binary.
//!
//! - [`chaos`]: the chaos test's seeded fault schedule and its firewall drop rules.
//! - [`bins`]: finds `dml-agent` and `dml` next to the running test or bench executable.
//! - [`dir`]: a per-test directory for configs, logs and event logs, kept when a test fails.
//! - [`agent`]: [`Agent`], a guard around one `dml-agent` process (killed on drop),
//!   started from an [`AgentSpec`].
//! - [`cluster`]: [`Cluster`], an introducer plus agents joining through it, and the
//!   timers the tests use ([`test_membership`]).
//! - [`view`]: reading and comparing the agents' membership views.
//! - [`wait`]: [`wait_until`] / [`wait_for`], polling a condition against a deadline
//!   (never a fixed sleep).
//! - [`events`]: parsing an agent's `--event-log`.
//! - [`flood`]: unauthenticated connections held and reopened against an agent.
//! - [`firewall`]: running `nft`/`iptables` and reading a drop counter (chaos test, bench).
//! - [`infer`]: the tiny model and a sample dataset in SDFS, jobs over the agent API.
//! - [`dml`]: running the `dml` command-line binary.
//! - [`key`]: the cluster key shared by every agent and client of the tests.
//! - [`capture`]: the bytes crossing the loopback interface (an `AF_PACKET` socket, root).
//! - [`history`]: the `dml-history` crate (`tests/history`): SDFS operations with invoke and
//!   complete times, checked for linearizability (todc-utils' WGL checker) against a versioned file.
//! - [`metrics`]: scraping an agent's Prometheus endpoint and parsing the text format.
//! - [`nemesis`]: the seeded fault schedule on the namespace bed and its recorded clients.
//! - [`netbed`]: hosts as network namespaces on a private bridge, and drop rules between them.
//! - [`ssh`]: a throwaway OpenSSH server, keys and known_hosts lines for the `dml cluster`
//!   tests, and a guard over the agents `dml cluster up` started.
//! - [`ports`]: picking a port that is free for both UDP and TCP.
//! - [`source`]: the workspace's own source files, for tests that read them.
//! - [`small_disk`]: a tmpfs of an agent's own under its data directory, and a ballast that
//!   fills it (a full disk on one host); unmounted on drop and by the stale sweep.
//! - [`sdfs`]: [`sdfs::SdfsCluster`], agents that all know each other's addresses (Raft
//!   voters, SDFS replicas), and what the SDFS tests and `bench sdfs` look at.
//!
//! Nothing here fixes timing: every wait polls against a deadline the caller gives.

pub mod agent;
pub mod bins;
pub mod capture;
pub mod chaos;
pub mod cluster;
pub mod dir;
pub mod dml;
pub mod events;
pub mod firewall;
pub mod flood;
pub use dml_history as history;
pub mod infer;
pub mod key;
pub mod metrics;
pub mod nemesis;
pub mod netbed;
pub mod ports;
pub mod sdfs;
pub mod small_disk;
pub mod source;
pub mod ssh;
pub mod udp;
pub mod view;
pub mod wait;

pub use agent::{Agent, AgentSpec};
pub use cluster::{Cluster, test_membership};
pub use dir::TestDir;
pub use dml::{DmlOutput, run_dml};
pub use events::{Event, EventKind};
pub use wait::{log_failures, wait_count, wait_for, wait_until};
