//! Least privilege: the [`Role`] each API request needs, in one exhaustive
//! `match` (no wildcard, so a new request cannot be forgotten).
//!
//! - read-only: views (id, members, stats, leader, ls, get, store, jobs,
//!   output, rates, latency, placement, telemetry).
//! - admin: writes (put, delete, submit-job, set-batch-size, join, leave,
//!   keyring).
//! - peer (an agent's cluster key): Raft RPCs, repair copies, reconcile,
//!   the inference worker protocol, node stats between agents.
//!
//! A put's chain hops and a client's write to the chain head are the same
//! `Data(Write)`, so a write needs admin; the leader checks the holders a
//! commit claims against its own plan. `leader_only` does not change the
//! role: clients set it too when they ask a leader they know. An agent
//! checks the role of the connection a request arrived on, before it
//! relays the request to the leader on its own (peer) connection.

use crate::api::Request;
use crate::auth::Role;
use crate::control::ControlRequest;
use crate::error::{ErrorKind, RemoteError};
use crate::infer::InferRequest;
use crate::sdfs::{DataRequest, MetaRequest};

/// What a request needs: the role, and what it does in words ("put").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needs {
    pub role: Role,
    /// What the request does, as in "a read-only credential cannot {what}".
    pub what: &'static str,
}

const fn needs(role: Role, what: &'static str) -> Needs {
    Needs { role, what }
}

/// The role `req` needs.
pub fn needs_for(req: &Request) -> Needs {
    use Role::*;
    match req {
        Request::Id => needs(ReadOnly, "show the agent's id"),
        Request::Members => needs(ReadOnly, "list members"),
        Request::Stats => needs(ReadOnly, "show stats"),
        Request::Leader => needs(ReadOnly, "show the leader"),
        Request::Subscribe => needs(ReadOnly, "subscribe to telemetry"),
        Request::Logs { .. } => needs(ReadOnly, "read the agent's log"),
        Request::Join => needs(Admin, "join"),
        Request::Leave => needs(Admin, "leave"),
        Request::Control { req, .. } => control_needs(req),
        Request::Data(req) => data_needs(req),
        Request::Raft(_) => needs(Peer, "send Raft RPCs"),
        Request::NodeStats => needs(Peer, "collect node stats"),
        Request::Keyring(k) => {
            let (role, what) = k.needs();
            needs(role, what)
        }
    }
}

/// The role a control-plane request needs.
pub fn control_needs(req: &ControlRequest) -> Needs {
    match req {
        ControlRequest::Sdfs(m) => meta_needs(m),
        ControlRequest::Infer(i) => infer_needs(i),
        ControlRequest::Keyring(k) => {
            let (role, what) = k.needs();
            needs(role, what)
        }
    }
}

fn meta_needs(req: &MetaRequest) -> Needs {
    use Role::*;
    match req {
        MetaRequest::BeginPut { .. }
        | MetaRequest::BeginPutBatch { .. }
        | MetaRequest::CommitPutBatch { .. }
        | MetaRequest::CommitPut { .. }
        | MetaRequest::AbortPut { .. }
        | MetaRequest::PutOutcome { .. } => needs(Admin, "put"),
        MetaRequest::Delete { .. } | MetaRequest::DeleteOutcome { .. } => needs(Admin, "delete"),
        MetaRequest::Stat { .. } => needs(ReadOnly, "get"),
        MetaRequest::List { .. } | MetaRequest::ListPage { .. } => needs(ReadOnly, "ls"),
        MetaRequest::Health { .. } => needs(ReadOnly, "show SDFS health"),
        MetaRequest::Count => needs(ReadOnly, "count files"),
        MetaRequest::Nodes => needs(ReadOnly, "list files per node"),
        MetaRequest::Balance { dry_run: true } => needs(ReadOnly, "show the balance plan"),
        MetaRequest::Balance { dry_run: false } => needs(Admin, "start a balance"),
        MetaRequest::Wanted { .. } | MetaRequest::Assigned { .. } => {
            needs(Peer, "reconcile replicas")
        }
    }
}

