//! A history of SDFS operations on a few files, with invoke and complete times, checked for
//! linearizability by todc-utils' `WGLChecker` (Wing and Gong's algorithm with Lowe's
//! memoisation, as porcupine implements it) against a sequential spec of one versioned file.
//! Linearizability is local (Herlihy and Wing), so each file is checked alone.
//!
//! Outcomes: a put or delete whose result the client never learned (an error, a timeout)
//! completes at the end of the history with an unknown result, so the checker may place it
//! anywhere after its invocation, including after everything (as if it never happened); its
//! client takes a new thread id, as Jepsen retires a crashed process. A failed get had no
//! effect and is dropped.

use serde::Serialize;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Instant;
use todc_utils::linearizability::WGLChecker;
use todc_utils::linearizability::history::{Action, History as Actions};
use todc_utils::specifications::Specification;

/// A put's content: its value id on the first line, then filler, `len` bytes in all.
pub fn content(value: u64, len: usize) -> Vec<u8> {
    let mut v = format!("nemesis value {value}\n").into_bytes();
    let mut x = value.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(b'a' + (x % 26) as u8);
    }
    v.truncate(len.max(v.iter().position(|&b| b == b'\n').unwrap_or(0) + 1));
    v
}

/// The value id of bytes made by [`content`], if they are such bytes.
pub fn value_of(bytes: &[u8]) -> Option<u64> {
    let line = bytes.split(|&b| b == b'\n').next()?;
    std::str::from_utf8(line)
        .ok()?
        .strip_prefix("nemesis value ")?
        .parse()
        .ok()
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub enum Op {
    Put { value: u64 },
    Get,
    Delete,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub enum Ret {
    /// The version the put committed.
    Put { version: u64 },
    /// The newest version and its value, or none.
    Get(Option<(u64, u64)>),
    /// Whether there was a file to delete.
    Delete(bool),
}

/// The sequential spec: a put appends a version numbered above every earlier one (numbers
/// may skip: a put that never commits uses one up), a get returns the newest, a delete
/// removes every version and keeps the numbering.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct VersionedFile {
    /// The highest version number known to be used.
    highest: u64,
    /// The newest version (its number, if known) and value.
    newest: Option<(Option<u64>, u64)>,
}

/// An operation with its result as the checker sees it; `None`: unknown.
#[derive(Clone, Debug)]
pub enum Step {
    Put { value: u64, version: Option<u64> },
    Get(Option<(u64, u64)>),
    Delete(Option<bool>),
}

impl Step {
    /// `op` with the result `ret` (`None`: unknown).
    fn of(op: &Op, ret: Option<&Ret>) -> Step {
        match (op, ret) {
            (Op::Put { value }, Some(Ret::Put { version })) => Step::Put {
                value: *value,
                version: Some(*version),
            },
            (Op::Put { value }, _) => Step::Put {
                value: *value,
                version: None,
            },
            (Op::Get, Some(Ret::Get(got))) => Step::Get(*got),
            // Failed reads are never recorded; a mismatched result cannot be placed.
            (Op::Get, _) => Step::Get(Some((0, u64::MAX))),
            (Op::Delete, Some(Ret::Delete(existed))) => Step::Delete(Some(*existed)),
            (Op::Delete, _) => Step::Delete(None),
        }
    }
}

impl Specification for VersionedFile {
    type State = VersionedFile;
    type Operation = Step;

    fn init() -> VersionedFile {
        VersionedFile::default()
    }

    fn apply(step: &Step, s: &VersionedFile) -> (bool, VersionedFile) {
        let mut next = s.clone();
        let valid = match step {
            Step::Put { value, version } => match version {
                Some(v) if *v <= s.highest => false,
                Some(v) => {
                    next.highest = *v;
                    next.newest = Some((Some(*v), *value));
                    true
                }
                None => {
                    next.newest = Some((None, *value));
                    true
                }
            },
            Step::Get(got) => match (s.newest, got) {
                (None, None) => true,
                (Some((Some(v), x)), Some((gv, gx))) => v == *gv && x == *gx,
                // A put with an unknown result: its number shows only now.
                (Some((None, x)), Some((gv, gx))) if x == *gx && *gv > s.highest => {
                    next.highest = *gv;
                    next.newest = Some((Some(*gv), x));
                    true
                }
                _ => false,
            },
            Step::Delete(existed) => {
                next.newest = None;
                existed.is_none_or(|e| e == s.newest.is_some())
            }
        };
        (valid, next)
    }
}

/// One recorded operation.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Record {
    pub thread: u64,
    pub file: usize,
    pub op: Op,
    /// Milliseconds since the history began.
    pub invoked_ms: f64,
    /// `None`: the outcome is unknown.
    pub completed: Option<(f64, Ret)>,
    /// Through which agent, and the error if any (for the report).
    pub via: usize,
    pub error: Option<String>,
}

