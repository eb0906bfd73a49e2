//! `dml keyring` with real agents: a rotation (install, use, remove) across a running
//! 10-agent cluster while a client keeps putting and getting loses no request and no
//! member; an agent that was down during the rotation catches up when it is back; after
//! the old key is removed, a client or an agent holding only it is refused.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use anyhow::{Context, Result, bail, ensure};
use dml_shared::auth::{ClusterKey, Role};
use dml_tests::sdfs::{DML, READY, SDFS_POLL, SdfsCluster, cluster_slot};
use dml_tests::{AgentSpec, TestDir, run_dml, wait_until};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Bound on a keyring change reaching every live agent (each asks every second) on a
/// loaded machine.
const CONVERGE: Duration = Duration::from_secs(30);

/// `dml --key-file <key> --agent <agent> --json <args>`, parsed; fails unless it exits 0.
async fn dml_json(key: &Path, agent: SocketAddr, args: &[&str]) -> Result<Value> {
    let (k, a) = (key.to_string_lossy(), agent.to_string());
    let mut all = vec!["--key-file", &k, "--agent", &a, "--json"];
    all.extend_from_slice(args);
    let out = run_dml(&all, DML).await?;
    out.ensure_success()?;
    out.json()
}

/// Writes `key` to `path` (mode 0600), replacing it in one rename.
fn write_key(path: &Path, key: &ClusterKey) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{}\n", key.to_hex()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The listing of `fp` in `dml keyring list --json`.
fn listing<'a>(list: &'a Value, fp: &str) -> Option<&'a Value> {
    list["keys"]
        .as_array()?
        .iter()
        .find(|k| k["fingerprint"] == fp)
}

/// Waits until `dml keyring list` (through `agent`) says `want` of `fp`:
/// (installed_on, primary_on) on `agents` live agents, or `None`: gone everywhere.
async fn wait_list(
    key: &Path,
    agent: SocketAddr,
    fp: &str,
    agents: u64,
    want: Option<(u64, u64)>,
) -> Result<()> {
    wait_until(
        &format!("key {fp} at {want:?} of {agents}"),
        CONVERGE,
        SDFS_POLL,
        async || {
            let l = dml_json(key, agent, &["keyring", "list"]).await?;
            let got = listing(&l, fp).map(|k| {
                (
                    k["installed_on"].as_u64().unwrap_or(0),
                    k["primary_on"].as_u64().unwrap_or(0),
                )
            });
            ensure!(l["agents"] == agents && got == want, "{l}");
            Ok(())
        },
    )
    .await
}

/// A client putting and getting through every agent in turn until told to stop, with the
/// key in `key` (re-read by each `dml` run). Counts what succeeded; records what failed.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Traffic {
    fn start(key: PathBuf, agents: Vec<SocketAddr>, scratch: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let (s, o) = (stop.clone(), ok.clone());
        let task = tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut n = 0usize;
            while !s.load(Ordering::Relaxed) {
                let agent = agents[n % agents.len()];
                let name = format!("rot/{n}");
                let body = format!("written during the rotation, #{n}\n");
                let local = scratch.join(format!("{n}.txt"));
                let got = scratch.join(format!("{n}.got"));
                let step = async {
                    std::fs::write(&local, &body)?;
                    let l = local.to_string_lossy().into_owned();
                    dml_json(&key, agent, &["put", &l, &name]).await?;
                    let g = got.to_string_lossy().into_owned();
                    let reader = agents[(n + 3) % agents.len()];
                    dml_json(&key, reader, &["get", &name, &g]).await?;
                    ensure!(
                        std::fs::read_to_string(&got)? == body,
                        "{name} read back other bytes"
                    );
                    Ok::<_, anyhow::Error>(())
                };
                match step.await {
                    Ok(()) => {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.push(format!("{name} via {agent}: {e:#}")),
                }
                n += 1;
            }
            failures
        });
        Self { stop, ok, task }
    }

    /// Waits for `more` successful rounds beyond what succeeded so far.
    async fn wait_rounds(&self, more: u64) -> Result<()> {
        let want = self.ok.load(Ordering::Relaxed) + more;
        wait_until("client rounds", CONVERGE, SDFS_POLL, async || {
            let n = self.ok.load(Ordering::Relaxed);
            ensure!(n >= want, "{n} of {want}");
            Ok(())
        })
        .await
    }

    async fn finish(self) -> Result<(u64, Vec<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.task.await?;
        Ok((self.ok.load(Ordering::Relaxed), failures))
    }
}

