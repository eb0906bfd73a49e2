//! Reading the agent's config file, and SIGHUP: re-reading it and applying
//! what can change while the agent runs.
//!
//! Reloadable: `log`, an agent-only top-level key holding a tracing filter
//! (`RUST_LOG` syntax, e.g. `"info,dml_agent::sdfs=debug"`); removing it goes
//! back to `RUST_LOG`, else `info`. Every other key needs a restart: a changed
//! one is logged as refused and the running value stays. A file that does not
//! parse or validate is refused whole.

use dml_shared::Error;
use dml_shared::config::Config;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use tracing_subscriber::EnvFilter;

/// The agent-only key (not part of [`Config`]).
pub const LOG_KEY: &str = "log";
/// Filter used when neither `log` nor `RUST_LOG` gives one.
pub const DEFAULT_LOG: &str = "info,openraft=warn";

/// A parsed config file: the shared config (not yet validated) and the `log` filter.
#[derive(Debug)]
pub struct FileConfig {
    pub cfg: Config,
    pub log: Option<String>,
}

/// Reads and parses `path`, taking out the `log` key.
pub fn read(path: &Path) -> Result<FileConfig, Error> {
    let file_err = |reason: String| Error::ConfigFile {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| file_err(e.to_string()))?;
    let log = match table.remove(LOG_KEY) {
        None => None,
        Some(toml::Value::String(s)) => {
            EnvFilter::try_new(&s).map_err(|e| Error::Config {
                key: LOG_KEY.into(),
                value: s.clone(),
                reason: format!("not a tracing filter: {e}"),
            })?;
            Some(s)
        }
        Some(other) => {
            return Err(Error::Config {
                key: LOG_KEY.into(),
                value: other.to_string(),
                reason: "must be a string such as \"info\" or \"warn,dml_agent=debug\"".into(),
            });
        }
    };
    let rest = toml::to_string(&table).map_err(|e| file_err(e.to_string()))?;
    let cfg = Config::from_toml(&rest).map_err(|e| match e {
        Error::ConfigFile { reason, .. } => file_err(reason),
        other => other,
    })?;
    Ok(FileConfig { cfg, log })
}

/// The filter text in force: the file's `log`, else `RUST_LOG`, else
/// [`DEFAULT_LOG`]; with a note when `RUST_LOG` is set but not a filter (it
/// is then left out, and the note logged once the subscriber runs).
pub fn filter_text(log: Option<&str>) -> (String, Option<String>) {
    if let Some(l) = log {
        return (l.to_string(), None);
    }
    match std::env::var("RUST_LOG") {
        Ok(v) if v.trim().is_empty() => (DEFAULT_LOG.to_string(), None),
        Ok(v) => match EnvFilter::try_new(&v) {
            Ok(_) => (v, None),
            Err(e) => (
                DEFAULT_LOG.to_string(),
                Some(format!(
                    "RUST_LOG={v:?} is not a log filter ({e}); using \"{DEFAULT_LOG}\""
                )),
            ),
        },
        Err(_) => (DEFAULT_LOG.to_string(), None),
    }
}

/// One key whose value differs between the running and the new config.
#[derive(Debug, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub old: String,
    pub new: String,
}

/// The keys (dotted, e.g. `sdfs.scrub_interval`) whose values differ.
pub fn diff(old: &Config, new: &Config) -> Vec<Change> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten(
        "",
        &serde_json::to_value(old).unwrap_or(Value::Null),
        &mut a,
    );
    flatten(
        "",
        &serde_json::to_value(new).unwrap_or(Value::Null),
        &mut b,
    );
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let none = || "(unset)".to_string();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| Change {
            key: k.clone(),
            old: a.get(k).cloned().unwrap_or_else(none),
            new: b.get(k).cloned().unwrap_or_else(none),
        })
        .collect()
}

fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// What a reload did, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// New log filter to install, if it changed.
    pub log: Option<String>,
    /// Keys that changed in the file but need a restart.
    pub refused: Vec<Change>,
}

/// Compares the running state with the re-read file. `running_log` is the
/// filter text in force.
pub fn plan(running: &Config, running_log: &str, new: &FileConfig) -> Outcome {
    let (wanted, _) = filter_text(new.log.as_deref());
    Outcome {
        log: (wanted != running_log).then_some(wanted),
        refused: diff(running, &new.cfg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("dml-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn log_is_taken_out_and_the_rest_parsed() {
        let p = write(
            "a.toml",
            "log = \"warn\"\npreset = \"local\"\n[sdfs]\nscrub_interval = \"5s\"\n",
        );
        let f = read(&p).unwrap();
        assert_eq!(f.log.as_deref(), Some("warn"));
        assert_eq!(f.cfg.sdfs.scrub_interval, std::time::Duration::from_secs(5));
        assert_eq!(
            f.cfg.membership,
            Config::preset(dml_shared::config::Preset::Local).membership
        );
    }

    #[test]
    fn bad_files_name_the_key_or_the_file() {
        let p = write("b.toml", "log = 3\n");
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("\"log\""), "{e}");
        let p = write("c.toml", "log = \"[[[\"\n");
        assert!(read(&p).unwrap_err().to_string().contains("\"log\""));
        let p = write("d.toml", "nope = 1\n");
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("d.toml") && e.contains("nope"), "{e}");
    }

    #[test]
    fn plan_applies_the_log_filter_and_refuses_other_changes() {
        let old = read(&write(
            "e.toml",
            "log = \"info\"\n[sdfs]\nscrub_interval = \"5s\"\n",
        ))
        .unwrap();
        let same = plan(&old.cfg, "info", &old);
        assert_eq!(same, Outcome::default());
        let new = read(&write(
            "f.toml",
            "log = \"debug\"\n[sdfs]\nscrub_interval = \"7s\"\n",
        ))
        .unwrap();
        let out = plan(&old.cfg, "info", &new);
        assert_eq!(out.log.as_deref(), Some("debug"));
        assert_eq!(out.refused.len(), 1, "{:?}", out.refused);
        assert_eq!(out.refused[0].key, "sdfs.scrub_interval");
        assert_ne!(out.refused[0].old, out.refused[0].new);
    }
}
