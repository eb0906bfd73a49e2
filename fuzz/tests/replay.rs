//! Replays every fuzz target on stable, without libFuzzer: over the seed corpus
//! (`corpus/<target>/`), built-in seeds, mutations of every seed and random inputs.
//! `cargo test --manifest-path fuzz/Cargo.toml -- --ignored write_seed_corpus` rewrites
//! the built-in seeds into `corpus/`.

use dml_agent::control::network::{RaftReply, RaftRpc};
use dml_agent::control::state::MetaState;
use dml_agent::control::types::{Command, Op, TypeConfig};
use dml_agent::membership::msg::{Message, Update, UpdateKind};
use dml_fuzz::seal_at;
use dml_shared::NodeId;
use dml_shared::api::{LeaderInfo, Request, Response};
use dml_shared::auth::handshake;
use dml_shared::control::ControlRequest;
use dml_shared::infer::{ImageResult, InferRequest, Outcome, Prediction, jsonl_line};
use dml_shared::sdfs::{DataRequest, MetaRequest};
use dml_shared::wire::{self, Kind};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest};
use openraft::raft::{VoteRequest, VoteResponse};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, SnapshotMeta, Vote};
use std::path::{Path, PathBuf};

/// Random inputs per target, and mutations per seed.
const RANDOM: usize = 3000;
const MUTATIONS: usize = 300;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// A small deterministic generator (xorshift64*), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn frame(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// Commands that build up some files and a job, in an order the state machine accepts.
fn commands() -> Vec<Command> {
    let a = "127.0.0.1:8001".parse().unwrap();
    let b = "127.0.0.1:8002".parse().unwrap();
    let ops = vec![
        Op::BeginPut {
            name: "img/1.jpg".into(),
            size: 3,
            replicas: vec![a, b],
            deadline_ms: 100,
        },
        Op::CommitPut {
            name: "img/1.jpg".into(),
            version: 1,
            checksum: [7; 32],
            holders: vec![a, b],
            quorum: 2,
        },
        Op::BeginPut {
            name: "img/2.jpg".into(),
            size: 0,
            replicas: vec![a],
            deadline_ms: 5,
        },
        Op::SetReplicas {
            name: "img/1.jpg".into(),
            version: 1,
            add: vec![b],
            drop: vec![a],
        },
        Op::SubmitJob {
            model: "resnet50".into(),
            dataset: "img".into(),
            images: vec!["img/1.jpg".into()],
            count: 3,
            weight: 2,
        },
        Op::SetBatchSize {
            model: "resnet50".into(),
            size: 2,
        },
        Op::CompleteQuery {
            job: 1,
            results: vec![ImageResult {
                index: 0,
                image: "img/1.jpg".into(),
                outcome: Outcome::Error("bad".into()),
            }],
        },
        Op::SetJobOutput {
            job: 1,
            name: "out/1.jsonl".into(),
        },
        Op::FailJob {
            job: 1,
            reason: "stopped".into(),
        },
        Op::ExpirePending,
        Op::AbortPut {
            name: "img/2.jpg".into(),
            version: 1,
        },
        Op::Delete {
            name: "img/1.jpg".into(),
        },
    ];
    ops.into_iter()
        .enumerate()
        .map(|(i, op)| Command {
            now_ms: 10 * i as u64,
            op,
        })
        .collect()
}

