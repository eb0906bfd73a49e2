//! In-process tests of the data path: several SDFS services on 127.0.0.1,
//! each behind a small accept loop that also answers metadata requests from a
//! fake control plane.

use super::{MetaPath, SdfsHandle, SdfsOptions, SdfsService};
use dml_shared::api::{Request, Response};
use dml_shared::auth::put_seal::{PutKey, PutSeal, TAG_LEN};
use dml_shared::config::SdfsConfig;
use dml_shared::conn::{Conn, FrameRead, FrameWrite};
use dml_shared::framing::{DEFAULT_MAX_FRAME, read_frame, write_frame};
use dml_shared::sdfs::{DataRequest, FileInfo, Keep, MetaRequest, MetaResponse, VersionInfo};
use dml_shared::wire::{self, Kind};
use dml_shared::{ErrorKind, RemoteError};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A directory removed on drop.
pub struct TestDir(PathBuf);

impl TestDir {
    pub fn new(tag: &str) -> Self {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "dml-sdfs-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Pseudo-random test bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn checksum(b: &[u8]) -> [u8; 32] {
    *blake3::hash(b).as_bytes()
}

/// The control plane, faked: `Stat` from `files`, `Wanted` from `wanted`.
#[derive(Default)]
struct FakeMeta {
    files: Mutex<BTreeMap<String, FileInfo>>,
    /// Versions wanted here, with their committed checksum.
    wanted: Mutex<BTreeMap<(String, u64), [u8; 32]>>,
}

impl FakeMeta {
    fn answer(&self, req: MetaRequest) -> Response {
        match req {
            MetaRequest::Stat { name } => match self.files.lock().unwrap().get(&name) {
                Some(f) => Response::Control(MetaResponse::File(f.clone()).into()),
                None => Response::Error(RemoteError::new(
                    ErrorKind::NotFound,
                    format!("no such file \"{name}\""),
                )),
            },
            MetaRequest::Wanted { items, .. } => {
                let w = self.wanted.lock().unwrap();
                let keep = |(name, v, sum)| match w.get(&(name, v)) {
                    Some(s) if *s == sum => Keep::Yes,
                    Some(_) => Keep::Refetch,
                    None => Keep::No,
                };
                Response::Control(
                    MetaResponse::Wanted(items.into_iter().map(keep).collect()).into(),
                )
            }
            MetaRequest::Assigned { node, after, limit } => {
                let files = self.files.lock().unwrap();
                let mut items: Vec<(String, VersionInfo)> = files
                    .values()
                    .flat_map(|f| f.versions.iter().map(|v| (f.name.clone(), v.clone())))
                    .filter(|(n, v)| {
                        v.replicas.contains(&node)
                            && after.as_ref().is_none_or(|a| (n, v.version) > (&a.0, a.1))
                    })
                    .collect();
                let more = items.len() > limit as usize;
                items.truncate(limit as usize);
                Response::Control(MetaResponse::Assigned { items, more }.into())
            }
            other => Response::Error(RemoteError::invalid(format!(
                "fake metadata does not serve {other:?}"
            ))),
        }
    }
}

struct Node {
    addr: SocketAddr,
    sdfs: SdfsHandle,
    service: Option<SdfsService>,
    accept: JoinHandle<()>,
    dir: TestDir,
}

impl Node {
    async fn start(meta: Arc<FakeMeta>, cfg: SdfsConfig) -> Node {
        let dir = TestDir::new("node");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut service = SdfsService::start(SdfsOptions {
            data_dir: dir.path().to_path_buf(),
            agent: addr,
            cfg,
            max_frame: DEFAULT_MAX_FRAME,
        })
        .await
        .unwrap();
        service.start_upkeep(MetaPath::Agent(addr));
        let sdfs = service.handle();
        let h = sdfs.clone();
        let accept = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve(s, h.clone(), meta.clone()));
            }
        });
        Node {
            addr,
            sdfs,
            service: Some(service),
            accept,
            dir,
        }
    }

    fn stored(&self, name: &str, version: u64) -> Option<Vec<u8>> {
        std::fs::read(self.sdfs.store().unwrap().path_of(name, version)).ok()
    }

    async fn stop(mut self) {
        self.accept.abort();
        self.service.take().unwrap().shutdown().await;
    }
}

