//! `dml cluster up|status|down` against a real OpenSSH server: a throwaway
//! sshd on 127.0.0.1 (its own host key, config and authorized key), three
//! "hosts" that are all this machine through it, each with its own agent
//! port and remote directory.

use anyhow::{Context, Result, bail};
use dml_shared::client::Client;
use dml_tests::dir::TestDir;
use dml_tests::dml::run_dml;
use dml_tests::ports::{free_fixed_addr, free_local_addr};
use dml_tests::wait::wait_for;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SSHD: &str = "/usr/sbin/sshd";

/// Kills sshd on drop.
struct Sshd(Child);

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kills whatever agents the test left running (by their recorded pids) on drop.
struct Agents(Vec<PathBuf>);

impl Drop for Agents {
    fn drop(&mut self) {
        for dir in &self.0 {
            if let Ok(pid) = std::fs::read_to_string(dir.join("agent.pid"))
                && let Ok(pid) = pid.trim().parse::<i32>()
                && is_agent(pid, dir)
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Whether `pid` runs `dir/bin/dml-agent`.
fn is_agent(pid: i32, dir: &Path) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(&format!("{}/bin/dml-agent", dir.display())))
        .unwrap_or(false)
}

fn sh(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn keygen(path: &Path) -> Result<String> {
    sh(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "dml-test", "-f"])
        .arg(path))?;
    Ok(std::fs::read_to_string(path.with_extension("pub"))?)
}

