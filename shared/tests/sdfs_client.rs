//! `sdfs_client` against fake agents speaking the real wire protocol: a
//! leader that plans and commits puts, followers that redirect, replicas that
//! can corrupt reads or refuse writes.

use dml_shared::api::{Request, Response};
use dml_shared::auth::put_seal::{Opened, Opener, PutSeal};
use dml_shared::auth::{self, ClusterKey};
use dml_shared::conn::{Conn, FrameRead, FrameWrite};
use dml_shared::control::ControlRequest;
use dml_shared::framing::{DEFAULT_MAX_FRAME, read_frame, write_frame};
use dml_shared::sdfs::{
    DataRequest, FileInfo, Holding, MetaRequest, MetaResponse, VersionInfo, glob_match,
};
use dml_shared::sdfs_client::{
    Options, Phase, Progress, Sdfs, merge_header, no_progress, version_file_name,
};
use dml_shared::wire::{self, Kind};
use dml_shared::{Error, ErrorKind, RemoteError, Result};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct State {
    leader: Option<SocketAddr>,
    agents: Vec<SocketAddr>,
    replicas: usize,
    quorum: usize,
    /// Committed versions per name, oldest first.
    files: BTreeMap<String, Vec<VersionInfo>>,
    /// Bytes per (name, version), whatever replica is asked.
    bytes: BTreeMap<(String, u64), Vec<u8>>,
    next: BTreeMap<String, u64>,
    aborted: Vec<(String, u64)>,
    begun: usize,
    /// Replicas that flip a byte of every read.
    corrupt: HashSet<SocketAddr>,
    /// Replicas that refuse writes with this message.
    refuse_writes: Option<String>,
    /// Downstream replicas a head reports as failed, with their reasons.
    fail_downstream: BTreeMap<SocketAddr, String>,
    /// The leader that dies as it commits: it applies the commit, hands the
    /// lead to the next agent and closes the connection without answering.
    die_on_commit: Option<SocketAddr>,
    /// Every agent dies with it.
    all_die: bool,
    /// Agents that drop every connection at once (as a killed agent's port
    /// does while the kernel still accepts).
    dead: HashSet<SocketAddr>,
}

type Shared = Arc<Mutex<State>>;

struct Fake {
    agents: Vec<SocketAddr>,
    state: Shared,
    dir: PathBuf,
}

