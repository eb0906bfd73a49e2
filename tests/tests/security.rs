//! Cluster-key authentication against real agents: an agent or a `dml` with
//! another key cannot join, read or write; forged membership datagrams (no
//! tag, or a tag made with another key) are dropped and counted, although the
//! same datagram sealed with the cluster key does take effect; a replayed
//! datagram is dropped while a fresh one is answered.
//!
//! Local access: a local user squatting an agent's local socket stops it from
//! starting, and a client meeting such a socket uses TCP and sends it nothing;
//! names with control characters are refused by `dml` and by the agent; a fresh
//! agent's data directory and files are its own user's only.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use anyhow::{Context, Result, bail};
use dml_agent::membership::msg::{Message, Update, UpdateKind, probe_tag};
use dml_shared::NodeId;
use dml_shared::api::{MemberState, Stats};
use dml_shared::auth::ClusterKey;
use dml_shared::client::Client;
use dml_tests::sdfs::{SdfsCluster, cluster_slot};
use dml_tests::udp::UdpPeer;
use dml_tests::view::{VIEW_POLL, members, state_of, wait_converged};
use dml_tests::{Cluster, test_membership, wait_for, wait_until};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

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

/// The next membership message `peer` gets from `from`.
async fn next_message(peer: &mut UdpPeer, from: SocketAddr) -> Result<Message> {
    let p = peer.next_payload(from, WAIT).await?;
    Message::decode(&p).map_err(anyhow::Error::from)
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
    let mut forger = UdpPeer::bind(wrong).await.unwrap();
    let mut peer = UdpPeer::bind(key.clone()).await.unwrap();
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
    for (i, a) in addrs[..2].iter().enumerate() {
        // The agent's epoch, as anyone on the path reads it from its datagrams.
        let epoch = peer.greet(*a, WAIT).await.unwrap();
        for _ in 0..COPIES {
            send(&forger.sock, *a, &claim(ids[i])).await; // no tag at all
            let forged = forger.sealed(*a, epoch, &claim(ids[i])); // another key
            send(&forger.sock, *a, &forged).await;
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
    let epoch = peer.greet(addrs[0], WAIT).await.unwrap();
    let ping = |seq: u16| {
        Message::Ping {
            seq,
            target: probe_tag(&ids[0]),
            updates: vec![],
        }
        .encode()
    };
    let captured = peer.sealed(addrs[0], epoch, &ping(41));
    send(&peer.sock, addrs[0], &captured).await;
    let first = next_message(&mut peer, addrs[0]).await.unwrap();
    assert!(matches!(first, Message::Ack { seq: 41, .. }), "{first:?}");
    let replayed_before = stats(addrs[0]).await.unwrap().udp_replayed;
    for _ in 0..5 {
        send(&peer.sock, addrs[0], &captured).await;
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
    let fresh = peer.sealed(addrs[0], epoch, &ping(42));
    send(&peer.sock, addrs[0], &fresh).await;
    let next = next_message(&mut peer, addrs[0]).await.unwrap();
    assert!(
        matches!(next, Message::Ack { seq: 42, .. }),
        "a replay was answered: {next:?}"
    );

    // The same claim sealed with the cluster key does take effect: the
    // datagrams above were dropped for their tags, not for their content.
    // The live victim refutes it and is reinstated, so what shows is the
    // failure counted, or the victim's incarnation raised by its refutation.
    let declared = stats(addrs[0]).await.unwrap().declared_failed;
    let claimed = peer.sealed(addrs[0], epoch, &claim(ids[0]));
    send(&peer.sock, addrs[0], &claimed).await;
    wait_for(
        "the sealed claim to take effect",
        WAIT,
        VIEW_POLL,
        async || {
            let now = members(addrs[0]).await?;
            let v = now.iter().find(|m| m.id == victim);
            let refuted = v.is_some_and(|m| m.incarnation > inc);
            let failed = v.is_none_or(|m| m.state != MemberState::Alive);
            let counted = stats(addrs[0]).await?.declared_failed > declared;
            if counted || failed || refuted {
                Ok(())
            } else {
                bail!("{victim} still alive at {} at incarnation {inc}", addrs[0])
            }
        },
    )
    .await
    .unwrap();
}

/// A `squat` process holding the local socket name of an agent's address, as another local
/// user (nobody) when asked and the tests run as root. Killed on drop.
struct Squatter {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    /// Whether it runs as another user than this process.
    foreign: bool,
}

impl Squatter {
    async fn start(addr: SocketAddr, other_user: bool) -> Result<Squatter> {
        let mut cmd = tokio::process::Command::new(dml_tests::bins::binary("squat")?);
        cmd.arg(addr.to_string())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        let foreign = other_user && nix::unistd::geteuid().is_root();
        if foreign {
            cmd.uid(65534).gid(65534);
        }
        let mut child = cmd.spawn().context("cannot start squat")?;
        let stdout = child.stdout.take().context("squat's stdout")?;
        let mut s = Squatter {
            child,
            lines: BufReader::new(stdout).lines(),
            foreign,
        };
        let first = s.next_line(WAIT).await?;
        anyhow::ensure!(first == "ready", "squat said {first:?}");
        Ok(s)
    }

    async fn next_line(&mut self, within: Duration) -> Result<String> {
        match tokio::time::timeout(within, self.lines.next_line()).await {
            Ok(Ok(Some(l))) => Ok(l),
            Ok(Ok(None)) => bail!("squat exited"),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => bail!("squat said nothing within {within:?}"),
        }
    }

    /// The bytes the next connection sent it.
    async fn next_connection(&mut self, within: Duration) -> Result<usize> {
        let l = self.next_line(within).await?;
        l.strip_prefix("got ")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("squat said {l:?}"))
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }
}

/// Relays TCP connections at `from` to `to`, until the test ends.
async fn relay(from: TcpListener, to: SocketAddr) {
    while let Ok((mut a, _)) = from.accept().await {
        tokio::spawn(async move {
            if let Ok(mut b) = TcpStream::connect(to).await {
                let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
            }
        });
    }
}

#[tokio::test]
async fn a_squatted_local_socket_stops_the_agent_and_clients_send_it_nothing() {
    use dml_shared::api::{Request, Response};
    use dml_shared::conn::{Conn, FrameRead, FrameWrite};
    use dml_shared::framing::DEFAULT_MAX_FRAME;
    use dml_shared::wire::{self, Kind};
    use dml_tests::{Agent, AgentSpec, TestDir};
    let dir = TestDir::new("local-squat").unwrap();
    let addr = dml_tests::ports::free_fixed_addr().unwrap();
    let mut squat = Squatter::start(addr, true).await.unwrap();

    // The agent for `addr` will not share its name with the squatter.
    let e = Agent::start(
        AgentSpec::new("refused", test_membership()).bind(addr),
        dir.path(),
    )
    .await
    .unwrap_err();
    let e = format!("{e:#}");
    let held = format!(
        "the local socket @{} is already held by pid {}",
        dml_shared::stream::local_name(addr),
        squat.pid()
    );
    assert!(e.contains(&held), "{e}");
    // It asked who holds the name, without a word.
    assert_eq!(squat.next_connection(WAIT).await.unwrap(), 0);

    // An agent elsewhere, reached at `addr` over TCP: a client meets the squatted name
    // first and still talks to the agent, over TCP.
    let agent = Agent::start(AgentSpec::new("real", test_membership()), dir.path())
        .await
        .unwrap();
    tokio::spawn(relay(TcpListener::bind(addr).await.unwrap(), agent.addr()));
    let mut c = Conn::connect_near(addr).await.unwrap();
    assert!(!c.raw().is_local(), "the client used the squatted socket");
    c.write_frame(
        &wire::encode(Kind::Request, &Request::Id),
        DEFAULT_MAX_FRAME,
    )
    .await
    .unwrap();
    let answer = c.read_frame(DEFAULT_MAX_FRAME).await.unwrap().unwrap();
    let r: Response = wire::decode(Kind::Response, &answer).unwrap();
    assert!(
        matches!(r, Response::Id(ref i) if i.id == agent.id()),
        "{r:?}"
    );
    let sent = squat.next_connection(WAIT).await.unwrap();
    if squat.foreign {
        // Another user's socket is left before a byte is sent.
        assert_eq!(sent, 0, "the client sent the squatter {sent} bytes");
    } else {
        // This user's own process is trusted; it failed the handshake, so the client
        // went on over TCP.
        assert!(sent > 0);
    }
}

/// A process of the client's own user on an agent's local socket name is trusted, but one
/// that does not complete the handshake leaves the client on TCP.
#[tokio::test]
async fn a_failed_local_handshake_falls_back_to_tcp() {
    use dml_shared::conn::Conn;
    use dml_tests::{Agent, AgentSpec, TestDir};
    let dir = TestDir::new("local-handshake").unwrap();
    let agent = Agent::start(AgentSpec::new("real", test_membership()), dir.path())
        .await
        .unwrap();
    let addr = dml_tests::ports::free_fixed_addr().unwrap();
    let mut squat = Squatter::start(addr, false).await.unwrap();
    tokio::spawn(relay(TcpListener::bind(addr).await.unwrap(), agent.addr()));
    let mut c = Conn::connect_near(addr).await.unwrap();
    assert!(
        !c.raw().is_local(),
        "the client stayed on the silent socket"
    );
    use dml_shared::api::{Request, Response};
    dml_shared::client::send_request(&mut c, &Request::Id)
        .await
        .unwrap();
    let r = dml_shared::client::read_response(&mut c).await.unwrap();
    assert!(
        matches!(r, Response::Id(ref i) if i.id == agent.id()),
        "{r:?}"
    );
    // It sent its hello there, then gave up.
    assert!(squat.next_connection(WAIT).await.unwrap() > 0);
}

#[tokio::test]
async fn names_with_control_characters_are_refused_by_dml_and_by_the_agent() {
    use dml_shared::sdfs::MetaRequest;
    let _slot = cluster_slot().await;
    let c = SdfsCluster::start("control-chars", 1).await.unwrap();
    let out = c.put_bytes(0, "evil\nname", b"x").await.unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr
            .contains("contains the control character U+000A (line feed) at character 5"),
        "{}",
        out.stderr
    );
    // The name is shown escaped: the message is one line.
    assert!(out.stderr.contains("evil\\u{a}name"), "{}", out.stderr);
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{}", out.stderr);

    // A raw client is refused by the leader the same way.
    let leader = c.wait_leader(&[0], READY).await.unwrap();
    for (name, what) in [
        ("x\u{1b}[2J", "U+001B (ESC) at character 2"),
        ("a/b\u{9b}c", "U+009B (C1) at character 4"),
        ("del\u{7f}", "U+007F (DEL) at character 4"),
    ] {
        let e = Client::new(leader)
            .meta(MetaRequest::BeginPut {
                name: name.into(),
                size: 1,
            })
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("control character {what}")), "{e}");
        assert!(!e.chars().any(char::is_control), "{e:?}");
    }
    let ls = c.dml(0, &["ls-all", "*"]).await.unwrap();
    ls.ensure_success().unwrap();
    assert!(ls.stdout.contains("no files"), "{}", ls.stdout);
}

