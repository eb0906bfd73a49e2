//! Contexts: named clusters (agent addresses and a key file) kept in
//! `$XDG_CONFIG_HOME/dml/config.toml` (else `~/.config/dml/config.toml`;
//! `DML_CONFIG` names another file), as kubeconfig does, so `dml` works from
//! any directory. `dml local up` and `dml cluster up` write one and make it
//! current; `dml context list|use|show|add|remove` manage them.
//!
//! Precedence: `--agent`/`DML_AGENT` and `--key-file`/`DML_KEY_FILE` win;
//! then the context named by `--context`/`DML_CONTEXT`, else the current one;
//! then the defaults (`127.0.0.1:8001`, the key files under `./.dml`).

use crate::report::render_table;
use anyhow::Result;
use dml_tui::error::ClientError;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use dml_tui::cli::ContextCommand;

/// How long to try each of a context's agents before the next.
const PROBE: Duration = Duration::from_millis(300);

/// One named cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// Agents to talk to, tried in order: the first that accepts a
    /// connection is used.
    pub agents: Vec<SocketAddr>,
    /// The cluster key or a client credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// Where the contexts live.
pub fn path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("DML_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".config"))
            .ok_or_else(|| {
                ClientError::bad_value("config directory", "", "HOME and XDG_CONFIG_HOME are unset")
            })?,
    };
    Ok(base.join("dml/config.toml"))
}

/// A context name: letters, digits, `-`, `_`, `.`; 1 to 64 of them.
fn check_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ClientError::bad_value(
            "context name",
            name,
            "use 1 to 64 letters, digits, '-', '_' or '.'",
        )
        .into())
    }
}

impl ContextFile {
    /// The file at `path`; none there is an empty one.
    pub fn load(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(ClientError::io("read", path, e).into()),
        };
        let file: Self = toml::from_str(&text).map_err(|e| {
            ClientError::bad_value("contexts file", path.display(), e.message().to_string())
        })?;
        Ok(file)
    }

    /// Writes the file (mode 0600, through a temporary file and a rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| ClientError::io("create", dir, e))?;
        let text =
            toml::to_string(self).map_err(|e| anyhow::anyhow!("cannot encode contexts: {e}"))?;
        let tmp =
            tempfile::NamedTempFile::new_in(dir).map_err(|e| ClientError::io("create", dir, e))?;
        std::fs::write(tmp.path(), text).map_err(|e| ClientError::io("write", tmp.path(), e))?;
        tmp.persist(path)
            .map_err(|e| ClientError::io("write", path, e.error))?;
        Ok(())
    }

    /// The context `name`, or an error listing the ones there are.
    pub fn get(&self, name: &str, path: &Path) -> Result<&Context> {
        self.contexts.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.contexts.keys().map(String::as_str).collect();
            ClientError::bad_value(
                "context",
                name,
                if known.is_empty() {
                    format!(
                        "{} holds no contexts; `dml local up` or `dml context add` makes one",
                        path.display()
                    )
                } else {
                    format!("not in {}; contexts: {}", path.display(), known.join(", "))
                },
            )
            .into()
        })
    }
}

/// Saves `ctx` as `name` and makes it current; returns the file's path.
pub fn remember(name: &str, ctx: Context) -> Result<PathBuf> {
    check_name(name)?;
    let path = path()?;
    let mut file = ContextFile::load(&path)?;
    file.contexts.insert(name.to_string(), ctx);
    file.current = Some(name.to_string());
    file.save(&path)?;
    Ok(path)
}

/// The context a command uses: `flag` (`--context`, `DML_CONTEXT`), else
/// the current one, else none.
pub fn selected(flag: Option<&str>) -> Result<Option<(String, Context)>> {
    let path = path()?;
    let file = ContextFile::load(&path)?;
    let name = match flag.or(file.current.as_deref()) {
        Some(n) => n.to_string(),
        None => return Ok(None),
    };
    let ctx = file.get(&name, &path)?.clone();
    Ok(Some((name, ctx)))
}

