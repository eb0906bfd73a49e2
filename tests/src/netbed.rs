//! The namespace test bed: N hosts, each a Linux network namespace with its own address on a
//! bridge that lives in one more namespace (the switch), so no traffic touches the machine's
//! own interfaces. Faults are nftables drop rules inside the hosts' namespaces.
//!
//! Every name carries the creating process's pid (`dmlb-<pid>-<seq>-…`): a new bed first
//! deletes the namespaces of processes that no longer run, so a killed run leaves nothing
//! behind for long (its links and rules live inside those namespaces and go with them).
//!
//! Test code reaches the hosts from a thread that entered one host's namespace
//! ([`Bed::block_on_in`]); processes it spawns (agents through `ip netns exec`, `dml`)
//! inherit that namespace unless told otherwise. [`Bed::dml`] runs `dml` on a host.
//!
//! A host can run a real OpenSSH server ([`Bed::start_sshd`]), so `dml cluster up` deploys
//! to the bed as to any machines. Files of a host go under a directory named after its
//! namespace ([`Bed::host_dir`]): sshd servers and deployed agents whose command line names
//! one of a dead run are killed by the same sweep.

use crate::dml::DmlOutput;
use crate::ssh::{self, Sshd};
use anyhow::{Context, Result, bail, ensure};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const NETNS_DIR: &str = "/run/netns";
const PREFIX: &str = "dmlb-";
/// The nftables table holding a host's fault rules.
const TABLE: &str = "dmlbed";
/// The port of a host's sshd ([`Bed::start_sshd`]).
pub const SSH_PORT: u16 = 22;
static SEQ: AtomicU32 = AtomicU32::new(0);

