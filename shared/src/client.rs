//! Async client for the agent API: one authenticated connection ([`Conn`]),
//! one request at a time. Data-path requests take the connection
//! ([`Client::take_stream`]) and speak with [`send_request`] /
//! [`read_response`] plus raw data frames.

use crate::api::{IdInfo, LeaderInfo, MemberInfo, Request, Response, Stats};
use crate::conn::{Conn, FrameRead, FrameWrite};
use crate::control::{ControlRequest, ControlResponse};
use crate::error::{Error, Result};
use crate::framing::DEFAULT_MAX_FRAME;
use crate::infer::{InferRequest, InferResponse};
use crate::sdfs::{DataRequest, Holding, MetaRequest, MetaResponse};
use crate::wire::{self, Kind};
use std::net::SocketAddr;
use std::time::Duration;

/// Default time allowed for connecting and for each answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Client {
    addr: SocketAddr,
    timeout: Duration,
    stream: Option<Conn>,
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

    /// Sends one request and waits for its answer. The connection is held by
    /// the exchange and kept only once its answer is read, so an error, a
    /// timeout or a caller dropping this future mid-call (a timeout of its
    /// own) all leave no unread answer behind for the next call to take as
    /// its own: the next call reconnects.
    pub async fn call(&mut self, req: &Request) -> Result<Response> {
        let timeout = self.timeout;
        let stream = self.stream.take();
        match tokio::time::timeout(timeout, exchange(self.addr, stream, req)).await {
            Ok(Ok((stream, resp))) => {
                self.stream = Some(stream);
                Ok(resp)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Timeout {
                addr: self.addr.to_string(),
                timeout,
            }),
        }
    }

    /// The connection, opened if needed, for a data-path exchange; the
    /// client opens a new one for its next call.
    pub async fn take_stream(&mut self) -> Result<Conn> {
        match self.stream.take() {
            Some(s) => Ok(s),
            None => {
                let timeout = self.timeout;
                tokio::time::timeout(timeout, connect(self.addr))
                    .await
                    .map_err(|_| Error::Timeout {
                        addr: self.addr.to_string(),
                        timeout,
                    })?
            }
        }
    }

    /// Who leads the control plane, as this agent sees it.
    pub async fn leader(&mut self) -> Result<LeaderInfo> {
        match self.call(&Request::Leader).await? {
            Response::Leader(l) => Ok(l),
            other => Err(unexpected(other)),
        }
    }

    /// One control-plane request (this agent relays it to the leader); a
    /// redirect comes back as [`Error::NotLeader`], a refusal as
    /// [`Error::Remote`].
    pub async fn control(&mut self, req: ControlRequest) -> Result<ControlResponse> {
        let answer = self
            .call(&Request::Control {
                req,
                leader_only: false,
            })
            .await?;
        into_control(self.addr, answer)
    }

    /// [`Client::control`] for SDFS metadata.
    pub async fn meta(&mut self, req: MetaRequest) -> Result<MetaResponse> {
        match self.control(ControlRequest::Sdfs(req)).await? {
            ControlResponse::Sdfs(m) => Ok(m),
            other => Err(unexpected(Response::Control(other))),
        }
    }

    /// [`Client::control`] for inference.
    pub async fn infer(&mut self, req: InferRequest) -> Result<InferResponse> {
        match self.control(ControlRequest::Infer(req)).await? {
            ControlResponse::Infer(r) => Ok(r),
            other => Err(unexpected(Response::Control(other))),
        }
    }

    /// The SDFS versions stored on this agent's disk.
    pub async fn holdings(&mut self) -> Result<Vec<Holding>> {
        match self.call(&Request::Data(DataRequest::Store)).await? {
            Response::Holdings(h) => Ok(h),
            other => Err(unexpected(other)),
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

    /// The agent's newest `lines` log lines, oldest first.
    pub async fn logs(&mut self, lines: u32) -> Result<Vec<String>> {
        match self.call(&Request::Logs { lines }).await? {
            Response::Logs(l) => Ok(l),
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

/// One request and its answer on `stream` (or a new connection to `addr`);
/// gives the connection back with the answer.
async fn exchange(
    addr: SocketAddr,
    stream: Option<Conn>,
    req: &Request,
) -> Result<(Conn, Response)> {
    let mut stream = match stream {
        Some(s) => s,
        None => connect(addr).await?,
    };
    send_request(&mut stream, req).await?;
    let resp = read_response(&mut stream).await?;
    Ok((stream, resp))
}

/// Opens an authenticated connection to an agent with the process's
/// cluster key, without Nagle delays.
pub async fn connect(addr: SocketAddr) -> Result<Conn> {
    Conn::connect(addr).await
}

/// Writes one request frame.
pub async fn send_request<W: FrameWrite>(w: &mut W, req: &Request) -> Result<()> {
    w.write_frame(&wire::encode(Kind::Request, req), DEFAULT_MAX_FRAME)
        .await
}

/// Reads one response frame; `Response::Error` becomes [`Error::Remote`] and
/// a close before the answer an unexpected-EOF error.
pub async fn read_response<R: FrameRead>(r: &mut R) -> Result<Response> {
    let frame = r
        .read_frame(DEFAULT_MAX_FRAME)
        .await?
        .ok_or_else(|| Error::Io(std::io::ErrorKind::UnexpectedEof.into()))?;
    match wire::decode(Kind::Response, &frame)? {
        Response::Error(e) => Err(Error::Remote(e)),
        resp => Ok(resp),
    }
}

/// The error for an answer of the wrong kind.
pub fn unexpected(resp: Response) -> Error {
    let full = format!("{resp:?}");
    let mut text: String = full.chars().take(200).collect();
    if text.len() < full.len() {
        text.push_str("...");
    }
    Error::unexpected(format!("unexpected answer {text}"))
}

/// An agent's answer to a control-plane request, from `addr`: the response,
/// a redirect as [`Error::NotLeader`], or a refusal as [`Error::Remote`].
pub fn into_control(addr: SocketAddr, answer: Response) -> Result<ControlResponse> {
    match answer {
        Response::Control(m) => Ok(m),
        Response::NotLeader { leader } => Err(Error::NotLeader {
            addr: addr.to_string(),
            leader,
        }),
        Response::Error(msg) => Err(Error::Remote(msg)),
        other => Err(unexpected(other)),
    }
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
            Response::Error(crate::RemoteError::new(crate::ErrorKind::Conflict, "x")),
        ];
        for r in resps {
            let b = wire::encode(Kind::Response, &r);
            assert_eq!(wire::decode::<Response>(Kind::Response, &b).unwrap(), r);
        }
    }

    /// A server that answers each `Request::Id` with its sequence number in
    /// `incarnation`, the first one only after 300 ms.
    async fn numbering_server() -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let mut n = 0u32;
            loop {
                let (s, _) = l.accept().await.unwrap();
                let mut c = Conn::accept(s, crate::auth::installed().unwrap())
                    .await
                    .unwrap();
                while let Ok(Some(f)) = c.read_frame(DEFAULT_MAX_FRAME).await {
                    assert_eq!(
                        wire::decode::<Request>(Kind::Request, &f).unwrap(),
                        Request::Id
                    );
                    n += 1;
                    if n == 1 {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    let id = crate::NodeId::new(addr, 1);
                    let r = Response::Id(IdInfo {
                        id,
                        incarnation: n,
                        joined: true,
                    });
                    if c.write_frame(&wire::encode(Kind::Response, &r), DEFAULT_MAX_FRAME)
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        });
        addr
    }

    /// A call dropped by its caller's own timeout (as openraft times out a
    /// replication RPC) must not leave its late answer to be read as the next
    /// call's: that made a leader count a follower's answer to an earlier
    /// append as the answer to a later one.
    #[tokio::test]
    async fn a_call_dropped_midway_leaves_no_answer_for_the_next_call() {
        crate::auth::install(crate::auth::ClusterKey::from_bytes([7; 32])).unwrap();
        let addr = numbering_server().await;
        let mut c = Client::new(addr);
        let dropped = tokio::time::timeout(Duration::from_millis(50), c.id()).await;
        assert!(dropped.is_err(), "the first answer is late");
        tokio::time::sleep(Duration::from_millis(400)).await;
        let second = c.id().await.unwrap();
        assert_eq!(second.incarnation, 2, "the second call read its own answer");
        assert_eq!(c.id().await.unwrap().incarnation, 3);
    }
}
