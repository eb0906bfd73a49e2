//! The console end to end, in tmux (`new-session -d -x 160 -y 48`, `send-keys`,
//! `capture-pane`) against a real local cluster: it shows every member, `+` on a
//! model changes the batch size `dml models` reports, a `:` line runs a `dml`
//! command and Up recalls it, Enter and `L` show a member with its log, and
//! after the agent it is connected to is killed it reconnects to another.
//!
//! Needs tmux (installed by `scripts/setup.sh`) and the binaries
//! (`cargo build --workspace --bins`).

use anyhow::{Context, Result, bail};
use dml_tests::bins::dml_bin;
use dml_tests::sdfs::{SdfsCluster, cluster_slot};
use dml_tests::wait_for;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

const AGENTS: usize = 5;
/// Time for the console to show something that the cluster already has.
const SHOW: Duration = Duration::from_secs(30);
/// Time for a failover: detection by the console plus a new election.
const FAILOVER: Duration = Duration::from_secs(45);
const POLL: Duration = Duration::from_millis(100);

/// A tmux server of its own (`-L`), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(cmd: &[String]) -> Result<Self> {
        let socket = format!("dml-console-test-{}", std::process::id());
        let t = Self { socket };
        let mut args: Vec<String> = [
            "new-session",
            "-d",
            "-x",
            "160",
            "-y",
            "48",
            "-s",
            "console",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        args.extend(cmd.iter().cloned());
        t.run(&args)?;
        Ok(t)
    }

    fn run(&self, args: &[String]) -> Result<String> {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .context("cannot run tmux; install it (scripts/setup.sh does)")?;
        if !out.status.success() {
            bail!(
                "tmux {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn keys(&self, keys: &[&str]) -> Result<()> {
        let mut args = vec!["send-keys".to_string(), "-t".into(), "console".into()];
        args.extend(keys.iter().map(ToString::to_string));
        self.run(&args).map(drop)
    }

    fn capture(&self) -> Result<String> {
        self.run(&[
            "capture-pane".into(),
            "-p".into(),
            "-t".into(),
            "console".into(),
        ])
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}

/// The agent the status bar says the console streams from while live.
fn live_agent(screen: &str) -> Option<SocketAddr> {
    let status = screen.lines().next()?;
    let rest = &status[status.find("● ")? + "● ".len()..];
    let (addr, after) = rest.split_once(' ')?;
    after.starts_with("live").then(|| addr.parse().ok())?
}

/// Polls the screen until `cond` holds; the error shows the last screen.
async fn wait_screen(
    t: &Tmux,
    what: &str,
    timeout: Duration,
    cond: impl Fn(&str) -> bool,
) -> Result<String> {
    let mut last = String::new();
    let r = wait_for(what, timeout, POLL, async || {
        let s = t.capture()?;
        last.clone_from(&s);
        if cond(&s) {
            Ok(s)
        } else {
            bail!("not on screen yet")
        }
    })
    .await;
    r.with_context(|| format!("last screen:\n{last}"))
}

/// The first model `dml models` lists (the one the console selects first) and its batch size.
async fn first_model(c: &SdfsCluster, via: usize) -> Result<(String, u64, u64)> {
    let out = c.dml(via, &["models", "--json"]).await?;
    out.ensure_success()?;
    let v = out.json()?;
    let m = v
        .as_array()
        .and_then(|a| a.first())
        .with_context(|| format!("no models in {v}"))?;
    Ok((
        m["name"].as_str().context("model name")?.to_string(),
        m["batch_size"].as_u64().context("batch size")?,
        m["max_batch"].as_u64().context("max batch")?,
    ))
}

#[tokio::test]
async fn the_console_shows_members_changes_batch_size_and_survives_its_agent() {
    let _slot = cluster_slot().await;
    let mut c = SdfsCluster::start("console-tmux", AGENTS).await.unwrap();
    let dml = dml_bin().unwrap();
    let start = c.addrs[1];
    let t = Tmux::start(&[
        dml.to_string_lossy().into_owned(),
        "--key-file".into(),
        dml_tests::key::path()
            .unwrap()
            .to_string_lossy()
            .into_owned(),
        "--connect".into(),
        start.to_string(),
    ])
    .unwrap();

    // Every member, the status bar's count, and a live stream. The console
    // moves from the agent it was given to the leader, so members can be on
    // screen while it is still connecting.
    let want = format!("{AGENTS}/{AGENTS} alive");
    let addrs = c.addrs.clone();
    wait_screen(&t, "every member on screen, streaming live", SHOW, |s| {
        s.contains(&want)
            && addrs.iter().all(|a| s.contains(&a.to_string()))
            && live_agent(s).is_some()
    })
    .await
    .unwrap();

    // `dml screenshot` draws the same console off-screen: every member and the
    // live count are in the picture.
    let svg = c.dir().join("console.svg");
    let out = dml_tests::dml::run_dml(
        &[
            "--agent",
            &start.to_string(),
            "screenshot",
            "--out",
            svg.to_str().unwrap(),
            "--settle-secs",
            "3",
        ],
        SHOW,
    )
    .await
    .unwrap();
    out.ensure_success().unwrap();
    let picture = std::fs::read_to_string(&svg).unwrap();
    assert!(picture.starts_with("<svg"), "{picture}");
    for a in &addrs {
        assert!(
            picture.contains(&a.to_string()),
            "{a} not in the screenshot"
        );
    }
    assert!(picture.contains(&want), "no \"{want}\" in the screenshot");

    // `+` on the models pane: the first model's batch size goes up by one in `dml`.
    let (model, before, max) = first_model(&c, 0).await.unwrap();
    let (key, after) = if before < max {
        ("+", before + 1)
    } else {
        ("-", before - 1)
    };
    wait_screen(&t, "the models pane lists the model", SHOW, |s| {
        s.contains(&model)
    })
    .await
    .unwrap();
    t.keys(&["Tab"]).unwrap();
    t.keys(&[key]).unwrap();
    let mut seen = before;
    wait_for(
        "dml to report the new batch size",
        SHOW,
        Duration::from_millis(300),
        async || {
            seen = first_model(&c, 2).await?.1;
            if seen != after {
                bail!("batch size still {seen}");
            }
            Ok(())
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{model}: batch size {seen}, wanted {after}: {e:#}\n{}",
            t.capture().unwrap_or_default()
        )
    });
    // The change is cluster-wide: the result says how to undo it.
    wait_screen(&t, "the console to show the result and the undo", SHOW, |s| {
        s.contains(&format!(
            "{model}: batch size {before} -> {after} on every worker; undo: :set-batch-size {model} {before}"
        ))
    })
    .await
    .unwrap();

    // `:` runs a dml command line and shows what `dml` prints; Up recalls it.
    t.keys(&["Escape", ":", "sdfs count --json", "Enter"])
        .unwrap();
    wait_screen(&t, "the :sdfs count result", SHOW, |s| {
        s.contains("\"versions\"")
    })
    .await
    .unwrap();
    t.keys(&["Escape", ":", "Up"]).unwrap();
    wait_screen(&t, "Up to recall the line", SHOW, |s| {
        s.contains(":sdfs count --json")
    })
    .await
    .unwrap();
    t.keys(&["C-u", "members --bogus", "Enter"]).unwrap();
    wait_screen(&t, "clap's refusal of a bad flag", SHOW, |s| {
        s.contains("unexpected argument '--bogus'")
    })
    .await
    .unwrap();

    // Enter on a member: its details and the tail of its own log; L: its log.
    t.keys(&["BTab", "Enter"]).unwrap();
    wait_screen(&t, "a member's details with its log", SHOW, |s| {
        s.contains("probed by") && s.contains("log of 127.0.0.1:") && s.contains("INFO")
    })
    .await
    .unwrap();
    t.keys(&["Escape", "L"]).unwrap();
    wait_screen(&t, "the member's log view", SHOW, |s| {
        s.contains(" of ") && s.contains("Esc closes") && s.contains("INFO")
    })
    .await
    .unwrap();
    t.keys(&["Escape"]).unwrap();

    // Kill the agent the console streams from (the leader, which it follows):
    // it moves to another live member.
    let screen = wait_screen(&t, "the console to follow the leader", SHOW, |s| {
        live_agent(s).is_some_and(|a| s.contains(&format!("leader {a}")))
    })
    .await
    .unwrap();
    let connected = live_agent(&screen).unwrap();
    let i = c.index_of(connected).unwrap();
    let killed = std::time::Instant::now();
    c.kill(i).await.unwrap();
    let screen = wait_screen(&t, "the console to reconnect elsewhere", FAILOVER, |s| {
        live_agent(s).is_some_and(|a| a != connected) && s.contains("failovers: ")
    })
    .await
    .unwrap();
    // A figure for the log, not an assertion: how long the switch took.
    eprintln!(
        "the console streamed live again {:?} after its agent was killed",
        killed.elapsed()
    );
    let now = live_agent(&screen).unwrap();
    assert!(c.addrs.contains(&now) && now != connected, "{screen}");

    // Quitting restores the terminal: the session's command exits.
    t.keys(&["q"]).unwrap();
    wait_for("the console to exit on q", SHOW, POLL, async || {
        match t.capture() {
            Ok(_) => bail!("still running"),
            Err(_) => Ok(()),
        }
    })
    .await
    .unwrap();
}
