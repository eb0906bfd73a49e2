//! Least privilege against real agents: client credentials made with
//! `dml credential`. A read-only credential reads (members, ls, get, jobs,
//! ...) and is refused every write, each by name and with exit code 7; an
//! admin credential writes but is refused agent-to-agent requests (Raft RPCs,
//! repair copies, worker leases); the cluster key still does everything.
//! The leader refuses a commit that names a holder it did not plan, and a
//! voter takes Raft RPCs only from voters' addresses. A credential stops
//! working when the key it was derived from leaves the keyring.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use anyhow::ensure;
use dml_shared::api::{Request, Response};
use dml_shared::auth::{AuthContext, ClusterKey};
use dml_shared::client::{read_response, send_request};
use dml_shared::conn::Conn;
use dml_shared::control::{ControlRequest, ControlResponse};
use dml_shared::infer::InferRequest;
use dml_shared::sdfs::{DataRequest, MetaRequest, MetaResponse};
use dml_shared::{Error, ErrorKind};
use dml_tests::dml::DmlOutput;
use dml_tests::sdfs::{DML, READY, SdfsCluster, cluster_slot};
use dml_tests::wait_until;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// Bound on a keyring change reaching every agent (each asks every second).
const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(250);

/// `dml` exit code of a refusal (README, "Exit codes").
const REFUSED: i32 = 7;

/// Runs `dml --key-file key args` against agent 0.
async fn dml_with(c: &SdfsCluster, key: &Path, args: &[&str]) -> DmlOutput {
    let mut all = vec!["--key-file", key.to_str().unwrap()];
    all.extend_from_slice(args);
    c.agent(0).dml(&all, DML).await.unwrap()
}

/// Makes a credential of `role` from the cluster key; returns its path.
async fn credential(c: &SdfsCluster, role: &str) -> std::path::PathBuf {
    let out = c.dir().join(format!("{role}.key"));
    let o = c
        .agent(0)
        .dml(
            &["credential", "--role", role, "--out", out.to_str().unwrap()],
            DML,
        )
        .await
        .unwrap();
    o.ensure_success().unwrap();
    assert!(
        o.stdout.contains(&format!("wrote {role} credential")),
        "{}",
        o.stdout
    );
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", out.display());
    // Not replaced by accident.
    let again = c
        .agent(0)
        .dml(
            &["credential", "--role", role, "--out", out.to_str().unwrap()],
            DML,
        )
        .await
        .unwrap();
    assert!(
        !again.status.success() && again.stderr.contains("--force"),
        "{}",
        again.stderr
    );
    out
}

/// One request on a fresh connection made with `key`.
async fn ask(addr: SocketAddr, key: &Path, req: &Request) -> dml_shared::Result<Response> {
    ask_from("127.0.0.1".parse().unwrap(), addr, key, req).await
}

/// [`ask`] on a connection from `ip` (any 127/8 address is this host).
async fn ask_from(
    ip: std::net::IpAddr,
    addr: SocketAddr,
    key: &Path,
    req: &Request,
) -> dml_shared::Result<Response> {
    let auth = AuthContext::new(ClusterKey::load(key).unwrap());
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ip, 0))?;
    let stream = dml_shared::stream::Stream::from(socket.connect(addr).await?);
    let mut conn = Conn::client(stream, addr, &auth).await?;
    send_request(&mut conn, req).await?;
    read_response(&mut conn).await
}

fn refusal(r: dml_shared::Result<Response>) -> String {
    match r {
        Err(Error::Remote(e)) if e.kind == ErrorKind::Refused => e.message,
        other => panic!("not refused: {other:?}"),
    }
}

