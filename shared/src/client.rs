//! Async client for the agent API: one TCP connection, one request at a time.

use crate::api::{IdInfo, MemberInfo, Request, Response, Stats};
use crate::error::{Error, Result};
use crate::framing::{DEFAULT_MAX_FRAME, read_frame, write_frame};
use crate::wire::{self, Kind};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// Default time allowed for connecting and for each answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Client {
    addr: SocketAddr,
    timeout: Duration,
    stream: Option<TcpStream>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            timeout: DEFAULT_TIMEOUT,
            stream: None,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one request and waits for its answer. A broken connection is
    /// dropped so the next call reconnects.
    pub async fn call(&mut self, req: &Request) -> Result<Response> {
        let timeout = self.timeout;
        let addr = self.addr.to_string();
        match tokio::time::timeout(timeout, self.call_inner(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                self.stream = None;
                Err(e)
            }
            Err(_) => {
                self.stream = None;
                Err(Error::Timeout { addr, timeout })
            }
        }
    }

    async fn call_inner(&mut self, req: &Request) -> Result<Response> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr)
                .await
                .map_err(|reason| Error::Connect {
                    addr: self.addr.to_string(),
                    reason,
                })?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
        }
        let stream = self.stream.as_mut().expect("connected above");
        write_frame(stream, &wire::encode(Kind::Request, req), DEFAULT_MAX_FRAME).await?;
        let frame = read_frame(stream, DEFAULT_MAX_FRAME)
            .await?
            .ok_or_else(|| Error::Io(std::io::ErrorKind::UnexpectedEof.into()))?;
        match wire::decode(Kind::Response, &frame)? {
            Response::Error(msg) => Err(Error::Remote(msg)),
            resp => Ok(resp),
        }
    }

    pub async fn id(&mut self) -> Result<IdInfo> {
        match self.call(&Request::Id).await? {
            Response::Id(i) => Ok(i),
            other => Err(unexpected(other)),
        }
    }

    pub async fn members(&mut self) -> Result<Vec<MemberInfo>> {
        match self.call(&Request::Members).await? {
            Response::Members(m) => Ok(m),
            other => Err(unexpected(other)),
        }
    }

    pub async fn stats(&mut self) -> Result<Stats> {
        match self.call(&Request::Stats).await? {
            Response::Stats(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    pub async fn join(&mut self) -> Result<()> {
        self.expect_ok(Request::Join).await
    }

    pub async fn leave(&mut self) -> Result<()> {
        self.expect_ok(Request::Leave).await
    }

    async fn expect_ok(&mut self, req: Request) -> Result<()> {
        match self.call(&req).await? {
            Response::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(resp: Response) -> Error {
    Error::Remote(format!("unexpected answer {resp:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_and_response_round_trips() {
        let reqs = [
            Request::Id,
            Request::Members,
            Request::Stats,
            Request::Join,
            Request::Leave,
        ];
        for r in reqs {
            let b = wire::encode(Kind::Request, &r);
            assert_eq!(wire::decode::<Request>(Kind::Request, &b).unwrap(), r);
        }
        let id = crate::NodeId::new("127.0.0.1:1".parse().unwrap(), 5);
        let resps = [
            Response::Id(IdInfo {
                id,
                incarnation: 2,
                joined: true,
            }),
            Response::Members(vec![MemberInfo {
                id,
                state: crate::api::MemberState::Suspect,
                incarnation: 1,
                last_heard_ms: Some(3),
                monitors: vec![id],
            }]),
            Response::Stats(Stats {
                bytes_sent_per_s: 1.5,
                ..Stats::default()
            }),
            Response::Ok,
            Response::Error("x".into()),
        ];
        for r in resps {
            let b = wire::encode(Kind::Response, &r);
            assert_eq!(wire::decode::<Response>(Kind::Response, &b).unwrap(), r);
        }
    }
}