async fn serve(s: TcpStream, sdfs: SdfsHandle, meta: Arc<FakeMeta>) {
    let Ok(mut s) = Conn::accept(s, crate::test_key()).await else {
        return;
    };
    while let Ok(Some(f)) = s.read_frame(DEFAULT_MAX_FRAME).await {
        let resp = match wire::decode::<Request>(Kind::Request, &f) {
            Ok(Request::Data(d)) => {
                if sdfs.serve_data(d, &mut s).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(Request::Control {
                req: dml_shared::control::ControlRequest::Sdfs(m),
                ..
            }) => meta.answer(m),
            _ => Response::Error(RemoteError::invalid("not served here")),
        };
        let _ = s
            .write_frame(&wire::encode(Kind::Response, &resp), DEFAULT_MAX_FRAME)
            .await;
    }
}

fn test_cfg() -> SdfsConfig {
    SdfsConfig {
        chunk_size: 64 * 1024,
        put_timeout: Duration::from_secs(8),
        // Background passes only when a test asks.
        scrub_interval: Duration::from_secs(3600),
        reconcile_interval: Duration::from_secs(3600),
        ..SdfsConfig::default()
    }
}

/// A stopped agent: nothing listens there.
async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// An authenticated connection to `addr`.
async fn connect(addr: SocketAddr) -> Conn {
    crate::test_key();
    Conn::connect(addr).await.unwrap()
}

async fn request(s: &mut Conn, req: &Request) {
    s.write_frame(&wire::encode(Kind::Request, req), DEFAULT_MAX_FRAME)
        .await
        .unwrap();
}

async fn response(s: &mut Conn) -> Response {
    let f = s.read_frame(DEFAULT_MAX_FRAME).await.unwrap().unwrap();
    wire::decode(Kind::Response, &f).unwrap()
}

/// Streams `data` to `head` as a chain write, `sum` after the bytes (as
/// the client does).
async fn put(
    head: SocketAddr,
    name: &str,
    version: u64,
    data: &[u8],
    sum: [u8; 32],
    downstream: Vec<SocketAddr>,
) -> Response {
    put_with(
        head,
        name,
        version,
        data,
        Trailer::After(&sum),
        downstream,
        1,
    )
    .await
}

/// How a test write sends its checksum.
enum Trailer<'a> {
    /// In the request (the old form).
    Announced([u8; 32]),
    /// In a sealed frame after the bytes (these bytes, whatever they are).
    After(&'a [u8]),
}

async fn put_with(
    head: SocketAddr,
    name: &str,
    version: u64,
    data: &[u8],
    sum: Trailer<'_>,
    downstream: Vec<SocketAddr>,
    plan: u64,
) -> Response {
    let mut s = connect(head).await;
    request(
        &mut s,
        &Request::Data(DataRequest::Write {
            name: name.into(),
            version,
            size: data.len() as u64,
            checksum: match sum {
                Trailer::Announced(c) => Some(c),
                Trailer::After(_) => None,
            },
            downstream,
            plan,
            seal: None,
        }),
    )
    .await;
    for c in data.chunks(64 * 1024) {
        write_frame(s.raw(), c, DEFAULT_MAX_FRAME).await.unwrap();
    }
    write_frame(s.raw(), &[], DEFAULT_MAX_FRAME).await.unwrap();
    if let Trailer::After(t) = sum {
        s.write_frame(t, DEFAULT_MAX_FRAME).await.unwrap();
    }
    response(&mut s).await
}

/// Reads a version; an error names what went wrong.
async fn get(addr: SocketAddr, name: &str, version: u64) -> Result<Vec<u8>, String> {
    let mut s = connect(addr).await;
    let req = Request::Data(DataRequest::Read {
        name: name.into(),
        version,
    });
    request(&mut s, &req).await;
    let (size, sum) = match response(&mut s).await {
        Response::ReadStart { size, checksum } => (size, checksum),
        other => return Err(format!("{other:?}")),
    };
    let mut out = Vec::new();
    loop {
        match read_frame(s.raw(), DEFAULT_MAX_FRAME).await {
            Ok(Some(f)) if f.is_empty() => break,
            Ok(Some(f)) => out.extend_from_slice(&f),
            Ok(None) => return Err("stream ended without its end frame".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
    assert_eq!(out.len() as u64, size);
    if checksum(&out) != sum {
        // As the client does: tell the agent its copy is bad.
        let bad = Request::Data(DataRequest::BadCopy {
            name: name.into(),
            version,
        });
        request(&mut s, &bad).await;
        assert_eq!(response(&mut s).await, Response::Ok);
        return Err("checksum mismatch (reported)".into());
    }
    Ok(out)
}

async fn call(addr: SocketAddr, req: DataRequest) -> Response {
    let mut s = connect(addr).await;
    request(&mut s, &Request::Data(req)).await;
    response(&mut s).await
}

async fn nodes(n: usize, meta: &Arc<FakeMeta>) -> Vec<Node> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(Node::start(meta.clone(), test_cfg()).await);
    }
    v
}

fn tmp_files(n: &Node) -> usize {
    std::fs::read_dir(n.dir.path().join("sdfs/tmp"))
        .unwrap()
        .count()
}

#[tokio::test]
async fn chain_write_stores_on_every_replica_then_reads_and_replicates() {
    let meta = Arc::new(FakeMeta::default());
    let ns = nodes(4, &meta).await;
    let data = pattern(1, 3 * 1024 * 1024 + 17);
    let sum = checksum(&data);
    let resp = put(
        ns[0].addr,
        "dir/a.bin",
        1,
        &data,
        sum,
        vec![ns[1].addr, ns[2].addr],
    )
    .await;
    assert_eq!(
        resp,
        Response::Stored {
            holders: vec![ns[0].addr, ns[1].addr, ns[2].addr],
            failed: vec![]
        }
    );
    for n in &ns[..3] {
        assert_eq!(n.stored("dir/a.bin", 1).as_deref(), Some(&data[..]));
        assert_eq!(tmp_files(n), 0);
    }
    assert_eq!(get(ns[2].addr, "dir/a.bin", 1).await.unwrap(), data);

    // Repair onto the fourth agent: the first source is down, the second works.
    let down = dead_addr().await;
    let resp = call(
        ns[3].addr,
        DataRequest::Replicate {
            name: "dir/a.bin".into(),
            version: 1,
            size: data.len() as u64,
            checksum: sum,
            sources: vec![down, ns[1].addr],
        },
    )
    .await;
    assert_eq!(
        resp,
        Response::Stored {
            holders: vec![ns[3].addr],
            failed: vec![]
        }
    );
    assert_eq!(ns[3].stored("dir/a.bin", 1).as_deref(), Some(&data[..]));

    let holdings = match call(ns[3].addr, DataRequest::Store).await {
        Response::Holdings(h) => h,
        other => panic!("{other:?}"),
    };
    assert_eq!(holdings.len(), 1);
    assert_eq!(
        (holdings[0].version, holdings[0].size),
        (1, data.len() as u64)
    );

    let s0 = ns[0].sdfs.stats().unwrap();
    assert_eq!(
        (s0.files, s0.bytes_stored, s0.writes),
        (1, data.len() as u64, 1)
    );
    let s1 = ns[1].sdfs.stats().unwrap();
    assert_eq!(s1.reads, 1);
    assert_eq!(ns[3].sdfs.stats().unwrap().repairs, 1);
    for n in ns {
        n.stop().await;
    }
}

#[tokio::test]
async fn a_down_replica_mid_chain_is_skipped_and_leaves_fewer_holders() {
    let meta = Arc::new(FakeMeta::default());
    let ns = nodes(3, &meta).await;
    let down = dead_addr().await;
    let data = pattern(2, 500_000);
    let resp = put(
        ns[0].addr,
        "f",
        4,
        &data,
        checksum(&data),
        vec![ns[1].addr, down, ns[2].addr],
    )
    .await;
    assert_eq!(
        resp,
        Response::Stored {
            holders: vec![ns[0].addr, ns[1].addr, ns[2].addr],
            failed: vec![(down, "unreachable".into())]
        }
    );
    // Down at the end of the chain: one holder fewer.
    let resp = put(
        ns[0].addr,
        "g",
        1,
        &data,
        checksum(&data),
        vec![ns[1].addr, down],
    )
    .await;
    assert_eq!(
        resp,
        Response::Stored {
            holders: vec![ns[0].addr, ns[1].addr],
            failed: vec![(down, "unreachable".into())]
        }
    );
    for n in ns {
        n.stop().await;
    }
}

#[tokio::test]
async fn a_replica_that_stalls_at_the_end_of_the_chain_only_drops_itself() {
    let meta = Arc::new(FakeMeta::default());
    let ns = nodes(2, &meta).await;
    // Completes the handshake, then neither reads nor answers (a process
    // frozen mid-stream; one frozen earlier fails the handshake and counts
    // as unreachable).
    let frozen = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let frozen_addr = frozen.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = frozen.accept().await {
            if let Ok(c) = Conn::accept(s, crate::test_key()).await {
                held.push(c);
            }
        }
    });
    let data = pattern(8, 200_000);
    let t = tokio::time::Instant::now();
    let resp = put(
        ns[0].addr,
        "stall",
        1,
        &data,
        checksum(&data),
        vec![ns[1].addr, frozen_addr],
    )
    .await;
    assert_eq!(
        resp,
        Response::Stored {
            holders: vec![ns[0].addr, ns[1].addr],
            failed: vec![(frozen_addr, "timed out".into())]
        }
    );
    // The tail's hop gives up after one stall timeout (put_timeout / 4), well
    // before the head's own, longer wait.
    assert!(
        t.elapsed() < test_cfg().put_timeout / 2,
        "{:?}",
        t.elapsed()
    );
    hold.abort();
    for n in ns {
        n.stop().await;
    }
}