/// Operations recorded by concurrent clients.
pub struct History {
    start: Instant,
    records: Mutex<Vec<Record>>,
}

/// The result of checking one file.
#[derive(Debug, Serialize)]
pub struct FileCheck {
    pub file: usize,
    pub ops: usize,
    pub unknown: usize,
    pub linearizable: bool,
    /// When not linearizable: the shortest failing prefix, as text.
    pub window: Option<String>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            records: Mutex::new(Vec::new()),
        }
    }

    /// Milliseconds since the history began.
    pub fn now_ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1000.0
    }

    pub fn push(&self, r: Record) {
        self.records.lock().expect("not poisoned").push(r);
    }

    pub fn records(&self) -> Vec<Record> {
        self.records.lock().expect("not poisoned").clone()
    }

    /// Checks every file in `0..files`.
    pub fn check(&self, files: usize) -> Vec<FileCheck> {
        let all = self.records();
        (0..files)
            .map(|f| {
                let recs: Vec<&Record> = all.iter().filter(|r| r.file == f).collect();
                check_file(f, &recs)
            })
            .collect()
    }
}

/// Invoke and return events of `recs` in time order.
fn events<'a>(recs: &[&'a Record]) -> Vec<(f64, bool, &'a Record)> {
    let mut ev: Vec<(f64, bool, &Record)> = Vec::new();
    for r in recs {
        ev.push((r.invoked_ms, true, r));
        if let Some((t, _)) = &r.completed {
            ev.push((*t, false, r));
        }
    }
    // At equal times a return comes first: it did not overlap what starts then.
    ev.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    ev
}

/// Whether the first `n` events form a linearizable history. Operations whose result is
/// not among them complete after all of them, with an unknown result.
fn linearizable(ev: &[(f64, bool, &Record)], n: usize) -> bool {
    let mut threads: Vec<u64> = ev[..n].iter().map(|(_, _, r)| r.thread).collect();
    threads.sort_unstable();
    threads.dedup();
    let process = |t: u64| threads.binary_search(&t).expect("a thread of the prefix");
    // A read that returns after the prefix had no effect within it: left out.
    let returned: Vec<&Record> = ev[..n]
        .iter()
        .filter(|(_, invoke, _)| !invoke)
        .map(|(_, _, r)| *r)
        .collect();
    let mut actions = Vec::new();
    let mut open = Vec::new();
    for (_, invoke, r) in &ev[..n] {
        let p = process(r.thread);
        if r.op == Op::Get && !returned.iter().any(|x| std::ptr::eq(*x, *r)) {
            continue;
        }
        if *invoke {
            actions.push((p, Action::Call(Step::of(&r.op, None))));
            open.push(*r);
        } else {
            let ret = r.completed.as_ref().map(|(_, ret)| ret);
            actions.push((p, Action::Response(Step::of(&r.op, ret))));
            open.retain(|o| !std::ptr::eq(*o, *r));
        }
    }
    for r in open {
        actions.push((process(r.thread), Action::Response(Step::of(&r.op, None))));
    }
    if actions.is_empty() {
        return true;
    }
    WGLChecker::<VersionedFile>::is_linearizable(Actions::from_actions(actions))
}

