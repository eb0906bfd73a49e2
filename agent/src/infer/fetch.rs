//! Reading one committed SDFS version into memory for a query: this agent's
//! own copy first, then the other replicas nearest first; every copy is
//! checked against the committed checksum.

use crate::sdfs::SdfsHandle;
use crate::sdfs::error::SdfsError;
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

/// Why no copy of a version could be read for a query.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("\"{name}\" is {size} bytes; an image may have at most {MAX_IMAGE_BYTES}")]
    TooLarge { name: String, size: u64 },
    #[error("cannot read \"{name}\" v{version}: {}", tried.join("; "))]
    NoCopy {
        name: String,
        version: u64,
        /// Each copy tried, as `where: why`.
        tried: Vec<String>,
    },
}

/// Why one copy could not be used.
#[derive(Debug, thiserror::Error)]
enum CopyError {
    #[error("{0}")]
    Store(#[from] SdfsError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Remote(#[from] dml_shared::Error),
    #[error("{got} bytes instead of {want}")]
    Size { got: u64, want: u64 },
    #[error("checksum mismatch")]
    Checksum,
    #[error("it holds {size} bytes, not {want}")]
    Holds { size: u64, want: u64 },
    #[error("unexpected answer {0}")]
    Unexpected(String),
    #[error("connection closed in the middle of the file")]
    Closed,
    #[error("sent more than the announced size")]
    TooMuch,
}

/// The bytes of `name` at version `v`, or why no replica could give them.
pub async fn read_version(
    sdfs: &SdfsHandle,
    me: SocketAddr,
    name: &str,
    v: &VersionInfo,
    io_timeout: Duration,
) -> Result<Vec<u8>, FetchError> {
    if v.size > MAX_IMAGE_BYTES {
        return Err(FetchError::TooLarge {
            name: name.to_string(),
            size: v.size,
        });
    }
    let mut tried = Vec::new();
    if let Some(store) = sdfs.store()
        && store.get(name, v.version).is_some()
    {
        let store = store.clone();
        let (n, version) = (name.to_string(), v.version);
        let local = tokio::task::spawn_blocking(move || {
            let (_, mut f) = store.open_read(&n, version)?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            Ok::<_, CopyError>(buf)
        })
        .await
        .map_err(CopyError::from)
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
    Err(FetchError::NoCopy {
        name: name.to_string(),
        version: v.version,
        tried,
    })
}

fn checked(bytes: Vec<u8>, v: &VersionInfo) -> Result<Vec<u8>, CopyError> {
    if bytes.len() as u64 != v.size {
        return Err(CopyError::Size {
            got: bytes.len() as u64,
            want: v.size,
        });
    }
    if *blake3::hash(&bytes).as_bytes() != v.checksum {
        return Err(CopyError::Checksum);
    }
    Ok(bytes)
}

async fn read_remote(addr: SocketAddr, name: &str, v: &VersionInfo) -> Result<Vec<u8>, CopyError> {
    let mut stream = Conn::connect(addr).await?;
    let req = Request::Data(DataRequest::Read {
        name: name.into(),
        version: v.version,
    });
    send_request(&mut stream, &req).await?;
    match read_response(&mut stream).await? {
        Response::ReadStart { size, .. } if size == v.size => {}
        Response::ReadStart { size, .. } => {
            return Err(CopyError::Holds { size, want: v.size });
        }
        other => return Err(CopyError::Unexpected(format!("{other:?}"))),
    }
    let mut buf = Vec::with_capacity(v.size as usize);
    loop {
        let frame = read_frame(stream.raw(), DEFAULT_MAX_FRAME)
            .await?
            .ok_or(CopyError::Closed)?;
        if frame.is_empty() {
            return Ok(buf);
        }
        if (buf.len() + frame.len()) as u64 > v.size {
            return Err(CopyError::TooMuch);
        }
        buf.extend_from_slice(&frame);
    }
}
