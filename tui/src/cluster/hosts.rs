//! `hosts.toml`: the hosts of a cluster deployed over SSH, the shared
//! settings, and each host's generated agent config.

use anyhow::{Context, Result, bail};
use dml_shared::config::Config;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Remote directory when hosts.toml names none (relative: under the login directory).
pub const DEFAULT_REMOTE_DIR: &str = "dml";

/// How an agent is kept running on a host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Launcher {
    /// systemd when it is PID 1 on the host, else tmux.
    #[default]
    Auto,
    Systemd,
    Tmux,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHosts {
    key_file: Option<PathBuf>,
    known_hosts: Option<PathBuf>,
    remote_dir: Option<String>,
    introducer: Option<SocketAddr>,
    agent_bin: Option<PathBuf>,
    ort_dylib: Option<PathBuf>,
    #[serde(default)]
    launcher: Launcher,
    #[serde(default, with = "humantime_serde_opt")]
    connect_timeout: Option<Duration>,
    #[serde(default)]
    config: toml::Table,
    #[serde(default)]
    hosts: Vec<RawHost>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    name: Option<String>,
    address: String,
    ssh_port: Option<u16>,
    user: Option<String>,
    bind: SocketAddr,
    remote_dir: Option<String>,
    launcher: Option<Launcher>,
    #[serde(default)]
    config: toml::Table,
}

/// Durations written like "10s" (humantime), optional.
mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// How `dml` logs in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// A private key file (no passphrase; use ssh-agent for one with a passphrase).
    KeyFile(PathBuf),
    /// The keys of the ssh-agent at `SSH_AUTH_SOCK`.
    Agent,
}

/// One host of the cluster.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    pub address: String,
    pub ssh_port: u16,
    pub user: String,
    /// The agent's address (its UDP and TCP port); `dml` checks health there.
    pub bind: SocketAddr,
    pub remote_dir: String,
    pub launcher: Launcher,
    /// Agent config overrides of this host (merged over the shared ones).
    pub config: toml::Table,
}

/// The whole file, checked.
#[derive(Clone, Debug)]
pub struct Hosts {
    pub auth: Auth,
    pub known_hosts: PathBuf,
    pub introducer: SocketAddr,
    pub agent_bin: Option<PathBuf>,
    /// ONNX Runtime's library to upload (default: the local virtualenv's).
    pub ort_dylib: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub config: toml::Table,
    pub hosts: Vec<Host>,
}

/// `~/x` -> `$HOME/x`; other paths as given.
fn expand_home(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => p.to_path_buf(),
    }
}

/// Characters allowed in a remote directory (it goes into shell commands and unit files).
fn check_remote_dir(key: &str, dir: &str) -> Result<()> {
    if dir.is_empty() {
        bail!("{key}: empty");
    }
    if let Some(c) = dir
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "/._-+@".contains(*c)))
    {
        bail!("{key} = \"{dir}\": character {c:?} not allowed (letters, digits, / . _ - + @)");
    }
    if dir.split('/').any(|p| p == "..") {
        bail!("{key} = \"{dir}\": no \"..\" allowed");
    }
    Ok(())
}

/// Keys of the agent config that hosts.toml sets itself.
const DERIVED_KEYS: [&str; 4] = ["bind", "introducers", "nodes", "security"];