fn check_file(file: usize, recs: &[&Record]) -> FileCheck {
    let ev = events(recs);
    let ok = linearizable(&ev, ev.len());
    let window = (!ok).then(|| {
        // The shortest failing prefix: adding events never repairs a history.
        let (mut lo, mut hi) = (0, ev.len());
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if linearizable(&ev, mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let mut s = format!("file f{file}: first {hi} of {} events fail:\n", ev.len());
        for (t, invoke, r) in &ev[hi.saturating_sub(40)..hi] {
            let what = if *invoke {
                format!("invoke {:?}", r.op)
            } else {
                format!("return {:?}", r.completed.as_ref().map(|c| &c.1))
            };
            let _ = writeln!(
                s,
                "  {t:>10.1} ms  thread {:>3}  via a{}  {what}",
                r.thread, r.via
            );
        }
        s
    });
    FileCheck {
        file,
        ops: recs.len(),
        unknown: recs.iter().filter(|r| r.completed.is_none()).count(),
        linearizable: ok,
        window,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(thread: u64, op: Op, at: (f64, f64), ret: Option<Ret>) -> Record {
        Record {
            thread,
            file: 0,
            op,
            invoked_ms: at.0,
            completed: ret.map(|r| (at.1, r)),
            via: 0,
            error: None,
        }
    }

    fn check(recs: &[Record]) -> bool {
        let refs: Vec<&Record> = recs.iter().collect();
        check_file(0, &refs).linearizable
    }

    #[test]
    fn contents_name_their_value() {
        for (v, len) in [(0, 1), (7, 100), (u64::MAX, 5000)] {
            let c = content(v, len);
            assert_eq!(value_of(&c), Some(v));
            assert!(c.len() >= len.min(c.len()));
        }
        assert_eq!(value_of(b"other"), None);
    }

    #[test]
    fn sequential_puts_and_gets_check() {
        let h = [
            rec(
                1,
                Op::Put { value: 10 },
                (0.0, 1.0),
                Some(Ret::Put { version: 1 }),
            ),
            rec(1, Op::Get, (2.0, 3.0), Some(Ret::Get(Some((1, 10))))),
            rec(
                2,
                Op::Put { value: 11 },
                (4.0, 5.0),
                Some(Ret::Put { version: 3 }),
            ),
            rec(1, Op::Get, (6.0, 7.0), Some(Ret::Get(Some((3, 11))))),
            rec(2, Op::Delete, (8.0, 9.0), Some(Ret::Delete(true))),
            rec(1, Op::Get, (10.0, 11.0), Some(Ret::Get(None))),
            rec(1, Op::Delete, (12.0, 13.0), Some(Ret::Delete(false))),
        ];
        assert!(check(&h));
    }

    #[test]
    fn a_stale_read_after_a_completed_put_fails() {
        let h = [
            rec(
                1,
                Op::Put { value: 10 },
                (0.0, 1.0),
                Some(Ret::Put { version: 1 }),
            ),
            rec(
                1,
                Op::Put { value: 11 },
                (2.0, 3.0),
                Some(Ret::Put { version: 2 }),
            ),
            rec(2, Op::Get, (4.0, 5.0), Some(Ret::Get(Some((1, 10))))),
        ];
        assert!(!check(&h));
        let refs: Vec<&Record> = h.iter().collect();
        let w = check_file(0, &refs).window.expect("a window");
        assert!(w.contains("first 6 of 6"), "{w}");
    }

    #[test]
    fn overlapping_operations_may_go_either_way() {
        let h = [
            rec(
                1,
                Op::Put { value: 10 },
                (0.0, 10.0),
                Some(Ret::Put { version: 1 }),
            ),
            rec(2, Op::Get, (1.0, 2.0), Some(Ret::Get(None))),
            rec(3, Op::Get, (3.0, 4.0), Some(Ret::Get(Some((1, 10))))),
        ];
        assert!(check(&h));
        // Once a read saw the put, a later read may not miss it.
        let mut bad = h.to_vec();
        bad.push(rec(2, Op::Get, (5.0, 6.0), Some(Ret::Get(None))));
        assert!(!check(&bad));
    }

    #[test]
    fn versions_must_grow() {
        let h = [
            rec(
                1,
                Op::Put { value: 10 },
                (0.0, 1.0),
                Some(Ret::Put { version: 2 }),
            ),
            rec(
                1,
                Op::Put { value: 11 },
                (2.0, 3.0),
                Some(Ret::Put { version: 2 }),
            ),
        ];
        assert!(!check(&h));
    }

    #[test]
    fn an_unknown_put_may_or_may_not_have_happened() {
        let seen = [
            rec(1, Op::Put { value: 10 }, (0.0, 1.0), None),
            rec(2, Op::Get, (5.0, 6.0), Some(Ret::Get(Some((4, 10))))),
            rec(2, Op::Get, (7.0, 8.0), Some(Ret::Get(Some((4, 10))))),
        ];
        assert!(check(&seen));
        let unseen = [
            rec(1, Op::Put { value: 10 }, (0.0, 1.0), None),
            rec(2, Op::Get, (5.0, 6.0), Some(Ret::Get(None))),
        ];
        assert!(check(&unseen));
        // A value nobody put cannot be read.
        let invented = [rec(2, Op::Get, (5.0, 6.0), Some(Ret::Get(Some((1, 99)))))];
        assert!(!check(&invented));
    }
}

/// Checks a history saved by the nemesis test: `DML_HISTORY=path cargo test -p dml-history
/// saved_history -- --ignored --nocapture`.
#[test]
#[ignore = "reads a saved history named by DML_HISTORY"]
fn saved_history() {
    let path = std::env::var("DML_HISTORY").expect("DML_HISTORY names a history.json");
    let text = std::fs::read_to_string(&path).expect("readable");
    let records: Vec<Record> = serde_json::from_str(&text).expect("a saved history");
    let h = History::new();
    let files = records.iter().map(|r| r.file + 1).max().unwrap_or(0);
    for r in records {
        h.push(r);
    }
    let t = Instant::now();
    for c in h.check(files) {
        eprintln!(
            "f{}: {} ops, {} unknown: {}",
            c.file, c.ops, c.unknown, c.linearizable
        );
    }
    eprintln!("checked in {:?}", t.elapsed());
}
