//! A membership peer of the tests' own: a UDP socket and a datagram [`Session`] with the
//! cluster key (or another), to send agents crafted payloads sealed as a member would and
//! to read their answers.

use anyhow::{Context, Result};
use dml_shared::auth::{AuthContext, ClusterKey, Epoch, Session, unseal};
use dml_shared::clock::unix_micros;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;

pub struct UdpPeer {
    pub sock: UdpSocket,
    pub session: Session,
    key: ClusterKey,
}

impl UdpPeer {
    /// A peer on a free port of 127.0.0.1 holding `key`.
    pub async fn bind(key: ClusterKey) -> Result<Self> {
        let sock = UdpSocket::bind("127.0.0.1:0").await?;
        let me = sock.local_addr()?;
        let session = Session::new(&AuthContext::new(key.clone()), me);
        Ok(Self { sock, session, key })
    }

    pub fn addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("bound")
    }

    /// Learns `to`'s epoch (a hello, its notice) within `within`; the hello is sent again
    /// every half second, as datagrams get lost.
    pub async fn greet(&mut self, to: SocketAddr, within: Duration) -> Result<Epoch> {
        let mut buf = vec![0u8; 65_536];
        tokio::time::timeout(within, async {
            loop {
                let hello = self.session.seal_for(to, [0; 8], &[], unix_micros());
                self.sock.send_to(&hello, to).await?;
                let until = tokio::time::Instant::now() + Duration::from_millis(500);
                while let Ok(r) =
                    tokio::time::timeout_at(until, self.sock.recv_from(&mut buf)).await
                {
                    let (n, from) = r?;
                    if from != to {
                        continue;
                    }
                    if let Ok((h, _)) = unseal(&self.key, self.addr(), &buf[..n]) {
                        self.session.open(from, &buf[..n], unix_micros());
                        return Ok::<_, anyhow::Error>(h.sender);
                    }
                }
            }
        })
        .await
        .context("no notice from the agent")?
    }

    /// `payload` sealed for `to`'s run `epoch`.
    pub fn sealed(&mut self, to: SocketAddr, epoch: Epoch, payload: &[u8]) -> Vec<u8> {
        self.session.seal_for(to, epoch, payload, unix_micros())
    }

    /// The next payload from `from` that opens, within `within`.
    pub async fn next_payload(&mut self, from: SocketAddr, within: Duration) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; 65_536];
        tokio::time::timeout(within, async {
            loop {
                let (n, src) = self.sock.recv_from(&mut buf).await?;
                if src != from {
                    continue;
                }
                let o = self.session.open(src, &buf[..n], unix_micros());
                for r in o.replies {
                    self.sock.send_to(&r, src).await?;
                }
                if let Some(p) = o.payload {
                    return Ok::<_, anyhow::Error>(p);
                }
            }
        })
        .await
        .context("no datagram")?
    }
}
