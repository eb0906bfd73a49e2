//! The leader's figures for a frame, fetched through the control plane
//! (in-process on the leader, forwarded elsewhere): C1, C2, C3, jobs, C5
//! and SDFS health.

use crate::control::ControlHandle;
use dml_shared::api::Response;
use dml_shared::control::ControlResponse;
use dml_shared::infer::{InferRequest, InferResponse, Placement};
use dml_shared::sdfs::{MetaRequest, MetaResponse};
use dml_shared::telemetry::{
    BalanceProgress, ClusterFigures, NodeStats, RepairProgress, SdfsHealth,
};
use dml_shared::{ErrorKind, RemoteError};

/// Under-replicated versions named in a frame (the count covers all).
const SAMPLE: usize = 8;

async fn infer(control: &ControlHandle, req: InferRequest) -> Result<InferResponse, RemoteError> {
    match control.infer(req).await {
        Response::Control(ControlResponse::Infer(r)) => Ok(r),
        other => Err(refusal(other)),
    }
}

/// Why a metadata request gave no usable answer, with its kind.
fn refusal(r: Response) -> RemoteError {
    match r {
        Response::Error(e) => e,
        Response::NotLeader { leader: Some(l) } => {
            RemoteError::new(ErrorKind::NotLeader, format!("not the leader; {l} leads"))
        }
        Response::NotLeader { leader: None } => {
            RemoteError::new(ErrorKind::Unavailable, "no leader is known")
        }
        other => unexpected(other),
    }
}

/// An answer of the wrong variant (a bug or a version skew).
fn unexpected(answer: impl std::fmt::Debug) -> RemoteError {
    RemoteError::internal(format!("unexpected answer {answer:?}"))
}

macro_rules! pick {
    ($r:expr, $variant:ident) => {
        match $r {
            Ok(InferResponse::$variant(v)) => Ok(v),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(e),
        }
    };
}

/// Every leader figure; each part fails on its own.
pub async fn fetch(
    control: &ControlHandle,
    replicas: u32,
    repair: RepairProgress,
    balance: BalanceProgress,
) -> ClusterFigures {
    let (models, rates, latency, jobs, placement, sdfs) = tokio::join!(
        infer(control, InferRequest::Models),
        infer(control, InferRequest::Rates),
        infer(control, InferRequest::Latency),
        infer(control, InferRequest::Jobs),
        infer(control, InferRequest::Placement),
        sdfs_health(control, replicas, repair, balance),
    );
    ClusterFigures {
        models: pick!(models, Models),
        rates: pick!(rates, Rates),
        latency: pick!(latency, Latency),
        jobs: pick!(jobs, Jobs),
        placement: pick!(placement, Placement),
        sdfs,
    }
}

async fn sdfs_health(
    control: &ControlHandle,
    replicas: u32,
    repair: RepairProgress,
    balance: BalanceProgress,
) -> Result<SdfsHealth, RemoteError> {
    // Counted by the leader off its state-machine lock: the whole listing
    // would be hundreds of MB at a million versions.
    let sample = SAMPLE as u32;
    match control.meta(MetaRequest::Health { replicas, sample }).await {
        Response::Control(ControlResponse::Sdfs(MetaResponse::Health(t))) => Ok(SdfsHealth {
            files: t.files,
            versions: t.versions,
            bytes: t.bytes,
            replicas,
            under_replicated: t.under_replicated,
            under_replicated_sample: t.sample,
            repair,
            balance,
        }),
        other => Err(refusal(other)),
    }
}

/// Fills each node's running queries from the placement (C5).
pub fn queries_running(nodes: &mut [NodeStats], placement: &[Placement]) {
    for n in nodes.iter_mut() {
        n.queries_running = 0;
    }
    for p in placement {
        for (worker, q) in &p.workers {
            if let Some(n) = nodes.iter_mut().find(|n| n.addr == Some(*worker)) {
                n.queries_running += q;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn placement_sets_queries_per_node() {
        let mut nodes = vec![
            NodeStats {
                addr: Some(a(1)),
                queries_running: 9,
                ..NodeStats::default()
            },
            NodeStats {
                addr: Some(a(2)),
                ..NodeStats::default()
            },
        ];
        let placement = vec![
            Placement {
                job: 1,
                model: "m".into(),
                workers: vec![(a(2), 2)],
                weight: 1,
                query_share: 0.5,
                time_share: 0.5,
            },
            Placement {
                job: 2,
                model: "m".into(),
                workers: vec![(a(2), 1), (a(3), 5)],
                weight: 1,
                query_share: 0.5,
                time_share: 0.5,
            },
        ];
        queries_running(&mut nodes, &placement);
        assert_eq!(
            nodes.iter().map(|n| n.queries_running).collect::<Vec<_>>(),
            vec![0, 3]
        );
    }
}