#[tokio::test]
async fn a_checksum_announced_before_the_bytes_is_checked_too() {
    let meta = Arc::new(FakeMeta::default());
    let ns = nodes(3, &meta).await;
    let data = pattern(5, 100_000);
    let down = vec![ns[1].addr, ns[2].addr];
    let sum = Trailer::Announced(checksum(&data));
    let resp = put_with(ns[0].addr, "a", 1, &data, sum, down.clone(), 1).await;
    assert!(
        matches!(resp, Response::Stored { ref holders, .. } if holders.len() == 3),
        "{resp:?}"
    );
    for n in &ns {
        assert_eq!(n.stored("a", 1).as_deref(), Some(&data[..]));
    }
    let mut bad = checksum(&data);
    bad[31] ^= 1;
    let resp = put_with(ns[0].addr, "a", 2, &data, Trailer::Announced(bad), down, 1).await;
    assert!(
        matches!(resp, Response::Error(ref e) if e.kind == ErrorKind::Invalid && e.message.contains("checksum mismatch")),
        "{resp:?}"
    );
}

#[tokio::test]
async fn a_version_given_out_again_by_a_later_leader_replaces_the_earlier_plans_copies() {
    let meta = Arc::new(FakeMeta::default());
    let ns = nodes(3, &meta).await;
    let down = vec![ns[1].addr, ns[2].addr];
    let (stale, new, late) = (pattern(7, 90_000), pattern(8, 80_000), pattern(9, 70_000));
    let put = async |data: &[u8], plan| {
        let sum = Trailer::Announced(checksum(data));
        put_with(ns[0].addr, "p", 4, data, sum, down.clone(), plan).await
    };

    let stored_on_all =
        |r: &Response| matches!(r, Response::Stored { holders, .. } if holders.len() == 3);
    // Plan 2's put stored v4 but never committed; the leader of term 3 gave
    // v4 out again.
    let r = put(&stale, 2).await;
    assert!(stored_on_all(&r), "{r:?}");
    let r = put(&new, 3).await;
    assert!(stored_on_all(&r), "{r:?}");
    // A straggler of plan 2 is refused along the whole chain.
    match put(&late, 2).await {
        Response::Stored { holders, failed } => {
            assert!(holders.is_empty(), "{holders:?}");
            assert_eq!(failed.len(), 3, "{failed:?}");
            assert!(
                failed.iter().all(|(_, e)| e.contains("other bytes")),
                "{failed:?}"
            );
        }
        Response::Error(e) => {
            assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
            assert!(e.message.contains("other bytes"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    for n in &ns {
        assert_eq!(n.stored("p", 4).as_deref(), Some(&new[..]));
    }
}

#[tokio::test]
async fn a_checksum_after_the_bytes_of_the_wrong_length_is_refused_by_name() {
    let meta = Arc::new(FakeMeta::default());
    let ns = nodes(2, &meta).await;
    let data = pattern(6, 70_000);
    let short = &checksum(&data)[..16];
    let resp = put_with(
        ns[0].addr,
        "w",
        1,
        &data,
        Trailer::After(short),
        vec![ns[1].addr],
        1,
    )
    .await;
    match resp {
        Response::Error(e) => assert!(
            e.message.contains("checksum after the bytes is 16 bytes"),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
    eventually("nothing is left on either replica", || {
        ns.iter()
            .all(|n| n.stored("w", 1).is_none() && tmp_files(n) == 0)
    })
    .await;
}

#[tokio::test]
async fn a_checksum_mismatch_fails_and_leaves_nothing_on_any_replica() {
    let meta = Arc::new(FakeMeta::default());
    let ns = nodes(3, &meta).await;
    let data = pattern(3, 200_000);
    let mut bad = checksum(&data);
    bad[0] ^= 1;
    let resp = put(ns[0].addr, "x", 1, &data, bad, vec![ns[1].addr, ns[2].addr]).await;
    match resp {
        Response::Error(e) => {
            assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
            assert!(e.message.contains("checksum mismatch"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // The downstream replicas finish on their own.
    eventually("the downstream replicas clean up", || {
        ns.iter().all(|n| {
            n.stored("x", 1).is_none() && tmp_files(n) == 0 && n.sdfs.holdings().is_empty()
        })
    })
    .await;
    for n in &ns {
        assert!(n.stored("x", 1).is_none());
        assert_eq!(tmp_files(n), 0);
        assert!(n.sdfs.holdings().is_empty());
    }
    for n in ns {
        n.stop().await;
    }
}

#[tokio::test]
async fn a_full_disk_is_reported_with_the_agent_and_leaves_no_temp_file() {
    let meta = Arc::new(FakeMeta::default());
    let ns = nodes(3, &meta).await;
    let data = pattern(4, 300_000);
    let sum = checksum(&data);

    // Full in the middle of the chain: it relays the bytes on, so the head
    // and the tail store them, and says it is full.
    ns[1].sdfs.store().unwrap().set_write_limit(Some(100_000));
    let resp = put(ns[0].addr, "m", 1, &data, sum, vec![ns[1].addr, ns[2].addr]).await;
    let Response::Stored { holders, failed } = resp else {
        panic!("{resp:?}")
    };
    assert_eq!(holders, vec![ns[0].addr, ns[2].addr]);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, ns[1].addr);
    assert!(failed[0].1.contains("disk full"), "{failed:?}");
    assert!(failed[0].1.contains(&ns[1].addr.to_string()), "{failed:?}");
    assert_eq!(ns[2].stored("m", 1).as_deref(), Some(&data[..]));

    // Full at the head: the rest of the chain stores it, and the client is
    // told which agent is full.
    ns[0].sdfs.store().unwrap().set_write_limit(Some(100_000));
    let resp = put(ns[0].addr, "h", 1, &data, sum, vec![ns[2].addr]).await;
    let Response::Stored { holders, failed } = resp else {
        panic!("{resp:?}")
    };
    assert_eq!(holders, vec![ns[2].addr]);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, ns[0].addr);
    assert!(failed[0].1.contains("disk full"), "{failed:?}");
    assert!(failed[0].1.contains(&ns[0].addr.to_string()), "{failed:?}");

    // A full tail with no one after it answers an error.
    ns[2].sdfs.store().unwrap().set_write_limit(Some(100_000));
    let resp = put(ns[2].addr, "t", 1, &data, sum, vec![]).await;
    match resp {
        Response::Error(e) => {
            assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
            assert!(e.message.contains("disk full"), "{e}");
            assert!(e.message.contains(&ns[2].addr.to_string()), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // Full replicas clean up as their streams end.
    eventually("the full replicas clean up", || {
        ns.iter().all(|n| tmp_files(n) == 0)
            && ns[0].stored("h", 1).is_none()
            && ns[1].stored("m", 1).is_none()
            && ns[2].stored("t", 1).is_none()
    })
    .await;
    for n in &ns {
        assert_eq!(tmp_files(n), 0);
    }
    assert_eq!(ns[2].stored("h", 1).as_deref(), Some(&data[..]));
    assert_eq!(ns[0].sdfs.stats().unwrap().disk_full, 1);
    assert_eq!(ns[1].sdfs.stats().unwrap().disk_full, 1);
    for n in ns {
        n.stop().await;
    }
}

#[tokio::test]
async fn a_full_disk_at_the_tail_reaches_the_head_with_the_agent_named() {
    let meta = Arc::new(FakeMeta::default());
    let ns = nodes(3, &meta).await;
    let data = pattern(9, 300_000);
    let sum = checksum(&data);
    ns[2].sdfs.store().unwrap().set_write_limit(Some(100_000));
    let resp = put(ns[0].addr, "t", 1, &data, sum, vec![ns[1].addr, ns[2].addr]).await;
    let Response::Stored { holders, failed } = resp else {
        panic!("{resp:?}")
    };
    // The failure travelled two hops up: the tail told the middle, the middle the head.
    assert_eq!(holders, vec![ns[0].addr, ns[1].addr]);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, ns[2].addr);
    assert!(failed[0].1.contains("disk full"), "{failed:?}");
    assert!(failed[0].1.contains(&ns[2].addr.to_string()), "{failed:?}");
    eventually("the full tail cleans up", || {
        ns[2].stored("t", 1).is_none() && tmp_files(&ns[2]) == 0
    })
    .await;
    assert!(ns[2].stored("t", 1).is_none());
    assert_eq!(tmp_files(&ns[2]), 0);
    assert_eq!(ns[2].sdfs.stats().unwrap().disk_full, 1);
    for n in &ns[..2] {
        assert_eq!(n.stored("t", 1).as_deref(), Some(&data[..]));
    }
    for n in ns {
        n.stop().await;
    }
}

#[tokio::test]
async fn a_missing_version_or_a_bad_name_gets_a_clear_error() {
    let meta = Arc::new(FakeMeta::default());
    let ns = nodes(1, &meta).await;
    let e = get(ns[0].addr, "nothing", 1).await.unwrap_err();
    assert!(e.contains("not stored here"), "{e}");
    // A bad name is refused after the stream is drained; the connection stays usable.
    let data = pattern(7, 100_000);
    match put(ns[0].addr, "../x", 1, &data, checksum(&data), vec![]).await {
        Response::Error(e) => {
            assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
            assert!(e.message.contains("bad SDFS name"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(tmp_files(&ns[0]), 0);
    for n in ns {
        n.stop().await;
    }
}

fn corrupt(path: &Path) {
    let mut b = std::fs::read(path).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0xFF;
    std::fs::write(path, b).unwrap();
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn scrub_and_reads_find_corrupt_copies_and_refetch_them() {
    let meta = Arc::new(FakeMeta::default());
    let ns = nodes(3, &meta).await;
    let data = pattern(5, 700_000);
    let sum = checksum(&data);
    let holders: Vec<_> = ns.iter().map(|n| n.addr).collect();
    let resp = put(ns[0].addr, "s", 2, &data, sum, holders[1..].to_vec()).await;
    assert_eq!(
        resp,
        Response::Stored {
            holders: holders.clone(),
            failed: vec![]
        }
    );
    meta.files.lock().unwrap().insert(
        "s".into(),
        FileInfo {
            name: "s".into(),
            versions: vec![VersionInfo {
                version: 2,
                size: data.len() as u64,
                checksum: sum,
                replicas: holders.clone(),
                committed_ms: 0,
            }],
        },
    );

    corrupt(&ns[1].sdfs.store().unwrap().path_of("s", 2));
    let report = ns[1].sdfs.scrub_now().await.unwrap();
    assert_eq!((report.checked, report.corrupt, report.repaired), (1, 1, 1));
    assert_eq!(ns[1].stored("s", 2).as_deref(), Some(&data[..]));
    assert_eq!(ns[1].sdfs.stats().unwrap().scrub_corruptions, 1);
    let report = ns[0].sdfs.scrub_now().await.unwrap();
    assert_eq!((report.checked, report.corrupt), (1, 0));

    // A corrupt copy is caught by the reader's checksum; its report makes the
    // agent re-check the copy and fetch it again.
    corrupt(&ns[2].sdfs.store().unwrap().path_of("s", 2));
    let e = get(ns[2].addr, "s", 2).await.unwrap_err();
    assert!(e.contains("checksum mismatch"), "{e}");
    eventually("the corrupt copy to be re-fetched", || {
        ns[2].stored("s", 2).as_deref() == Some(&data[..])
    })
    .await;
    assert_eq!(get(ns[2].addr, "s", 2).await.unwrap(), data);

    // A copy shorter than its size ends without the end frame, and is
    // repaired too.
    let path = ns[1].sdfs.store().unwrap().path_of("s", 2);
    std::fs::write(&path, &data[..1000]).unwrap();
    let e = get(ns[1].addr, "s", 2).await.unwrap_err();
    assert!(e.contains("end frame") || e.contains("end of file"), "{e}");
    eventually("the truncated copy to be re-fetched", || {
        ns[1].stored("s", 2).as_deref() == Some(&data[..])
    })
    .await;

    // A false report leaves an intact copy alone.
    let r = call(
        ns[0].addr,
        DataRequest::BadCopy {
            name: "s".into(),
            version: 2,
        },
    )
    .await;
    assert_eq!(r, Response::Ok);
    eventually("the reported copy to be re-checked", || {
        ns[0].sdfs.stats().unwrap().scrubbed >= 2
    })
    .await;
    assert_eq!(ns[0].sdfs.stats().unwrap().scrub_corruptions, 0);
    assert_eq!(get(ns[0].addr, "s", 2).await.unwrap(), data);
    for n in ns {
        n.stop().await;
    }
}

#[tokio::test]
async fn reconcile_deletes_unwanted_copies_only_when_the_metadata_answers() {
    let meta = Arc::new(FakeMeta::default());
    let cfg = SdfsConfig {
        put_timeout: Duration::from_secs(1),
        ..test_cfg()
    };
    let n = Node::start(meta.clone(), cfg.clone()).await;
    let data = pattern(6, 10_000);
    let sum = checksum(&data);
    for v in 1..=3 {
        let r = put(n.addr, "r", v, &data, sum, vec![]).await;
        assert!(matches!(r, Response::Stored { .. }), "{r:?}");
    }
    // Copies younger than put_timeout are kept whatever the answer.
    let report = n.sdfs.reconcile_now().await.unwrap().unwrap();
    assert_eq!(report.deleted, 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // v2 is wanted with these bytes; v4 here holds other bytes than the
    // committed v4, which another node holds: it is fetched again from there.
    let other = pattern(7, 10_000);
    let m = Node::start(meta.clone(), cfg.clone()).await;
    let r = put(m.addr, "r", 4, &other, checksum(&other), vec![]).await;
    assert!(matches!(r, Response::Stored { .. }), "{r:?}");
    let r = put(n.addr, "r", 4, &data, sum, vec![]).await;
    assert!(matches!(r, Response::Stored { .. }), "{r:?}");
    meta.files.lock().unwrap().insert(
        "r".into(),
        FileInfo {
            name: "r".into(),
            versions: vec![VersionInfo {
                version: 4,
                size: other.len() as u64,
                checksum: checksum(&other),
                replicas: vec![n.addr, m.addr],
                committed_ms: 0,
            }],
        },
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    meta.wanted
        .lock()
        .unwrap()
        .extend([(("r".into(), 2), sum), (("r".into(), 4), checksum(&other))]);
    let report = n.sdfs.reconcile_now().await.unwrap().unwrap();
    assert_eq!(
        (report.checked, report.deleted, report.refetched),
        (4, 2, 1)
    );
    assert!(n.stored("r", 1).is_none() && n.stored("r", 3).is_none());
    assert_eq!(n.stored("r", 2).as_deref(), Some(&data[..]));
    assert_eq!(n.stored("r", 4).as_deref(), Some(&other[..]));
    let st = n.sdfs.stats().unwrap();
    assert_eq!(
        (
            st.reconcile_deleted,
            st.reconcile_refetched,
            st.scrub_corruptions
        ),
        (2, 1, 0)
    );
    n.stop().await;
    m.stop().await;

    // Control plane unreachable: nothing is deleted.
    let dir = TestDir::new("unreachable");
    let store = super::Store::open(dir.path(), dead_addr().await).unwrap();
    let mut t = store.begin("kept", 1, 3, checksum(b"abc")).unwrap();
    t.write(b"abc").unwrap();
    t.finish().unwrap();
    drop(store);
    let mut service = SdfsService::start(SdfsOptions {
        data_dir: dir.path().to_path_buf(),
        agent: dead_addr().await,
        cfg: SdfsConfig {
            put_timeout: Duration::from_millis(1),
            ..cfg
        },
        max_frame: DEFAULT_MAX_FRAME,
    })
    .await
    .unwrap();
    service.start_upkeep(MetaPath::Agent(dead_addr().await));
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(service.handle().reconcile_now().await.unwrap().is_err());
    assert_eq!(service.handle().holdings().len(), 1);
    service.shutdown().await;
}

/// Streams a batched write of `files` (name, version, bytes, announced
/// checksum) to `head`, the files' bytes back to back in 64 KiB frames.
async fn put_batch(
    head: SocketAddr,
    files: &[(&str, u64, Vec<u8>, [u8; 32])],
    downstream: Vec<SocketAddr>,
    bytes: bool,
) -> Response {
    let mut s = connect(head).await;
    let req = DataRequest::WriteBatch {
        files: files
            .iter()
            .map(|(name, version, bytes, sum)| dml_shared::sdfs::BatchFile {
                name: name.to_string(),
                version: *version,
                size: bytes.len() as u64,
                checksum: *sum,
            })
            .collect(),
        downstream,
        plan: 1,
    };
    request(&mut s, &Request::Data(req)).await;
    // A request the agent refuses is answered before any byte is read
    // (then the agent closes): send the bytes only to a valid one.
    if bytes {
        let all: Vec<u8> = files.iter().flat_map(|f| f.2.clone()).collect();
        for c in all.chunks(64 * 1024) {
            write_frame(s.raw(), c, DEFAULT_MAX_FRAME).await.unwrap();
        }
        write_frame(s.raw(), &[], DEFAULT_MAX_FRAME).await.unwrap();
    }
    response(&mut s).await
}

#[tokio::test]
async fn a_batch_stores_each_file_on_its_own_down_the_chain_and_skips_a_down_replica() {
    let meta = Arc::new(FakeMeta::default());
    let ns = nodes(3, &meta).await;
    let down = dead_addr().await;
    let (a, b, c) = (
        pattern(31, 70_000),
        pattern(32, 4_000),
        pattern(33, 100_001),
    );
    let mut wrong = checksum(&b);
    wrong[0] ^= 1;
    let files = [
        ("batch/a", 1, a.clone(), checksum(&a)),
        ("batch/empty", 1, Vec::new(), checksum(b"")),
        ("batch/b", 3, b.clone(), wrong),
        ("batch/c", 2, c.clone(), checksum(&c)),
    ];
    let chain = vec![ns[1].addr, down, ns[2].addr];
    let stored = match put_batch(ns[0].addr, &files, chain, true).await {
        Response::StoredBatch(s) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(stored.len(), 4);
    let all = vec![ns[0].addr, ns[1].addr, ns[2].addr];
    for i in [0, 1, 3] {
        assert_eq!(stored[i].holders, all, "file {i}");
        assert_eq!(stored[i].failed, vec![(down, "unreachable".to_string())]);
        let (name, version, bytes, _) = &files[i];
        for n in &ns {
            assert_eq!(n.stored(name, *version).as_deref(), Some(&bytes[..]));
        }
    }
    // The file whose bytes do not match its checksum is refused on every
    // replica, by each on its own, and the others are not held back by it.
    assert!(stored[2].holders.is_empty(), "{:?}", stored[2]);
    for n in &ns {
        let why = stored[2]
            .failed
            .iter()
            .find(|(a, _)| *a == n.addr)
            .map(|(_, w)| w.clone())
            .unwrap_or_default();
        assert!(why.contains("checksum"), "{}: {why:?}", n.addr);
        assert_eq!(n.stored("batch/b", 3), None);
        assert_eq!(tmp_files(n), 0);
        assert_eq!(n.sdfs.stats().unwrap().files, 3);
    }
    assert_eq!(get(ns[2].addr, "batch/c", 2).await.unwrap(), c);
    for n in ns {
        n.stop().await;
    }
}

#[tokio::test]
async fn a_batch_with_a_bad_name_or_too_many_bytes_is_refused_naming_it() {
    let meta = Arc::new(FakeMeta::default());
    let ns = nodes(1, &meta).await;
    let ok = pattern(34, 10);
    let files = [
        ("good", 1, ok.clone(), checksum(&ok)),
        ("../escape", 1, ok.clone(), checksum(&ok)),
    ];
    match put_batch(ns[0].addr, &files, vec![], false).await {
        Response::Error(e) => {
            assert_eq!(e.kind, ErrorKind::Invalid);
            assert!(
                e.message.contains("file 2 of the batch") && e.message.contains("../escape"),
                "{e:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    let big = vec![0u8; (dml_shared::sdfs::MAX_BATCH_BYTES + 1) as usize];
    let files = [("big", 1, big.clone(), checksum(&big))];
    match put_batch(ns[0].addr, &files, vec![], false).await {
        Response::Error(e) => assert!(e.message.contains("at most"), "{e:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(ns[0].stored("good", 1), None);
    assert_eq!(tmp_files(&ns[0]), 0);
    for n in ns {
        n.stop().await;
    }
}

/// `data` cut into 64 KiB frames sealed for the put (`plan`, `version`)
/// under `key`, then the end frame.
fn sealed_frames(key: &PutKey, plan: u64, version: u64, data: &[u8]) -> Vec<Vec<u8>> {
    let s = PutSeal::new(key, plan, version);
    let mut frames: Vec<Vec<u8>> = data.chunks(64 * 1024).map(<[u8]>::to_vec).collect();
    for (i, f) in frames.iter_mut().enumerate() {
        s.seal(i as u64, false, f);
    }
    frames.push(s.end_frame(frames.len() as u64));
    frames
}

/// A chain write of sealed `frames` (as an encrypted client sends them:
/// outside the connection's Noise messages), its checksum after them.
async fn sealed_put(
    head: SocketAddr,
    name: &str,
    version: u64,
    key: &PutKey,
    frames: &[Vec<u8>],
    sum: [u8; 32],
    downstream: Vec<SocketAddr>,
) -> Response {
    let mut s = connect(head).await;
    assert!(s.is_encrypted(), "the test connections are encrypted");
    let size: usize = frames.iter().map(|f| f.len().saturating_sub(TAG_LEN)).sum();
    request(
        &mut s,
        &Request::Data(DataRequest::Write {
            name: name.into(),
            version,
            size: size as u64,
            checksum: None,
            downstream,
            plan: 1,
            seal: Some(key.clone()),
        }),
    )
    .await;
    for f in frames {
        write_frame(&mut s.raw().bypass(), f, DEFAULT_MAX_FRAME)
            .await
            .unwrap();
    }
    s.write_frame(&sum, DEFAULT_MAX_FRAME).await.unwrap();
    response(&mut s).await
}

#[tokio::test]
async fn a_sealed_put_is_forwarded_sealed_and_every_replica_stores_the_plain_bytes() {
    let meta = Arc::new(FakeMeta::default());
    let ns = nodes(3, &meta).await;
    let data = pattern(11, 3 * 1024 * 1024 + 17);
    let key = PutKey::generate().unwrap();
    let frames = sealed_frames(&key, 1, 1, &data);
    let down = vec![ns[1].addr, ns[2].addr];
    let resp = sealed_put(ns[0].addr, "s.bin", 1, &key, &frames, checksum(&data), down).await;
    assert_eq!(
        resp,
        Response::Stored {
            holders: vec![ns[0].addr, ns[1].addr, ns[2].addr],
            failed: vec![]
        }
    );
    for n in &ns {
        assert!(n.stored("s.bin", 1).as_deref() == Some(&data[..]));
        assert_eq!(tmp_files(n), 0);
    }
    assert!(get(ns[2].addr, "s.bin", 1).await.unwrap() == data);
    // An empty file is its end frame alone.
    let frames = sealed_frames(&key, 1, 1, &[]);
    assert_eq!(frames.len(), 1);
    let down = vec![ns[1].addr];
    let resp = sealed_put(ns[0].addr, "empty", 1, &key, &frames, checksum(&[]), down).await;
    assert!(
        matches!(resp, Response::Stored { ref holders, .. } if holders.len() == 2),
        "{resp:?}"
    );
    assert_eq!(ns[1].stored("empty", 1).as_deref(), Some(&[][..]));
    for n in ns {
        n.stop().await;
    }
}

#[tokio::test]
async fn a_tampered_reordered_or_truncated_sealed_put_is_refused_and_nothing_is_stored() {
    let meta = Arc::new(FakeMeta::default());
    let ns = nodes(3, &meta).await;
    let data = pattern(12, 600_000);
    let sum = checksum(&data);
    let key = PutKey::generate().unwrap();
    let frames = sealed_frames(&key, 1, 1, &data);
    assert_eq!(frames.len(), 11, "ten data frames and the end frame");
    let other_put = sealed_frames(&key, 1, 2, &data);
    let unverified = |i: u64| {
        format!(
            "data frame {i} does not verify under the put's key (tampered, reordered, replayed from another put or cut short)"
        )
    };
    let cases: Vec<(&str, Vec<Vec<u8>>, String)> = vec![
        (
            "tampered",
            {
                let mut f = frames.clone();
                f[4][100] ^= 1;
                f
            },
            unverified(4),
        ),
        (
            "reordered",
            {
                let mut f = frames.clone();
                f.swap(2, 3);
                f
            },
            unverified(2),
        ),
        (
            "a frame dropped",
            {
                let mut f = frames.clone();
                f.remove(9);
                f
            },
            unverified(9),
        ),
        (
            "cut short: a plain end",
            {
                let mut f = frames[..10].to_vec();
                f.push(Vec::new());
                f
            },
            "data frame 10 is 0 bytes, shorter than its 16-byte tag".into(),
        ),
        (
            "a frame of another put",
            {
                let mut f = frames.clone();
                f[5] = other_put[5].clone();
                f
            },
            unverified(5),
        ),
    ];
    for (what, bad, why) in cases {
        let down = vec![ns[1].addr, ns[2].addr];
        let resp = sealed_put(ns[0].addr, "t.bin", 1, &key, &bad, sum, down).await;
        match resp {
            Response::Error(e) => {
                assert_eq!(e.kind, ErrorKind::Invalid, "{what}: {e}");
                let want = format!(
                    "agent {} refused \"t.bin\" v1: {why}; nothing of it was stored",
                    ns[0].addr
                );
                assert_eq!(e.message, want, "{what}");
            }
            other => panic!("{what}: {other:?}"),
        }
        eventually(what, || {
            ns.iter().all(|n| {
                n.stored("t.bin", 1).is_none() && tmp_files(n) == 0 && n.sdfs.holdings().is_empty()
            })
        })
        .await;
    }
    // The same put, whole, then goes through.
    let down = vec![ns[1].addr, ns[2].addr];
    let resp = sealed_put(ns[0].addr, "t.bin", 1, &key, &frames, sum, down).await;
    assert!(
        matches!(resp, Response::Stored { ref holders, .. } if holders.len() == 3),
        "{resp:?}"
    );
    for n in &ns {
        assert!(n.stored("t.bin", 1).as_deref() == Some(&data[..]));
    }
    for n in ns {
        n.stop().await;
    }
}
