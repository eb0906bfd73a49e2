//! `dml cluster up|status|down` against a real OpenSSH server: a throwaway
//! sshd on 127.0.0.1 (its own host key, config and authorized key), three
//! "hosts" that are all this machine through it, each with its own agent
//! port and remote directory.

use anyhow::{Context, Result, bail};
use dml_shared::client::Client;
use dml_tests::dir::TestDir;
use dml_tests::dml::run_dml;
use dml_tests::ports::{free_fixed_addr, free_local_addr};
use dml_tests::ssh::{self, DeployedAgents, Sshd, is_agent};
use dml_tests::wait::wait_for;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

fn host_entries(v: &Value) -> Vec<Value> {
    v["hosts"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_up_status_down_over_a_real_sshd() -> Result<()> {
    if !ssh::sshd_installed() {
        return Ok(());
    }
    let tmp = TestDir::new("ssh-deploy")?;
    let dir = tmp.path().canonicalize()?;
    let client_pub = ssh::keygen(&dir.join("client_key"))?;
    let port = free_local_addr()?.port();
    let sshd = Sshd::start(
        &dir.join("sshd"),
        SocketAddr::from(([127, 0, 0, 1], port)),
        &client_pub,
        None,
    )
    .await?;
    std::fs::write(dir.join("known_hosts"), sshd.known_hosts_line())?;
    std::fs::write(dir.join("empty_known_hosts"), "")?;

    let agents: Vec<SocketAddr> = (0..3).map(|_| free_fixed_addr()).collect::<Result<_>>()?;
    let remote: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("host-{i}"))).collect();
    let _guard = DeployedAgents(remote.clone());
    let user = ssh::user()?;
    let mut hosts = format!(
        "key_file = \"{d}/client_key\"\nknown_hosts = \"{d}/known_hosts\"\nlauncher = \"tmux\"\n\
         [config]\npreset = \"local\"\n[config.inference]\nworker = false\n",
        d = dir.display()
    );
    for (i, (a, r)) in agents.iter().zip(&remote).enumerate() {
        hosts += &format!(
            "[[hosts]]\nname = \"h{i}\"\naddress = \"127.0.0.1\"\nssh_port = {port}\n\
             user = \"{user}\"\nbind = \"{a}\"\nremote_dir = \"{}\"\n",
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
