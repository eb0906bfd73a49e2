//! Batched puts at the leader (group commit): one plan for all the files
//! of a batch, on one chain, kept in memory as a small put's plan is
//! (`plans.rs`); one `Op::Batch` entry commits them, each file claimed,
//! checked and applied on its own, so one refused file leaves the others
//! committed. Pure, as `serve.rs`: the leader task appends what it returns.

use super::{Ctx, Step, Then};
use crate::control::error::ControlError;
use crate::control::placement;
use crate::control::plans::{Claim, Claimed, PlanRequest, Plans, check_holders};
use crate::control::types::{Applied, Op};
use dml_shared::control::ControlResponse;
use dml_shared::sdfs::{
    BatchCommit, FileCommit, MAX_BATCH_BYTES, MAX_BATCH_FILES, MetaResponse, validate_name,
};

fn bad(msg: impl Into<String>) -> ControlError {
    ControlError::BadRequest(msg.into())
}

fn fail(e: ControlError) -> Step {
    Step::Reply(Err(e))
}

fn sdfs(r: MetaResponse) -> Step {
    Step::Reply(Ok(ControlResponse::Sdfs(r)))
}

/// Where one file of a batched commit gets its answer.
#[derive(Debug)]
pub enum Slot {
    /// From the result of this op of the appended `Op::Batch`.
    Op(usize),
    /// Known without the log.
    Now(FileCommit),
}

// A batch's plans stay in the leader's memory, as a small put's do.
const _: () = assert!(MAX_BATCH_BYTES <= crate::control::plans::DEFER_MAX);

/// Plans a batched put: every file's next version, all on the chain placed
/// for the batch's first name, kept in memory until the commit.
pub fn begin(plans: &mut Plans, cx: &Ctx, files: Vec<(String, u64)>) -> Step {
    if files.is_empty() {
        return fail(bad("a batched put needs at least one file"));
    }
    if files.len() > MAX_BATCH_FILES {
        return fail(bad(format!(
            "a batched put has at most {MAX_BATCH_FILES} files, not {}",
            files.len()
        )));
    }
    let total = files
        .iter()
        .map(|(_, size)| *size)
        .fold(0u64, u64::saturating_add);
    if total > MAX_BATCH_BYTES {
        return fail(bad(format!(
            "a batched put holds at most {MAX_BATCH_BYTES} bytes, not {total}"
        )));
    }
    for (i, (name, _)) in files.iter().enumerate() {
        if let Err(e) = validate_name(name) {
            return fail(bad(format!("file {} of the batch: {e}", i + 1)));
        }
    }
    let Some(view) = cx.view else {
        return Step::View;
    };
    let quorum = cx.cfg.write_quorum;
    if view.alive.len() < quorum {
        return fail(ControlError::TooFewAlive {
            alive: view.alive.len(),
            quorum,
        });
    }
    let chain = placement::place(&files[0].0, &view.alive, cx.cfg.replicas);
    let deadline_ms = cx.now_ms + cx.cfg.put_timeout.as_millis() as u64;
    let mut versions = Vec::with_capacity(files.len());
    for (name, size) in files {
        let req = PlanRequest {
            name,
            size,
            replicas: chain.clone(),
            deadline_ms,
        };
        let planned = plans.plan(req, |n| cx.state.next_version(n), cx.now);
        debug_assert!(planned.append.is_none(), "a batch's plans stay in memory");
        versions.push(planned.version);
    }
    sdfs(MetaResponse::PutBatchPlan {
        versions,
        chain,
        quorum,
        plan: plans.term(),
    })
}

