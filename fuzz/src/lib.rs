//! The fuzz targets' bodies, one function per decoder, shared by the cargo-fuzz
//! binaries (`fuzz_targets/`) and the stable replay tests (`tests/replay.rs`).
//!
//! Each function must never panic on any input; where a decoder accepts the input, it
//! also checks what must then hold (a decoded message re-encodes and decodes to itself,
//! an accepted SDFS name cannot leave the data directory, ...) and panics if it does not.

use dml_agent::control::network::{RaftMessage, RaftReply, RaftRpc};
use dml_agent::control::state::MetaState;
use dml_agent::control::types::Command;
use dml_agent::membership::msg::Message;
use dml_shared::NodeId;
use dml_shared::api::{Request, Response};
use dml_shared::auth::{
    ClusterKey, Counters, Drop as UdpDrop, EPOCH_LEN, Epoch, KEY_LEN, MAX_CLOCK_SKEW, Role,
    Session, handshake, unseal,
};
use dml_shared::channel::{OpenRead, SealWrite, is_forged};
use dml_shared::config::Config;
use dml_shared::framing::read_frame;
use dml_shared::infer::{jsonl_line, parse_jsonl_line};
use dml_shared::models::Registry;
use dml_shared::sdfs::{MetaRequest, MetaResponse, validate_name};
use dml_shared::wire::{self, Kind};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::Arc;

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
        _ => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
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
    postcard_round_trip::<RaftRpc>(data);
    if let Some(RaftMessage {
        rpc: RaftRpc::Append(a),
        ..
    }) = postcard_round_trip::<RaftMessage>(data)
    {
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

/// The cluster secret of the auth targets.
pub const SECRET: [u8; KEY_LEN] = [0x5a; KEY_LEN];

/// The address the auth_udp target's datagrams are sealed for, and its run.
pub const TO: &str = "127.0.0.1:2";
pub const TO_EPOCH: Epoch = [9; EPOCH_LEN];
const FROM: &str = "127.0.0.1:1";

/// A datagram sealed by the real [`Session`] of a sender whose run is `sender`,
/// at sequence `seq` (at least 1), for [`TO`]'s run [`TO_EPOCH`], under [`SECRET`].
pub fn seal_at(sender: Epoch, seq: u64, payload: &[u8]) -> Vec<u8> {
    let auth = dml_shared::auth::AuthContext::new(ClusterKey::from_bytes(SECRET));
    Session::with_epoch(&auth, FROM.parse().expect("an address"), sender).seal_for(
        TO.parse().expect("an address"),
        TO_EPOCH,
        payload,
        seq,
    )
}

/// Takes `n` bytes off the front of `d` (fewer at its end).
fn take<'a>(d: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, rest) = d.split_at(n.min(d.len()));
    *d = rest;
    head
}

fn take_u32(d: &mut &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let t = take(d, 4);
    b[..t.len()].copy_from_slice(t);
    u32::from_be_bytes(b)
}

