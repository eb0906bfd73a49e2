//! Cluster-key authentication against real agents: an agent or a `dml` with
//! another key cannot join, read or write; forged membership datagrams (no
//! tag, or a tag made with another key) are dropped and counted, although the
//! same datagram sealed with the cluster key does take effect; a replayed
//! datagram is dropped while a fresh one is answered.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use anyhow::{Context, Result, bail};
use dml_agent::membership::msg::{Message, Update, UpdateKind, probe_tag};
use dml_shared::NodeId;
use dml_shared::api::{MemberState, Stats};
use dml_shared::auth::{ClusterKey, Opener, Sealer};
use dml_shared::client::Client;
use dml_tests::sdfs::{SdfsCluster, cluster_slot};
use dml_tests::view::{VIEW_POLL, members, state_of, wait_converged};
use dml_tests::{Cluster, test_membership, wait_for, wait_until};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;

const READY: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(20);
const DML: Duration = Duration::from_secs(20);

async fn stats(addr: SocketAddr) -> Result<Stats> {
    Client::new(addr)
        .with_timeout(Duration::from_secs(5))
        .stats()
        .await
        .with_context(|| format!("stats of {addr}"))
}

#[tokio::test]
async fn an_agent_or_dml_with_another_key_cannot_join_read_or_write() {
    let _slot = cluster_slot().await;
    let mut c = SdfsCluster::start("auth-wrong-key", 3).await.unwrap();
    c.wait_ready(READY).await.unwrap();
    let dir = c.dir().to_path_buf();
    let other = dir.join("other.key");
    dml_tests::key::other(&other).unwrap();
    let other = other.to_str().unwrap();
    let src = dir.join("secret.txt");
    std::fs::write(&src, b"only for key holders\n").unwrap();
    let a0 = c.agent(0);
    a0.dml(&["put", src.to_str().unwrap(), "secret.txt"], DML)
        .await
        .unwrap()
        .ensure_success()
        .unwrap();
    let tcp_before = stats(a0.addr()).await.unwrap().tcp_unauthenticated;

    // dml with the wrong key: no read, no write, and the error says why.
    let out_file = dir.join("stolen.txt");
    for args in [
        vec!["get", "secret.txt", out_file.to_str().unwrap()],
        vec!["put", src.to_str().unwrap(), "planted.txt"],
        vec!["ls", "secret.txt"],
    ] {
        let mut all = vec!["--key-file", other];
        all.extend(args);
        let out = a0.dml(&all, DML).await.unwrap();
        assert!(!out.status.success(), "{} succeeded", out.command);
        assert!(
            out.stderr.contains("does not hold cluster key"),
            "{}: {}",
            out.command,
            out.stderr
        );
    }
    assert!(!out_file.exists(), "a rejected get left a file");
    // dml with no key at all says so, whatever the command.
    for args in [vec!["ls", "secret.txt"], vec!["latency"]] {
        let addr = a0.addr().to_string();
        let mut all = vec!["--agent", addr.as_str()];
        all.extend(&args);
        let out = dml_tests::dml::run_dml_without_key(&all, &dir, DML)
            .await
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded without a key");
        assert!(
            out.stderr.contains("no cluster key") && !out.stderr.contains("data transfer"),
            "{args:?}: {}",
            out.stderr
        );
    }
    let ls = a0.dml(&["ls", "planted.txt"], DML).await.unwrap();
    assert!(
        !ls.status.success() && ls.stderr.contains("no such SDFS file"),
        "{}",
        ls.stderr
    );
    let tcp_after = stats(a0.addr()).await.unwrap().tcp_unauthenticated;
    assert!(
        tcp_after >= tcp_before + 3,
        "{tcp_before} -> {tcp_after} refused connections"
    );

    // An agent with the wrong key, told to join through the introducer.
    let spec = c.cluster.spec().arg("--key-file").arg(other);
    let i = c.cluster.spawn(spec).await.unwrap();
    let intruder = c.cluster.pick(&[i])[0];
    let (intruder_addr, intruder_id) = (intruder.addr(), intruder.id());
    let addrs = c.addrs.clone();
    // Its join attempts reach the introducer and are dropped there.
    wait_until(
        "the intruder's datagrams to be dropped",
        WAIT,
        VIEW_POLL,
        async || {
            let s = stats(addrs[0]).await?;
            if s.udp_unauthenticated >= 3 {
                Ok(())
            } else {
                bail!("{} dropped so far", s.udp_unauthenticated)
            }
        },
    )
    .await
    .unwrap();
    for a in &addrs {
        let m = members(*a).await.unwrap();
        assert!(
            m.iter().all(|m| m.id.addr != intruder_addr),
            "{a} lists the intruder: {m:?}"
        );
    }
    // Its own view, asked with its own key: nobody but itself.
    let out = dml_tests::run_dml(
        &[
            "--key-file",
            other,
            "--agent",
            &intruder_addr.to_string(),
            "--json",
            "members",
        ],
        DML,
    )
    .await
    .unwrap();
    out.ensure_success().unwrap();
    let seen = out.json().unwrap();
    let ids: Vec<&str> = seen
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, vec![intruder_id.to_string()], "{seen}");
}