/// Commits a batch's files in one `Op::Batch` entry: each file claims its
/// plan as a single put's commit does; a file refused before the log gets
/// its answer at once.
pub fn commit(plans: &mut Plans, cx: &Ctx, plan: u64, files: Vec<BatchCommit>) -> Step {
    if files.len() > MAX_BATCH_FILES {
        return fail(bad(format!(
            "a batched put has at most {MAX_BATCH_FILES} files, not {}",
            files.len()
        )));
    }
    let quorum = cx.cfg.write_quorum;
    let refused = |e: ControlError| Slot::Now(FileCommit::Refused(e.into()));
    let mut ops = Vec::new();
    let mut slots = Vec::with_capacity(files.len());
    for f in files {
        let BatchCommit {
            name,
            version,
            checksum,
            holders,
        } = f;
        let slot = match plans.claim(&name, version, plan) {
            Claim::Now(Ok(Claimed::Deferred { size, replicas })) => {
                match check_holders(&name, version, &holders, &replicas) {
                    Err(e) => refused(bad(e.to_string())),
                    Ok(()) => {
                        ops.push(Op::PutAt {
                            name,
                            version,
                            size,
                            checksum,
                            holders,
                            quorum,
                        });
                        Slot::Op(ops.len() - 1)
                    }
                }
            }
            // A retry of a commit this leader took: the state tells.
            Claim::Now(Ok(Claimed::Logged)) => {
                ops.push(Op::CommitPut {
                    name,
                    version,
                    checksum,
                    holders,
                    quorum,
                });
                Slot::Op(ops.len() - 1)
            }
            Claim::Now(Ok(Claimed::Foreign)) => {
                if cx.state.is_committed_as(&name, version, &checksum) {
                    Slot::Now(FileCommit::Committed { version })
                } else {
                    refused(ControlError::Rejected(format!(
                        "the put of \"{name}\" v{version} was planned by an earlier leader (term {plan}) and did not commit; retry the put"
                    )))
                }
            }
            Claim::Now(Err(f)) => refused(f.into()),
            Claim::Wait => refused(bad(format!(
                "\"{name}\" v{version} was not planned as part of a batch"
            ))),
        };
        slots.push(slot);
    }
    if ops.is_empty() {
        return sdfs(MetaResponse::CommittedBatch(answers(slots, &[], None)));
    }
    Step::Append(Op::Batch { ops }, Then::CommitBatch(slots))
}

