//! The figures read from the services' handles at each scrape (membership,
//! authentication, SDFS, the worker, Raft), as constant families that a
//! per-scrape [`Scrape`] collector encodes.

use super::Sources;
pub use crate::timing::SOURCE_TIMEOUT;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::future::Future;

/// One sample's value; the variant is the family's type.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Value {
    /// A counter (the encoder appends `_total` to the family name).
    Count(u64),
    /// A gauge of whole numbers (written without a fraction).
    Whole(i64),
    /// A gauge.
    Level(f64),
}

/// One family with its samples, each with its label pairs.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, &'static str)>, Value)>,
}

/// The figures of one scrape.
#[derive(Debug, Default)]
pub struct Scrape {
    families: Vec<Family>,
}

impl Scrape {
    fn one(&mut self, name: &'static str, help: &'static str, v: Value) {
        self.families.push(Family {
            name,
            help,
            samples: vec![(Vec::new(), v)],
        });
    }

    fn counter(&mut self, name: &'static str, help: &'static str, v: u64) {
        self.one(name, help, Value::Count(v));
    }

    fn gauge(&mut self, name: &'static str, help: &'static str, v: f64) {
        self.one(name, help, Value::Level(v));
    }

    /// A gauge of a count or an index (saturating at `i64::MAX`).
    fn whole(&mut self, name: &'static str, help: &'static str, v: impl TryInto<i64>) {
        self.one(name, help, Value::Whole(v.try_into().unwrap_or(i64::MAX)));
    }

    fn flag(&mut self, name: &'static str, help: &'static str, v: bool) {
        self.whole(name, help, i64::from(v));
    }