impl Fake {
    /// `n` agents; the first leads; files get `replicas` copies.
    async fn start(n: usize, replicas: usize, test: &str) -> Fake {
        auth::install(ClusterKey::from_bytes([5; auth::KEY_LEN])).unwrap();
        let state: Shared = Arc::default();
        let mut agents = Vec::new();
        for _ in 0..n {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            agents.push(l.local_addr().unwrap());
            let st = state.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((s, _)) = l.accept().await else { return };
                    let st = st.clone();
                    tokio::spawn(async move {
                        let _ = serve(s, st).await;
                    });
                }
            });
        }
        {
            let mut s = state.lock().unwrap();
            s.leader = Some(agents[0]);
            s.agents = agents.clone();
            s.replicas = replicas;
            s.quorum = replicas.min(3);
        }
        let dir = std::env::temp_dir().join(format!("sdfs-client-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Fake { agents, state, dir }
    }

    fn client(&self, i: usize) -> Sdfs {
        Sdfs::with_options(
            self.agents[i],
            Options {
                chunk_size: 1000,
                ..Options::default()
            },
        )
    }

    fn local(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// Files in the test directory (so leftovers such as temp files show).
    fn listing(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn serve(s: TcpStream, st: Shared) -> Result<()> {
    let me = s.local_addr()?;
    if st.lock().unwrap().dead.contains(&me) {
        return Ok(());
    }
    let mut s = Conn::accept(s, auth::installed()?).await?;
    while let Some(frame) = s.read_frame(DEFAULT_MAX_FRAME).await? {
        let req: Request = wire::decode(Kind::Request, &frame)?;
        let resp = match req {
            Request::Control {
                req: ControlRequest::Sdfs(m),
                ..
            } => {
                let leader = st.lock().unwrap().leader;
                if leader != Some(me) {
                    Response::NotLeader { leader }
                } else if matches!(m, MetaRequest::CommitPut { .. })
                    && st.lock().unwrap().die_on_commit == Some(me)
                {
                    meta(&st, m);
                    let mut g = st.lock().unwrap();
                    g.dead.insert(me);
                    if g.all_die {
                        g.dead = g.agents.iter().copied().collect();
                    }
                    let next = g.agents.iter().copied().find(|a| *a != me);
                    g.leader = next;
                    return Ok(());
                } else {
                    meta(&st, m)
                }
            }
            Request::Data(DataRequest::Write {
                name,
                version,
                size,
                checksum,
                downstream,
                plan,
                seal,
            }) => {
                let refuse = st.lock().unwrap().refuse_writes.clone();
                if let Some(msg) = refuse {
                    // Like a full disk: answer at once and close.
                    respond(&mut s, Response::Error(RemoteError::internal(msg))).await?;
                    return Ok(());
                }
                let mut data = Vec::new();
                // An encrypted connection's put comes sealed end to end.
                let mut opener = seal.map(|k| Opener::new(PutSeal::new(&k, plan, version)));
                loop {
                    let f = match &opener {
                        Some(_) => read_frame(&mut s.raw().bypass(), DEFAULT_MAX_FRAME).await?,
                        None => read_frame(s.raw(), DEFAULT_MAX_FRAME).await?,
                    };
                    let f = f.unwrap();
                    let f = match &mut opener {
                        Some(o) => match o.open(f).expect("the frames open") {
                            Opened::Data(b) => b,
                            Opened::End => break,
                        },
                        None => f,
                    };
                    assert!(f.len() <= 1000, "frame of {} bytes", f.len());
                    if f.is_empty() {
                        break;
                    }
                    data.extend_from_slice(&f);
                }
                let checksum = match checksum {
                    Some(c) => c.to_vec(),
                    None => s.read_frame(DEFAULT_MAX_FRAME).await?.unwrap(),
                };
                if data.len() as u64 != size || blake3::hash(&data).as_bytes()[..] != checksum[..] {
                    Response::Error(RemoteError::internal("checksum mismatch"))
                } else {
                    let mut g = st.lock().unwrap();
                    g.bytes.insert((name, version), data);
                    let mut holders = vec![me];
                    let mut failed = Vec::new();
                    for d in downstream {
                        match g.fail_downstream.get(&d) {
                            Some(why) => failed.push((d, why.clone())),
                            None => holders.push(d),
                        }
                    }
                    Response::Stored { holders, failed }
                }
            }
            Request::Data(DataRequest::Read { name, version }) => {
                let (data, corrupt) = {
                    let g = st.lock().unwrap();
                    (
                        g.bytes.get(&(name, version)).cloned(),
                        g.corrupt.contains(&me),
                    )
                };
                let Some(mut data) = data else {
                    respond(
                        &mut s,
                        Response::Error(RemoteError::new(ErrorKind::NotFound, "not stored here")),
                    )
                    .await?;
                    continue;
                };
                let size = data.len() as u64;
                let checksum = *blake3::hash(&data).as_bytes();
                if corrupt && !data.is_empty() {
                    data[0] ^= 0xff;
                }
                respond(&mut s, Response::ReadStart { size, checksum }).await?;
                for c in data.chunks(777) {
                    write_frame(s.raw(), c, DEFAULT_MAX_FRAME).await?;
                }
                write_frame(s.raw(), &[], DEFAULT_MAX_FRAME).await?;
                continue;
            }
            Request::Data(DataRequest::Store) => {
                let g = st.lock().unwrap();
                let h = g
                    .files
                    .iter()
                    .flat_map(|(n, vs)| {
                        vs.iter()
                            .filter(|v| v.replicas.contains(&me))
                            .map(|v| Holding {
                                name: n.clone(),
                                version: v.version,
                                size: v.size,
                            })
                    })
                    .collect();
                Response::Holdings(h)
            }
            other => Response::Error(RemoteError::invalid(format!(
                "fake agent does not serve {other:?}"
            ))),
        };
        respond(&mut s, resp).await?;
    }
    Ok(())
}

async fn respond(s: &mut Conn, r: Response) -> Result<()> {
    s.write_frame(&wire::encode(Kind::Response, &r), DEFAULT_MAX_FRAME)
        .await
}

fn meta(st: &Shared, m: MetaRequest) -> Response {
    let mut g = st.lock().unwrap();
    let r = match m {
        MetaRequest::BeginPut { name, .. } => {
            g.begun += 1;
            let v = g.next.entry(name).or_insert(0);
            *v += 1;
            let version = *v;
            MetaResponse::PutPlan {
                version,
                chain: g.agents.iter().take(g.replicas).copied().collect(),
                quorum: g.quorum,
                plan: 7,
            }
        }
        MetaRequest::CommitPut {
            name,
            version,
            checksum,
            holders,
            plan,
        } => {
            assert_eq!(plan, 7, "the commit names the plan");
            let size = g.bytes[&(name.clone(), version)].len() as u64;
            let versions = g.files.entry(name).or_default();
            // A commit asked again is answered, not applied twice.
            if !versions.iter().any(|v| v.version == version) {
                versions.push(VersionInfo {
                    version,
                    size,
                    checksum,
                    replicas: holders,
                    committed_ms: 0,
                });
            }
            MetaResponse::Committed { version }
        }
        MetaRequest::AbortPut {
            name,
            version,
            plan,
        } => {
            assert_eq!(plan, 7, "the abort names the plan");
            g.aborted.push((name, version));
            MetaResponse::Done
        }
        MetaRequest::Stat { name } => match g.files.get(&name) {
            Some(v) => MetaResponse::File(FileInfo {
                name,
                versions: v.clone(),
            }),
            None => {
                return Response::Error(RemoteError::new(
                    ErrorKind::NotFound,
                    format!("no such file \"{name}\""),
                ));
            }
        },
        MetaRequest::List { glob } => MetaResponse::Files(
            g.files
                .iter()
                .filter(|(n, _)| glob_match(&glob, n))
                .map(|(n, v)| FileInfo {
                    name: n.clone(),
                    versions: v.clone(),
                })
                .collect(),
        ),
        MetaRequest::ListPage { glob, after, .. } => MetaResponse::FilesPage {
            files: g
                .files
                .iter()
                .filter(|(n, _)| glob_match(&glob, n) && after.as_ref().is_none_or(|a| *n > a))
                .map(|(n, v)| FileInfo {
                    name: n.clone(),
                    versions: v.clone(),
                })
                .collect(),
            next: None,
        },
        MetaRequest::Delete { name } => {
            g.files.remove(&name);
            MetaResponse::Done
        }
        MetaRequest::Count => MetaResponse::Count {
            files: g.files.len() as u64,
            versions: g.files.values().map(|v| v.len() as u64).sum(),
            bytes: g.files.values().flatten().map(|v| v.size).sum(),
        },
        other => {
            return Response::Error(RemoteError::invalid(format!(
                "fake leader does not serve {other:?}"
            )));
        }
    };
    Response::Control(r.into())
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test]
async fn put_then_get_round_trips_and_versions_count_up() {
    let f = Fake::start(5, 4, "roundtrip").await;
    let c = f.client(2);
    for (i, len) in [0usize, 1, 999, 1000, 12_345].into_iter().enumerate() {
        let bytes = pattern(len, i as u8);
        let src = f.local("src", &bytes);
        let seen = Mutex::new(Vec::new());
        let progress = |p: Progress| seen.lock().unwrap().push(p);
        let put = c.put(&src, "dir/a.bin", &progress).await.unwrap();
        assert_eq!(put.version, i as u64 + 1);
        assert_eq!(put.size, len as u64);
        assert_eq!(put.holders, f.agents[..4].to_vec());
        let seen = seen.into_inner().unwrap();
        let last_sent = seen.iter().rfind(|p| p.phase == Phase::Sending).unwrap();
        assert_eq!((last_sent.done, last_sent.total), (len as u64, len as u64));

        let dst = f.dir.join("dst");
        let got = c.get("dir/a.bin", &dst, &no_progress).await.unwrap();
        assert_eq!(got.version, put.version);
        assert_eq!(std::fs::read(&dst).unwrap(), bytes);
        // The agent holds a replica, so it serves the read.
        assert_eq!(got.from, f.agents[2]);
    }
    assert_eq!(f.listing(), ["dst", "src"]);
    let info = c.ls("dir/a.bin").await.unwrap();
    let versions: Vec<u64> = info.versions.iter().map(|v| v.version).collect();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn a_follower_redirects_metadata_to_the_leader() {
    let f = Fake::start(3, 3, "redirect").await;
    let src = f.local("src", b"hello");
    let put = f.client(1).put(&src, "x", &no_progress).await.unwrap();
    assert_eq!(put.version, 1);
    assert_eq!(f.client(2).count().await.unwrap().files, 1);
}

#[tokio::test]
async fn get_moves_past_a_corrupt_replica_and_leaves_no_temp_file() {
    let f = Fake::start(4, 4, "corrupt").await;
    let c = f.client(0);
    let bytes = pattern(5000, 7);
    c.put(&f.local("src", &bytes), "f", &no_progress)
        .await
        .unwrap();
    f.state.lock().unwrap().corrupt.insert(f.agents[0]);
    let dst = f.dir.join("out");
    let got = c.get("f", &dst, &no_progress).await.unwrap();
    assert_ne!(got.from, f.agents[0]);
    assert_eq!(std::fs::read(&dst).unwrap(), bytes);
    assert_eq!(f.listing(), ["out", "src"]);

    // Every replica corrupt: an error naming the mismatch, no target, no temp file.
    f.state.lock().unwrap().corrupt.extend(f.agents.clone());
    let e = c
        .get("f", &f.dir.join("never"), &no_progress)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ReplicasFailed { .. }), "{e}");
    assert!(e.to_string().contains("checksum mismatch"), "{e}");
    assert_eq!(f.listing(), ["out", "src"]);
}

#[tokio::test]
async fn a_missing_sdfs_file_is_an_error_and_creates_nothing() {
    let f = Fake::start(1, 1, "missing").await;
    let e = f
        .client(0)
        .get("nope", &f.dir.join("out"), &no_progress)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    assert!(f.listing().is_empty());
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_is_reserved() {
    let f = Fake::start(1, 1, "badinput").await;
    let c = f.client(0);
    let e = c
        .put(&f.dir.join("absent"), "x", &no_progress)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::LocalFile { .. }), "{e}");
    assert!(e.to_string().contains("absent"), "{e}");
    let e = c.put(&f.dir, "x", &no_progress).await.unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    let src = f.local("src", b"x");
    let e = c.put(&src, "../etc", &no_progress).await.unwrap_err();
    assert!(matches!(e, Error::BadName { .. }), "{e}");
    assert_eq!(f.state.lock().unwrap().begun, 0);
}

#[tokio::test]
async fn a_refused_write_passes_the_agents_message_through_and_aborts() {
    let f = Fake::start(3, 3, "refused").await;
    f.state.lock().unwrap().refuse_writes = Some("disk full on 127.0.0.1:1".into());
    let src = f.local("src", &pattern(200_000, 1));
    let e = f
        .client(0)
        .put(&src, "big", &no_progress)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("disk full"), "{e}");
    let g = f.state.lock().unwrap();
    assert_eq!(g.aborted, [("big".to_string(), 1)]);
    assert!(g.files.is_empty());
}