#[tokio::test]
async fn a_read_only_credential_reads_and_is_refused_every_write_by_name() {
    let _slot = cluster_slot().await;
    let c = SdfsCluster::start("cred-read-only", 3).await.unwrap();
    c.wait_ready(READY).await.unwrap();
    let dir = c.dir().to_path_buf();
    let src = dir.join("kept.txt");
    std::fs::write(&src, b"written with the cluster key\n").unwrap();
    c.agent(0)
        .dml(&["put", src.to_str().unwrap(), "kept.txt"], DML)
        .await
        .unwrap()
        .ensure_success()
        .unwrap();
    let ro = credential(&c, "read-only").await;

    // Reads work.
    let got = dir.join("got.txt");
    let got_all = dir.join("all");
    for args in [
        vec!["members"],
        vec!["id"],
        vec!["leader"],
        vec!["stats"],
        vec!["ls", "kept.txt"],
        vec!["ls-all", "*"],
        vec!["store"],
        vec!["get", "kept.txt", got.to_str().unwrap()],
        vec!["get-all", "*", got_all.to_str().unwrap()],
        vec!["jobs"],
        vec!["rates"],
        vec!["models"],
    ] {
        dml_with(&c, &ro, &args).await.ensure_success().unwrap();
    }
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(&src).unwrap());
    assert!(got_all.join("kept.txt").exists());
    // The console's telemetry stream.
    let first = tokio::time::timeout(WAIT, ask(c.addrs[0], &ro, &Request::Subscribe))
        .await
        .unwrap();
    assert!(matches!(first, Ok(Response::Telemetry(_))), "{first:?}");

    // Every write is refused by name.
    let planted = dir.join("planted.txt");
    std::fs::write(&planted, b"should not be stored\n").unwrap();
    for (args, what) in [
        (vec!["put", planted.to_str().unwrap(), "planted.txt"], "put"),
        (vec!["put", planted.to_str().unwrap(), "kept.txt"], "put"),
        (vec!["delete", "kept.txt"], "delete"),
        (vec!["submit-job", "resnet50", "1"], "submit-job"),
        (vec!["set-batch-size", "resnet50", "2"], "set-batch-size"),
        (vec!["join"], "join"),
        (vec!["leave"], "leave"),
    ] {
        let out = dml_with(&c, &ro, &args).await;
        let want = format!("a read-only credential cannot {what} (needs an admin credential)");
        assert!(
            out.stderr.contains(&want),
            "{}: wanted \"{want}\" in: {}",
            out.command,
            out.stderr
        );
        assert_eq!(out.code(), Some(REFUSED), "{}: {}", out.command, out.stderr);
    }
    // Bulk and keyring commands too (a bulk load reports each file's failure).
    let load_dir = dir.join("load");
    std::fs::create_dir_all(&load_dir).unwrap();
    std::fs::write(load_dir.join("l.txt"), b"bulk\n").unwrap();
    for (args, what) in [
        (
            vec!["sdfs", "load", load_dir.to_str().unwrap(), "loaded"],
            "put",
        ),
        (vec!["keyring", "list"], "list the keyring"),
        (vec!["keyring", "install", "--generate"], "install a key"),
    ] {
        let out = dml_with(&c, &ro, &args).await;
        let want = format!("a read-only credential cannot {what} (needs an admin credential)");
        assert!(
            !out.status.success() && (out.stderr.contains(&want) || out.stdout.contains(&want)),
            "{}: wanted \"{want}\" in: {} {}",
            out.command,
            out.stdout,
            out.stderr
        );
    }
    // Nothing changed: one version of the kept file, no planted one.
    let ls = dml_with(&c, &ro, &["--json", "ls-all", "*"]).await;
    let files = ls.ensure_success().unwrap().json().unwrap();
    let names: Vec<&str> = files
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert_eq!(names, ["kept.txt"], "{files}");
    assert_eq!(
        files[0]["versions"].as_array().map(Vec::len),
        Some(1),
        "{files}"
    );
    let id = dml_with(&c, &ro, &["--json", "id"]).await;
    assert_eq!(id.ensure_success().unwrap().json().unwrap()["joined"], true);

    // A data-path write sent straight to an agent is refused with its reason too.
    let write = Request::Data(DataRequest::Write {
        name: "raw.txt".into(),
        version: 1,
        size: 3,
        checksum: None,
        downstream: vec![],
        plan: 1,
        seal: None,
    });
    let msg = refusal(ask(c.addrs[1], &ro, &write).await);
    assert_eq!(
        msg,
        "a read-only credential cannot put (needs an admin credential)"
    );
}