fn infer_needs(req: &InferRequest) -> Needs {
    use Role::*;
    match req {
        InferRequest::Submit { .. } => needs(Admin, "submit-job"),
        InferRequest::SetBatchSize { .. } => needs(Admin, "set-batch-size"),
        InferRequest::SetBatchPolicy { .. } => needs(Admin, "set-batch-size"),
        InferRequest::Jobs => needs(ReadOnly, "list jobs"),
        InferRequest::Output { .. } => needs(ReadOnly, "get-output"),
        InferRequest::Models => needs(ReadOnly, "list models"),
        InferRequest::Rates => needs(ReadOnly, "show rates"),
        InferRequest::Latency => needs(ReadOnly, "show latency"),
        InferRequest::Placement => needs(ReadOnly, "show placement"),
        InferRequest::Lease { .. } => needs(Peer, "lease queries as a worker"),
        InferRequest::Complete { .. } => needs(Peer, "complete queries as a worker"),
        InferRequest::Unready { .. } => needs(Peer, "report a worker unready"),
        InferRequest::Cancel { .. } => needs(Admin, "cancel a job"),
        InferRequest::Job { .. } => needs(ReadOnly, "show a job"),
        InferRequest::QueryTimes { .. } => needs(ReadOnly, "show a job's query times"),
    }
}

fn data_needs(req: &DataRequest) -> Needs {
    use Role::*;
    match req {
        DataRequest::Write { .. } | DataRequest::WriteBatch { .. } => needs(Admin, "put"),
        DataRequest::Read { .. } => needs(ReadOnly, "get"),
        // A reader reports a copy that failed its checksum; the agent
        // re-hashes its own copy before it acts.
        DataRequest::BadCopy { .. } => needs(ReadOnly, "report a bad copy"),
        DataRequest::Store => needs(ReadOnly, "store"),
        DataRequest::Replicate { .. } => needs(Peer, "copy replicas for repair"),
        DataRequest::Drop { .. } => needs(Peer, "drop a deleted file's copies"),
    }
}

/// How a credential of `role` is named in an error: "an admin credential".
pub fn credential_name(role: Role) -> &'static str {
    match role {
        Role::ReadOnly => "a read-only credential",
        Role::Admin => "an admin credential",
        Role::Peer => "an agent's cluster key",
    }
}