impl Hosts {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read hosts file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("hosts file {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let table: toml::Table = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        // A clearer word than "unknown field" for the one key we refuse on purpose.
        let mut tables = vec![("".to_string(), &table)];
        if let Some(toml::Value::Array(hs)) = table.get("hosts") {
            for (i, h) in hs.iter().enumerate() {
                if let toml::Value::Table(t) = h {
                    tables.push((format!("hosts[{i}]."), t));
                }
            }
        }
        for (prefix, t) in tables {
            if t.contains_key("password") {
                bail!(
                    "key \"{prefix}password\": passwords are not supported; \
                     use key_file or an ssh-agent"
                );
            }
        }
        let raw: RawHosts = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        if raw.hosts.is_empty() {
            bail!("no [[hosts]]: list at least one host");
        }
        let auth = match raw.key_file {
            Some(k) => Auth::KeyFile(expand_home(&k)),
            None => Auth::Agent,
        };
        let remote_dir = raw
            .remote_dir
            .unwrap_or_else(|| DEFAULT_REMOTE_DIR.to_string());
        check_remote_dir("key \"remote_dir\"", &remote_dir)?;
        check_config_table("config", &raw.config)?;
        let default_user = std::env::var("USER").unwrap_or_else(|_| "root".into());
        let mut hosts = Vec::new();
        for (i, h) in raw.hosts.into_iter().enumerate() {
            let key = |k: &str| format!("key \"hosts[{i}].{k}\"");
            if h.address.trim().is_empty() {
                bail!("{}: empty", key("address"));
            }
            if h.bind.ip().is_unspecified() || h.bind.port() == 0 {
                bail!(
                    "{} = \"{}\": give the address other agents reach this one at, \
                     with a port (not a wildcard or port 0)",
                    key("bind"),
                    h.bind
                );
            }
            let dir = h.remote_dir.unwrap_or_else(|| remote_dir.clone());
            check_remote_dir(&key("remote_dir"), &dir)?;
            check_config_table(&format!("hosts[{i}].config"), &h.config)?;
            if h.ssh_port == Some(0) {
                bail!("{}: 0 is not a port", key("ssh_port"));
            }
            hosts.push(Host {
                name: h
                    .name
                    .unwrap_or_else(|| format!("{}#{}", h.address, h.bind.port())),
                address: h.address,
                ssh_port: h.ssh_port.unwrap_or(22),
                user: h.user.unwrap_or_else(|| default_user.clone()),
                bind: h.bind,
                remote_dir: dir,
                launcher: h.launcher.unwrap_or(raw.launcher),
                config: h.config,
            });
        }
        for (i, a) in hosts.iter().enumerate() {
            for (j, b) in hosts.iter().enumerate().skip(i + 1) {
                if a.bind == b.bind {
                    bail!("key \"hosts[{j}].bind\": {} is also hosts[{i}]'s", b.bind);
                }
                if a.address == b.address && a.remote_dir == b.remote_dir {
                    bail!(
                        "key \"hosts[{j}].remote_dir\": hosts[{i}] on {} already uses \"{}\"",
                        a.address,
                        a.remote_dir
                    );
                }
                if a.name == b.name {
                    bail!(
                        "key \"hosts[{j}].name\": \"{}\" is also hosts[{i}]'s",
                        b.name
                    );
                }
            }
        }
        let out = Self {
            auth,
            known_hosts: expand_home(
                &raw.known_hosts
                    .unwrap_or_else(|| PathBuf::from("~/.ssh/known_hosts")),
            ),
            introducer: raw.introducer.unwrap_or(hosts[0].bind),
            agent_bin: raw.agent_bin,
            ort_dylib: raw.ort_dylib.map(|p| expand_home(&p)),
            connect_timeout: raw.connect_timeout.unwrap_or(Duration::from_secs(10)),
            config: raw.config,
            hosts,
        };
        // Every host's agent config must be valid before anything is touched.
        for h in &out.hosts {
            out.agent_config(h, "/dml", true)?;
        }
        Ok(out)
    }

    /// The agent config file for `host`, whose remote directory resolved to
    /// `dir` (absolute): shared `[config]`, then the host's, then bind,
    /// introducers, nodes, `data_dir` (default `dir/data`), the cluster
    /// key at `dir/cluster.key` and, when `up` uploaded it (`ort`), ONNX Runtime's
    /// library at [`remote_ort`] unless the config names one.
    pub fn agent_config(&self, host: &Host, dir: &str, ort: bool) -> Result<String> {
        let mut t = self.config.clone();
        merge(&mut t, &host.config);
        t.entry("data_dir")
            .or_insert_with(|| toml::Value::String(format!("{dir}/data")));
        if ort
            && let toml::Value::Table(inference) = t
                .entry("inference")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            inference
                .entry("ort_dylib")
                .or_insert_with(|| toml::Value::String(remote_ort(dir)));
        }
        let addrs = |v: &[SocketAddr]| {
            toml::Value::Array(
                v.iter()
                    .map(|a| toml::Value::String(a.to_string()))
                    .collect(),
            )
        };
        t.insert("bind".into(), toml::Value::String(host.bind.to_string()));
        t.insert("introducers".into(), addrs(&[self.introducer]));
        let nodes: Vec<SocketAddr> = self.hosts.iter().map(|h| h.bind).collect();
        t.insert("nodes".into(), addrs(&nodes));
        let mut security = toml::Table::new();
        security.insert(
            "key_file".into(),
            toml::Value::String(format!("{dir}/cluster.key")),
        );
        t.insert("security".into(), toml::Value::Table(security));
        let text = format!(
            "# Written by `dml cluster up` for host {}; edits are overwritten.\n{}",
            host.name,
            toml::to_string(&t)?
        );
        // The agent takes the top-level `log` out itself; the rest must be a valid Config.
        let mut check = t.clone();
        check.remove("log");
        Config::from_toml(&toml::to_string(&check)?)
            .and_then(|c| c.validate())
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("agent config of host \"{}\"", host.name))?;
        Ok(text)
    }
}

/// Where `up` puts ONNX Runtime's library in a host's remote directory.
pub fn remote_ort(dir: &str) -> String {
    format!("{dir}/lib/{}", dml_shared::ort_lib::DYLIB_PREFIX)
}

fn check_config_table(key: &str, t: &toml::Table) -> Result<()> {
    for k in DERIVED_KEYS {
        if t.contains_key(k) {
            bail!(
                "key \"{key}.{k}\": set by dml cluster from the hosts' bind addresses \
                 and `introducer`; remove it"
            );
        }
    }
    Ok(())
}