/// A datagram from `from` to `to`.
async fn send(sock: &UdpSocket, to: SocketAddr, bytes: &[u8]) {
    sock.send_to(bytes, to).await.unwrap();
}

/// The next membership message `sock` receives that opens with `opener`.
async fn next_message(sock: &UdpSocket, opener: &mut Opener, within: Duration) -> Result<Message> {
    let mut buf = vec![0u8; 65_536];
    tokio::time::timeout(within, async {
        loop {
            let (n, _) = sock.recv_from(&mut buf).await?;
            if let Ok(p) = opener.open(&buf[..n]) {
                return Message::decode(p).map_err(anyhow::Error::from);
            }
        }
    })
    .await
    .context("no datagram")?
}

#[tokio::test]
async fn forged_datagrams_are_dropped_and_a_replayed_one_is_not_answered() {
    let mut c = Cluster::start("auth-forged", 3, test_membership())
        .await
        .unwrap();
    c.wait_converged(WAIT).await.unwrap();
    let ids: Vec<NodeId> = c.ids(&[0, 1, 2]);
    let addrs: Vec<SocketAddr> = c.pick(&[0, 1, 2]).iter().map(|a| a.addr()).collect();
    let victim = ids[2];
    let inc = members(addrs[0])
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.id == victim)
        .unwrap()
        .incarnation;
    let key = ClusterKey::load(&dml_tests::key::path().unwrap()).unwrap();
    let wrong = ClusterKey::from_hex(&ClusterKey::generate_hex().unwrap()).unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = sock.local_addr().unwrap();
    // "The victim has failed", as a probe to each of the other two.
    let claim = |to: NodeId| {
        Message::Ping {
            seq: 7,
            target: probe_tag(&to),
            updates: vec![Update {
                id: victim,
                incarnation: inc,
                kind: UpdateKind::Failed,
            }],
        }
        .encode()
    };
    let before: Vec<u64> = {
        let mut v = Vec::new();
        for a in &addrs[..2] {
            v.push(stats(*a).await.unwrap().udp_unauthenticated);
        }
        v
    };
    const COPIES: u64 = 10;
    let mut forger = Sealer::new(wrong, me);
    for (i, a) in addrs[..2].iter().enumerate() {
        for _ in 0..COPIES {
            send(&sock, *a, &claim(ids[i])).await; // no tag at all
            send(&sock, *a, &forger.seal(&claim(ids[i]))).await; // another key's tag
        }
    }
    for (i, a) in addrs[..2].iter().enumerate() {
        let want = before[i] + 2 * COPIES;
        wait_until(
            "the forged datagrams to be counted",
            WAIT,
            VIEW_POLL,
            async || {
                let got = stats(*a).await?.udp_unauthenticated;
                if got >= want {
                    Ok(())
                } else {
                    bail!("{a} counted {got} of {want}")
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(
            state_of(*a, victim).await.unwrap(),
            Some(MemberState::Alive),
            "{a} believed a forged datagram"
        );
    }
    let agents = c.pick(&[0, 1, 2]);
    wait_converged(&agents, WAIT).await.unwrap();
    let now = c.pick(&[2])[0].current_id().await.unwrap();
    assert_eq!(
        now, victim,
        "the victim rejoined: a forged claim took effect"
    );

    // A ping sealed with the cluster key is answered once; its replays are not.
    let mut sealer = Sealer::new(key.clone(), me);
    let mut opener = Opener::new(&dml_shared::auth::AuthContext::new(key.clone()));
    let ping = |seq: u16| {
        Message::Ping {
            seq,
            target: probe_tag(&ids[0]),
            updates: vec![],
        }
        .encode()
    };
    let captured = sealer.seal(&ping(41));
    send(&sock, addrs[0], &captured).await;
    let first = next_message(&sock, &mut opener, WAIT).await.unwrap();
    assert!(matches!(first, Message::Ack { seq: 41, .. }), "{first:?}");
    let replayed_before = stats(addrs[0]).await.unwrap().udp_replayed;
    for _ in 0..5 {
        send(&sock, addrs[0], &captured).await;
    }
    wait_until("the replays to be counted", WAIT, VIEW_POLL, async || {
        let got = stats(addrs[0]).await?.udp_replayed;
        if got >= replayed_before + 5 {
            Ok(())
        } else {
            bail!("{} of 5 counted", got - replayed_before)
        }
    })
    .await
    .unwrap();
    // A fresh ping after the replays is answered, and it is the only answer.
    send(&sock, addrs[0], &sealer.seal(&ping(42))).await;
    let next = next_message(&sock, &mut opener, WAIT).await.unwrap();
    assert!(
        matches!(next, Message::Ack { seq: 42, .. }),
        "a replay was answered: {next:?}"
    );

    // The same claim sealed with the cluster key does take effect: the
    // datagrams above were dropped for their tags, not for their content.
    send(&sock, addrs[0], &sealer.seal(&claim(ids[0]))).await;
    wait_for(
        "the sealed claim to take effect",
        WAIT,
        VIEW_POLL,
        async || match state_of(addrs[0], victim).await? {
            Some(MemberState::Alive) => bail!("{victim} still alive at {}", addrs[0]),
            s => Ok(s),
        },
    )
    .await
    .unwrap();
}
