//! The one-shot commands that ask one agent something: members, id, join,
//! leave, stats, logs.

use crate::cli::Command;
use crate::report;
use anyhow::Result;
use dml_shared::client::Client;
use dml_tui::error::ClientError;
use serde_json::json;
use std::net::{SocketAddr, ToSocketAddrs};

/// Turns `HOST:PORT` into an address, with an error that quotes what was given.
pub fn resolve_agent(agent: &str) -> Result<SocketAddr> {
    if let Ok(a) = agent.parse() {
        return Ok(a);
    }
    let bad = |reason: String| ClientError::bad_value("agent address", agent, reason);
    let found = agent
        .to_socket_addrs()
        .map_err(|e| bad(format!("is not HOST:PORT: {e}")))?
        .next();
    Ok(found.ok_or_else(|| bad("resolves to nothing".into()))?)
}

/// Runs one of the agent commands and prints its answer (a table or JSON).
pub async fn run(command: &Command, agent: SocketAddr, json: bool) -> Result<()> {
    let mut client = Client::new(agent);
    let out = match command {
        Command::Members => {
            let m = client.members().await?;
            if json {
                report::members_json(&m).to_string()
            } else {
                report::members_table(&m)
            }
        }
        Command::Id => {
            let i = client.id().await?;
            if json {
                report::id_json(&i).to_string()
            } else {
                report::id_text(&i)
            }
        }
        Command::Stats => {
            let s = client.stats().await?;
            if json {
                report::stats_json(&s).to_string()
            } else {
                report::stats_text(&s)
            }
        }
        Command::Logs { lines } => {
            let l = client.logs(*lines).await?;
            if json {
                json!({"agent": agent.to_string(), "lines": l}).to_string()
            } else {
                l.iter().map(|l| format!("{l}\n")).collect()
            }
        }
        Command::Join | Command::Leave => {
            let verb = if matches!(command, Command::Join) {
                client.join().await?;
                "join"
            } else {
                client.leave().await?;
                "leave"
            };
            if json {
                json!({"ok": true, "agent": agent.to_string(), "action": verb}).to_string()
            } else {
                format!("{agent}: {verb} requested\n")
            }
        }
        other => anyhow::bail!("{other:?} is not a one-shot agent command"),
    };
    print!("{out}");
    if json {
        println!();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_agent_accepts_addresses_and_quotes_bad_input() {
        assert_eq!(
            resolve_agent("127.0.0.1:8001").unwrap(),
            "127.0.0.1:8001".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(resolve_agent("localhost:8002").unwrap().port(), 8002);
        let e = resolve_agent("nonsense").unwrap_err().to_string();
        assert!(e.contains("\"nonsense\""), "{e}");
    }

    #[tokio::test]
    async fn unreachable_agent_is_a_clear_error() {
        // Bind then drop a listener so the port is very likely closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let e = run(&Command::Id, addr, false).await.unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains(&format!("cannot reach agent at {addr}")),
            "{msg}"
        );
    }
}