/// Runs `ip` (or `ip -n NS`) with `args`; the error carries its stderr.
fn ip(ns: Option<&str>, args: &[&str]) -> Result<()> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run `ip` (Debian package iproute2)")?;
    ensure!(
        out.status.success(),
        "`ip {}{}` failed: {}",
        ns.map(|n| format!("-n {n} ")).unwrap_or_default(),
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Runs an nftables script inside namespace `ns`.
fn nft(ns: &str, script: &str) -> Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run `nft` (Debian package nftables)")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "nft in {ns} failed: {}\nscript:\n{script}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The pid of the process that made a bed name (`dmlb-<pid>-…`).
fn owner(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

fn runs(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether `path` lies under a host directory ([`Bed::host_dir`]) of a dead process's bed.
fn under_dead_bed(path: &str) -> bool {
    Path::new(path).components().any(|c| {
        c.as_os_str()
            .to_str()
            .and_then(owner)
            .is_some_and(|p| !runs(p))
    })
}

/// Kills what dead runs left on their hosts: sshd servers whose config and agents whose
/// binary lie under one of their host directories. Returns how many.
fn kill_stale_processes() -> usize {
    let stale = ssh::processes(|args| {
        let Some(program) = args.first() else {
            return false;
        };
        // The listener retitles itself "sshd: /usr/sbin/sshd -D -e -f CONFIG [listener] …".
        let words: Vec<&str> = args.iter().flat_map(|a| a.split_whitespace()).collect();
        let sshd = words.contains(&ssh::SSHD)
            && words
                .windows(2)
                .any(|w| w[0] == "-f" && under_dead_bed(w[1]));
        let agent = program.ends_with("/bin/dml-agent") && under_dead_bed(program);
        sshd || agent
    });
    for &pid in &stale {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    stale.len()
}

/// Deletes the bed namespaces of processes that no longer run, kills the sshd servers
/// and deployed agents their beds left, and unmounts their small disks
/// ([`crate::small_disk`]). Returns how many namespaces, processes and mounts.
pub fn sweep_stale() -> Result<usize> {
    let mut removed = kill_stale_processes();
    // After the kills: a dead run's agents no longer use their disks.
    removed += crate::small_disk::sweep_stale()?;
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return Ok(removed);
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if owner(&name).is_some_and(|p| !runs(p)) {
            ip(None, &["netns", "del", &name])?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// One host of the bed.
#[derive(Clone, Debug)]
pub struct Host {
    /// Its network namespace.
    pub ns: String,
    pub ip: Ipv4Addr,
}

/// Hosts on a private bridge; deleted (with every link and rule in them) on drop.
pub struct Bed {
    switch: String,
    hosts: Vec<Host>,
}

impl Bed {
    /// Creates `n` hosts, 10.77.0.1 to 10.77.0.n, after sweeping what dead runs left.
    pub fn create(n: usize) -> Result<Self> {
        ensure!((1..=250).contains(&n), "a bed has 1 to 250 hosts, not {n}");
        if !nix::unistd::Uid::effective().is_root() {
            bail!("the namespace test bed needs root (network namespaces, nftables)");
        }
        sweep_stale()?;
        let tag = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut bed = Bed {
            switch: format!("{tag}-sw"),
            hosts: Vec::new(),
        };
        ip(None, &["netns", "add", &bed.switch])?;
        ip(Some(&bed.switch), &["link", "add", "br0", "type", "bridge"])?;
        ip(Some(&bed.switch), &["link", "set", "br0", "up"])?;
        for i in 0..n {
            let host = Host {
                ns: format!("{tag}-h{i}"),
                ip: Ipv4Addr::new(10, 77, 0, u8::try_from(i + 1).expect("n ≤ 250")),
            };
            // Pushed first: a failure below still deletes what was made.
            bed.hosts.push(host.clone());
            ip(None, &["netns", "add", &host.ns])?;
            let port = format!("h{i}");
            ip(
                None,
                &[
                    "link",
                    "add",
                    "eth0",
                    "netns",
                    &host.ns,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &port,
                    "netns",
                    &bed.switch,
                ],
            )?;
            ip(
                Some(&bed.switch),
                &["link", "set", &port, "master", "br0", "up"],
            )?;
            ip(Some(&host.ns), &["link", "set", "lo", "up"])?;
            let cidr = format!("{}/24", host.ip);
            ip(Some(&host.ns), &["addr", "add", &cidr, "dev", "eth0"])?;
            ip(Some(&host.ns), &["link", "set", "eth0", "up"])?;
            nft(
                &host.ns,
                &format!(
                    "table inet {TABLE} {{\n\
                     chain input {{ type filter hook input priority 0; policy accept; }}\n\
                     chain output {{ type filter hook output priority 0; policy accept; }}\n\
                     }}\n"
                ),
            )?;
        }
        Ok(bed)
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// Drops every packet from host `from` to host `to` (one direction), at both ends.
    pub fn cut(&self, from: usize, to: usize) -> Result<()> {
        let (f, t) = (&self.hosts[from], &self.hosts[to]);
        nft(
            &f.ns,
            &format!("add rule inet {TABLE} output ip daddr {} drop\n", t.ip),
        )?;
        nft(
            &t.ns,
            &format!("add rule inet {TABLE} input ip saddr {} drop\n", f.ip),
        )
    }

    /// Cuts `a` and `b` apart in both directions.
    pub fn block(&self, a: usize, b: usize) -> Result<()> {
        self.cut(a, b)?;
        self.cut(b, a)
    }

    /// Splits `group` from `rest` in both directions; hosts in neither keep every link.
    pub fn partition(&self, group: &[usize], rest: &[usize]) -> Result<()> {
        for &a in group {
            for &b in rest {
                self.block(a, b)?;
            }
        }
        Ok(())
    }

    /// Removes every fault rule on every host.
    pub fn heal(&self) -> Result<()> {
        for h in &self.hosts {
            nft(
                &h.ns,
                &format!("flush chain inet {TABLE} input\nflush chain inet {TABLE} output\n"),
            )?;
        }
        Ok(())
    }

    /// The fault rules in place, one line per host that has any (for failure messages).
    pub fn rules(&self) -> String {
        let mut s = String::new();
        for h in &self.hosts {
            let out = Command::new("ip")
                .args([
                    "netns", "exec", &h.ns, "nft", "list", "table", "inet", TABLE,
                ])
                .output();
            let drops: Vec<String> = out
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("drop"))
                .map(|l| l.trim().to_string())
                .collect();
            if !drops.is_empty() {
                let _ = writeln!(s, "{} ({}): {}", h.ns, h.ip, drops.join("; "));
            }
        }
        s
    }

    /// Host `host`'s own directory under `base`, named after its namespace, so that
    /// [`sweep_stale`] recognises what a dead run left running from it.
    pub fn host_dir(&self, host: usize, base: &Path) -> PathBuf {
        base.join(&self.hosts[host].ns)
    }

    /// Starts an OpenSSH server in host `host`'s namespace, on its address and [`SSH_PORT`],
    /// accepting the client key `client_pub`, with its files in `host_dir(host, base)/sshd`.
    /// Killed on drop.
    pub fn start_sshd(&self, host: usize, base: &Path, client_pub: &str) -> Result<Sshd> {
        let h = &self.hosts[host];
        let dir = self.host_dir(host, base).join("sshd");
        let addr = SocketAddr::from((h.ip, SSH_PORT));
        self.block_on_in(host, || Sshd::start(&dir, addr, client_pub, Some(&h.ns)))
            .with_context(|| format!("sshd on {} ({})", h.ns, h.ip))
    }

    /// The host whose namespace process `pid` runs in.
    pub fn host_of(&self, pid: i32) -> Option<usize> {
        use std::os::unix::fs::MetadataExt;
        let net = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
        self.hosts.iter().position(|h| {
            std::fs::metadata(format!("{NETNS_DIR}/{}", h.ns))
                .is_ok_and(|m| (m.dev(), m.ino()) == (net.dev(), net.ino()))
        })
    }

    /// Runs `dml args` on host `host` (`ip netns exec`), with the tests' cluster key, as an
    /// operator logged in there would.
    pub async fn dml(&self, host: usize, args: &[&str], timeout: Duration) -> Result<DmlOutput> {
        let bin = crate::bins::dml_bin()?;
        let mut all: Vec<&OsStr> = ["netns", "exec", self.hosts[host].ns.as_str()]
            .into_iter()
            .map(OsStr::new)
            .collect();
        all.push(bin.as_os_str());
        all.extend(args.iter().map(OsStr::new));
        crate::dml::run(Path::new("ip"), &all, timeout).await
    }

    /// Runs `f` to completion on a new thread inside host `host`'s namespace, on a
    /// current-thread runtime: every socket it opens and every process it spawns is there.
    pub fn block_on_in<T, F>(&self, host: usize, f: impl FnOnce() -> F + Send) -> Result<T>
    where
        F: Future<Output = Result<T>>,
        T: Send,
    {
        let path = format!("{NETNS_DIR}/{}", self.hosts[host].ns);
        std::thread::scope(|s| {
            s.spawn(|| -> Result<T> {
                let fd = std::fs::File::open(&path)
                    .with_context(|| format!("cannot open \"{path}\""))?;
                nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("cannot enter \"{path}\""))?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = ip(None, &["netns", "del", &h.ns]);
        }
        let _ = ip(None, &["netns", "del", &self.switch]);
    }
}

/// (busy, total) jiffies of all CPUs, from /proc/stat: the machine's load over a soak.
pub fn cpu_busy_jiffies() -> Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat")?;
    let line = text.lines().next().context("/proc/stat is empty")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    ensure!(v.len() >= 5, "unexpected /proc/stat line {line}");
    let total: u64 = v.iter().sum();
    // idle and iowait are not busy.
    Ok((total - v[3] - v[4], total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_under_a_dead_runs_host_directory_are_stale() {
        // No process has pid u32::MAX.
        assert!(under_dead_bed(
            "/tmp/t/dmlb-4294967295-0-h1/sshd/sshd_config"
        ));
        let mine = format!("/tmp/t/dmlb-{}-0-h1/dml/bin/dml-agent", std::process::id());
        assert!(!under_dead_bed(&mine));
        assert!(!under_dead_bed(
            "/tmp/t/netbed-deploy-1-0-1/dml/bin/dml-agent"
        ));
    }
}
