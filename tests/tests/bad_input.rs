//! Bad input on the agent's ports: random, truncated and oversized data on UDP and TCP is
//! dropped and counted, and the agent keeps serving. Without the cluster key it never gets
//! past authentication (`udp_unauthenticated`, `tcp_unauthenticated`); the same garbage
//! sealed with the key (a buggy key holder) is dropped by the decoders (`bad_packets`,
//! `bad_frames`).
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use anyhow::{Context, ensure};
use dml_shared::api::{Request, Response, Stats};
use dml_shared::auth::{ClusterKey, UDP_OVERHEAD};
use dml_shared::conn::{Conn, FrameRead, FrameWrite};
use dml_shared::framing::DEFAULT_MAX_FRAME;
use dml_shared::wire::{self, HEADER_LEN, Kind, MAGIC, PROTOCOL_VERSION};
use dml_tests::udp::UdpPeer;
use dml_tests::view::VIEW_POLL;
use dml_tests::{Agent, AgentSpec, Cluster, TestDir, test_membership, wait_until};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const CONVERGE: Duration = Duration::from_secs(30);
/// Time for the agent to count what was sent to it.
const COUNTED: Duration = Duration::from_secs(10);
/// Datagrams in flight before waiting for the agent to count them: few enough to fit the
/// socket's receive buffer, so the kernel drops none and every one must be counted.
const BATCH: usize = 40;
/// Largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;

/// SplitMix64: a small deterministic generator, so a failing run can be replayed by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn seed() -> u64 {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("random seed {s}");
    s
}

async fn stats(agent: &Agent) -> anyhow::Result<Stats> {
    agent.client().stats().await.context("stats")
}

/// Sends `datagrams` to `to` in batches (sealed with `seal` if given), waiting after each
/// batch until the agent's counter `of` has grown by everything sent so far (every datagram
/// must be counted).
async fn send_counted(
    agent: &Agent,
    datagrams: &[Vec<u8>],
    key: Option<ClusterKey>,
    of: fn(&Stats) -> u64,
) -> anyhow::Result<()> {
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    // With the key: a member's session, sealing for the agent's run.
    let mut seal = match key {
        Some(k) => {
            let mut p = UdpPeer::bind(k).await?;
            let epoch = p.greet(agent.addr(), COUNTED).await?;
            Some((p, epoch))
        }
        None => None,
    };
    let base = of(&stats(agent).await?);
    let mut sent = 0u64;
    for batch in datagrams.chunks(BATCH) {
        for d in batch {
            match &mut seal {
                Some((p, epoch)) => {
                    let d = p.sealed(agent.addr(), *epoch, d);
                    p.sock.send_to(&d, agent.addr()).await?;
                }
                None => {
                    sock.send_to(d, agent.addr()).await?;
                }
            }
        }
        sent += batch.len() as u64;
        wait_until(
            "the agent to count the bad datagrams",
            COUNTED,
            Duration::from_millis(20),
            async || {
                let counted = of(&stats(agent).await?) - base;
                ensure!(counted >= sent, "{counted} of {sent} counted");
                Ok(())
            },
        )
        .await?;
    }
    Ok(())
}

/// True once `stream` is closed by the agent (EOF or reset); answers read on the way must
/// be `Response::Error`.
async fn closed_or_refused(stream: &mut TcpStream) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(COUNTED, stream.read(&mut buf)).await {
            Err(_) => anyhow::bail!("the agent neither closed the connection nor answered"),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
            Ok(Ok(_)) => {
                // An answer to garbage can only be an error; keep reading until close.
                continue;
            }
        }
    }
}

/// Opens a connection, writes `bytes`, and expects the agent to drop or refuse it.
async fn send_bad_stream(addr: SocketAddr, bytes: &[u8]) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    // The agent may close before reading everything: a reset on write is fine.
    let _ = s.write_all(bytes).await;
    let _ = s.shutdown().await;
    closed_or_refused(&mut s).await
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

fn header(version: u8, kind: u8) -> Vec<u8> {
    let mut h = MAGIC.to_be_bytes().to_vec();
    h.extend_from_slice(&[version, kind]);
    h
}