/// The first of `agents` that accepts a TCP connection, else the first.
pub async fn pick_agent(agents: &[SocketAddr]) -> Option<SocketAddr> {
    for a in agents {
        if let Ok(Ok(_)) = tokio::time::timeout(PROBE, tokio::net::TcpStream::connect(a)).await {
            return Some(*a);
        }
    }
    agents.first().copied()
}

/// `dml context ...`.
pub fn run(cmd: &ContextCommand, json: bool) -> Result<()> {
    use ContextCommand as C;
    let path = path()?;
    let mut file = ContextFile::load(&path)?;
    match cmd {
        C::List => {
            if json {
                println!(
                    "{}",
                    json!({"file": path, "current": file.current, "contexts": file.contexts})
                );
                return Ok(());
            }
            let rows: Vec<Vec<String>> = file
                .contexts
                .iter()
                .map(|(n, c)| {
                    vec![
                        if file.current.as_deref() == Some(n) {
                            "*"
                        } else {
                            ""
                        }
                        .to_string(),
                        n.clone(),
                        c.agents
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(","),
                        c.key_file
                            .as_ref()
                            .map_or("-".into(), |k| k.display().to_string()),
                    ]
                })
                .collect();
            if rows.is_empty() {
                println!("no contexts in {}", path.display());
            } else {
                print!(
                    "{}",
                    render_table(&["CURRENT", "NAME", "AGENTS", "KEY FILE"], &rows)
                );
            }
        }
        C::Use { name } => {
            file.get(name, &path)?;
            file.current = Some(name.clone());
            file.save(&path)?;
            if json {
                println!("{}", json!({"current": name}));
            } else {
                println!("now using context \"{name}\"");
            }
        }
        C::Show { name } => {
            let name = name.as_deref().or(file.current.as_deref()).ok_or_else(|| {
                ClientError::bad_value("context", "", "none is current; name one")
            })?;
            let ctx = file.get(name, &path)?;
            if json {
                println!("{}", json!({"name": name, "context": ctx}));
            } else {
                println!("context \"{name}\" in {}", path.display());
                print!("{}", toml::to_string(ctx).unwrap_or_default());
            }
        }
        C::Add {
            name,
            agents,
            key_file,
        } => {
            check_name(name)?;
            let key_file = match key_file {
                Some(k) => Some(
                    k.canonicalize()
                        .map_err(|e| ClientError::io("open", k, e))?,
                ),
                None => None,
            };
            let ctx = Context {
                agents: agents.clone(),
                key_file,
            };
            file.contexts.insert(name.clone(), ctx);
            file.current = Some(name.clone());
            file.save(&path)?;
            if json {
                println!("{}", json!({"current": name, "file": path}));
            } else {
                println!(
                    "added context \"{name}\" to {} and made it current",
                    path.display()
                );
            }
        }
        C::Remove { name } => {
            file.get(name, &path)?;
            file.contexts.remove(name);
            if file.current.as_deref() == Some(name) {
                file.current = None;
            }
            file.save(&path)?;
            if json {
                println!("{}", json!({"removed": name}));
            } else {
                println!("removed context \"{name}\"");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_round_trips_and_bad_names_and_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.toml");
        let mut f = ContextFile::load(&path).unwrap();
        assert_eq!(f, ContextFile::default());
        f.contexts.insert(
            "lab".into(),
            Context {
                agents: vec!["10.0.0.1:8001".parse().unwrap()],
                key_file: Some("/k".into()),
            },
        );
        f.current = Some("lab".into());
        f.save(&path).unwrap();
        assert_eq!(ContextFile::load(&path).unwrap(), f);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        let e = f.get("prod", &path).unwrap_err().to_string();
        assert!(e.contains("\"prod\"") && e.contains("lab"), "{e}");
        assert!(check_name("a b").is_err() && check_name("").is_err());
        check_name("lab-2.x_y").unwrap();
        std::fs::write(&path, "current = 3\n").unwrap();
        let e = ContextFile::load(&path).unwrap_err().to_string();
        assert!(e.contains("config.toml"), "{e}");
    }
}