/// Each file's answer to a batched commit whose entry applied (`results`,
/// one per op) or not (`unconfirmed`: appended, not confirmed).
pub fn answers(
    slots: Vec<Slot>,
    results: &[Applied],
    unconfirmed: Option<&str>,
) -> Vec<FileCommit> {
    slots
        .into_iter()
        .map(|slot| match slot {
            Slot::Now(c) => c,
            Slot::Op(_) if unconfirmed.is_some() => FileCommit::Unconfirmed {
                reason: unconfirmed.unwrap_or_default().to_string(),
            },
            Slot::Op(i) => match results.get(i) {
                Some(Applied::Version(version)) => FileCommit::Committed { version: *version },
                Some(Applied::Rejected(m)) => {
                    FileCommit::Refused(ControlError::Rejected(m.clone()).into())
                }
                other => FileCommit::Refused(
                    ControlError::Raft(format!(
                        "unexpected result {other:?} from the state machine"
                    ))
                    .into(),
                ),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{LiveView, ServeConfig};
    use super::*;
    use crate::control::state::MetaState;
    use crate::control::types::Command;
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// The leader of term 3: its plans, settings and six live agents.
    fn leader() -> (Plans, ServeConfig, LiveView) {
        let cfg = ServeConfig {
            replicas: 4,
            write_quorum: 3,
            put_timeout: Duration::from_secs(30),
            max_lease_wait: Duration::from_secs(1),
            keyring_seed: None,
            keyring_encrypted: true,
        };
        let alive: Vec<SocketAddr> = (1..=6).map(addr).collect();
        let view = LiveView {
            live: alive.clone(),
            alive,
        };
        (Plans::new(3, Duration::from_secs(60)), cfg, view)
    }

    fn reply(step: Step) -> Result<MetaResponse, ControlError> {
        match step {
            Step::Reply(Ok(ControlResponse::Sdfs(r))) => Ok(r),
            Step::Reply(Err(e)) => Err(e),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_batch_with_a_bad_name_is_refused_naming_the_file() {
        let (mut plans, cfg, view) = leader();
        let state = MetaState::default();
        let cx = Ctx {
            cfg: &cfg,
            state: &state,
            view: Some(&view),
            now: Instant::now(),
            now_ms: 1,
        };
        let files = vec![("ok".to_string(), 1), ("a/../b".to_string(), 2)];
        let e = reply(begin(&mut plans, &cx, files))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("file 2 of the batch") && e.contains("\"a/../b\""),
            "{e}"
        );
        let too_big = vec![("x".to_string(), MAX_BATCH_BYTES + 1)];
        let e = reply(begin(&mut plans, &cx, too_big)).unwrap_err();
        assert!(matches!(e, ControlError::BadRequest(_)), "{e}");
        assert_eq!(plans.open(), 0, "nothing planned");
    }

    #[test]
    fn a_batch_commits_in_one_entry_and_each_file_stands_on_its_own() {
        let (mut plans, cfg, view) = leader();
        let mut state = MetaState::default();
        let cx = Ctx {
            cfg: &cfg,
            state: &state,
            view: Some(&view),
            now: Instant::now(),
            now_ms: 1,
        };
        let files = vec![("x".into(), 3), ("y".into(), 4), ("x".into(), 5)];
        let (versions, chain, plan) = match reply(begin(&mut plans, &cx, files)) {
            Ok(MetaResponse::PutBatchPlan {
                versions,
                chain,
                quorum: 3,
                plan,
            }) => (versions, chain, plan),
            other => panic!("{other:?}"),
        };
        assert_eq!(versions, vec![1, 1, 2], "a name twice takes two versions");
        assert_eq!((chain.len(), plan), (4, 3));
        let outsider = (1..=6).map(addr).find(|a| !chain.contains(a)).unwrap();
        let file = |name: &str, version, holders: Vec<SocketAddr>| BatchCommit {
            name: name.into(),
            version,
            checksum: [7; 32],
            holders,
        };
        let files = vec![
            file("x", 1, chain[..3].to_vec()),
            // A holder outside the chain: refused before the log.
            file("y", 1, vec![chain[0], outsider, chain[1]]),
            // Too few holders: refused by the state machine, alone.
            file("x", 2, chain[..2].to_vec()),
        ];
        let (ops, slots) = match commit(&mut plans, &cx, plan, files) {
            Step::Append(Op::Batch { ops }, Then::CommitBatch(slots)) => (ops, slots),
            other => panic!("{other:?}"),
        };
        assert_eq!(ops.len(), 2, "one entry with the two files it can commit");
        let op = Op::Batch { ops };
        let Applied::Batch(results) = state.apply(&Command { now_ms: 2, op }) else {
            panic!("a batch applies to a batch of results");
        };
        let got = answers(slots, &results, None);
        assert_eq!(got[0], FileCommit::Committed { version: 1 });
        let msg = |a: &FileCommit| match a {
            FileCommit::Refused(e) => e.message.clone(),
            other => panic!("{other:?}"),
        };
        assert!(msg(&got[1]).contains("not in the chain the leader planned"));
        assert!(msg(&got[2]).contains("a write needs 3"));
        assert_eq!(state.stat("x").unwrap().versions.len(), 1);
        assert_eq!(state.stat("y"), None);
        // A plan is claimed once: the same commit again is a retry the state
        // answers (committed with these bytes, or refused).
        let cx = Ctx {
            cfg: &cfg,
            state: &state,
            view: Some(&view),
            now: Instant::now(),
            now_ms: 3,
        };
        match commit(
            &mut plans,
            &cx,
            plan,
            vec![file("x", 1, chain[..3].to_vec())],
        ) {
            Step::Append(Op::Batch { ops }, _) => {
                assert!(matches!(ops[..], [Op::CommitPut { version: 1, .. }]))
            }
            other => panic!("{other:?}"),
        }
        // A later leader's retry finds it committed; another file, lost.
        let mut later = Plans::new(4, Duration::from_secs(60));
        let files = vec![file("x", 1, vec![]), file("z", 1, vec![])];
        match reply(commit(&mut later, &cx, plan, files)) {
            Ok(MetaResponse::CommittedBatch(a)) => {
                assert_eq!(a[0], FileCommit::Committed { version: 1 });
                assert!(msg(&a[1]).contains("planned by an earlier leader"));
            }
            other => panic!("{other:?}"),
        }
        // An unconfirmed entry leaves the files it holds to be asked about.
        let slots = vec![Slot::Op(0), Slot::Now(FileCommit::Committed { version: 9 })];
        let a = answers(slots, &[], Some("no majority"));
        assert!(matches!(a[0], FileCommit::Unconfirmed { .. }));
        assert_eq!(a[1], FileCommit::Committed { version: 9 });
    }

    #[test]
    fn a_batch_entry_applies_each_op_on_its_own() {
        let mut s = MetaState::default();
        let put = |name: &str, version, quorum| Op::PutAt {
            name: name.into(),
            version,
            size: 3,
            checksum: [1; 32],
            holders: vec![addr(1), addr(2), addr(3)],
            quorum,
        };
        let op = Op::Batch {
            ops: vec![
                put("a", 1, 3),
                put("b", 1, 4),
                put("c", 1, 3),
                Op::Batch { ops: vec![] },
            ],
        };
        match s.apply(&Command { now_ms: 5, op }) {
            Applied::Batch(r) => {
                assert_eq!(r[0], Applied::Version(1));
                assert!(matches!(r[1], Applied::Rejected(_)));
                assert_eq!(r[2], Applied::Version(1));
                assert!(matches!(r[3], Applied::Rejected(_)), "no nesting");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.count(), (2, 2, 6));
    }
}