#[tokio::test]
async fn too_few_holders_aborts_instead_of_committing() {
    let f = Fake::start(2, 2, "quorum").await;
    f.state.lock().unwrap().quorum = 3;
    let e = f
        .client(0)
        .put(&f.local("src", b"abc"), "q", &no_progress)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::QuorumNotReached {
                stored: 2,
                quorum: 3,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(f.state.lock().unwrap().aborted.len(), 1);
}

#[tokio::test]
async fn failed_replicas_are_named_in_the_quorum_error_and_the_put_report() {
    let f = Fake::start(3, 3, "failed-replicas").await;
    let full = f.agents[2];
    let why = format!("disk full on agent {full}: cannot store \"q\" v1 under \"/data\"");
    f.state
        .lock()
        .unwrap()
        .fail_downstream
        .insert(full, why.clone());
    let src = f.local("src", b"abc");
    let e = f.client(0).put(&src, "q", &no_progress).await.unwrap_err();
    let Error::QuorumNotReached {
        stored: 2,
        quorum: 3,
        failed,
        ..
    } = &e
    else {
        panic!("{e}")
    };
    assert_eq!(failed, &vec![(full, why.clone())]);
    assert_eq!(
        e.to_string(),
        format!(
            "put of \"q\" aborted: only 2 agent(s) stored it durably; a write needs 3 ({full}: {why})"
        )
    );
    assert_eq!(f.state.lock().unwrap().aborted.len(), 1);

    // With a quorum of two the put commits, and the report names the missing replica.
    f.state.lock().unwrap().quorum = 2;
    let r = f.client(0).put(&src, "q", &no_progress).await.unwrap();
    assert_eq!(r.holders, f.agents[..2]);
    assert_eq!(r.failed, vec![(full, why)]);
}

#[tokio::test]
async fn a_commit_lost_with_our_agent_and_leader_is_asked_again_through_a_holder() {
    let f = Fake::start(5, 4, "commit-lost").await;
    f.state.lock().unwrap().die_on_commit = Some(f.agents[0]);
    let bytes = pattern(2500, 9);
    let src = f.local("src", &bytes);
    // Our agent is the leader and the chain's head; it dies as it commits.
    let r = f.client(0).put(&src, "c", &no_progress).await.unwrap();
    assert_eq!(r.version, 1);
    {
        let g = f.state.lock().unwrap();
        assert!(g.dead.contains(&f.agents[0]), "the leader never died");
        assert_eq!(g.leader, Some(f.agents[1]));
        assert!(g.aborted.is_empty(), "aborted {:?}", g.aborted);
        let versions = &g.files["c"];
        assert_eq!(versions.len(), 1);
        assert_eq!(versions[0].checksum, *blake3::hash(&bytes).as_bytes());
    }
    let out = f.dir.join("out");
    f.client(2).get("c", &out, &no_progress).await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
}

#[tokio::test]
async fn a_commit_no_holder_can_confirm_is_reported_as_unknown() {
    let f = Fake::start(4, 4, "commit-unknown").await;
    {
        let mut g = f.state.lock().unwrap();
        g.die_on_commit = Some(f.agents[0]);
        g.all_die = true;
    }
    let src = f.local("src", b"abc");
    let e = f.client(0).put(&src, "u", &no_progress).await.unwrap_err();
    let Error::CommitUnknown { name, version, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!((name.as_str(), *version), ("u", 1));
    assert!(e.to_string().contains("check with `dml ls u`"), "{e}");
    // It did commit: the client could not know.
    assert_eq!(f.state.lock().unwrap().files["u"].len(), 1);
}

#[tokio::test]
async fn get_versions_writes_files_or_one_merged_file_newest_first() {
    let f = Fake::start(3, 3, "versions").await;
    let c = f.client(0);
    for i in 1..=4u8 {
        c.put(
            &f.local("src", &[b'a' + i; 3]),
            "logs/app.log",
            &no_progress,
        )
        .await
        .unwrap();
    }
    let out = f.dir.join("vers");
    let r = c
        .get_versions("logs/app.log", 3, &out, false, &no_progress)
        .await
        .unwrap();
    let order: Vec<u64> = r.versions.iter().map(|v| v.version).collect();
    assert_eq!(order, [4, 3, 2]);
    assert_eq!(std::fs::read(out.join("app.log.v4")).unwrap(), b"eee");
    assert_eq!(std::fs::read(out.join("app.log.v2")).unwrap(), b"ccc");
    assert!(!out.join("app.log.v1").exists());

    let merged = f.dir.join("merged");
    c.get_versions("logs/app.log", 10, &merged, true, &no_progress)
        .await
        .unwrap();
    let mut want = Vec::new();
    for v in (1..=4u64).rev() {
        want.extend(merge_header("logs/app.log", v, 3).into_bytes());
        want.extend([b'a' + v as u8; 3]);
        want.push(b'\n');
    }
    assert_eq!(std::fs::read(&merged).unwrap(), want);
    assert_eq!(f.listing(), ["merged", "src", "vers"]);
}

#[tokio::test]
async fn load_then_get_all_mirrors_a_directory() {
    let f = Fake::start(3, 3, "load").await;
    // One put per file: the fake leader serves no batched puts (those are
    // tested against real agents in tests/tests/sdfs_batch.rs).
    let c = Sdfs::with_options(
        f.agents[0],
        Options {
            chunk_size: 1000,
            batch_file_max: 0,
            ..Options::default()
        },
    );
    let tree = f.dir.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a.jpg"), b"A").unwrap();
    std::fs::write(tree.join("sub/b.jpg"), b"BB").unwrap();
    let files = Mutex::new(0);
    let report = c
        .load(&tree, "imgs/", &|p: Progress| {
            assert_eq!(p.phase, Phase::Files);
            *files.lock().unwrap() = p.done;
        })
        .await
        .unwrap();
    assert_eq!(report.failed(), 0);
    assert_eq!(report.bytes(), 3);
    let names: Vec<&str> = report.items.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["imgs/a.jpg", "imgs/sub/b.jpg"]);
    assert_eq!(*files.lock().unwrap(), 2);

    let listed: Vec<String> = c
        .ls_all("imgs/*")
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(listed, ["imgs/a.jpg", "imgs/sub/b.jpg"]);
    let out = f.dir.join("out");
    let all = c.get_all("imgs/*", &out, &no_progress).await.unwrap();
    assert!(all.items.iter().all(|(_, r)| r.is_ok()));
    assert_eq!(std::fs::read(out.join("imgs/sub/b.jpg")).unwrap(), b"BB");
    assert_eq!(
        c.store(Some(f.agents[1])).await.unwrap().len(),
        2,
        "holdings of a replica"
    );
    c.delete("imgs/a.jpg").await.unwrap();
    assert_eq!(c.files().await.unwrap().len(), 1);
}

#[test]
fn version_files_are_named_after_the_last_component() {
    assert_eq!(version_file_name("photos/cat.jpg", 3), "cat.jpg.v3");
    assert_eq!(version_file_name("x", 12), "x.v12");
}