/// Seeds written in code: valid inputs of each decoder.
fn builtin_seeds(target: &str) -> Vec<Vec<u8>> {
    let addr = "127.0.0.1:8001".parse().unwrap();
    let id = NodeId::new(addr, 1_764_150_000_000);
    let update = Update {
        id,
        incarnation: 2,
        kind: UpdateKind::Suspect { by: 7 },
    };
    let assets = root().join("../assets");
    let read = |p: &Path| std::fs::read(p).unwrap_or_default();
    match target {
        "wire_request" => [
            Request::Members,
            Request::Control {
                req: ControlRequest::Sdfs(MetaRequest::BeginPut {
                    name: "a/b.jpg".into(),
                    size: 10,
                }),
                leader_only: false,
            },
            Request::Control {
                req: ControlRequest::Infer(InferRequest::Submit {
                    model: "resnet50".into(),
                    count: Some(4),
                    dataset: "datasets/sample".into(),
                    weight: 1,
                }),
                leader_only: true,
            },
            Request::Data(DataRequest::Read {
                name: "x".into(),
                version: 3,
            }),
            Request::Raft(vec![1, 2, 3]),
        ]
        .iter()
        .map(|r| wire::encode(Kind::Request, r))
        .collect(),
        "wire_response" => [
            Response::Ok,
            Response::Error(dml_shared::RemoteError::invalid("no")),
            Response::Leader(LeaderInfo {
                leader: Some(addr),
                term: 3,
                voters: vec![addr],
                is_voter: true,
                last_applied: Some(9),
                applied_digest: Some("0123456789abcdef".into()),
                unacked_ms: None,
                raft_ids: Vec::new(),
            }),
            Response::NotLeader { leader: None },
            Response::Telemetry(Box::default()),
        ]
        .iter()
        .map(|r| wire::encode(Kind::Response, r))
        .collect(),
        "framing" => vec![
            [vec![16], frame(b"hello"), frame(b""), frame(&[9; 60])].concat(),
            [vec![1], frame(b"abc"), vec![0, 0, 1]].concat(),
            [vec![0], 1_000_000u32.to_be_bytes().to_vec()].concat(),
        ],
        "membership" => [
            Message::Ping {
                seq: 1,
                target: 2,
                updates: vec![update],
            },
            Message::Ack {
                seq: 9,
                updates: vec![],
            },
            Message::PingReq { seq: 4, target: id },
            Message::Join { id },
            Message::Sync {
                members: vec![update, update],
                reply: true,
            },
            Message::Gossip {
                updates: vec![update],
            },
        ]
        .iter()
        .map(Message::encode)
        .collect(),
        "config" => ["valid", "invalid"]
            .iter()
            .flat_map(|d| {
                std::fs::read_dir(assets.join("configs").join(d))
                    .into_iter()
                    .flatten()
            })
            .chain(
                std::fs::read_dir(assets.join("configs"))
                    .into_iter()
                    .flatten(),
            )
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .map(|p| read(&p))
            .chain([b"[metrics]\nbind = \"127.0.0.1:9101\"\n".to_vec()])
            .collect(),
        "registry" => vec![
            String::from_utf8_lossy(&read(&assets.join("models.toml")))
                .replace("imagenet_labels.txt", "labels.txt")
                .into_bytes(),
        ],
        "sdfs_name" => [
            "a",
            "dir/file.txt",
            "../x",
            "a/./b",
            "/etc/passwd",
            "a\\b",
            "ü/ß",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        "raft_rpc" => {
            let log_id = LogId::new(CommittedLeaderId::new(3, 7), 42);
            let entries: Vec<Entry<TypeConfig>> = commands()
                .into_iter()
                .enumerate()
                .map(|(i, c)| Entry {
                    log_id: LogId::new(CommittedLeaderId::new(3, 7), i as u64),
                    payload: EntryPayload::Normal(c),
                })
                .chain([Entry {
                    log_id,
                    payload: EntryPayload::Blank,
                }])
                .collect();
            let rpcs = [
                RaftRpc::Append(AppendEntriesRequest {
                    vote: Vote::new_committed(3, 7),
                    prev_log_id: None,
                    entries,
                    leader_commit: Some(log_id),
                }),
                RaftRpc::Vote(VoteRequest::new(Vote::new(4, 9), Some(log_id))),
                RaftRpc::Snapshot(InstallSnapshotRequest {
                    vote: Vote::new_committed(3, 7),
                    meta: SnapshotMeta {
                        last_log_id: Some(log_id),
                        snapshot_id: "3-7-42-1".into(),
                        ..SnapshotMeta::default()
                    },
                    offset: 0,
                    data: postcard::to_allocvec(&MetaState::default()).unwrap(),
                    done: true,
                }),
            ];
            let replies = [
                RaftReply::Append(AppendEntriesResponse::Success),
                RaftReply::Vote(VoteResponse::new(Vote::new(4, 9), None, true)),
                RaftReply::Failed("stopped".into()),
            ];
            rpcs.iter()
                .map(|r| postcard::to_allocvec(r).unwrap())
                .chain(replies.iter().map(|r| postcard::to_allocvec(r).unwrap()))
                .collect()
        }
        "raft_state" => {
            let cmds = commands();
            let mut state = MetaState::default();
            for c in &cmds[..6] {
                state.apply(c);
            }
            vec![
                cmds.iter()
                    .flat_map(|c| postcard::to_allocvec(c).unwrap())
                    .collect(),
                cmds[..5]
                    .iter()
                    .flat_map(|c| postcard::to_allocvec(c).unwrap())
                    .collect(),
                postcard::to_allocvec(&state).unwrap(),
            ]
        }
        "infer_jsonl" => [
            ImageResult {
                index: 3,
                image: "d/a \"b\".png".into(),
                outcome: Outcome::Top(vec![
                    Prediction {
                        class: 7,
                        label: "cock, rooster".into(),
                        score: 0.75,
                    },
                    Prediction {
                        class: 0,
                        label: "ü".into(),
                        score: 1e-7,
                    },
                ]),
            },
            ImageResult {
                index: 4,
                image: "x.jpg".into(),
                outcome: Outcome::Error("cannot decode: bad \n header".into()),
            },
        ]
        .iter()
        .map(|r| jsonl_line(r).into_bytes())
        .collect(),
        "node_id" => [
            id.to_string(),
            NodeId::new("[::1]:9".parse().unwrap(), 0).to_string(),
            "127.0.0.1:8001".into(),
            "127.0.0.1:8001#x".into(),
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        "auth_udp" => {
            // Events: 2/3 sealed (sender, i32 offset, payload length, payload),
            // 1 clock step (u32), 0 raw (length, bytes); 0x80 flips a bit.
            let sealed = |op: u8, sender: u8, off: i32, payload: &[u8]| {
                let mut v = vec![op, sender];
                v.extend_from_slice(&off.to_be_bytes());
                v.push(payload.len() as u8);
                v.extend_from_slice(payload);
                v
            };
            let step = |us: u32| [vec![1], us.to_be_bytes().to_vec()].concat();
            let raw = seal_at([3; dml_shared::auth::EPOCH_LEN], 1, b"old");
            vec![
                [
                    sealed(2, 1, 0, b"ping"),
                    step(1_000),
                    sealed(2, 1, 500, b"ack"),
                    sealed(2, 1, 500, b"ack"),
                    sealed(2, 1, -1_000, b"late"),
                    sealed(6, 1, -3_000, b"too late"),
                    sealed(0x82, 2, 0, b"flip"),
                    vec![3],
                ]
                .concat(),
                [
                    sealed(10, 7, 61, b"ahead"),
                    sealed(10, 7, 59, b"near"),
                    step(u32::MAX),
                    sealed(10, 7, 0, b""),
                    vec![0, raw.len() as u8],
                    raw,
                ]
                .concat(),
                (0..70u8).flat_map(|s| sealed(2, s, 0, b"m")).collect(),
            ]
        }
        "keyring_file" => {
            use dml_shared::auth::{ClusterKey, Keyring};
            use dml_shared::keyring::{KeyringState, file::encode};
            let k = |b: u8| ClusterKey::from_bytes([b; 32]);
            let two = KeyringState::from_keyring(3, &Keyring::new(k(2), [k(1)]));
            let one = KeyringState::from_keyring(1, &Keyring::new(k(7), []));
            vec![
                encode(&two).into_bytes(),
                encode(&one).into_bytes(),
                encode(&two)
                    .replacen("keys = [\"", "keys = [\"zz", 1)
                    .into_bytes(),
                format!("version = 1\nprimary = \"{}\"\nkeys = []\n", k(4).to_hex()).into_bytes(),
            ]
        }
        "auth_handshake" => {
            use handshake::{Answer, Protection};
            let key = dml_shared::auth::ClusterKey::from_bytes(dml_fuzz::SECRET);
            let (init, hello) = handshake::hello(&key, Protection::Encrypted).expect("a hello");
            let Answer::Reply { reply, session, .. } =
                handshake::respond(&dml_fuzz::candidates(), &hello, Protection::Encrypted)
            else {
                panic!("a real hello was refused");
            };
            assert!(session.is_ok());
            let (_, confirm) = init.finish(&reply[1..]).expect("a real reply verifies");
            let admin = key.credential(dml_shared::auth::Role::Admin);
            let (_, admin_hello) =
                handshake::hello(&admin, Protection::Authenticated).expect("a hello");
            let mut old = b"DLA1".to_vec();
            old.extend([1; 16]);
            vec![
                hello.to_vec(),
                reply.to_vec(),
                confirm.to_vec(),
                admin_hello.to_vec(),
                old,
                vec![handshake::STATUS_WRONG_KEY],
                format!("{}\n", "5a".repeat(32)).into_bytes(),
                "0123456789abcdefABCDEF".repeat(3).into_bytes(),
            ]
        }
        "channel_read" => {
            // Mode, cut (u16), flip point (u16), flip bit, then the script.
            let script = |mode: u8, cut: u16, flip: u16, bit: u8, pieces: &[u8]| {
                [
                    vec![mode],
                    cut.to_be_bytes().to_vec(),
                    flip.to_be_bytes().to_vec(),
                    vec![bit],
                    pieces.to_vec(),
                ]
                .concat()
            };
            // A real stream of another connection: it never opens on this one.
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let key = dml_shared::auth::ClusterKey::from_bytes(dml_fuzz::SECRET);
            let (other, _) = dml_fuzz::sessions(&key);
            let (_, wire) = dml_fuzz::seal_script(&rt, other, &[3, 1, 0, 9]);
            vec![
                script(1, 0, 0, 0, &[3, 200, 255, 0, 7, 254]),
                script(9, 0, 0, 0, &[1, 1, 1, 2, 2, 5]),
                script(3, 0, 5, 2, &[1, 255, 255]),
                script(3, 0, 0, 0, &[9]),
                script(3, 0, 1, 7, &[9]),
                script(5, 77, 0, 0, &[255, 255, 3]),
                script(15, 900, 40, 3, &[13, 13, 13, 13]),
                [vec![0], wire].concat(),
                vec![0, 0, 16],
                vec![0, 0xff, 0xff, 1, 2, 3],
            ]
        }
        "put_seal" => {
            // Mode, flip point (u16), flip bit, swap, drop/repeat point, then frame sizes.
            let put = |mode: u8, flip: u16, bit: u8, swap: u8, at: u8, sizes: &[u8]| {
                [
                    vec![mode],
                    flip.to_be_bytes().to_vec(),
                    vec![bit, swap, at],
                    sizes.to_vec(),
                ]
                .concat()
            };
            vec![
                put(1, 0, 0, 0, 0, &[3, 200, 255, 0, 7]),
                put(1, 0, 0, 0, 0, &[]),
                put(3, 40, 3, 0, 0, &[9, 9, 9]),
                put(5, 0, 0, 0, 2, &[1, 2, 3]),
                put(9, 0, 0, 0, 3, &[1, 2, 3]),
                put(17, 0, 0, 0, 1, &[4, 4]),
                put(33, 0, 0, 0, 0, &[5]),
                vec![0, 0, 16],
                vec![0, 0, 40, 1, 2, 3],
            ]
        }
        other => panic!("no seeds for {other}"),
    }
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = root().join("corpus").join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
        .collect();
    out.extend(builtin_seeds(target));
    out
}

/// A copy of `seed` with a few random edits (flips, cuts, insertions, splices of bytes).
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(5) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = [0, 0x7f, 0x80, 0xff][rng.below(4)];
            }
            2 => v.truncate(rng.below(v.len() + 1)),
            3 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next() as u8);
            }
            _ if !v.is_empty() => {
                let i = rng.below(v.len());
                let j = rng.below(v.len());
                let (a, b) = (i.min(j), i.max(j));
                let piece = v[a..b].to_vec();
                v.splice(a..a, piece);
            }
            _ => {}
        }
    }
    v
}