#[tokio::test]
async fn a_fresh_agents_data_directory_and_files_are_its_users_only() {
    use std::os::unix::fs::PermissionsExt;
    let _slot = cluster_slot().await;
    let c = SdfsCluster::start("private-files", 3).await.unwrap();
    c.must_put(0, "private.bin", b"secret bytes").await.unwrap();
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .with_context(|| format!("{}", p.display()))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    for i in 0..c.len() {
        let data = c.data_dir(i);
        // The harness made it 0755: the agent tightened it.
        assert_eq!(mode(&data), 0o700, "{}", data.display());
        assert_eq!(mode(&data.join("control/raft.redb")), 0o600);
        for d in ["sdfs", "sdfs/objects", "control"] {
            assert_eq!(mode(&data.join(d)), 0o700, "{d}");
        }
    }
    let holders = c.holders_on_disk(b"secret bytes").unwrap();
    assert!(!holders.is_empty());
    for i in holders {
        let objects = c.data_dir(i).join("sdfs/objects");
        let mut files = vec![];
        let mut stack = vec![objects];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    assert_eq!(mode(&p), 0o700, "{}", p.display());
                    stack.push(p);
                } else {
                    files.push(p);
                }
            }
        }
        assert!(!files.is_empty());
        for f in files {
            assert_eq!(mode(&f), 0o600, "{}", f.display());
        }
    }
}

