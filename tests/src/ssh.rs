//! What the `dml cluster` tests share: a throwaway OpenSSH server (its own host key, config
//! and authorized client key in a test directory; killed on drop), client keys, known_hosts
//! lines, and a guard over the agents `dml cluster up` started.
//!
//! [`crate::netbed::Bed::start_sshd`] runs one inside a namespace host.

use crate::wait::wait_for;
use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The OpenSSH server (Debian package openssh-server, installed by `scripts/setup.sh`).
pub const SSHD: &str = "/usr/sbin/sshd";
/// Time for a new sshd to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);

/// Whether sshd is installed. Without it, a test skips (saying so), except under CI, where
/// its absence fails.
pub fn sshd_installed() -> bool {
    if Path::new(SSHD).exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{SSHD} missing: scripts/setup.sh installs openssh-server"
    );
    eprintln!("skipped: {SSHD} is not installed");
    false
}

fn sh(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Writes a new ed25519 key pair without passphrase to `path` and `path.pub`; returns the
/// public key line.
pub fn keygen(path: &Path) -> Result<String> {
    sh(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "dml-test", "-f"])
        .arg(path))?;
    Ok(std::fs::read_to_string(path.with_extension("pub"))?)
}

/// The user this process runs as: the one the tests log in as.
pub fn user() -> Result<String> {
    let out = Command::new("id")
        .arg("-un")
        .output()
        .context("cannot run `id -un`")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The known_hosts line of a server at `address:port` whose public key line is `host_pub`
/// (`[address]:port` unless the port is 22, as `ssh-keyscan` writes it).
pub fn known_hosts_line(address: &str, port: u16, host_pub: &str) -> String {
    let mut parts = host_pub.split_whitespace();
    let (kind, key) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if port == 22 {
        format!("{address} {kind} {key}\n")
    } else {
        format!("[{address}]:{port} {kind} {key}\n")
    }
}

/// A running sshd, killed on drop.
pub struct Sshd {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
    host_pub: String,
}

impl Sshd {
    /// Starts sshd on `addr` with its files in `dir` (created): `host_key`, `sshd_config`,
    /// `authorized_keys` (holding `client_pub`), `sshd.pid` and `sshd.log`. It runs in network
    /// namespace `netns` when one is given (`ip netns exec`). Waits until `addr` accepts a
    /// connection from the caller's namespace, so call it from inside `netns`.
    pub async fn start(
        dir: &Path,
        addr: SocketAddr,
        client_pub: &str,
        netns: Option<&str>,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create \"{}\"", dir.display()))?;
        let host_pub = keygen(&dir.join("host_key"))?;
        std::fs::write(dir.join("authorized_keys"), client_pub)?;
        // Privilege separation needs this directory.
        std::fs::create_dir_all("/run/sshd")?;
        let cfg = dir.join("sshd_config");
        std::fs::write(
            &cfg,
            format!(
                "ListenAddress {addr}\n\
                 HostKey {d}/host_key\n\
                 PidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\n\
                 PermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 Subsystem sftp internal-sftp\n",
                d = dir.display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("sshd.log"))?;
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, SSHD]);
                c
            }
            None => Command::new(SSHD),
        };
        let child = cmd
            .args(["-D", "-e", "-f"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start sshd")?;
        let mut sshd = Sshd {
            child,
            dir: dir.to_path_buf(),
            addr,
            host_pub,
        };
        wait_for(
            "sshd to listen",
            LISTEN_TIMEOUT,
            Duration::from_millis(50),
            async || {
                if let Some(st) = sshd.child.try_wait()? {
                    bail!("sshd exited ({st}): {}", sshd.log());
                }
                tokio::net::TcpStream::connect(addr).await?;
                Ok(())
            },
        )
        .await?;
        Ok(sshd)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its line for a known_hosts file.
    pub fn known_hosts_line(&self) -> String {
        known_hosts_line(
            &self.addr.ip().to_string(),
            self.addr.port(),
            &self.host_pub,
        )
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Processes whose command line `f` accepts (its arguments, split at NULs).
pub fn processes(f: impl Fn(&[String]) -> bool) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<String> = c
                    .split(|b| *b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                f(&args)
            })
        })
        .collect()
}

/// The agent `up` starts from remote directory `dir`, as its command line names it.
fn agent_path(dir: &Path) -> String {
    format!("{}/bin/dml-agent", dir.display())
}

/// Whether `pid` runs `dir/bin/dml-agent`.
pub fn is_agent(pid: i32, dir: &Path) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        c.split(|b| *b == 0)
            .next()
            .is_some_and(|a0| a0 == agent_path(dir).as_bytes())
    })
}

/// Every process running `dir/bin/dml-agent`.
pub fn agent_pids(dir: &Path) -> Vec<i32> {
    let path = agent_path(dir);
    processes(|args| args.first() == Some(&path))
}

/// Kills, on drop, every agent running from one of these remote directories.
pub struct DeployedAgents(pub Vec<PathBuf>);

impl Drop for DeployedAgents {
    fn drop(&mut self) {
        for dir in &self.0 {
            for pid in agent_pids(dir) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}