#[tokio::test]
async fn bad_datagrams_are_dropped_and_counted_and_the_agent_keeps_serving() {
    let mut c = Cluster::start("bad-udp", 3, test_membership())
        .await
        .unwrap();
    c.wait_converged(CONVERGE).await.unwrap();
    let mut rng = Rng(seed());
    let mut bad = Vec::new();
    // 1000 random datagrams (never starting with the magic number).
    for _ in 0..1000 {
        let len = 1 + rng.below(1400);
        let mut d = rng.bytes(len);
        if d.len() >= 2 && d[..2] == MAGIC.to_be_bytes() {
            d[0] ^= 0xff;
        }
        bad.push(d);
    }
    // Truncated: shorter than the envelope, or an envelope with no payload.
    for len in 1..HEADER_LEN {
        bad.push(
            MAGIC
                .to_be_bytes()
                .iter()
                .chain(&[PROTOCOL_VERSION])
                .copied()
                .take(len)
                .collect(),
        );
    }
    bad.push(header(PROTOCOL_VERSION, Kind::Gossip as u8));
    // A real envelope with a garbage payload.
    for _ in 0..300 {
        let mut d = header(PROTOCOL_VERSION, Kind::Gossip as u8);
        let len = 1 + rng.below(1200);
        d.extend(rng.bytes(len));
        bad.push(d);
    }
    // A wrong protocol version, and an API request sent over UDP.
    let mut v = header(PROTOCOL_VERSION.wrapping_add(1), Kind::Gossip as u8);
    v.extend(rng.bytes(50));
    bad.push(v);
    bad.push(wire::encode(Kind::Request, &Request::Members));
    // Oversized: the largest datagram IPv4 carries (sealing included), and one well above
    // max_packet_size.
    for len in [MAX_DATAGRAM - UDP_OVERHEAD, 10_000] {
        let mut d = header(PROTOCOL_VERSION, Kind::Gossip as u8);
        d.extend(rng.bytes(len - HEADER_LEN));
        bad.push(d);
    }

    let target = &c.agents[1];
    let before = stats(target).await.unwrap();
    // Without the key: none of it reaches the membership decoder.
    send_counted(target, &bad, None, |s| s.udp_unauthenticated)
        .await
        .unwrap();
    let mid = stats(target).await.unwrap();
    assert_eq!(
        mid.bad_packets, before.bad_packets,
        "garbage got past the tag check"
    );
    // Sealed with the cluster key: authentic, and every one refused by the decoder.
    let key = ClusterKey::load(&dml_tests::key::path().unwrap()).unwrap();
    send_counted(target, &bad, Some(key), |s| s.bad_packets)
        .await
        .unwrap();
    let after = stats(target).await.unwrap();
    assert!(
        after.bad_packets - before.bad_packets >= bad.len() as u64,
        "{} bad datagrams sent, {} counted",
        bad.len(),
        after.bad_packets - before.bad_packets
    );
    assert_eq!(
        after.bad_frames, before.bad_frames,
        "UDP garbage is not a TCP frame"
    );

    // Still serving: the API answers, nobody was lost, and a newcomer joins.
    c.wait_converged(CONVERGE).await.unwrap();
    c.add().await.unwrap();
    let live = c.wait_converged(CONVERGE).await.unwrap();
    assert_eq!(live.len(), 4);
}

