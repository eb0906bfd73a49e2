//! The repair planner (sans-IO): from the metadata and who is alive, which
//! committed versions need another copy, on which agent, copied from whom;
//! and which replica sets still name agents that are gone. The leader task
//! (`task.rs`) executes the plan.

use super::placement;
use super::state::MetaState;
use dml_shared::sdfs::Checksum;
use std::collections::HashSet;
use std::net::SocketAddr;

/// Copy one version to one more agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copy {
    pub name: String,
    pub version: u64,
    pub size: u64,
    pub checksum: Checksum,
    /// Live holders to copy from, best first.
    pub sources: Vec<SocketAddr>,
    /// The new holder.
    pub target: SocketAddr,
    /// Holders that are not live; removed from the replica set with the copy.
    pub dead: Vec<SocketAddr>,
}

/// A version with enough live holders whose replica set still names dead ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trim {
    pub name: String,
    pub version: u64,
    pub dead: Vec<SocketAddr>,
}

/// What one pass decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub copies: Vec<Copy>,
    pub trims: Vec<Trim>,
    /// Versions under-replicated with no live holder at all (data lost until one returns).
    pub unavailable: Vec<(String, u64)>,
    /// Versions under-replicated that could not get a copy now (no free agent, or the limit).
    pub waiting: usize,
}

/// Who counts for repair.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    /// Alive or suspect: still counted as holders.
    pub live: &'a [SocketAddr],
    /// Alive: eligible as new holders.
    pub alive: &'a [SocketAddr],
}

/// Plans at most `limit` copies, skipping versions in `busy` (a copy in
/// flight). Each version gets at most one copy per pass.
pub fn plan(
    state: &MetaState,
    view: View<'_>,
    replicas: usize,
    busy: &HashSet<(String, u64)>,
    limit: usize,
) -> Plan {
    let mut out = Plan::default();
    for (name, version, meta) in state.committed_versions() {
        let live: Vec<SocketAddr> = meta
            .replicas
            .iter()
            .copied()
            .filter(|r| view.live.contains(r))
            .collect();
        let dead: Vec<SocketAddr> = meta
            .replicas
            .iter()
            .copied()
            .filter(|r| !view.live.contains(r))
            .collect();
        let key = (name.to_string(), version);
        if busy.contains(&key) {
            continue;
        }
        if live.len() >= replicas {
            if !dead.is_empty() {
                out.trims.push(Trim {
                    name: key.0,
                    version,
                    dead,
                });
            }
            continue;
        }
        if live.is_empty() {
            out.unavailable.push(key);
            continue;
        }
        let target = placement::rank(name, view.alive)
            .into_iter()
            .find(|a| !meta.replicas.contains(a));
        match target {
            Some(target) if out.copies.len() < limit => out.copies.push(Copy {
                name: key.0,
                version,
                size: meta.size,
                checksum: meta.checksum,
                sources: live,
                target,
                dead,
            }),
            _ => out.waiting += 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::types::{Applied, Command, Op};

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn state_with(files: &[(&str, &[u16])]) -> MetaState {
        let mut s = MetaState::default();
        for (name, holders) in files {
            let holders: Vec<SocketAddr> = holders.iter().map(|p| addr(*p)).collect();
            let Applied::Version(v) = s.apply(&Command {
                now_ms: 0,
                op: Op::BeginPut {
                    name: name.to_string(),
                    size: 5,
                    replicas: holders.clone(),
                    deadline_ms: 100,
                },
            }) else {
                panic!()
            };
            s.apply(&Command {
                now_ms: 1,
                op: Op::CommitPut {
                    name: name.to_string(),
                    version: v,
                    checksum: [1; 32],
                    holders,
                    quorum: 1,
                },
            });
        }
        s
    }

    #[test]
    fn fully_replicated_versions_need_nothing() {
        let s = state_with(&[("a", &[1, 2, 3, 4])]);
        let live = [addr(1), addr(2), addr(3), addr(4), addr(5)];
        let p = plan(
            &s,
            View {
                live: &live,
                alive: &live,
            },
            4,
            &HashSet::new(),
            10,
        );
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn a_failed_holder_gets_replaced_from_the_survivors() {
        let s = state_with(&[("a", &[1, 2, 3, 4])]);
        let live = [addr(1), addr(2), addr(3), addr(5), addr(6)];
        let p = plan(
            &s,
            View {
                live: &live,
                alive: &live,
            },
            4,
            &HashSet::new(),
            10,
        );
        assert_eq!(p.copies.len(), 1);
        let c = &p.copies[0];
        assert_eq!(c.sources, vec![addr(1), addr(2), addr(3)]);
        assert!([addr(5), addr(6)].contains(&c.target));
        assert_eq!(c.dead, vec![addr(4)]);
        assert_eq!(c.target, placement::rank("a", &[addr(5), addr(6)])[0]);
    }

    #[test]
    fn short_versions_get_one_copy_per_pass_up_to_the_limit() {
        let s = state_with(&[("a", &[1]), ("b", &[1]), ("c", &[2])]);
        let live: Vec<SocketAddr> = (1..=6).map(addr).collect();
        let p = plan(
            &s,
            View {
                live: &live,
                alive: &live,
            },
            4,
            &HashSet::new(),
            2,
        );
        assert_eq!(p.copies.len(), 2);
        assert_eq!(p.waiting, 1);
        let busy: HashSet<(String, u64)> = [("a".to_string(), 1)].into();
        let p = plan(
            &s,
            View {
                live: &live,
                alive: &live,
            },
            4,
            &busy,
            10,
        );
        let names: Vec<&str> = p.copies.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, vec!["b", "c"]);
    }

    #[test]
    fn versions_with_no_live_holder_are_reported_not_copied() {
        let s = state_with(&[("a", &[1, 2])]);
        let live = [addr(3), addr(4)];
        let p = plan(
            &s,
            View {
                live: &live,
                alive: &live,
            },
            4,
            &HashSet::new(),
            10,
        );
        assert!(p.copies.is_empty());
        assert_eq!(p.unavailable, vec![("a".to_string(), 1)]);
    }

    #[test]
    fn no_free_agent_means_waiting() {
        let s = state_with(&[("a", &[1, 2, 3])]);
        let live = [addr(1), addr(2), addr(3)];
        let p = plan(
            &s,
            View {
                live: &live,
                alive: &live,
            },
            4,
            &HashSet::new(),
            10,
        );
        assert!(p.copies.is_empty());
        assert_eq!(p.waiting, 1);
    }

    #[test]
    fn suspects_count_as_holders_but_are_not_targets() {
        let s = state_with(&[("a", &[1, 2, 3])]);
        let live = [addr(1), addr(2), addr(3), addr(4), addr(5)];
        let alive = [addr(1), addr(2), addr(3), addr(5)];
        let p = plan(
            &s,
            View {
                live: &live,
                alive: &alive,
            },
            4,
            &HashSet::new(),
            10,
        );
        assert_eq!(p.copies[0].target, addr(5));
    }

    #[test]
    fn dead_holders_of_full_versions_are_trimmed() {
        let s = state_with(&[("a", &[1, 2, 3, 4, 5])]);
        let live = [addr(1), addr(2), addr(3), addr(4)];
        let p = plan(
            &s,
            View {
                live: &live,
                alive: &live,
            },
            4,
            &HashSet::new(),
            10,
        );
        assert!(p.copies.is_empty());
        assert_eq!(
            p.trims,
            vec![Trim {
                name: "a".into(),
                version: 1,
                dead: vec![addr(5)]
            }]
        );
    }
}