/// The UDP datagram opener and its replay window, driven by a script of events:
/// raw datagrams, the clock moving on, and datagrams sealed with the key for one
/// of 256 senders at a sequence near the clock (optionally with one bit flipped).
/// What must hold: a flipped datagram never opens; an opened one gives back its
/// payload, was never opened before (no replay) and is not ahead of the clock by
/// more than the allowed skew; and while no sender can have been forgotten, a
/// datagram newer than its sender's newest (or a new sender's, within the skew)
/// is not dropped.
pub fn auth_udp(data: &[u8]) {
    let key = ClusterKey::from_bytes(SECRET);
    let skew = MAX_CLOCK_SKEW.as_micros() as u64;
    let mut now: u64 = 1_764_150_000_000_000;
    let auth = dml_shared::auth::AuthContext::new(key.clone());
    let from: std::net::SocketAddr = FROM.parse().expect("an address");
    let to: std::net::SocketAddr = TO.parse().expect("an address");
    let elsewhere: std::net::SocketAddr = "127.0.0.1:3".parse().expect("an address");
    let mut opener = Session::with_epoch(&auth, TO.parse().expect("an address"), TO_EPOCH);
    let mut opened: HashSet<(Epoch, u64)> = HashSet::new();
    let mut newest: HashMap<Epoch, u64> = HashMap::new();
    let mut forgetful = false;
    let mut d = data;
    while let Some((&op, rest)) = d.split_first() {
        d = rest;
        match op % 4 {
            0 => {
                let n = take(&mut d, 1).first().copied().unwrap_or(0);
                let raw = take(&mut d, usize::from(n));
                // Only a datagram sealed for this address unseals (a replayed one may).
                if unseal(&key, to, raw).is_ok() {
                    assert_eq!(unseal(&key, elsewhere, raw), Err(UdpDrop::Forged));
                }
                let o = opener.check(from, raw, now);
                if o.dropped.is_none() {
                    panic!("an unsealed datagram opened: {raw:02x?} -> {o:02x?}");
                }
            }
            1 => {
                let step = u64::from(take_u32(&mut d)) << ((op >> 2) % 16);
                now = now.saturating_add(step);
            }
            _ => {
                // An all-zero run is "unknown": not a sender's.
                let sender = [take(&mut d, 1).first().copied().unwrap_or(0).max(1); EPOCH_LEN];
                let offset = i64::from(take_u32(&mut d) as i32);
                let scale = [1, 1_000, 1_000_000][usize::from(op >> 2) % 3];
                let seq = (now as i64).saturating_add(offset * scale).max(1) as u64;
                let n = take(&mut d, 1).first().copied().unwrap_or(0) % 32;
                let payload = take(&mut d, usize::from(n));
                let datagram = seal_at(sender, seq, payload);
                // Bound to its receiver's address: it unseals there only.
                let (h, plain) = unseal(&key, to, &datagram).expect("a sealed datagram unseals");
                assert_eq!((h.sender, h.receiver, h.seq), (sender, TO_EPOCH, seq));
                assert_eq!(plain, payload);
                assert_eq!(unseal(&key, elsewhere, &datagram), Err(UdpDrop::Forged));
                if op & 0x80 != 0 {
                    let at = usize::from(take(&mut d, 1).first().copied().unwrap_or(0));
                    let mut bad = datagram.clone();
                    bad[at % datagram.len()] ^= 1 << (op >> 4 & 7);
                    let r = opener.check(from, &bad, now);
                    assert!(
                        r.dropped.is_some(),
                        "a corrupted datagram opened: {bad:02x?}"
                    );
                }
                let o = opener.check(from, &datagram, now);
                match o.dropped {
                    None => {
                        assert_eq!(o.payload.unwrap_or_default(), payload);
                        assert!(
                            opened.insert((sender, seq)),
                            "sender {sender:02x?} seq {seq} opened twice (a replay)"
                        );
                        assert!(
                            seq <= now + skew,
                            "seq {seq} is ahead of {now} by over the skew"
                        );
                        let n = newest.entry(sender).or_insert(seq);
                        *n = (*n).max(seq);
                        forgetful |= newest.len() > 64;
                    }
                    Some(why) if !forgetful => match newest.get(&sender) {
                        None => assert!(
                            seq.abs_diff(now) > skew,
                            "first datagram of a sender, seq {seq} at {now}, dropped as {why:?}"
                        ),
                        Some(&n) => assert!(
                            seq <= n || seq > now + skew,
                            "seq {seq} newer than {n} (clock {now}) dropped as {why:?}"
                        ),
                    },
                    Some(_) => {}
                }
            }
        }
    }
}

/// What an agent accepts under [`SECRET`]: the peer key and both client credentials.
pub fn candidates() -> Vec<(ClusterKey, Role)> {
    let key = ClusterKey::from_bytes(SECRET);
    [Role::Peer, Role::Admin, Role::ReadOnly]
        .into_iter()
        .map(|r| (key.credential(r), r))
        .collect()
}

/// A real handshake under `key`: the client's and the server's sessions.
pub fn sessions(key: &ClusterKey) -> (handshake::Session, handshake::Session) {
    use handshake::{Answer, Protection};
    let (init, hello) = handshake::hello(key, Protection::Encrypted).expect("a hello");
    let Answer::Reply {
        reply,
        session: Ok(server),
        ..
    } = handshake::respond(&candidates(), &hello, Protection::Encrypted)
    else {
        panic!("a real hello was refused");
    };
    let (client, confirm) = init.finish(&reply[1..]).expect("a real reply verifies");
    assert!(handshake::check_confirm(&server, &confirm));
    (client, server)
}