#[tokio::test]
async fn bad_tcp_frames_are_dropped_and_counted_and_the_api_keeps_serving() {
    let mut c = Cluster::start("bad-tcp", 3, test_membership())
        .await
        .unwrap();
    c.wait_converged(CONVERGE).await.unwrap();
    let mut rng = Rng(seed());
    let target = &c.agents[1];
    let addr = target.addr();

    // Connections that stay idle (authenticated or not) must not keep the agent from
    // answering others.
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(Conn::connect(addr).await.unwrap());
    }
    let mut idle_raw = Vec::new();
    for _ in 0..10 {
        idle_raw.push(TcpStream::connect(addr).await.unwrap());
    }
    let before = stats(target).await.unwrap();

    // Without a handshake: a 4 GB length prefix, random bytes, a well-formed unsealed
    // request, a cut-short hello. None gets past authentication.
    let mut unauthenticated = 0u64;
    let mut raw = vec![
        vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        rng.bytes(10_000),
        frame(&wire::encode(Kind::Request, &Request::Members)),
    ];
    raw.push(b"DLA1".to_vec());
    for bytes in &raw {
        send_bad_stream(addr, bytes).await.unwrap();
        unauthenticated += 1;
    }

    // After a real handshake: an oversized length prefix, and well-framed garbage with a
    // valid tag (no envelope, an envelope around garbage, a response where a request
    // belongs, a wrong version). Each must be refused: an error answer or a close.
    let mut definitely_bad = 0u64;
    let mut s = Conn::connect(addr).await.unwrap();
    let _ = s
        .raw()
        .write_all(&((DEFAULT_MAX_FRAME + 100) as u32).to_be_bytes())
        .await;
    // Through the encryption, which sends what it holds on a flush.
    let _ = s.raw().flush().await;
    refused(&mut s).await;
    definitely_bad += 1;
    let mut well_framed = vec![rng.bytes(100)];
    let mut g = header(PROTOCOL_VERSION, Kind::Request as u8);
    g.extend(rng.bytes(64));
    well_framed.push(g);
    well_framed.push(wire::encode(Kind::Response, &Response::Ok));
    let mut v = header(PROTOCOL_VERSION.wrapping_add(1), Kind::Request as u8);
    v.push(0);
    well_framed.push(v);
    for f in &well_framed {
        let mut s = Conn::connect(addr).await.unwrap();
        s.write_frame(f, DEFAULT_MAX_FRAME).await.unwrap();
        refused(&mut s).await;
        definitely_bad += 1;
    }
    // A frame whose tag does not verify: dropped as unauthenticated.
    let mut s = Conn::connect(addr).await.unwrap();
    let mut forged = frame(&wire::encode(Kind::Request, &Request::Members));
    forged.extend_from_slice(&[0u8; 16]);
    forged[3] += 16;
    s.raw().socket().write_all(&forged).await.unwrap();
    refused(&mut s).await;
    unauthenticated += 1;

    wait_until(
        "the agent to count the bad frames",
        COUNTED,
        VIEW_POLL,
        async || {
            let now = stats(target).await?;
            let bad = now.bad_frames - before.bad_frames;
            let unauth = now.tcp_unauthenticated - before.tcp_unauthenticated;
            ensure!(
                bad >= definitely_bad && unauth >= unauthenticated,
                "{bad} of {definitely_bad} bad frames, {unauth} of {unauthenticated} \
                 unauthenticated connections counted"
            );
            Ok(())
        },
    )
    .await
    .unwrap();

    // The API still answers, over a new connection and over a held one.
    let mut s = idle.pop().unwrap();
    s.write_frame(
        &wire::encode(Kind::Request, &Request::Id),
        DEFAULT_MAX_FRAME,
    )
    .await
    .unwrap();
    let answer = tokio::time::timeout(COUNTED, s.read_frame(DEFAULT_MAX_FRAME))
        .await
        .expect("an answer on a connection held open during the attack")
        .unwrap()
        .expect("a frame");
    let r: Response = wire::decode(Kind::Response, &answer).unwrap();
    assert!(
        matches!(r, Response::Id(ref i) if i.id == target.id()),
        "{r:?}"
    );
    drop((idle, idle_raw));
    let live = c.wait_converged(CONVERGE).await.unwrap();
    assert_eq!(live.len(), 3);
}

/// After a bad frame the agent answers `Response::Error` or closes the connection.
async fn refused(s: &mut Conn) {
    match tokio::time::timeout(COUNTED, s.read_frame(DEFAULT_MAX_FRAME)).await {
        Err(_) => panic!("no answer and no close after a bad frame"),
        Ok(Ok(Some(answer))) => {
            let r: Response = wire::decode(Kind::Response, &answer).unwrap();
            assert!(matches!(r, Response::Error(_)), "answered {r:?} to garbage");
        }
        Ok(Ok(None)) | Ok(Err(_)) => {}
    }
}

