//! Replays every fuzz target on stable, without libFuzzer: over the seed corpus
//! (`corpus/<target>/`), built-in seeds, mutations of every seed and random inputs.
//! `cargo test --manifest-path fuzz/Cargo.toml -- --ignored write_seed_corpus` rewrites
//! the built-in seeds into `corpus/`.

use dml_agent::membership::msg::{Message, Update, UpdateKind};
use dml_shared::NodeId;
use dml_shared::api::{LeaderInfo, Request, Response};
use dml_shared::infer::InferRequest;
use dml_shared::sdfs::{DataRequest, MetaRequest};
use dml_shared::wire::{self, Kind};
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
            Request::Meta(MetaRequest::BeginPut {
                name: "a/b.jpg".into(),
                size: 10,
            }),
            Request::Meta(MetaRequest::AtLeader(Box::new(MetaRequest::Infer(
                InferRequest::Submit {
                    model: "resnet50".into(),
                    count: Some(4),
                    dataset: "datasets/sample".into(),
                },
            )))),
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
            Response::Error("no".into()),
            Response::Leader(LeaderInfo {
                leader: Some(addr),
                term: 3,
                voters: vec![addr],
                is_voter: true,
                last_applied: Some(9),
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
