//! Fetching the console's data from one agent, and moving to another live member
//! when that agent stops answering (the console follows the cluster).

use super::app::{Poll, Snapshot};
use dml_shared::api::{MemberInfo, MemberState};
use dml_shared::client::Client;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Time allowed for each API call of a refresh.
const CALL_TIMEOUT: Duration = Duration::from_millis(800);

/// Members worth failing over to, best first: alive before suspect, then by
/// address; never `current`, each address once.
pub fn failover_candidates(current: SocketAddr, members: &[MemberInfo]) -> Vec<SocketAddr> {
    let mut live: Vec<&MemberInfo> = members
        .iter()
        .filter(|m| m.state.is_live() && m.id.addr != current)
        .collect();
    live.sort_by_key(|m| {
        (
            m.state != MemberState::Alive,
            m.id.addr,
            u64::MAX - m.id.started,
        )
    });
    let mut out: Vec<SocketAddr> = Vec::new();
    for m in live {
        if !out.contains(&m.id.addr) {
            out.push(m.id.addr);
        }
    }
    out
}

/// Holds the agent being followed and the members it last reported.
pub struct Follower {
    client: Client,
    /// Where to go when the current agent is gone, from the last good answer.
    fallbacks: Vec<SocketAddr>,
}

impl Follower {
    pub fn new(agent: SocketAddr) -> Self {
        Self {
            client: Client::new(agent).with_timeout(CALL_TIMEOUT),
            fallbacks: Vec::new(),
        }
    }

    /// One refresh. If the followed agent fails, tries the fallbacks in order
    /// and stays with the first that answers.
    pub async fn poll(&mut self) -> Poll {
        let first = self.client.addr();
        let first_error = match fetch(&mut self.client).await {
            Ok(s) => return self.succeeded(s, None),
            Err(e) => e,
        };
        for addr in self.fallbacks.clone() {
            let mut c = Client::new(addr).with_timeout(CALL_TIMEOUT);
            if let Ok(s) = fetch(&mut c).await {
                self.client = c;
                return self.succeeded(s, Some(first));
            }
        }
        Poll {
            agent: first,
            at: Instant::now(),
            result: Err(first_error),
            switched_from: None,
        }
    }

    fn succeeded(&mut self, s: Snapshot, switched_from: Option<SocketAddr>) -> Poll {
        let agent = self.client.addr();
        self.fallbacks = failover_candidates(agent, &s.members);
        // Keep the address we started from as a last resort.
        if let Some(from) = switched_from
            && !self.fallbacks.contains(&from)
        {
            self.fallbacks.push(from);
        }
        Poll {
            agent,
            at: Instant::now(),
            result: Ok(s),
            switched_from,
        }
    }
}

async fn fetch(c: &mut Client) -> Result<Snapshot, String> {
    let id = c.id().await.map_err(|e| e.to_string())?;
    let members = c.members().await.map_err(|e| e.to_string())?;
    let stats = c.stats().await.map_err(|e| e.to_string())?;
    Ok(Snapshot { id, members, stats })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dml_shared::NodeId;

    fn m(port: u16, started: u64, state: MemberState) -> MemberInfo {
        MemberInfo {
            id: NodeId::new(SocketAddr::from(([127, 0, 0, 1], port)), started),
            state,
            incarnation: 0,
            last_heard_ms: None,
            monitors: vec![],
        }
    }

    #[test]
    fn failover_prefers_alive_members_and_skips_dead_and_self() {
        let me = SocketAddr::from(([127, 0, 0, 1], 8001));
        let members = [
            m(8001, 1, MemberState::Alive),
            m(8005, 1, MemberState::Suspect),
            m(8003, 1, MemberState::Failed),
            m(8004, 1, MemberState::Alive),
            m(8002, 1, MemberState::Left),
            m(8004, 2, MemberState::Alive),
        ];
        let ports: Vec<u16> = failover_candidates(me, &members)
            .iter()
            .map(|a| a.port())
            .collect();
        assert_eq!(ports, vec![8004, 8005]);
    }

    #[tokio::test]
    async fn a_follower_with_nowhere_to_go_reports_the_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let p = Follower::new(addr).poll().await;
        assert_eq!(p.agent, addr);
        assert!(p.result.unwrap_err().contains("cannot reach agent"));
        assert_eq!(p.switched_from, None);
    }
}