/// Merges `over` into `base`, table by table.
fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
key_file = "/k/id"
remote_dir = "/opt/dml"
[config]
preset = "local"
[config.sdfs]
scrub_interval = "1m"
[[hosts]]
address = "10.0.0.1"
user = "ops"
bind = "10.0.0.1:8001"
[[hosts]]
name = "b"
address = "10.0.0.2"
ssh_port = 2222
bind = "10.0.0.2:8001"
remote_dir = "/srv/dml"
launcher = "tmux"
[hosts.config.sdfs]
reconcile_interval = "9s"
"#;

    #[test]
    fn a_good_file_resolves_defaults_and_merges_configs() {
        let h = Hosts::parse(GOOD).unwrap();
        assert_eq!(h.auth, Auth::KeyFile("/k/id".into()));
        assert_eq!(h.introducer, "10.0.0.1:8001".parse().unwrap());
        assert_eq!(h.hosts[0].ssh_port, 22);
        assert_eq!(h.hosts[0].remote_dir, "/opt/dml");
        assert_eq!(h.hosts[0].launcher, Launcher::Auto);
        assert_eq!(h.hosts[1].launcher, Launcher::Tmux);
        assert_eq!(h.hosts[1].name, "b");
        let text = h.agent_config(&h.hosts[1], "/srv/dml", false).unwrap();
        let cfg = Config::from_toml(&text).unwrap();
        assert_eq!(cfg.bind, "10.0.0.2:8001".parse().unwrap());
        assert_eq!(cfg.nodes.len(), 2);
        assert_eq!(cfg.introducers, vec![h.introducer]);
        assert_eq!(cfg.data_dir, PathBuf::from("/srv/dml/data"));
        assert_eq!(cfg.sdfs.scrub_interval, Duration::from_secs(60));
        assert_eq!(cfg.sdfs.reconcile_interval, Duration::from_secs(9));
        let first =
            Config::from_toml(&h.agent_config(&h.hosts[0], "/opt/dml", true).unwrap()).unwrap();
        assert_eq!(
            first.sdfs.reconcile_interval,
            Config::preset(cfg.preset).sdfs.reconcile_interval
        );
        // The uploaded ONNX Runtime, unless the config names a library.
        assert_eq!(
            first.inference.ort_dylib,
            Some(PathBuf::from("/opt/dml/lib/libonnxruntime.so"))
        );
        assert_eq!(cfg.inference.ort_dylib, None);
        let mut own = h;
        own.config.insert(
            "inference".into(),
            toml::Value::Table(toml::toml! { ort_dylib = "/usr/lib/libonnxruntime.so" }),
        );
        let text = own.agent_config(&own.hosts[0], "/opt/dml", true).unwrap();
        assert_eq!(
            Config::from_toml(&text).unwrap().inference.ort_dylib,
            Some(PathBuf::from("/usr/lib/libonnxruntime.so"))
        );
    }

    fn err(text: &str) -> String {
        format!("{:#}", Hosts::parse(text).unwrap_err())
    }

    #[test]
    fn bad_files_name_the_key() {
        let e = err(&GOOD.replace("ssh_port = 2222", "ssh_prot = 2222"));
        assert!(e.contains("ssh_prot"), "{e}");
        let e = err(&GOOD.replace("user = \"ops\"", "password = \"hunter2\""));
        assert!(
            e.contains("hosts[0].password") && e.contains("not supported"),
            "{e}"
        );
        let e = err(&GOOD.replace("10.0.0.2:8001", "10.0.0.1:8001"));
        assert!(e.contains("hosts[1].bind"), "{e}");
        let e = err(&GOOD.replace("\"10.0.0.1:8001\"", "\"0.0.0.0:8001\""));
        assert!(e.contains("hosts[0].bind"), "{e}");
        let e = err(&GOOD.replace("/srv/dml", "/srv/my dml"));
        assert!(e.contains("hosts[1].remote_dir"), "{e}");
        let e = err(&GOOD.replace("scrub_interval = \"1m\"", "scrub_interval = \"0s\""));
        assert!(e.contains("sdfs.scrub_interval"), "{e}");
        let e = err(&GOOD.replace("[config.sdfs]", "[config.sdfs]\nbind = 1\n[config.x]"));
        assert!(e.contains("config.x") || e.contains("x"), "{e}");
        let e = err(&GOOD.replace("preset = \"local\"", "nodes = []"));
        assert!(e.contains("config.nodes"), "{e}");
        let e = err(&GOOD.replace("launcher = \"tmux\"", "launcher = \"screen\""));
        assert!(e.contains("screen"), "{e}");
        let e = err("remote_dir = \"x\"\n");
        assert!(e.contains("[[hosts]]"), "{e}");
        let e = err(&GOOD.replace("bind = \"10.0.0.2:8001\"", "bind = \"nowhere\""));
        assert!(e.contains("bind"), "{e}");
    }
}
