//! The fuzz targets' bodies, one function per decoder, shared by the cargo-fuzz
//! binaries (`fuzz_targets/`) and the stable replay tests (`tests/replay.rs`).
//!
//! Each function must never panic on any input; where a decoder accepts the input, it
//! also checks what must then hold (a decoded message re-encodes and decodes to itself,
//! an accepted SDFS name cannot leave the data directory, ...) and panics if it does not.

use dml_agent::control::network::{RaftReply, RaftRpc};
use dml_agent::control::state::MetaState;
use dml_agent::control::types::Command;
use dml_agent::membership::msg::Message;
use dml_shared::NodeId;
use dml_shared::api::{Request, Response};
use dml_shared::config::Config;
use dml_shared::framing::read_frame;
use dml_shared::infer::{jsonl_line, parse_jsonl_line};
use dml_shared::models::Registry;
use dml_shared::sdfs::{MetaRequest, MetaResponse, validate_name};
use dml_shared::wire::{self, Kind};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

/// Decodes `data` as a `T` behind `kind`; what decodes must round-trip.
fn envelope<T>(kind: Kind, data: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    if let Ok(v) = wire::decode::<T>(kind, data) {
        let again: T =
            wire::decode(kind, &wire::encode(kind, &v)).expect("re-encoded value decodes");
        // NaN floats are not equal to themselves; compare through Debug then.
        if again != v {
            assert_eq!(format!("{again:?}"), format!("{v:?}"));
        }
    }
}

/// Agent API requests (and the SDFS/inference requests inside them).
pub fn wire_request(data: &[u8]) {
    envelope::<Request>(Kind::Request, data);
    envelope::<MetaRequest>(Kind::Request, data);
}

/// Agent API responses (SDFS, inference, telemetry frames inside them).
pub fn wire_response(data: &[u8]) {
    envelope::<Response>(Kind::Response, data);
    envelope::<MetaResponse>(Kind::Response, data);
}

/// Membership datagrams.
pub fn membership(data: &[u8]) {
    if let Ok(m) = Message::decode(data) {
        assert_eq!(
            Message::decode(&m.encode()).expect("re-encoded message decodes"),
            m
        );
    }
}

/// The frame reader over a stream of `data[1..]`, with a limit taken from `data[0]`.
pub fn framing(data: &[u8]) {
    let Some((&limit, mut stream)) = data.split_first() else {
        return;
    };
    let max = usize::from(limit) * 4;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    rt.block_on(async {
        let mut consumed = 0;
        let total = stream.len();
        loop {
            match read_frame(&mut stream, max).await {
                Ok(Some(f)) => {
                    assert!(f.len() <= max, "frame of {} over the limit {max}", f.len());
                    consumed += f.len() + 4;
                    assert_eq!(consumed + stream.len(), total);
                }
                Ok(None) => {
                    assert!(stream.is_empty(), "clean end with bytes left");
                    break;
                }
                Err(_) => break,
            }
        }
    });
}

/// The agent config: TOML parsing, then validation.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = Config::from_toml(text)
        && c.validate().is_ok()
    {
        assert!(c.membership.m >= 1 && c.replicas() >= c.sdfs.write_quorum);
        assert!(c.voters().len() <= c.nodes.len().max(c.control.voters.len()));
    }
}

/// The model registry (labels files: one built in, any other name missing).
pub fn registry(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let labels = |name: &str| match name {
        "labels.txt" => Ok("cat\ndog\nbird\n".to_string()),
        _ => Err(format!("labels file \"{name}\" is missing")),
    };
    if let Ok(r) = Registry::parse("<fuzz>", text, labels) {
        for name in ["resnet50", "inceptionv3", "x"] {
            if let Some(m) = r.get(name) {
                assert_eq!(m.name, name);
            }
        }
    }
}

/// SDFS names: what is accepted cannot leave the data directory.
pub fn sdfs_name(data: &[u8]) {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    if validate_name(name).is_ok() {
        let p = std::path::Path::new(name);
        assert!(!name.is_empty() && !p.is_absolute() && !name.starts_with('/'));
        assert!(!name.contains('\0') && !name.contains('\\'), "{name:?}");
        for c in p.components() {
            assert!(
                matches!(c, std::path::Component::Normal(_)),
                "{name:?} has component {c:?}"
            );
        }
        assert!(
            name.split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".."),
            "{name:?}"
        );
    }
}

/// Decodes `data` as a postcard `T`; what decodes re-encodes and decodes to the same
/// value (compared through Debug: openraft's messages are not all `PartialEq`).
fn postcard_round_trip<T>(data: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + Debug,
{
    let v: T = postcard::from_bytes(data).ok()?;
    let bytes = postcard::to_allocvec(&v).expect("a decoded value encodes");
    let again: T = postcard::from_bytes(&bytes).expect("re-encoded value decodes");
    assert_eq!(format!("{again:?}"), format!("{v:?}"));
    Some(v)
}

/// Raft RPCs between voters (the bytes inside `Request::Raft` / `Response::Raft`),
/// as `control::network` decodes them; the commands of a decoded append are then
/// applied to an empty state machine, which must refuse what it cannot apply.
pub fn raft_rpc(data: &[u8]) {
    if let Some(RaftRpc::Append(a)) = postcard_round_trip::<RaftRpc>(data) {
        let mut state = MetaState::default();
        for e in &a.entries {
            if let openraft::EntryPayload::Normal(cmd) = &e.payload {
                state.apply(cmd);
            }
        }
    }
    postcard_round_trip::<RaftReply>(data);
}

/// The replicated state machine: `data` as postcard commands back to back, applied
/// in order (never a panic; the state then survives a snapshot round trip), and as
/// a whole as a snapshot of the state.
pub fn raft_state(data: &[u8]) {
    let mut state = MetaState::default();
    let mut rest = data;
    while let Ok((cmd, tail)) = postcard::take_from_bytes::<Command>(rest) {
        state.apply(&cmd);
        rest = tail;
    }
    let bytes = postcard::to_allocvec(&state).expect("a state encodes");
    let back: MetaState = postcard::from_bytes(&bytes).expect("an encoded state decodes");
    assert_eq!(format!("{back:?}"), format!("{state:?}"));
    postcard_round_trip::<MetaState>(data);
}

/// One line of a job's JSONL output; what parses is written back identically.
pub fn infer_jsonl(data: &[u8]) {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = parse_jsonl_line(line) {
        let again = parse_jsonl_line(&jsonl_line(&r)).expect("a written line parses");
        assert_eq!(format!("{again:?}"), format!("{r:?}"));
    }
}

/// Node ids in their text form (`ADDR#STARTED`, in CLI arguments and the event log).
pub fn node_id(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = text.parse::<NodeId>() {
        assert_eq!(id.to_string().parse::<NodeId>(), Ok(id), "{text:?}");
    }
}

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target by name, for the replay tests and `scripts/fuzz.sh`.
pub const TARGETS: &[(&str, Target)] = &[
    ("wire_request", wire_request),
    ("wire_response", wire_response),
    ("framing", framing),
    ("membership", membership),
    ("config", config),
    ("registry", registry),
    ("sdfs_name", sdfs_name),
    ("raft_rpc", raft_rpc),
    ("raft_state", raft_state),
    ("infer_jsonl", infer_jsonl),
    ("node_id", node_id),
];