    /// Reads every source; one that does not answer within
    /// [`SOURCE_TIMEOUT`] is left out of this scrape.
    pub async fn read(s: &Sources) -> Self {
        let mut t = Self::default();
        t.whole("dml_up", "1 while the agent serves metrics.", 1);
        if let Some(Some(st)) = bounded(s.membership.stats()).await {
            let a = s.auth.counters().snapshot();
            t.families.push(Family {
                name: "dml_auth_dropped",
                help: "Traffic dropped by cluster-key authentication, by transport and reason.",
                samples: [
                    ("udp", "forged", a.udp_forged),
                    ("udp", "malformed", a.udp_malformed),
                    ("udp", "replayed", a.udp_replayed),
                    ("udp", "stale", a.udp_stale),
                    ("tcp", "handshake", a.tcp_handshake_failed),
                    ("tcp", "forged", a.tcp_forged),
                ]
                .into_iter()
                .map(|(tr, re, v)| (vec![("transport", tr), ("reason", re)], Value::Count(v)))
                .collect(),
            });
            for (name, help, v) in [
                (
                    "dml_membership_packets_sent",
                    "Membership datagrams sent.",
                    st.packets_sent,
                ),
                (
                    "dml_membership_packets_received",
                    "Membership datagrams received.",
                    st.packets_recv,
                ),
                (
                    "dml_membership_bytes_sent",
                    "Membership bytes sent.",
                    st.bytes_sent,
                ),
                (
                    "dml_membership_bytes_received",
                    "Membership bytes received.",
                    st.bytes_recv,
                ),
                (
                    "dml_membership_probes_sent",
                    "Direct probes sent.",
                    st.probes_sent,
                ),
                (
                    "dml_membership_suspicions",
                    "Suspicions this agent raised about others.",
                    st.suspicions,
                ),
                (
                    "dml_membership_refuted",
                    "Suspicions about this agent that it refuted (false positives).",
                    st.refuted,
                ),
                (
                    "dml_membership_declared_failed",
                    "Members this agent saw declared failed.",
                    st.declared_failed,
                ),
                (
                    "dml_membership_false_failures",
                    "Times this agent learned it was declared failed while alive.",
                    st.false_failures,
                ),
                (
                    "dml_membership_reinstated",
                    "Members held as failed that refuted it and were taken back, same identity.",
                    st.reinstated,
                ),
                (
                    "dml_membership_bad_packets",
                    "Membership datagrams dropped as malformed.",
                    st.bad_packets,
                ),
                (
                    "dml_membership_bad_frames",
                    "API frames dropped as malformed.",
                    st.bad_frames,
                ),
            ] {
                t.counter(name, help, v);
            }
            t.whole(
                "dml_membership_members_live",
                "Members alive or suspect in this agent's view (itself included).",
                st.members_live,
            );
            t.gauge(
                "dml_uptime_seconds",
                "Time since the membership task started.",
                st.uptime_ms as f64 / 1000.0,
            );
        }
        if let Some(st) = s.sdfs.stats() {
            t.whole(
                "dml_sdfs_files",
                "SDFS versions stored on this agent.",
                st.files,
            );
            t.whole(
                "dml_sdfs_stored_bytes",
                "Total size of the SDFS versions stored on this agent.",
                st.bytes_stored,
            );
            for (name, help, v) in [
                ("dml_sdfs_writes", "Chain writes stored here.", st.writes),
                (
                    "dml_sdfs_write_errors",
                    "Chain writes that failed here.",
                    st.write_errors,
                ),
                (
                    "dml_sdfs_disk_full",
                    "Writes refused because the disk was full.",
                    st.disk_full,
                ),
                ("dml_sdfs_reads", "Reads served.", st.reads),
                ("dml_sdfs_read_errors", "Reads that failed.", st.read_errors),
                (
                    "dml_sdfs_written_bytes",
                    "Bytes received into stored copies (writes and repairs).",
                    st.bytes_written,
                ),
                (
                    "dml_sdfs_read_bytes",
                    "Bytes served to readers.",
                    st.bytes_read,
                ),
                (
                    "dml_sdfs_repairs",
                    "Copies fetched from another replica.",
                    st.repairs,
                ),
                (
                    "dml_sdfs_repair_errors",
                    "Repair copies that failed.",
                    st.repair_errors,
                ),
                (
                    "dml_sdfs_scrubbed",
                    "Copies re-hashed by scrub.",
                    st.scrubbed,
                ),
                (
                    "dml_sdfs_scrub_corruptions",
                    "Copies found corrupt.",
                    st.scrub_corruptions,
                ),
                (
                    "dml_sdfs_reconcile_deleted",
                    "Copies deleted because the metadata no longer wants them here.",
                    st.reconcile_deleted,
                ),
                (
                    "dml_sdfs_reconcile_refetched",
                    "Copies fetched again because they held other bytes than the committed version.",
                    st.reconcile_refetched,
                ),
                (
                    "dml_sdfs_reconcile_restored",
                    "Copies fetched again because this agent is named a holder and its disk lost them.",
                    st.reconcile_restored,
                ),
                (
                    "dml_sdfs_tmp_swept",
                    "Stale temp files removed.",
                    st.tmp_swept,
                ),
            ] {
                t.counter(name, help, v);
            }
        }
        if let Some(w) = &s.worker {
            let st = w.stats();
            t.whole(
                "dml_worker_queries_running",
                "Queries this worker holds a lease on.",
                st.running,
            );
            t.counter(
                "dml_worker_queries_completed",
                "Queries this worker completed.",
                st.completed,
            );
        }
        if let Some(i) = bounded(s.control.leader_status()).await {
            t.whole("dml_raft_term", "Raft term as this agent knows it.", i.term);
            t.flag(
                "dml_raft_is_leader",
                "1 if this agent leads the control plane.",
                i.leader == Some(s.me),
            );
            t.flag(
                "dml_raft_leader_known",
                "1 if this agent knows a control-plane leader.",
                i.leader.is_some(),
            );
            t.flag(
                "dml_raft_is_voter",
                "1 if this agent holds a Raft replica.",
                i.is_voter,
            );
            t.whole("dml_raft_voters", "Configured Raft voters.", i.voters.len());
            // Cluster-wide SDFS figures come from the leader alone, so sums stay true.
            // The lock is held only for the listing's O(1) copy; the count runs
            // off the async workers (a million versions take a while).
            let listing = s.control.with_state(|st| st.listing());
            let replicas = s.replicas as u32;
            let totals = match listing.filter(|_| i.leader == Some(s.me)) {
                Some(l) => tokio::task::spawn_blocking(move || l.totals(replicas, 0))
                    .await
                    .ok(),
                None => None,
            };
            if let Some(sdfs) = totals {
                let (versions, under) = (sdfs.versions, sdfs.under_replicated);
                t.whole(
                    "dml_sdfs_cluster_versions",
                    "Committed SDFS versions in the cluster (leader only).",
                    versions,
                );
                t.whole(
                    "dml_sdfs_under_replicated_versions",
                    "Committed SDFS versions with fewer copies than sdfs.replicas (leader only).",
                    under,
                );
                let b = s.control.balance_progress();
                for (name, help, v) in [
                    (
                        "dml_sdfs_balance_pending_moves",
                        "Balance moves planned or running (leader only).",
                        b.pending_moves,
                    ),
                    (
                        "dml_sdfs_balance_pending_bytes",
                        "Bytes of the balance moves planned or running (leader only).",
                        b.pending_bytes,
                    ),
                    (
                        "dml_sdfs_balance_moves",
                        "Balance moves recorded in this leader's term (leader only).",
                        b.moved,
                    ),
                    (
                        "dml_sdfs_balance_moved_bytes",
                        "Bytes of the balance moves recorded in this leader's term (leader only).",
                        b.moved_bytes,
                    ),
                ] {
                    t.whole(name, help, v);
                }
            }
        }
        if let Some(l) = s.control.log_status() {
            for (name, help, v) in [
                (
                    "dml_raft_last_log_index",
                    "Index of the last entry in this voter's log.",
                    l.last_log_index,
                ),
                (
                    "dml_raft_last_applied_index",
                    "Index of the last entry applied here.",
                    l.last_applied,
                ),
                (
                    "dml_raft_snapshot_index",
                    "Index covered by this voter's snapshot.",
                    l.snapshot,
                ),
                (
                    "dml_raft_purged_index",
                    "Index up to which this voter's log is purged.",
                    l.purged,
                ),
            ] {
                if let Some(v) = v {
                    t.whole(name, help, v);
                }
            }
            t.counter(
                "dml_raft_rpc_failures",
                "Raft RPCs to other voters that failed (unreachable, timed out or refused).",
                l.rpc_failures,
            );
        }
        t
    }
}