/// `Ok` if a connection of `role` may send `req`, else the refusal to
/// answer, e.g. "a read-only credential cannot put (needs an admin
/// credential)".
pub fn check(role: Role, req: &Request) -> Result<(), RemoteError> {
    let n = needs_for(req);
    if role.allows(n.role) {
        return Ok(());
    }
    Err(RemoteError::new(
        ErrorKind::Refused,
        format!(
            "{} cannot {} (needs {})",
            credential_name(role),
            n.what,
            credential_name(n.role)
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdfs::Checksum;

    fn addr() -> std::net::SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    fn control(req: impl Into<ControlRequest>) -> Request {
        Request::Control {
            req: req.into(),
            leader_only: false,
        }
    }

    fn views() -> Vec<Request> {
        vec![
            Request::Id,
            Request::Members,
            Request::Stats,
            Request::Leader,
            Request::Subscribe,
            Request::Logs { lines: 10 },
            control(MetaRequest::Stat { name: "a".into() }),
            control(MetaRequest::List { glob: "*".into() }),
            control(MetaRequest::Count),
            control(MetaRequest::Nodes),
            control(InferRequest::Jobs),
            control(InferRequest::Output { job: 1 }),
            control(InferRequest::Job { job: 1 }),
            control(InferRequest::Models),
            control(InferRequest::Rates),
            control(InferRequest::Latency),
            control(InferRequest::Placement),
            Request::Data(DataRequest::Read {
                name: "a".into(),
                version: 1,
            }),
            Request::Data(DataRequest::Store),
        ]
    }

    fn writes() -> Vec<Request> {
        let checksum = Checksum::default();
        vec![
            Request::Join,
            Request::Leave,
            control(MetaRequest::BeginPut {
                name: "a".into(),
                size: 1,
            }),
            control(MetaRequest::CommitPut {
                name: "a".into(),
                version: 1,
                checksum,
                holders: vec![addr()],
                plan: 1,
            }),
            control(MetaRequest::Delete { name: "a".into() }),
            control(InferRequest::Submit {
                model: "resnet50".into(),
                count: None,
                dataset: "d".into(),
                weight: 1,
            }),
            control(InferRequest::SetBatchSize {
                model: "resnet50".into(),
                size: 4,
            }),
            Request::Data(DataRequest::Write {
                name: "a".into(),
                version: 1,
                size: 1,
                checksum: None,
                downstream: vec![],
                plan: 1,
                seal: None,
            }),
        ]
    }

    fn peer_only() -> Vec<Request> {
        vec![
            Request::Raft(vec![1, 2, 3]),
            Request::NodeStats,
            Request::Data(DataRequest::Replicate {
                name: "a".into(),
                version: 1,
                size: 1,
                checksum: Checksum::default(),
                sources: vec![addr()],
            }),
            Request::Data(DataRequest::Drop {
                name: "a".into(),
                through: 1,
            }),
            control(MetaRequest::Wanted {
                node: addr(),
                items: vec![],
            }),
            control(MetaRequest::Assigned {
                node: addr(),
                after: None,
                limit: 1,
            }),
            control(InferRequest::Lease {
                worker: addr(),
                wait_ms: 1,
                figures: None,
            }),
            control(InferRequest::Unready {
                worker: addr(),
                reason: "x".into(),
            }),
        ]
    }

    #[test]
    fn a_read_only_credential_may_view_but_not_write() {
        for r in views() {
            check(Role::ReadOnly, &r).unwrap_or_else(|e| panic!("{r:?}: {e:?}"));
        }
        for r in writes().into_iter().chain(peer_only()) {
            let e = check(Role::ReadOnly, &r).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Refused);
            assert!(
                e.message.starts_with("a read-only credential cannot "),
                "{e:?}"
            );
        }
    }

    #[test]
    fn an_admin_credential_may_write_but_not_speak_for_an_agent() {
        for r in views().into_iter().chain(writes()) {
            check(Role::Admin, &r).unwrap_or_else(|e| panic!("{r:?}: {e:?}"));
        }
        for r in peer_only() {
            let e = check(Role::Admin, &r).unwrap_err();
            assert!(
                e.message.contains("(needs an agent's cluster key)"),
                "{e:?}"
            );
        }
    }

    #[test]
    fn the_cluster_key_may_do_everything() {
        for r in views().into_iter().chain(writes()).chain(peer_only()) {
            check(Role::Peer, &r).unwrap();
        }
    }

    #[test]
    fn a_refusal_names_the_command_and_the_role_it_needs() {
        let put = control(MetaRequest::BeginPut {
            name: "a".into(),
            size: 1,
        });
        assert_eq!(
            check(Role::ReadOnly, &put).unwrap_err().message,
            "a read-only credential cannot put (needs an admin credential)"
        );
        assert_eq!(
            check(Role::Admin, &Request::Raft(vec![]))
                .unwrap_err()
                .message,
            "an admin credential cannot send Raft RPCs (needs an agent's cluster key)"
        );
        let relayed = Request::Control {
            req: MetaRequest::Delete { name: "a".into() }.into(),
            leader_only: true,
        };
        assert_eq!(
            check(Role::ReadOnly, &relayed).unwrap_err().message,
            "a read-only credential cannot delete (needs an admin credential)"
        );
    }
}
