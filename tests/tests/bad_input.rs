//! Bad input on the agent's ports: random, truncated and oversized data on UDP and TCP is
//! dropped and counted (`bad_packets`, `bad_frames`), and the agent keeps serving.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use anyhow::{Context, ensure};
use dml_shared::api::{Request, Response, Stats};
use dml_shared::framing::{DEFAULT_MAX_FRAME, read_frame, write_frame};
use dml_shared::wire::{self, HEADER_LEN, Kind, MAGIC, PROTOCOL_VERSION};
use dml_tests::view::VIEW_POLL;
use dml_tests::{Agent, Cluster, test_membership, wait_until};
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

/// Sends `datagrams` to `to` in batches, waiting after each batch until the agent's
/// `bad_packets` has grown by everything sent so far (every datagram must be counted).
async fn send_counted(agent: &Agent, datagrams: &[Vec<u8>]) -> anyhow::Result<()> {
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    let base = stats(agent).await?.bad_packets;
    let mut sent = 0u64;
    for batch in datagrams.chunks(BATCH) {
        for d in batch {
            sock.send_to(d, agent.addr()).await?;
        }
        sent += batch.len() as u64;
        wait_until(
            "the agent to count the bad datagrams",
            COUNTED,
            Duration::from_millis(20),
            async || {
                let counted = stats(agent).await?.bad_packets - base;
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
    // Oversized: the largest datagram IPv4 carries, and one well above max_packet_size.
    for len in [MAX_DATAGRAM, 10_000] {
        let mut d = header(PROTOCOL_VERSION, Kind::Gossip as u8);
        d.extend(rng.bytes(len - HEADER_LEN));
        bad.push(d);
    }

    let target = &c.agents[1];
    let before = stats(target).await.unwrap();
    send_counted(target, &bad).await.unwrap();
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

    // Connections that stay idle must not keep the agent from answering others.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let before = stats(target).await.unwrap();

    let mut definitely_bad = 0u64;
    // A 4 GB length prefix: refused before anything is allocated.
    send_bad_stream(addr, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
        .await
        .unwrap();
    definitely_bad += 1;
    // Just above the frame limit.
    send_bad_stream(addr, &((DEFAULT_MAX_FRAME + 1) as u32).to_be_bytes())
        .await
        .unwrap();
    definitely_bad += 1;
    // Random bytes whose first four read as a length above the limit.
    let mut garbage = rng.bytes(10_000);
    garbage[0] = garbage[0].max(0x02);
    send_bad_stream(addr, &garbage).await.unwrap();
    definitely_bad += 1;

    // Well-framed garbage: no envelope, a real envelope around garbage, and a response
    // where a request belongs. Each must be refused (an error answer or a closed connection).
    let mut well_framed = vec![frame(&rng.bytes(100))];
    let mut g = header(PROTOCOL_VERSION, Kind::Request as u8);
    g.extend(rng.bytes(64));
    well_framed.push(frame(&g));
    well_framed.push(frame(&wire::encode(Kind::Response, &Response::Ok)));
    let mut v = header(PROTOCOL_VERSION.wrapping_add(1), Kind::Request as u8);
    v.push(0);
    well_framed.push(frame(&v));
    for f in &well_framed {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(f).await.unwrap();
        match tokio::time::timeout(COUNTED, read_frame(&mut s, DEFAULT_MAX_FRAME)).await {
            Err(_) => panic!("no answer and no close after a bad frame"),
            Ok(Ok(Some(answer))) => {
                let r: Response = wire::decode(Kind::Response, &answer).unwrap();
                assert!(matches!(r, Response::Error(_)), "answered {r:?} to garbage");
            }
            Ok(Ok(None)) | Ok(Err(_)) => {}
        }
        definitely_bad += 1;
    }

    // Truncated: a frame cut short, and a length prefix cut short.
    send_bad_stream(addr, &[0, 0, 0, 100, 1, 2, 3])
        .await
        .unwrap();
    send_bad_stream(addr, &[0, 0]).await.unwrap();

    wait_until(
        "the agent to count the bad frames",
        COUNTED,
        VIEW_POLL,
        async || {
            let counted = stats(target).await?.bad_frames - before.bad_frames;
            ensure!(
                counted >= definitely_bad,
                "{counted} of {definitely_bad} counted"
            );
            Ok(())
        },
    )
    .await
    .unwrap();

    // The API still answers, over a new connection and over a held one.
    let mut s = idle.pop().unwrap();
    write_frame(
        &mut s,
        &wire::encode(Kind::Request, &Request::Id),
        DEFAULT_MAX_FRAME,
    )
    .await
    .unwrap();
    let answer = tokio::time::timeout(COUNTED, read_frame(&mut s, DEFAULT_MAX_FRAME))
        .await
        .expect("an answer on a connection held open during the attack")
        .unwrap()
        .expect("a frame");
    let r: Response = wire::decode(Kind::Response, &answer).unwrap();
    assert!(
        matches!(r, Response::Id(ref i) if i.id == target.id()),
        "{r:?}"
    );
    drop(idle);
    let live = c.wait_converged(CONVERGE).await.unwrap();
    assert_eq!(live.len(), 3);
}