/// A connection over `api.max_connections` is told the limit, not reset; the agent's own
/// upkeep takes no slot (it once did, refusing a client on a quiet one-agent cluster); and
/// a freed slot serves again.
#[tokio::test]
async fn connections_over_the_limit_are_told_the_limit_and_a_freed_slot_serves_again() {
    const MAX: usize = 2;
    let dir = TestDir::new("api-limit").unwrap();
    let mut spec = AgentSpec::new("a", test_membership());
    spec.extra_config = format!("\n[api]\nmax_connections = {MAX}\n");
    let agent = Agent::start(spec, dir.path()).await.unwrap();

    // Each held connection has been served once, so the agent holds a slot for it.
    let mut held = Vec::new();
    for _ in 0..MAX {
        let mut s = Conn::connect(agent.addr()).await.unwrap();
        let id = wire::encode(Kind::Request, &Request::Id);
        s.write_frame(&id, DEFAULT_MAX_FRAME).await.unwrap();
        let answer = s.read_frame(DEFAULT_MAX_FRAME).await.unwrap().unwrap();
        let r: Response = wire::decode(Kind::Response, &answer).unwrap();
        assert!(matches!(r, Response::Id(_)), "{r:?}");
        held.push(s);
    }
    // Repeated: a refusal must never be a reset or a hang, whatever the agent does meanwhile.
    for _ in 0..5 {
        match agent.client().id().await {
            Err(dml_shared::Error::Remote(m)) => {
                assert!(
                    m.kind == dml_shared::ErrorKind::Refused
                        && m.message.contains("api.max_connections")
                        && m.message.contains("all 2"),
                    "{m}"
                )
            }
            other => panic!("a connection over the limit got {other:?}"),
        }
    }
    held.pop();
    wait_until("a freed slot to serve", COUNTED, VIEW_POLL, async || {
        let info = agent.client().id().await?;
        ensure!(info.id == agent.id(), "answered for {}", info.id);
        Ok(())
    })
    .await
    .unwrap();
}

/// A client on the agent's host reaches it through its local socket, with the same
/// handshake and limits: the cluster key is served, another key is refused and counted, and
/// once the agent is gone nothing answers on either transport.
#[tokio::test]
async fn a_client_on_the_agents_host_is_served_through_its_local_socket_with_the_same_handshake() {
    let dir = TestDir::new("local-socket").unwrap();
    let mut agent = Agent::start(AgentSpec::new("a", test_membership()), dir.path())
        .await
        .unwrap();
    let mut s = Conn::connect_near(agent.addr()).await.unwrap();
    assert!(s.raw().is_local(), "a client on the agent's host used TCP");
    let id = wire::encode(Kind::Request, &Request::Id);
    s.write_frame(&id, DEFAULT_MAX_FRAME).await.unwrap();
    let answer = s.read_frame(DEFAULT_MAX_FRAME).await.unwrap().unwrap();
    let r: Response = wire::decode(Kind::Response, &answer).unwrap();
    assert!(
        matches!(r, Response::Id(ref i) if i.id == agent.id()),
        "{r:?}"
    );

    let before = stats(&agent).await.unwrap().tcp_unauthenticated;
    let stream = dml_shared::stream::connect_near(agent.addr())
        .await
        .unwrap();
    assert!(stream.is_local());
    let wrong = dml_shared::auth::AuthContext::new(ClusterKey::from_bytes([7; 32]));
    let e = Conn::client(stream, agent.addr(), &wrong)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("does not hold cluster key"), "{e}");
    wait_until(
        "the refused handshake to be counted",
        COUNTED,
        VIEW_POLL,
        async || {
            let now = stats(&agent).await?.tcp_unauthenticated;
            ensure!(now > before, "{before} -> {now}");
            Ok(())
        },
    )
    .await
    .unwrap();

    agent.kill().unwrap();
    agent.wait_exit(COUNTED).await.unwrap();
    let e = Conn::connect_near(agent.addr()).await.unwrap_err();
    assert!(matches!(e, dml_shared::Error::Connect { .. }), "{e}");
}
