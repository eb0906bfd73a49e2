//! Synthetic telemetry: deterministic frames of any size, for the console's
//! snapshot and widget tests and for `bench console`.

use dml_shared::NodeId;
use dml_shared::api::{LeaderInfo, MemberInfo, MemberState};
use dml_shared::infer::{JobInfo, JobState, LatencyInfo, ModelInfo, Placement, RateInfo, Spread};
use dml_shared::telemetry::{
    BalanceProgress, ClusterFigures, EventKind, Frame, NodeStats, RepairProgress, SdfsHealth,
    TelemetryEvent,
};
use std::net::SocketAddr;

/// Start time of the synthetic cluster (Unix ms): 2026-01-01 10:00:00 UTC.
pub const T0: u64 = 1_767_261_600_000;

/// Address of synthetic member `i` (0-based): 127.0.0.1:8001 + i, then
/// further hosts past the port range.
pub fn addr(i: usize) -> SocketAddr {
    let port = 8001 + (i % 1000) as u16;
    let host = (i / 1000) as u8 + 1;
    SocketAddr::from(([127, 0, 0, host], port))
}

/// A frame from member 0 of an `n`-member cluster, leader member 0, with
/// two models, three jobs and a little SDFS trouble. `tick` varies rates.
pub fn frame(n: usize, tick: u64) -> Frame {
    let members: Vec<MemberInfo> = (0..n)
        .map(|i| MemberInfo {
            id: NodeId::new(addr(i), T0 + i as u64 * 7),
            state: match i % 97 {
                13 => MemberState::Suspect,
                41 => MemberState::Failed,
                _ => MemberState::Alive,
            },
            incarnation: (i % 3) as u32,
            last_heard_ms: (i != 0).then_some(100 + (i as u64 * 37) % 900),
            monitors: (1..=3)
                .map(|k| NodeId::new(addr((i + n - k) % n), T0))
                .collect(),
        })
        .collect();
    let voters: Vec<SocketAddr> = (0..n.min(7)).map(addr).collect();
    let nodes: Vec<NodeStats> = (0..n)
        .filter(|i| members[*i].state.is_live())
        .map(|i| NodeStats {
            addr: Some(addr(i)),
            cpu_percent: ((i * 13) % 40) as f32 / 4.0,
            rss_bytes: (40 + (i as u64 % 20)) << 20,
            sdfs_bytes: ((i as u64 % 9 + 1) * 3) << 20,
            sdfs_versions: i as u64 % 9 + 1,
            queries_running: (i % 3 == 1) as u32,
            age_ms: if i == 0 {
                0
            } else {
                400 + (i as u64 % 5) * 100
            },
        })
        .collect();
    let models = vec![
        ModelInfo {
            name: "resnet50".into(),
            batch_size: 8,
            max_batch: 64,
            file: "models/resnet50.onnx".into(),
            version: Some(1),
            max_queue_delay_ms: 0,
            p99_target_ms: None,
            effective_batch: 8,
        },
        ModelInfo {
            name: "inceptionv3".into(),
            batch_size: 4,
            max_batch: 64,
            file: "models/inceptionv3.onnx".into(),
            version: Some(1),
            max_queue_delay_ms: 0,
            p99_target_ms: None,
            effective_batch: 4,
        },
    ];
    let rate = |m: &str, base: f64| RateInfo {
        model: m.into(),
        queries_per_s: base + (tick % 7) as f64 * 0.5,
        images_per_s: (base + (tick % 7) as f64 * 0.5) * 8.0,
        queries_total: 1200 + tick * 3,
        images_total: 9600 + tick * 24,
        mean_batch: 8.0,
    };
    let lat = |m: &str, k: f64| LatencyInfo {
        model: m.into(),
        count: 1200,
        mean_ms: 180.0 * k,
        stddev_ms: 35.0 * k,
        p50_ms: 170.0 * k,
        p90_ms: 230.0 * k,
        p95_ms: 260.0 * k,
        p99_ms: 320.0 * k,
        max_ms: 400.0 * k,
        queue: Spread {
            mean_ms: 60.0 * k,
            p50_ms: 50.0 * k,
            p95_ms: 110.0 * k,
            p99_ms: 150.0 * k,
            max_ms: 200.0 * k,
        },
        compute: Spread {
            mean_ms: 120.0 * k,
            p50_ms: 118.0 * k,
            p95_ms: 150.0 * k,
            p99_ms: 170.0 * k,
            max_ms: 200.0 * k,
        },
    };
    let job = |id, model: &str, images, done, state| JobInfo {
        id,
        model: String::from(model),
        dataset: "datasets/sample/".into(),
        images,
        done,
        errors: 0,
        queries: u64::from(done / 8),
        state,
        reason: None,
        submitted_ms: T0 + id * 60_000,
        finished_ms: None,
        output: None,
        stalled: None,
    };
    let w = |i: usize| addr(i % n.max(1));
    Frame {
        seq: tick + 1,
        unix_ms: T0 + 600_000 + tick * 500,
        agent: Some(members[0].id),
        dropped: 0,
        resync: tick == 0,
        leader: Some(LeaderInfo {
            leader: Some(addr(0)),
            term: 3,
            voters,
            is_voter: true,
            last_applied: Some(420),
            applied_digest: None,
            unacked_ms: None,
            raft_ids: Vec::new(),
        }),
        members,
        nodes,
        cluster: Some(ClusterFigures {
            models: Ok(models),
            rates: Ok(vec![rate("resnet50", 4.0), rate("inceptionv3", 3.0)]),
            latency: Ok(vec![lat("resnet50", 1.0), lat("inceptionv3", 1.6)]),
            jobs: Ok(vec![
                job(1, "resnet50", 500, 500, JobState::Done),
                job(2, "inceptionv3", 400, 150, JobState::Running),
                job(3, "resnet50", 1000, 320, JobState::Running),
            ]),
            placement: Ok(vec![
                Placement {
                    job: 2,
                    model: "inceptionv3".into(),
                    workers: vec![(w(1), 1), (w(4), 1)],
                    weight: 1,
                    query_share: 0.6,
                    time_share: 0.5,
                },
                Placement {
                    job: 3,
                    model: "resnet50".into(),
                    workers: vec![(w(2), 2), (w(3), 1), (w(5), 1)],
                    weight: 1,
                    query_share: 0.4,
                    time_share: 0.5,
                },
            ]),
            sdfs: Ok(SdfsHealth {
                files: 1020,
                versions: 1044,
                bytes: 96 << 20,
                replicas: 4,
                under_replicated: 2,
                under_replicated_sample: vec![
                    ("datasets/sample/img-0007.jpg".into(), 1, 3),
                    ("models/resnet50.onnx".into(), 1, 3),
                ],
                repair: RepairProgress {
                    pending_copies: 2,
                    pending_bytes: 3 << 20,
                    in_flight: 1,
                    copies_per_sec: 1,
                    bytes_per_sec: 1 << 20,
                },
                balance: BalanceProgress {
                    pending_moves: 40,
                    pending_bytes: 120 << 20,
                    in_flight: 2,
                    moved: 12,
                    moved_bytes: 36 << 20,
                },
            }),
        }),
        events: [
            (
                EventKind::LeaderChange,
                "leader is 127.0.0.1:8001 (term 3)".to_string(),
            ),
            (EventKind::Join, format!("{} joined", addr(1))),
            (EventKind::Suspect, format!("{} is suspected", addr(4))),
            (
                EventKind::Refuted,
                format!("{} refuted its suspicion", addr(4)),
            ),
            (
                EventKind::JobStart,
                "job 3 started: resnet50 over 1000 images".into(),
            ),
            (EventKind::Failure, format!("{} failed", addr(9 % n.max(1)))),
            (
                EventKind::Repair,
                "re-replicating models/resnet50.onnx v1".into(),
            ),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (kind, text))| TelemetryEvent {
            seq: i as u64 + 1,
            unix_ms: T0 + i as u64 * 15_000,
            kind,
            text,
        })
        .collect(),
    }
}
