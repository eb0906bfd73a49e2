//! `dml keyring`: asks one agent, which goes to the leader and the other
//! agents (see the agent's `keyring.rs`). Keys are shown by fingerprint;
//! the only secret printed is the one `install --generate` makes (unless
//! `--out` takes it to a file).

use crate::cli::KeyringCommand;
use anyhow::{Context, Result};
use dml_shared::api::{Request, Response};
use dml_shared::auth::ClusterKey;
use dml_shared::client::{Client, unexpected};
use dml_shared::keyring::{Changed, KeySecret, KeyringList, KeyringRequest, KeyringResponse};
use dml_tui::error::ClientError;
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

/// Longest wait for an answer: the agent asks every live agent and may wait
/// for a leader.
const TIMEOUT: Duration = Duration::from_secs(60);

pub async fn run(cmd: &KeyringCommand, agent: SocketAddr, json: bool) -> Result<()> {
    let mut generated = None;
    let req = match cmd {
        KeyringCommand::List => KeyringRequest::List,
        KeyringCommand::Install {
            hex,
            from,
            generate,
            out,
        } => {
            let key = match (hex, from, generate) {
                (Some(h), None, false) => ClusterKey::from_hex(h)
                    .map_err(|e| ClientError::bad_value("key", "(the given hex)", e.to_string()))?,
                (None, Some(path), false) => ClusterKey::load(path)?,
                (None, None, true) => {
                    let key = match out {
                        Some(path) => ClusterKey::write_new(path, false)
                            .context("cannot write the new key")?,
                        None => ClusterKey::from_hex(&ClusterKey::generate_hex()?)
                            .expect("a generated key parses"),
                    };
                    generated = Some(key.clone());
                    key
                }
                _ => {
                    return Err(ClientError::bad_value(
                        "key",
                        "(none)",
                        "give the key as HEX, --from FILE or --generate",
                    )
                    .into());
                }
            };
            KeyringRequest::Install {
                key: KeySecret::of(&key),
            }
        }
        KeyringCommand::Use { fingerprint } => KeyringRequest::Use {
            fingerprint: fingerprint.clone(),
        },
        KeyringCommand::Remove { fingerprint } => KeyringRequest::Remove {
            fingerprint: fingerprint.clone(),
        },
    };
    let mut client = Client::new(agent).with_timeout(TIMEOUT);
    let answer = match client.call(&Request::Keyring(req)).await? {
        Response::Keyring(a) => a,
        Response::Error(e) => return Err(e.into()),
        other => return Err(unexpected(other).into()),
    };
    let out = match (cmd, answer) {
        (_, KeyringResponse::List(l)) if json => list_json(&l).to_string(),
        (_, KeyringResponse::List(l)) => list_table(&l),
        (KeyringCommand::Install { out, .. }, KeyringResponse::Changed(c)) => {
            let secret = match (&generated, out) {
                (Some(k), None) => Some(k.to_hex()),
                _ => None,
            };
            if json {
                let mut v = changed_json("install", &c);
                if let Some(s) = &secret {
                    v["key"] = json!(s);
                }
                if let Some(p) = out {
                    v["out"] = json!(p);
                }
                v.to_string()
            } else {
                let mut t = String::new();
                if let Some(s) = &secret {
                    t.push_str(&format!(
                        "new key {} (secret, shown once; keep it in a 0600 key file):\n{s}\n",
                        c.fingerprint
                    ));
                }
                if let Some(p) = out {
                    t.push_str(&format!(
                        "wrote key {} to {} (mode 0600)\n",
                        c.fingerprint,
                        p.display()
                    ));
                }
                t.push_str(&format!(
                    "installed key {} ({}keyring version {}); once `dml keyring list` shows it on \
                     every agent, make it primary with `dml keyring use {}`\n",
                    c.fingerprint,
                    if c.changed { "" } else { "already installed, " },
                    c.version,
                    c.fingerprint
                ));
                t
            }
        }
        (KeyringCommand::Use { .. }, KeyringResponse::Changed(c)) if json => {
            changed_json("use", &c).to_string()
        }
        (KeyringCommand::Use { .. }, KeyringResponse::Changed(c)) => format!(
            "primary key is {} ({}keyring version {}); agents switch within seconds\n",
            c.fingerprint,
            if c.changed { "" } else { "already, " },
            c.version
        ),
        (KeyringCommand::Remove { .. }, KeyringResponse::Changed(c)) if json => {
            changed_json("remove", &c).to_string()
        }
        (KeyringCommand::Remove { .. }, KeyringResponse::Changed(c)) => format!(
            "removed key {} (keyring version {}); agents drop it within seconds\n",
            c.fingerprint, c.version
        ),
        (_, other) => anyhow::bail!("unexpected answer {other:?}"),
    };
    print!("{out}");
    if json {
        println!();
    }
    Ok(())
}

fn changed_json(action: &str, c: &Changed) -> serde_json::Value {
    json!({
        "action": action,
        "fingerprint": c.fingerprint,
        "version": c.version,
        "changed": c.changed,
    })
}

fn list_json(l: &KeyringList) -> serde_json::Value {
    json!({
        "version": l.version,
        "agents": l.agents,
        "keys": l.keys.iter().map(|k| json!({
            "fingerprint": k.fingerprint,
            "primary": k.primary,
            "committed": k.committed,
            "installed_on": k.installed_on,
            "primary_on": k.primary_on,
        })).collect::<Vec<_>>(),
        "unreachable": l.unreachable.iter().map(|(a, e)| json!({
            "agent": a.to_string(),
            "error": e,
        })).collect::<Vec<_>>(),
    })
}

fn list_table(l: &KeyringList) -> String {
    let n = l.agents;
    let mut t = format!("keyring version {}, {n} live agents\n", l.version);
    t.push_str(&format!(
        "{:<18} {:<8} {:<11} {}\n",
        "FINGERPRINT", "PRIMARY", "INSTALLED", "PRIMARY ON"
    ));
    for k in &l.keys {
        let mark = match (k.primary, k.committed) {
            (true, _) => "*",
            (false, true) => "",
            (false, false) => "removed",
        };
        let installed = format!("[{}/{n}]", k.installed_on);
        let sending = format!("[{}/{n}]", k.primary_on);
        t.push_str(&format!(
            "{:<18} {mark:<8} {installed:<11} {sending}\n",
            k.fingerprint
        ));
    }
    for (a, e) in &l.unreachable {
        t.push_str(&format!("{a} did not answer: {e}\n"));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use dml_shared::keyring::KeyListing;

    #[test]
    fn the_list_shows_convergence_per_key() {
        let l = KeyringList {
            version: 2,
            keys: vec![
                KeyListing {
                    fingerprint: "00112233aabbccdd".into(),
                    primary: true,
                    committed: true,
                    installed_on: 10,
                    primary_on: 7,
                },
                KeyListing {
                    fingerprint: "ffeeddcc00112233".into(),
                    primary: false,
                    committed: true,
                    installed_on: 10,
                    primary_on: 3,
                },
            ],
            agents: 10,
            unreachable: vec![],
        };
        let t = list_table(&l);
        assert!(t.contains("keyring version 2, 10 live agents"), "{t}");
        assert!(
            t.contains("00112233aabbccdd   *        [10/10]     [7/10]"),
            "{t}"
        );
        assert!(
            t.contains("ffeeddcc00112233            [10/10]     [3/10]"),
            "{t}"
        );
        assert_eq!(list_json(&l)["keys"][1]["primary_on"], 3);
    }
}