/// The TCP handshake messages (Noise hello, server reply, client confirm) and the key
/// file text.
pub fn auth_handshake(data: &[u8]) {
    use handshake::{Answer, Protection};
    let key = ClusterKey::from_bytes(SECRET);
    let candidates = candidates();
    // As a hello: answered or refused, never a panic; only a hello made with one of
    // the candidates (which random bytes are not) gets a reply, with that key's role.
    let _ = handshake::check_magic(&data[..data.len().min(4)]);
    for p in [Protection::Encrypted, Protection::Authenticated] {
        if let Answer::Reply {
            reply, key, role, ..
        } = handshake::respond(&candidates, data, p)
        {
            assert_eq!(reply[0], handshake::STATUS_OK);
            assert_eq!(data.len(), handshake::HELLO_LEN);
            assert_eq!(data[..4], handshake::HELLO_MAGIC);
            assert!(candidates.contains(&(*key, role)));
        }
    }
    // As the reply to a fresh hello: made without that hello's ephemeral key, it
    // cannot verify.
    let (init, _) = handshake::hello(&key, Protection::Encrypted).expect("a hello");
    if let Some((&status, body)) = data.split_first() {
        if status == handshake::STATUS_OK {
            assert!(init.finish(body).is_err(), "a forged reply verified");
        } else {
            let _ = init.refused(status);
        }
    }
    // As the confirm of a real session: only the client's own verifies.
    let (init, hello) = handshake::hello(&key, Protection::Encrypted).expect("a hello");
    if let Answer::Reply {
        reply,
        session: Ok(s),
        role,
        ..
    } = handshake::respond(&candidates, &hello, Protection::Encrypted)
    {
        assert_eq!(role, Role::Peer);
        let (_, confirm) = init.finish(&reply[1..]).expect("a real reply verifies");
        assert!(handshake::check_confirm(&s, &confirm));
        if data != confirm {
            assert!(
                !handshake::check_confirm(&s, data),
                "a forged confirm verified"
            );
        }
    } else {
        panic!("a real hello was refused");
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(k) = ClusterKey::from_hex(text)
    {
        let t = text.trim();
        assert!(
            t.len() == 2 * KEY_LEN && t.bytes().all(|b| b.is_ascii_hexdigit()),
            "key text {t:?} accepted"
        );
        let secret: [u8; KEY_LEN] = std::array::from_fn(|i| {
            u8::from_str_radix(&t[2 * i..2 * i + 2], 16).expect("hex digits")
        });
        assert_eq!(k, ClusterKey::from_bytes(secret));
    }
}

/// Most plain bytes one channel_read input seals.
const CHANNEL_MAX_PLAIN: usize = 256 * 1024;

/// The plain bytes and the wire of a stream sealed by the real writer: one piece per
/// byte of `script` (`b * 257` bytes, flushed after it when `b` is odd), up to
/// [`CHANNEL_MAX_PLAIN`] bytes, with the client's keys from its nonce 1, as a
/// connection after its confirm.
pub fn seal_script(
    rt: &tokio::runtime::Runtime,
    client: handshake::Session,
    script: &[u8],
) -> (Vec<u8>, Vec<u8>) {
    use tokio::io::AsyncWriteExt;
    let mut plain = Vec::new();
    let mut w = SealWrite::new(Vec::new(), client.transport, 1);
    rt.block_on(async {
        for (i, &b) in script.iter().enumerate() {
            let n = (usize::from(b) * 257).min(CHANNEL_MAX_PLAIN - plain.len());
            let piece: Vec<u8> = (0..n).map(|j| (i * 31 + j) as u8).collect();
            w.write_all(&piece).await.expect("a Vec takes every byte");
            plain.extend_from_slice(&piece);
            if b % 2 == 1 {
                w.flush().await.expect("a Vec takes every byte");
            }
            if plain.len() == CHANNEL_MAX_PLAIN {
                break;
            }
        }
        w.flush().await.expect("a Vec takes every byte");
    });
    (plain, w.into_inner())
}

/// The encrypted stream's read path ([`OpenRead`], the code a connection reads
/// through), from a real session's server side. `data[0]` bit 0 clear: the rest is the
/// wire itself, which never opens (random bytes do not verify). Set: the rest after five
/// bytes (cut point, flip point, flip bit) is a script for [`seal_script`]; bit 1 flips
/// one bit of the wire, bit 2 cuts it, bit 3 reads 7 bytes at a time. What must hold:
/// an untouched stream reads back exactly; a flipped one fails after a prefix of the
/// plain bytes; a cut one gives a prefix and is never counted as forged.
pub fn channel_read(data: &[u8]) {
    use tokio::io::AsyncReadExt;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    let (client, server) = sessions(&ClusterKey::from_bytes(SECRET));
    // (plain bytes, wire, scripted, a bit flipped, cut short)
    let (plain, wire, scripted, flipped, cut) = if mode & 1 == 0 {
        (Vec::new(), rest.to_vec(), false, false, false)
    } else {
        let mut d = rest;
        let cut_at = usize::from(take_u16(&mut d));
        let flip = usize::from(take_u16(&mut d));
        let bit = take(&mut d, 1).first().copied().unwrap_or(0) % 8;
        let (plain, mut wire) = seal_script(&rt, client, d);
        let mut flip_at = None;
        if mode & 2 != 0 && !wire.is_empty() {
            let at = flip * 97 % wire.len();
            wire[at] ^= 1 << bit;
            flip_at = Some(at);
        }
        let whole = wire.len();
        if mode & 4 != 0 {
            wire.truncate(cut_at * 13 % (whole + 1));
        }
        let flipped = flip_at.is_some_and(|a| a < wire.len());
        let cut = wire.len() < whole;
        (plain, wire, true, flipped, cut)
    };
    let counters = Arc::new(Counters::default());
    let mut r = OpenRead::new(wire.as_slice(), server.transport, 1, counters.clone());
    let mut got = Vec::new();
    let result = rt.block_on(async {
        if mode & 8 != 0 {
            let mut buf = [0u8; 7];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) => return Ok(()),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => return Err(e),
                }
            }
        } else {
            r.read_to_end(&mut got).await.map(|_| ())
        }
    });
    let forged = counters.snapshot().tcp_forged;
    assert!(forged <= 1, "one stream counted {forged} times");
    if !scripted {
        assert!(got.is_empty(), "unsealed bytes opened: {wire:02x?}");
        assert_eq!(result.is_err(), !wire.is_empty());
        return;
    }
    assert!(
        plain.starts_with(&got),
        "read {} bytes that are not a prefix of the {} sealed",
        got.len(),
        plain.len()
    );
    match &result {
        Ok(()) => {
            assert!(!flipped, "a stream with a flipped bit read to its end");
            assert!(cut || got.len() == plain.len(), "bytes lost");
            assert_eq!(forged, 0);
        }
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            assert!(flipped || cut, "an untouched stream ended early");
            assert_eq!(forged, 0, "a stream that ended early counted as forged");
        }
        Err(e) => {
            assert!(is_forged(e), "unexpected error {e}");
            assert!(flipped, "an intact stream failed: {e}");
            assert_eq!(forged, 1);
        }
    }
}