/// `f`, or `None` if it takes longer than [`SOURCE_TIMEOUT`].
pub(super) async fn bounded<T>(f: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(SOURCE_TIMEOUT, f).await.ok()
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.families {
            let Some((_, first)) = f.samples.first() else {
                continue;
            };
            let kind = match first {
                Value::Count(_) => ConstCounter::new(0u64).metric_type(),
                Value::Whole(_) | Value::Level(_) => ConstGauge::new(0i64).metric_type(),
            };
            let mut family = encoder.encode_descriptor(f.name, f.help, None, kind)?;
            for (labels, v) in &f.samples {
                let sample = family.encode_family(labels)?;
                match *v {
                    Value::Count(v) => ConstCounter::new(v).encode(sample)?,
                    Value::Whole(v) => ConstGauge::new(v).encode(sample)?,
                    Value::Level(v) => ConstGauge::new(v).encode(sample)?,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::prometheus_text::encode;
    use prometheus_client::registry::Registry;

    #[test]
    fn counters_gain_their_total_suffix_and_labels_are_escaped() {
        let mut s = Scrape::default();
        s.counter("dml_x", "A counter.", 3);
        s.gauge("dml_y", "A gauge.", 1.5);
        s.flag("dml_w", "A flag.", true);
        s.families.push(Family {
            name: "dml_z",
            help: "Labelled.",
            samples: vec![
                (vec![("model", "a\"b\\c\nd")], Value::Count(1)),
                (vec![("model", "e")], Value::Count(2)),
            ],
        });
        let mut r = Registry::default();
        r.register_collector(Box::new(s));
        let mut text = String::new();
        encode(&mut text, &r).unwrap();
        assert_eq!(
            text,
            "# HELP dml_x_total A counter.\n\
             # TYPE dml_x_total counter\n\
             dml_x_total 3\n\
             # HELP dml_y A gauge.\n\
             # TYPE dml_y gauge\n\
             dml_y 1.5\n\
             # HELP dml_w A flag.\n\
             # TYPE dml_w gauge\n\
             dml_w 1\n\
             # HELP dml_z_total Labelled.\n\
             # TYPE dml_z_total counter\n\
             dml_z_total{model=\"a\\\"b\\\\c\\nd\"} 1\n\
             dml_z_total{model=\"e\"} 2\n"
        );
    }
}