fn user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Starts sshd on 127.0.0.1:`port` with a config in `dir`; returns it and the
/// known_hosts line of its host key.
async fn start_sshd(dir: &Path, port: u16, client_pub: &str) -> Result<(Sshd, String)> {
    let host_pub = keygen(&dir.join("host_key"))?;
    std::fs::write(dir.join("authorized_keys"), client_pub)?;
    // Privilege separation needs this directory.
    std::fs::create_dir_all("/run/sshd")?;
    let cfg = dir.join("sshd_config");
    std::fs::write(
        &cfg,
        format!(
            "ListenAddress 127.0.0.1\n\
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
    let child = Command::new(SSHD)
        .arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(&cfg)
        .arg("-p")
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("cannot start sshd")?;
    let mut sshd = Sshd(child);
    wait_for(
        "sshd to listen",
        Duration::from_secs(20),
        Duration::from_millis(50),
        async || {
            if let Some(st) = sshd.0.try_wait()? {
                bail!(
                    "sshd exited ({st}): {}",
                    std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
                );
            }
            std::net::TcpStream::connect(("127.0.0.1", port))?;
            Ok(())
        },
    )
    .await?;
    let mut parts = host_pub.split_whitespace();
    let known = format!(
        "[127.0.0.1]:{port} {} {}\n",
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("")
    );
    Ok((sshd, known))
}

fn host_entries(v: &Value) -> Vec<Value> {
    v["hosts"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_up_status_down_over_a_real_sshd() -> Result<()> {
    if !Path::new(SSHD).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{SSHD} missing: scripts/setup.sh installs openssh-server"
        );
        eprintln!("skipped: {SSHD} is not installed");
        return Ok(());
    }
    let tmp = TestDir::new("ssh-deploy")?;
    let dir = tmp.path().canonicalize()?;
    let client_pub = keygen(&dir.join("client_key"))?;
    let port = free_local_addr()?.port();
    let (_sshd, known) = start_sshd(&dir, port, &client_pub).await?;
    std::fs::write(dir.join("known_hosts"), &known)?;
    std::fs::write(dir.join("empty_known_hosts"), "")?;

    let agents: Vec<SocketAddr> = (0..3).map(|_| free_fixed_addr()).collect::<Result<_>>()?;
    let remote: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("host-{i}"))).collect();
    let _guard = Agents(remote.clone());
    let mut hosts = format!(
        "key_file = \"{d}/client_key\"\nknown_hosts = \"{d}/known_hosts\"\nlauncher = \"tmux\"\n\
         [config]\npreset = \"local\"\n[config.inference]\nworker = false\n",
        d = dir.display()
    );
    for (i, (a, r)) in agents.iter().zip(&remote).enumerate() {
        hosts += &format!(
            "[[hosts]]\nname = \"h{i}\"\naddress = \"127.0.0.1\"\nssh_port = {port}\n\
             user = \"{}\"\nbind = \"{a}\"\nremote_dir = \"{}\"\n",
            user(),
            r.display()
        );
    }
    // One host runs a worker: it must find the ONNX Runtime that `up` uploaded.
    hosts += "[hosts.config.inference]\nworker = true\n";
    let hosts_file = dir.join("hosts.toml");
    std::fs::write(&hosts_file, &hosts)?;
    let hf = hosts_file.to_str().unwrap();

    // An unknown host key is refused, naming the file.
    let strict = dir.join("strict.toml");
    std::fs::write(
        &strict,
        hosts.replace("/known_hosts\"", "/empty_known_hosts\""),
    )?;
    let out = run_dml(
        &[
            "cluster",
            "status",
            "--json",
            "--hosts",
            strict.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    )
    .await?;
    let v = out.ensure_success()?.json()?;
    for h in host_entries(&v) {
        let e = h["ssh_error"].as_str().unwrap_or("");
        assert!(
            e.contains("is not in") && e.contains("empty_known_hosts"),
            "{h}"
        );
        assert_eq!(h["answering"], false);
    }

    let out = run_dml(
        &[
            "cluster",
            "up",
            "--json",
            "--hosts",
            hf,
            "--wait-secs",
            "120",
        ],
        Duration::from_secs(400),
    )
    .await?;
    let up = out.ensure_success()?.json()?;
    let mut pids = Vec::new();
    for (i, h) in host_entries(&up).iter().enumerate() {
        assert!(h["error"].is_null(), "{h}");
        assert_eq!(
            h["launcher"],
            format!("tmux dml-agent-{}", agents[i].port())
        );
        assert_eq!(h["uploaded_agent"], true);
        let pid = h["pid"].as_i64().context("pid")? as i32;
        assert!(
            is_agent(pid, &remote[i]),
            "pid {pid} is not the agent of {}",
            remote[i].display()
        );
        assert!(remote[i].join("agent.toml").is_file());
        // ONNX Runtime's library, from this checkout's virtualenv, and the config naming it.
        let lib = remote[i].join("lib/libonnxruntime.so");
        assert_eq!(h["ort_dylib"], lib.to_str().unwrap(), "{h}");
        assert_eq!(h["uploaded_ort"], true);
        let local = dml_shared::ort_lib::search_venvs().expect("scripts/setup.sh made the venv");
        assert_eq!(
            std::fs::metadata(&lib)?.len(),
            std::fs::metadata(&local)?.len()
        );
        let cfg = std::fs::read_to_string(remote[i].join("agent.toml"))?;
        assert!(
            cfg.contains(&format!("ort_dylib = \"{}\"", lib.display())),
            "{cfg}"
        );
        pids.push(pid);
    }
    assert_eq!(pids.len(), 3);
    // The last host's worker loaded it without any manual setting.
    let log = remote[2].join("agent.log");
    wait_for(
        "the worker host to load ONNX Runtime",
        Duration::from_secs(60),
        Duration::from_millis(250),
        async || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("ONNX Runtime loaded") {
                Ok(())
            } else {
                bail!("{} has no \"ONNX Runtime loaded\" line", log.display())
            }
        },
    )
    .await?;

    // Every agent answers and sees all three live.
    for a in &agents {
        wait_for(
            "every agent to see three live members",
            Duration::from_secs(60),
            Duration::from_millis(200),
            async || {
                let m = Client::new(*a).members().await?;
                let live: Vec<SocketAddr> = m
                    .iter()
                    .filter(|m| m.state.is_live())
                    .map(|m| m.id.addr)
                    .collect();
                if agents.iter().all(|x| live.contains(x)) {
                    Ok(())
                } else {
                    bail!("{a} sees {live:?}")
                }
            },
        )
        .await?;
    }

    let out = run_dml(
        &["cluster", "status", "--json", "--hosts", hf],
        Duration::from_secs(60),
    )
    .await?;
    let st = out.ensure_success()?.json()?;
    for (i, h) in host_entries(&st).iter().enumerate() {
        assert_eq!(h["running"], true, "{h}");
        assert_eq!(h["answering"], true, "{h}");
        assert_eq!(h["pid"].as_i64(), Some(i64::from(pids[i])), "{h}");
        assert_eq!(h["members"].as_u64(), Some(3), "{h}");
    }
    // The table form too.
    let out = run_dml(
        &["cluster", "status", "--hosts", hf],
        Duration::from_secs(60),
    )
    .await?;
    let text = &out.ensure_success()?.stdout;
    assert_eq!(text.matches("running").count(), 3, "{text}");

    let out = run_dml(
        &["cluster", "down", "--json", "--hosts", hf],
        Duration::from_secs(120),
    )
    .await?;
    let down = out.ensure_success()?.json()?;
    for h in host_entries(&down) {
        assert_eq!(h["outcome"], "stopped", "{h}");
    }
    for (pid, r) in pids.iter().zip(&remote) {
        wait_for(
            "the agent process to be gone",
            Duration::from_secs(30),
            Duration::from_millis(100),
            async || {
                if is_agent(*pid, r) {
                    bail!("pid {pid} still runs")
                }
                Ok(())
            },
        )
        .await?;
        // It left gracefully: the log says so.
        let log = std::fs::read_to_string(r.join("agent.log"))?;
        assert!(log.contains("SIGTERM"), "{log}");
    }
    let out = run_dml(
        &["cluster", "status", "--json", "--hosts", hf],
        Duration::from_secs(60),
    )
    .await?;
    for h in host_entries(&out.ensure_success()?.json()?) {
        assert_eq!(h["running"], false, "{h}");
        assert_eq!(h["answering"], false, "{h}");
    }
    // Down again: nothing to stop, and no error.
    let out = run_dml(
        &["cluster", "down", "--json", "--hosts", hf],
        Duration::from_secs(60),
    )
    .await?;
    for h in host_entries(&out.ensure_success()?.json()?) {
        assert_eq!(h["outcome"], "not-running", "{h}");
    }
    Ok(())
}