fn take_u16(d: &mut &[u8]) -> u16 {
    let mut b = [0u8; 2];
    let t = take(d, 2);
    b[..t.len()].copy_from_slice(t);
    u16::from_be_bytes(b)
}

/// An agent's keyring file (`keyring.toml`): what decodes is a valid keyring
/// that re-encodes to itself; an error never quotes a secret of the input.
pub fn keyring_file(data: &[u8]) {
    use dml_shared::keyring::file::{decode, encode};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match decode(text) {
        Ok(k) => {
            assert!(k.check().is_ok(), "{k:?}");
            assert_eq!(decode(&encode(&k)).expect("re-encoded keyring decodes"), k);
        }
        Err(e) => {
            let msg = e.to_string();
            for word in text.split(|c: char| !c.is_ascii_hexdigit()) {
                assert!(word.len() < 64 || !msg.contains(word), "a secret in: {msg}");
            }
        }
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
    ("auth_udp", auth_udp),
    ("auth_handshake", auth_handshake),
    ("channel_read", channel_read),
    ("keyring_file", keyring_file),
    ("put_seal", put_seal),
];

/// An SDFS put's sealed frames as a replica opens them ([`Opener`], the code
/// each hop stores through). `data[0]` bit 0 clear: the rest is frames (u16
/// length each) opened under a fixed key, which must refuse the first (random
/// bytes do not verify). Set: after five bytes (flip point u16, flip bit, swap,
/// drop/repeat point), the rest gives data frames of `b * 13 + 1` bytes each,
/// sealed by the real [`PutSeal`] with their end frame; bit 1 flips one bit,
/// bit 2 swaps two frames, bit 3 drops one, bit 4 repeats one, bit 5 opens as
/// another put (plan + 1). What must hold: an untouched put opens to exactly its
/// bytes; a changed one is refused, after only a prefix of its bytes.
pub fn put_seal(data: &[u8]) {
    use dml_shared::auth::put_seal::{Opened, Opener, PutKey, PutSeal};
    let Some((&mode, mut d)) = data.split_first() else {
        return;
    };
    let key = PutKey([0x3c; 32]);
    let (plan, version) = (7, 3);
    if mode & 1 == 0 {
        let mut o = Opener::new(PutSeal::new(&key, plan, version));
        if !d.is_empty() {
            let n = usize::from(take_u16(&mut d));
            let frame = take(&mut d, n).to_vec();
            assert!(o.open(frame).is_err(), "an unsealed frame opened");
        }
        return;
    }
    let flip = usize::from(take_u16(&mut d));
    let bit = take(&mut d, 1).first().copied().unwrap_or(0) % 8;
    let swap = take(&mut d, 1).first().copied().unwrap_or(0);
    let at = take(&mut d, 1).first().copied().unwrap_or(0);
    let seal = PutSeal::new(&key, plan, version);
    let mut plain = Vec::new();
    let mut frames: Vec<Vec<u8>> = Vec::new();
    for (i, &b) in d.iter().take(64).enumerate() {
        let mut f: Vec<u8> = (0..usize::from(b) * 13 + 1)
            .map(|j| (i * 31 + j) as u8)
            .collect();
        plain.extend_from_slice(&f);
        seal.seal(i as u64, false, &mut f);
        frames.push(f);
    }
    frames.push(seal.end_frame(frames.len() as u64));
    let n = frames.len();
    let mut changed = false;
    if mode & 2 != 0 {
        let total: usize = frames.iter().map(Vec::len).sum();
        let mut pos = flip * 97 % total;
        for f in frames.iter_mut() {
            if pos < f.len() {
                f[pos] ^= 1 << bit;
                break;
            }
            pos -= f.len();
        }
        changed = true;
    }
    if mode & 4 != 0 {
        let (i, j) = (usize::from(swap) % n, usize::from(at) % n);
        if i != j {
            frames.swap(i, j);
            changed = true;
        }
    }
    if mode & 8 != 0 {
        frames.remove(usize::from(at) % frames.len());
        changed = true;
    }
    if mode & 16 != 0 && !frames.is_empty() {
        let k = usize::from(at) % frames.len();
        frames.insert(k + 1, frames[k].clone());
        changed = true;
    }
    let opener_plan = if mode & 32 != 0 {
        changed = true;
        plan + 1
    } else {
        plan
    };
    let mut o = Opener::new(PutSeal::new(&key, opener_plan, version));
    let mut out = Vec::new();
    let mut refused = false;
    for f in frames {
        match o.open(f) {
            Ok(Opened::Data(b)) => out.extend_from_slice(&b),
            Ok(Opened::End) => {}
            Err(_) => {
                refused = true;
                break;
            }
        }
    }
    let refused = refused || o.finish().is_err();
    assert!(plain.starts_with(&out), "bytes opened that were not sealed");
    if changed {
        assert!(refused, "a changed put opened (mode {mode:#x})");
    } else {
        assert!(!refused, "an untouched put was refused");
        assert_eq!(out, plain);
    }
}