/// A datagram captured on its way to one agent is dropped by another (it is sealed for its
/// receiver's address), and once its receiver restarts it is dropped there too (sealed for
/// the earlier run): both counted, neither answered.
#[tokio::test]
async fn a_datagram_for_another_agent_or_an_earlier_run_is_dropped_and_counted() {
    let _slot = cluster_slot().await;
    let mut c = SdfsCluster::start("auth-bound", 3).await.unwrap();
    let key = ClusterKey::load(&dml_tests::key::path().unwrap()).unwrap();
    let mut peer = UdpPeer::bind(key).await.unwrap();
    let (a, b) = (c.addrs[0], c.addrs[1]);
    let ping = |seq: u16, to: NodeId| {
        Message::Ping {
            seq,
            target: probe_tag(&to),
            updates: vec![],
        }
        .encode()
    };
    let a_id = c.agent(0).current_id().await.unwrap();
    let epoch = peer.greet(a, WAIT).await.unwrap();

    // Sealed for a, replayed to b.
    let for_a = peer.sealed(a, epoch, &ping(51, a_id));
    let before = stats(b).await.unwrap().udp_unauthenticated;
    send(&peer.sock, b, &for_a).await;
    wait_until(
        "b to count the misdirected datagram",
        WAIT,
        VIEW_POLL,
        async || {
            let got = stats(b).await?.udp_unauthenticated;
            if got > before {
                Ok(())
            } else {
                bail!("not counted yet")
            }
        },
    )
    .await
    .unwrap();
    // It was a good datagram: a answers it.
    send(&peer.sock, a, &for_a).await;
    let ack = next_message(&mut peer, a).await.unwrap();
    assert!(matches!(ack, Message::Ack { seq: 51, .. }), "{ack:?}");

    // Captured for a's current run; a restarts; the capture arrives.
    let captured = peer.sealed(a, epoch, &ping(52, a_id));
    c.kill(0).await.unwrap();
    c.restart(0).await.unwrap();
    c.wait_answering(0, READY).await.unwrap();
    let replayed = stats(a).await.unwrap().udp_replayed;
    send(&peer.sock, a, &captured).await;
    wait_until(
        "the restarted agent to count the replay",
        WAIT,
        VIEW_POLL,
        async || {
            let got = stats(a).await?.udp_replayed;
            if got > replayed {
                Ok(())
            } else {
                bail!("not counted yet")
            }
        },
    )
    .await
    .unwrap();
    // Never answered: the only ack that comes is to a fresh ping for the new run.
    let new_id = c.agent(0).current_id().await.unwrap();
    let new_epoch = peer.greet(a, WAIT).await.unwrap();
    assert_ne!(new_epoch, epoch, "the restarted agent kept its run's epoch");
    let fresh = peer.sealed(a, new_epoch, &ping(53, new_id));
    send(&peer.sock, a, &fresh).await;
    loop {
        match next_message(&mut peer, a).await.unwrap() {
            Message::Ack { seq: 52, .. } => panic!("the replay for the earlier run was answered"),
            Message::Ack { seq: 53, .. } => break,
            _ => {}
        }
    }
}