fn replay(target: &str) {
    let f = dml_fuzz::TARGETS
        .iter()
        .find(|(n, _)| *n == target)
        .map(|(_, f)| *f)
        .expect("a known target");
    let seeds = corpus(target);
    assert!(!seeds.is_empty(), "no seeds for {target}");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ target.len() as u64);
    let mut runs = 0;
    for s in &seeds {
        f(s);
        for _ in 0..MUTATIONS {
            f(&mutate(s, &mut rng));
            runs += 1;
        }
    }
    for _ in 0..RANDOM {
        let len = rng.below(512);
        let input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        f(&input);
        runs += 1;
    }
    eprintln!("{target}: {} seeds, {runs} inputs", seeds.len());
}

#[test]
fn wire_request() {
    replay("wire_request");
}

#[test]
fn wire_response() {
    replay("wire_response");
}

#[test]
fn framing() {
    replay("framing");
}

#[test]
fn membership() {
    replay("membership");
}

#[test]
fn config() {
    replay("config");
}

#[test]
fn registry() {
    replay("registry");
}

#[test]
fn sdfs_name() {
    replay("sdfs_name");
}

#[test]
fn raft_rpc() {
    replay("raft_rpc");
}

#[test]
fn raft_state() {
    replay("raft_state");
}

#[test]
fn infer_jsonl() {
    replay("infer_jsonl");
}