/// `declared_failed` of every agent, and that each lists `n` alive members.
async fn membership_intact(key: &Path, addrs: &[SocketAddr]) -> Result<Vec<u64>> {
    let mut declared = Vec::new();
    for a in addrs {
        let m = dml_json(key, *a, &["members"]).await?;
        let alive = m
            .as_array()
            .context("members is a list")?
            .iter()
            .filter(|m| m["state"] == "alive")
            .count();
        if alive != addrs.len() {
            bail!("{a} sees {alive} of {} alive: {m}", addrs.len());
        }
        let s = dml_json(key, *a, &["stats"]).await?;
        declared.push(s["declared_failed"].as_u64().context("declared_failed")?);
    }
    Ok(declared)
}

#[tokio::test]
async fn a_rotation_across_ten_agents_loses_no_request_and_no_member() {
    let _slot = cluster_slot().await;
    let c = SdfsCluster::start("keyring-rotate", 10).await.unwrap();
    let dir = TestDir::new("keyring-rotate-keys").unwrap();
    let old_path = dml_tests::key::path().unwrap();
    let old = ClusterKey::load(&old_path).unwrap();
    let new_path = dir.path().join("new.key");
    let new = dml_tests::key::other(&new_path).unwrap();
    let (fp_old, fp_new) = (old.fingerprint(), new.fingerprint());
    let client_key = dir.path().join("client.key");
    write_key(&client_key, &old).unwrap();
    let scratch = dir.path().join("traffic");
    std::fs::create_dir_all(&scratch).unwrap();
    let a0 = c.addrs[0];

    let before = membership_intact(&old_path, &c.addrs).await.unwrap();
    let traffic = Traffic::start(client_key.clone(), c.addrs.clone(), scratch);
    traffic.wait_rounds(2).await.unwrap();

    // Install: accepted everywhere, primary nowhere yet.
    let from = new_path.to_string_lossy();
    let out = dml_json(
        &old_path,
        c.addrs[3],
        &["keyring", "install", "--from", &from],
    )
    .await
    .unwrap();
    assert_eq!(out["fingerprint"], fp_new.as_str(), "{out}");
    assert!(
        !out.to_string().contains(&new.to_hex()),
        "a secret printed: {out}"
    );
    wait_list(&old_path, a0, &fp_new, 10, Some((10, 0)))
        .await
        .unwrap();
    traffic.wait_rounds(2).await.unwrap();

    // Use: every agent switches to sending with the new key.
    let out = dml_json(&old_path, c.addrs[5], &["keyring", "use", &fp_new])
        .await
        .unwrap();
    assert_eq!(out["changed"], true, "{out}");
    wait_list(&old_path, a0, &fp_new, 10, Some((10, 10)))
        .await
        .unwrap();
    traffic.wait_rounds(2).await.unwrap();
    // The client moves to the new key before the old one goes.
    write_key(&client_key, &new).unwrap();
    traffic.wait_rounds(2).await.unwrap();

    // Removing the primary is refused, naming why.
    let out = run_dml(
        &[
            "--key-file",
            &from,
            "--agent",
            &a0.to_string(),
            "keyring",
            "remove",
            &fp_new,
        ],
        DML,
    )
    .await
    .unwrap();
    assert!(
        !out.status.success() && out.stderr.contains("is the primary"),
        "{out:?}"
    );
    let out = run_dml(
        &[
            "--key-file",
            &from,
            "--agent",
            &a0.to_string(),
            "keyring",
            "use",
            "0123456789abcdef",
        ],
        DML,
    )
    .await
    .unwrap();
    assert!(
        !out.status.success()
            && out
                .stderr
                .contains("no key with fingerprint \"0123456789abcdef\""),
        "{out:?}"
    );

    // Remove: the old key is gone everywhere.
    dml_json(&new_path, c.addrs[7], &["keyring", "remove", &fp_old])
        .await
        .unwrap();
    wait_list(&new_path, a0, &fp_old, 10, None).await.unwrap();
    traffic.wait_rounds(3).await.unwrap();
    let (rounds, failures) = traffic.finish().await.unwrap();
    eprintln!("{rounds} put/get rounds during the rotation");
    assert!(
        failures.is_empty(),
        "{} of {rounds} rounds failed: {failures:#?}",
        failures.len()
    );

    // No member was ever declared failed.
    let after = membership_intact(&new_path, &c.addrs).await.unwrap();
    assert_eq!(before, after, "declared_failed per agent changed");

    // A client holding only the old key is refused, and told why.
    let out = run_dml(
        &[
            "--key-file",
            &old_path.to_string_lossy(),
            "--agent",
            &a0.to_string(),
            "members",
        ],
        DML,
    )
    .await
    .unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains("does not hold cluster key"),
        "{}",
        out.stderr
    );

    // Each agent keeps its keyring, private, in its data directory.
    let kept = c.data_dir(4).join("keyring.toml");
    let text = std::fs::read_to_string(&kept).unwrap();
    assert!(
        text.contains(&new.to_hex()) && !text.contains(&old.to_hex()),
        "{text}"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&kept).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn an_agent_down_during_the_rotation_catches_up_and_one_with_only_the_removed_key_cannot_join()
 {
    let _slot = cluster_slot().await;
    let mut c = SdfsCluster::start("keyring-rejoin", 5).await.unwrap();
    let dir = TestDir::new("keyring-rejoin-keys").unwrap();
    let old_path = dml_tests::key::path().unwrap();
    let old = ClusterKey::load(&old_path).unwrap();
    let new_path = dir.path().join("new.key");
    let new = dml_tests::key::other(&new_path).unwrap();
    let (fp_old, fp_new) = (old.fingerprint(), new.fingerprint());
    let a0 = c.addrs[0];
    let from = new_path.to_string_lossy().into_owned();

    // Agent 4 is down for install and use: it comes back holding only the old key.
    c.kill(4).await.unwrap();
    dml_json(&old_path, a0, &["keyring", "install", "--from", &from])
        .await
        .unwrap();
    // `use` is refused until membership no longer counts agent 4 live.
    wait_until("use accepted", READY, SDFS_POLL, async || {
        dml_json(&old_path, a0, &["keyring", "use", &fp_new])
            .await
            .map(drop)
    })
    .await
    .unwrap();
    wait_list(&old_path, a0, &fp_new, 4, Some((4, 4)))
        .await
        .unwrap();

    c.restart(4).await.unwrap();
    wait_list(&new_path, a0, &fp_new, 5, Some((5, 5)))
        .await
        .unwrap();
    dml_json(&new_path, a0, &["keyring", "remove", &fp_old])
        .await
        .unwrap();
    wait_list(&new_path, a0, &fp_old, 5, None).await.unwrap();

    // The cluster, agent 4 included, keeps working with the new key only.
    let local = dir.path().join("after.txt");
    std::fs::write(&local, b"after the rotation\n").unwrap();
    let l = local.to_string_lossy();
    dml_json(&new_path, c.addrs[4], &["put", &l, "after"])
        .await
        .unwrap();
    let got = dir.path().join("after.got");
    let g = got.to_string_lossy();
    dml_json(&new_path, c.addrs[2], &["get", "after", &g])
        .await
        .unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), b"after the rotation\n");
    let m = dml_json(&new_path, c.addrs[4], &["members"]).await.unwrap();
    let alive = m
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] == "alive")
        .count();
    assert_eq!(alive, 5, "{m}");

    // Restarted again, agent 4's kept keyring wins over its key file (the removed key);
    // a bad keyring file stops it with an error naming the file and the fault.
    c.kill(4).await.unwrap();
    let kept = c.data_dir(4).join("keyring.toml");
    let good = std::fs::read_to_string(&kept).unwrap();
    let bad = good.replacen(&new.to_hex(), &new.to_hex()[2..], 1);
    std::fs::write(&kept, &bad).unwrap();
    let config = c.agent(4).config_path();
    let agent_bin = dml_tests::bins::agent_bin().unwrap();
    let out = dml_tests::dml::run(&agent_bin, &["--config", &config.to_string_lossy()], DML)
        .await
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains("keyring.toml") && out.stderr.contains("62 characters"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains(&new.to_hex()[2..]),
        "a secret in: {}",
        out.stderr
    );
    std::fs::write(&kept, &good).unwrap();
    c.restart(4).await.unwrap();
    wait_until(
        "agent 4 back with its kept keyring",
        CONVERGE,
        SDFS_POLL,
        async || {
            let m = dml_json(&new_path, c.addrs[4], &["members"]).await?;
            let alive = m
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["state"] == "alive")
                .count();
            ensure!(alive == 5, "{m}");
            Ok(())
        },
    )
    .await
    .unwrap();
    wait_list(&new_path, a0, &fp_new, 5, Some((5, 5)))
        .await
        .unwrap();

    // Bad input is named.
    let a = a0.to_string();
    let out = run_dml(
        &["--key-file", &from, "--agent", &a, "keyring", "use", "xyz"],
        DML,
    )
    .await
    .unwrap();
    assert!(
        out.stderr.contains("\"xyz\" is not a key fingerprint"),
        "{out:?}"
    );
    let out = run_dml(
        &[
            "--key-file",
            &from,
            "--agent",
            &a,
            "keyring",
            "install",
            "abcd",
        ],
        DML,
    )
    .await
    .unwrap();
    assert!(out.stderr.contains("64 hex digits"), "{out:?}");

    // Keyring requests need an admin credential: a read-only one (derived from the new
    // key) is refused by name, an admin one may list.
    let read_only = dir.path().join("read-only.key");
    write_key(&read_only, &new.credential(Role::ReadOnly)).unwrap();
    let r = read_only.to_string_lossy();
    let out = run_dml(&["--key-file", &r, "--agent", &a, "keyring", "list"], DML)
        .await
        .unwrap();
    assert!(
        out.stderr
            .contains("a read-only credential cannot list the keyring"),
        "{out:?}"
    );
    let admin = dir.path().join("admin.key");
    write_key(&admin, &new.credential(Role::Admin)).unwrap();
    let l = dml_json(&admin, a0, &["keyring", "list"]).await.unwrap();
    assert_eq!(l["keys"].as_array().map(Vec::len), Some(1), "{l}");

    // An agent holding only the removed key (a fresh data directory seeded from the
    // old key file) cannot join: the introducer drops its datagrams.
    let dropped = |s: &Value| s["udp_unauthenticated"].as_u64().unwrap_or(0);
    let before = dropped(&dml_json(&new_path, a0, &["stats"]).await.unwrap());
    let spec = AgentSpec::new("stale", c.cluster.membership().clone()).introducer(a0);
    let i = c.cluster.spawn(spec).await.unwrap();
    let stale = c.cluster.pick(&[i])[0].addr();
    wait_until(
        "the stale agent's datagrams dropped",
        CONVERGE,
        SDFS_POLL,
        async || {
            let now = dropped(&dml_json(&new_path, a0, &["stats"]).await?);
            ensure!(now >= before + 3, "{before} -> {now}");
            Ok(())
        },
    )
    .await
    .unwrap();
    // It says why.
    let log = c.cluster.pick(&[i])[0].stderr();
    assert!(log.contains("refused this agent's keys"), "{log}");
    for a in &c.addrs {
        let m = dml_json(&new_path, *a, &["members"]).await.unwrap();
        assert!(
            m.as_array()
                .unwrap()
                .iter()
                .all(|m| m["addr"] != stale.to_string()),
            "{a} lists the agent with the removed key: {m}"
        );
    }
}
