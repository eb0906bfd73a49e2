//! Reading one committed SDFS version into memory for a query: this agent's
//! own copy first, then the other replicas nearest first; every copy is
//! checked against the committed checksum.

use crate::sdfs::SdfsHandle;
use dml_shared::api::{Request, Response};
use dml_shared::client::{read_response, send_request};
use dml_shared::conn::Conn;
use dml_shared::framing::{DEFAULT_MAX_FRAME, read_frame};
use dml_shared::sdfs::{DataRequest, VersionInfo};
use dml_shared::sdfs_client::nearest_first;
use std::io::Read;
use std::net::SocketAddr;
use std::time::Duration;

/// Largest image a query reads.
pub const MAX_IMAGE_BYTES: u64 = 64 << 20;

/// The bytes of `name` at version `v`, or why no replica could give them.
pub async fn read_version(
    sdfs: &SdfsHandle,
    me: SocketAddr,
    name: &str,
    v: &VersionInfo,
    io_timeout: Duration,
) -> Result<Vec<u8>, String> {
    if v.size > MAX_IMAGE_BYTES {
        return Err(format!(
            "\"{name}\" is {} bytes; an image may have at most {MAX_IMAGE_BYTES}",
            v.size
        ));
    }
    let mut tried = Vec::new();
    if let Some(store) = sdfs.store()
        && store.get(name, v.version).is_some()
    {
        let store = store.clone();
        let (n, version) = (name.to_string(), v.version);
        let local = tokio::task::spawn_blocking(move || {
            let (_, mut f) = store.open_read(&n, version).map_err(|e| e.to_string())?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).map_err(|e| e.to_string())?;
            Ok::<_, String>(buf)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        match local.and_then(|b| checked(b, v)) {
            Ok(b) => return Ok(b),
            Err(e) => tried.push(format!("{me} (own copy): {e}")),
        }
    }
    for addr in nearest_first(&v.replicas, me) {
        if addr == me {
            continue;
        }
        match tokio::time::timeout(io_timeout, read_remote(addr, name, v)).await {
            Ok(Ok(b)) => match checked(b, v) {
                Ok(b) => return Ok(b),
                Err(e) => tried.push(format!("{addr}: {e}")),
            },
            Ok(Err(e)) => tried.push(format!("{addr}: {e}")),
            Err(_) => tried.push(format!("{addr}: timed out")),
        }
    }
    if tried.is_empty() {
        tried.push("no replica is recorded".into());
    }
    Err(format!(
        "cannot read \"{name}\" v{}: {}",
        v.version,
        tried.join("; ")
    ))
}

fn checked(bytes: Vec<u8>, v: &VersionInfo) -> Result<Vec<u8>, String> {
    if bytes.len() as u64 != v.size {
        return Err(format!("{} bytes instead of {}", bytes.len(), v.size));
    }
    if *blake3::hash(&bytes).as_bytes() != v.checksum {
        return Err("checksum mismatch".into());
    }
    Ok(bytes)
}

async fn read_remote(addr: SocketAddr, name: &str, v: &VersionInfo) -> Result<Vec<u8>, String> {
    let mut stream = Conn::connect(addr).await.map_err(|e| e.to_string())?;
    let req = Request::Data(DataRequest::Read {
        name: name.into(),
        version: v.version,
    });
    send_request(&mut stream, &req)
        .await
        .map_err(|e| e.to_string())?;
    match read_response(&mut stream)
        .await
        .map_err(|e| e.to_string())?
    {
        Response::ReadStart { size, .. } if size == v.size => {}
        Response::ReadStart { size, .. } => {
            return Err(format!("it holds {size} bytes, not {}", v.size));
        }
        other => return Err(format!("unexpected answer {other:?}")),
    }
    let mut buf = Vec::with_capacity(v.size as usize);
    loop {
        let frame = read_frame(stream.raw(), DEFAULT_MAX_FRAME)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("connection closed in the middle of the file")?;
        if frame.is_empty() {
            return Ok(buf);
        }
        if (buf.len() + frame.len()) as u64 > v.size {
            return Err("sent more than the announced size".into());
        }
        buf.extend_from_slice(&frame);
    }
}