#[test]
fn node_id() {
    replay("node_id");
}

#[test]
fn auth_udp() {
    replay("auth_udp");
}

#[test]
fn auth_handshake() {
    replay("auth_handshake");
}

#[test]
fn channel_read() {
    replay("channel_read");
}

#[test]
fn keyring_file() {
    replay("keyring_file");
}

#[test]
fn put_seal() {
    replay("put_seal");
}

#[test]
fn every_target_has_a_replay_test_and_a_binary() {
    let src = include_str!("replay.rs");
    for (name, _) in dml_fuzz::TARGETS {
        assert!(
            src.contains(&format!("fn {name}()")),
            "no replay test for {name}"
        );
        assert!(
            root()
                .join("fuzz_targets")
                .join(format!("{name}.rs"))
                .exists(),
            "no fuzz_targets/{name}.rs"
        );
    }
}

#[test]
#[ignore = "writes the built-in seeds into corpus/"]
fn write_seed_corpus() {
    for (name, _) in dml_fuzz::TARGETS {
        let dir = root().join("corpus").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in builtin_seeds(name).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), s).unwrap();
        }
    }
}

#[test]
fn a_sealed_stream_reads_back_and_a_flipped_bit_is_forged() {
    use dml_shared::channel::{OpenRead, is_forged};
    use tokio::io::AsyncReadExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let key = dml_shared::auth::ClusterKey::from_bytes(dml_fuzz::SECRET);
    let read = |flip: Option<usize>| {
        let (client, server) = dml_fuzz::sessions(&key);
        let (plain, mut sealed) = dml_fuzz::seal_script(&rt, client, &[3, 255, 255, 8]);
        if let Some(at) = flip {
            sealed[at] ^= 1;
        }
        let counters = std::sync::Arc::new(dml_shared::auth::Counters::default());
        let mut r = OpenRead::new(sealed.as_slice(), server.transport, 1, counters.clone());
        let mut got = Vec::new();
        let res = rt.block_on(r.read_to_end(&mut got));
        (
            plain,
            got,
            res,
            counters.snapshot().tcp_forged,
            sealed.len(),
        )
    };
    let (plain, got, res, forged, len) = read(None);
    assert!(res.is_ok() && got == plain && forged == 0);
    // Past the first two messages (771 bytes, flushed; then a full one).
    let (plain, got, res, forged, _) = read(Some(len - 20));
    let e = res.unwrap_err();
    assert!(is_forged(&e), "{e}");
    assert_eq!(forged, 1);
    assert!(
        plain.starts_with(&got) && got.len() >= 771 + 65519,
        "{}",
        got.len()
    );
}