#[tokio::test]
async fn an_admin_credential_writes_but_cannot_speak_for_an_agent() {
    let _slot = cluster_slot().await;
    let c = SdfsCluster::start("cred-admin", 3).await.unwrap();
    c.wait_ready(READY).await.unwrap();
    let dir = c.dir().to_path_buf();
    let admin = credential(&c, "admin").await;
    let src = dir.join("a.txt");
    std::fs::write(&src, b"written with an admin credential\n").unwrap();
    let got = dir.join("got.txt");
    for args in [
        vec!["put", src.to_str().unwrap(), "a.txt"],
        vec!["put", src.to_str().unwrap(), "a.txt"],
        vec!["get", "a.txt", got.to_str().unwrap()],
        vec!["set-batch-size", "resnet50", "2"],
        vec!["delete", "a.txt"],
    ] {
        dml_with(&c, &admin, &args).await.ensure_success().unwrap();
    }
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(&src).unwrap());
    // A put large enough for its plan to be logged before the bytes go.
    let big = dir.join("big.bin");
    dml_tests::sdfs::content::write_pattern_file(&big, 7, 5 << 20).unwrap();
    dml_with(&c, &admin, &["put", big.to_str().unwrap(), "big.bin"])
        .await
        .ensure_success()
        .unwrap();

    // A commit naming a holder the leader did not plan is refused, for a
    // small (deferred) plan and a large (logged) one alike.
    let me: SocketAddr = "127.0.0.1:1".parse().unwrap();
    for size in [3, 5 << 20] {
        let begin = Request::Control {
            req: MetaRequest::BeginPut {
                name: "forged.txt".into(),
                size,
            }
            .into(),
            leader_only: false,
        };
        let Ok(Response::Control(ControlResponse::Sdfs(MetaResponse::PutPlan {
            version,
            chain,
            plan,
            ..
        }))) = ask(c.addrs[1], &admin, &begin).await
        else {
            panic!("no plan for {size} bytes");
        };
        let commit = Request::Control {
            req: MetaRequest::CommitPut {
                name: "forged.txt".into(),
                version,
                checksum: [1; 32],
                holders: vec![chain[0], me, chain[1]],
                plan,
            }
            .into(),
            leader_only: false,
        };
        match ask(c.addrs[1], &admin, &commit).await {
            Err(Error::Remote(e)) => assert!(
                e.kind == ErrorKind::Invalid
                    && e.message.contains(&format!(
                        "names holder {me}, which is not in the chain the leader planned"
                    )),
                "{e:?}"
            ),
            other => panic!("a forged commit of {size} bytes: {other:?}"),
        }
    }
    let ls = dml_with(&c, &admin, &["ls", "forged.txt"]).await;
    assert!(!ls.status.success(), "{}", ls.stdout);

    let cluster_key = dml_tests::key::path().unwrap();
    for (req, what) in [
        (Request::Raft(vec![0; 8]), "send Raft RPCs"),
        (
            Request::Data(DataRequest::Replicate {
                name: "a.txt".into(),
                version: 1,
                size: 1,
                checksum: [0; 32],
                sources: vec![me],
            }),
            "copy replicas for repair",
        ),
        (
            Request::Control {
                req: ControlRequest::Infer(InferRequest::Lease {
                    worker: me,
                    wait_ms: 0,
                    figures: None,
                }),
                leader_only: false,
            },
            "lease queries as a worker",
        ),
        (Request::NodeStats, "collect node stats"),
    ] {
        let msg = refusal(ask(c.addrs[1], &admin, &req).await);
        assert_eq!(
            msg,
            format!("an admin credential cannot {what} (needs an agent's cluster key)")
        );
        // The cluster key is not refused for its role (a Raft RPC of
        // garbage fails further on, for what it holds).
        if let Err(Error::Remote(e)) = ask(c.addrs[1], &cluster_key, &req).await {
            assert!(
                !e.message.contains("credential cannot"),
                "{req:?} with the cluster key: {e:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_raft_rpc_from_an_address_that_is_no_voters_is_refused() {
    let _slot = cluster_slot().await;
    let c = SdfsCluster::start("cred-raft-source", 3).await.unwrap();
    c.wait_ready(READY).await.unwrap();
    let key = dml_tests::key::path().unwrap();
    let rpc = Request::Raft(vec![0; 8]);
    // The cluster key, from 127.0.0.2: no voter's address.
    let msg = refusal(ask_from("127.0.0.2".parse().unwrap(), c.addrs[0], &key, &rpc).await);
    assert_eq!(
        msg,
        "Raft RPCs are taken only from the control-plane voters' addresses; 127.0.0.2 is not one"
    );
    // From the voters' address it reaches the Raft node (which turns away
    // an RPC for node 0).
    match ask(c.addrs[0], &key, &rpc).await {
        Ok(Response::Raft(_)) => {}
        Err(Error::Remote(e)) => assert!(!e.message.contains("addresses"), "{e:?}"),
        other => panic!("{other:?}"),
    }
    // The cluster still has its leader and takes writes.
    let src = c.dir().join("after.txt");
    std::fs::write(&src, b"after\n").unwrap();
    c.agent(1)
        .dml(&["put", src.to_str().unwrap(), "after.txt"], DML)
        .await
        .unwrap()
        .ensure_success()
        .unwrap();
}

/// `dml --key-file key --agent addr args`.
async fn dml_at(key: &Path, addr: SocketAddr, args: &[&str]) -> DmlOutput {
    let (k, a) = (key.to_str().unwrap(), addr.to_string());
    let mut all = vec!["--key-file", k, "--agent", a.as_str()];
    all.extend_from_slice(args);
    dml_tests::run_dml(&all, DML).await.unwrap()
}

#[tokio::test]
async fn a_credential_stops_working_when_its_key_leaves_the_keyring() {
    let _slot = cluster_slot().await;
    let c = SdfsCluster::start("cred-keyring", 3).await.unwrap();
    c.wait_ready(READY).await.unwrap();
    let dir = c.dir().to_path_buf();
    let old = dml_tests::key::path().unwrap();
    let ro_old = credential(&c, "read-only").await;
    let new = dir.join("new.key");
    let fp_new = dml_tests::key::other(&new).unwrap().fingerprint();
    let fp_old = ClusterKey::load(&old).unwrap().fingerprint();
    let ro_new = dir.join("ro-new.key");
    dml_at(
        &new,
        c.addrs[0],
        &[
            "credential",
            "--role",
            "read-only",
            "--out",
            ro_new.to_str().unwrap(),
        ],
    )
    .await
    .ensure_success()
    .unwrap();

    dml_at(
        &old,
        c.addrs[0],
        &["keyring", "install", "--from", new.to_str().unwrap()],
    )
    .await
    .ensure_success()
    .unwrap();
    // The new key's credential works once every agent holds the key.
    let addrs = c.addrs.clone();
    wait_until(
        "every agent to take the new key's read-only credential",
        WAIT,
        POLL,
        async || {
            for a in &addrs {
                dml_at(&ro_new, *a, &["members"]).await.ensure_success()?;
            }
            Ok(())
        },
    )
    .await
    .unwrap();
    dml_at(&old, c.addrs[1], &["keyring", "use", &fp_new])
        .await
        .ensure_success()
        .unwrap();
    // Refused until every agent sends with the new key.
    wait_until("the old key's removal", WAIT, POLL, async || {
        dml_at(&new, c.addrs[2], &["keyring", "remove", &fp_old])
            .await
            .ensure_success()?;
        Ok(())
    })
    .await
    .unwrap();
    wait_until(
        "every agent to refuse the removed key's credential",
        WAIT,
        POLL,
        async || {
            for a in &addrs {
                let out = dml_at(&ro_old, *a, &["members"]).await;
                ensure!(
                    !out.status.success() && out.stderr.contains("failed authentication"),
                    "{a}: {}",
                    out.stderr
                );
            }
            Ok(())
        },
    )
    .await
    .unwrap();
    // The new key's credential still reads and is still read-only.
    dml_at(&ro_new, c.addrs[1], &["ls-all", "*"])
        .await
        .ensure_success()
        .unwrap();
    let out = dml_at(&ro_new, c.addrs[1], &["delete", "x"]).await;
    assert!(
        out.stderr
            .contains("a read-only credential cannot delete (needs an admin credential)"),
        "{}",
        out.stderr
    );
}

/// A connection made with `key` that the agent has served once (so it holds
/// a slot), or the agent's refusal.
async fn served_conn(addr: SocketAddr, key: &ClusterKey) -> dml_shared::Result<Conn> {
    let auth = AuthContext::new(key.clone());
    let stream = dml_shared::stream::connect_tcp(addr).await?;
    let mut conn = Conn::client(stream, addr, &auth).await?;
    send_request(&mut conn, &Request::Id).await?;
    read_response(&mut conn).await?;
    Ok(conn)
}

/// The slots kept for members' connections are for peer keys: a client
/// credential from a member's address counts as a client.
#[tokio::test]
async fn a_client_credential_from_a_members_address_takes_no_reserved_slot() {
    const MAX: usize = 8;
    const CLIENT: usize = MAX - MAX / 4;
    let dir = dml_tests::TestDir::new("cred-slots").unwrap();
    let mut spec = dml_tests::AgentSpec::new("a", dml_tests::test_membership());
    spec.extra_config = format!("\n[api]\nmax_connections = {MAX}\n");
    let agent = dml_tests::Agent::start(spec, dir.path()).await.unwrap();
    let key = ClusterKey::load(&dml_tests::key::path().unwrap()).unwrap();
    let ro = key.credential(dml_shared::auth::Role::ReadOnly);
    let mut held = Vec::new();
    for _ in 0..CLIENT {
        held.push(served_conn(agent.addr(), &ro).await.unwrap());
    }
    match served_conn(agent.addr(), &ro).await {
        Err(Error::Remote(e)) => assert!(
            e.kind == ErrorKind::Refused
                && e.message.contains(&format!("all {MAX} API connections")),
            "{e:?}"
        ),
        other => panic!("a client over its share got {other:?}"),
    }
    // The agent's own address with the cluster key: a reserved slot.
    held.push(served_conn(agent.addr(), &key).await.unwrap());
}
