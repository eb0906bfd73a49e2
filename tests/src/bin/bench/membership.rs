//! The membership measurements for one system: join, traffic at rest, crash detection over
//! repeated SIGKILL + restart, and false positives under receive loss.

use crate::loss::LossRule;
use crate::node::{Kind, Node, System};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What the bench does, the same for both systems.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Params {
    pub nodes: usize,
    pub kills: usize,
    /// Window over which traffic at rest is measured.
    pub rest_secs: u64,
    pub loss_secs: u64,
    pub loss_percent: u32,
    /// How long to wait for every survivor to drop a killed member.
    pub detect_timeout_secs: u64,
    /// How long to wait for the cluster to converge after a (re)start.
    pub converge_timeout_secs: u64,
    /// Quiet time after convergence before the next measurement.
    pub settle_secs: u64,
}

/// One SIGKILL and what the survivors logged.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KillResult {
    pub victim: String,
    /// Seconds from SIGKILL to each survivor's `failed` event, in survivor order; `None` missed.
    pub per_survivor_s: Vec<Option<f64>>,
    /// Seconds until the last survivor removed it, if every survivor did.
    pub all_s: Option<f64>,
    /// Seconds until the first survivor removed it.
    pub first_s: Option<f64>,
    /// Agent only: survivors whose API still listed the victim as live once the log said failed.
    pub api_disagreements: Option<usize>,
    /// Seconds from restart until every member lists the new identity, if it converged.
    pub rejoin_s: Option<f64>,
}

/// Nearest-rank summary of a sample, in seconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub median: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Summary {
    pub fn of(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| -> Option<f64> {
            if v.is_empty() {
                return None;
            }
            let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            Some(v[i])
        };
        Self {
            n: v.len(),
            median: rank(0.5),
            p90: rank(0.9),
            p99: rank(0.99),
            max: v.last().copied(),
        }
    }
}

/// Payload traffic per member at rest.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Traffic {
    pub window_s: f64,
    pub sent_per_node_bps: Vec<f64>,
    pub recv_per_node_bps: Vec<f64>,
    pub sent_mean_bps: f64,
    pub sent_max_bps: f64,
    pub recv_mean_bps: f64,
    pub packets_sent_mean_ps: f64,
    pub packets_recv_mean_ps: f64,
}

/// False positives while one member loses part of what it receives.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LossResult {
    /// Why the loss phase did not run, if it did not.
    pub skipped: Option<String>,
    pub rule: Option<String>,
    pub lossy_member: Option<String>,
    pub secs: f64,
    /// Packets the rule dropped (nftables counter).
    pub dropped_packets: Option<u64>,
    /// `failed` events, in any member's log, about a member that was alive.
    pub false_failed_events: usize,
    /// Distinct live members that some member declared failed.
    pub members_wrongly_failed: usize,
    /// Agent only: sums over members of the counter increase during the phase.
    pub refuted: Option<u64>,
    pub false_failures: Option<u64>,
    pub suspicions: Option<u64>,
    /// Whether every member still saw every other at the end.
    pub converged_at_end: bool,
}

/// Everything measured for one system.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SystemReport {
    pub name: String,
    /// Why the system was not measured at all (binary missing, cluster never formed).
    pub skipped: Option<String>,
    /// An error that cut the run short; the figures before it are kept.
    pub error: Option<String>,
    pub join_s: Option<f64>,
    pub traffic: Traffic,
    pub kills: Vec<KillResult>,
    /// Per-kill time until every survivor removed the victim (fully detected kills only).
    pub detection: Summary,
    /// Per-kill time until the first survivor removed the victim.
    pub first_detection: Summary,
    pub rejoin: Summary,
    pub kills_fully_detected: usize,
    /// (kill, survivor) pairs where the survivor never logged the removal in time.
    pub survivor_misses: usize,
    pub survivor_checks: usize,
    /// Agent only: (kill, survivor) pairs whose API still listed the victim as live after
    /// the survivor's log said `failed`.
    pub api_disagreements: Option<usize>,
    /// `failed` events about members that were never killed, outside the loss phase.
    pub false_failed_without_loss: usize,
    pub loss: LossResult,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A running cluster of one system; every member is killed when it is dropped.
struct Cluster {
    system: System,
    dir: PathBuf,
    nodes: Vec<Node>,
    /// Restarts so far, to give every incarnation its own directory.
    starts: usize,
    /// Every identity that was ever killed, and when.
    killed: BTreeMap<String, u64>,
}

impl Cluster {
    async fn start(system: &System, dir: PathBuf, n: usize) -> Result<Self> {
        let mut c = Self {
            system: system.clone(),
            dir,
            nodes: Vec::with_capacity(n),
            starts: 0,
            killed: BTreeMap::new(),
        };
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let first = c.spawn(loopback, None).await?;
        let intro = first.addr;
        c.nodes.push(first);
        for _ in 1..n {
            let node = c.spawn(loopback, Some(intro)).await?;
            c.nodes.push(node);
        }
        Ok(c)
    }

    async fn spawn(&mut self, bind: SocketAddr, introducer: Option<SocketAddr>) -> Result<Node> {
        let dir = self.dir.join(format!("start-{:03}", self.starts));
        self.starts += 1;
        self.system.spawn(bind, introducer, &dir).await
    }

    fn introducer(&self) -> SocketAddr {
        self.nodes[0].addr
    }

    /// Why the cluster has not converged, or `Ok` once every member sees exactly the others.
    async fn check_converged(&mut self) -> Result<()> {
        let ids: BTreeSet<String> = self.nodes.iter().map(|n| n.id.clone()).collect();
        for node in &mut self.nodes {
            let view = node.live_view().await.with_context(|| node.id.clone())?;
            let mut want = ids.clone();
            want.remove(&node.id);
            if view != want {
                let missing: Vec<_> = want.difference(&view).collect();
                let extra: Vec<_> = view.difference(&want).collect();
                bail!("{} misses {missing:?} and has extra {extra:?}", node.id);
            }
        }
        Ok(())
    }

    /// Waits until converged; the time taken, or `None` after the timeout.
    async fn wait_converged(&mut self, timeout: Duration) -> Option<f64> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < timeout {
            match self.check_converged().await {
                Ok(()) => return Some(start.elapsed().as_secs_f64()),
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("  not converged after {timeout:?}: {last}");
        None
    }

    async fn counters(&mut self) -> Result<Vec<crate::node::Counters>> {
        let mut out = Vec::with_capacity(self.nodes.len());
        for n in &mut self.nodes {
            out.push(n.counters().await.with_context(|| n.id.clone())?);
        }
        Ok(out)
    }

    /// `failed` events with `ts_ms` in `[from, to)` about members that were alive then.
    fn false_failed(&self, from: u64, to: u64) -> Vec<String> {
        let mut out = Vec::new();
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        dirs.sort();
        for d in dirs {
            for e in crate::node::read_events(&d.join("events.jsonl")) {
                if e.event != "failed" || e.ts_ms < from || e.ts_ms >= to {
                    continue;
                }
                let wrongly = match self.killed.get(&e.member) {
                    Some(&killed_at) => e.ts_ms < killed_at,
                    None => true,
                };
                if wrongly {
                    out.push(e.member);
                }
            }
        }
        out
    }

    async fn stop(self) {
        for n in self.nodes {
            n.stop().await;
        }
    }
}

/// Runs every measurement on `system`, filling `rep` as it goes so that a failure late in
/// the run keeps what was measured before it.
pub async fn run(system: &System, p: &Params, dir: PathBuf, rep: &mut SystemReport) -> Result<()> {
    let converge_timeout = Duration::from_secs(p.converge_timeout_secs);
    let settle = Duration::from_secs(p.settle_secs);
    let t_begin = now_ms();

    eprintln!("[{}] starting {} members", system.name, p.nodes);
    let mut c = Cluster::start(system, dir, p.nodes).await?;
    rep.join_s = c.wait_converged(converge_timeout).await;
    match rep.join_s {
        Some(s) => eprintln!(
            "[{}] every member sees every other {s:.1} s after the last start",
            system.name
        ),
        None => {
            rep.skipped = Some("the cluster never converged at start".into());
            bail!("{} never converged at start", system.name)
        }
    }

    tokio::time::sleep(settle).await;
    rep.traffic = measure_traffic(&mut c, Duration::from_secs(p.rest_secs)).await?;
    eprintln!(
        "[{}] at rest: {:.0} B/s sent per member (max {:.0}), {:.0} B/s received",
        system.name, rep.traffic.sent_mean_bps, rep.traffic.sent_max_bps, rep.traffic.recv_mean_bps
    );

    for k in 0..p.kills {
        let victim = 1 + k % (p.nodes - 1);
        let r = kill_and_restart(&mut c, victim, p).await?;
        eprintln!(
            "[{}] kill {}/{}: {} → all {} first {} rejoin {}{}",
            system.name,
            k + 1,
            p.kills,
            r.victim,
            fmt_opt(r.all_s),
            fmt_opt(r.first_s),
            fmt_opt(r.rejoin_s),
            match r.per_survivor_s.iter().filter(|s| s.is_none()).count() {
                0 => String::new(),
                m => format!(" ({m} survivors missed it)"),
            }
        );
        rep.kills.push(r);
        tokio::time::sleep(settle).await;
    }
    let all: Vec<f64> = rep.kills.iter().filter_map(|k| k.all_s).collect();
    let first: Vec<f64> = rep.kills.iter().filter_map(|k| k.first_s).collect();
    let rejoin: Vec<f64> = rep.kills.iter().filter_map(|k| k.rejoin_s).collect();
    rep.detection = Summary::of(&all);
    rep.first_detection = Summary::of(&first);
    rep.rejoin = Summary::of(&rejoin);
    rep.kills_fully_detected = all.len();
    rep.survivor_checks = rep.kills.iter().map(|k| k.per_survivor_s.len()).sum();
    rep.survivor_misses = rep
        .kills
        .iter()
        .map(|k| k.per_survivor_s.iter().filter(|s| s.is_none()).count())
        .sum();

    rep.api_disagreements = rep.kills.iter().map(|k| k.api_disagreements).sum();

    let t_loss = now_ms();
    rep.false_failed_without_loss = c.false_failed(t_begin, t_loss).len();
    let loss = measure_loss(&mut c, p, &mut rep.loss).await;
    c.stop().await;
    loss
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), |s| format!("{s:.2}s"))
}

async fn measure_traffic(c: &mut Cluster, window: Duration) -> Result<Traffic> {
    let before = c.counters().await?;
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let after = c.counters().await?;
    let secs = t0.elapsed().as_secs_f64();
    let rate = |f: fn(&crate::node::Counters) -> u64| -> Vec<f64> {
        before
            .iter()
            .zip(&after)
            .map(|(b, a)| f(a).saturating_sub(f(b)) as f64 / secs)
            .collect()
    };
    let sent = rate(|c| c.bytes_sent);
    let recv = rate(|c| c.bytes_recv);
    let pkts = rate(|c| c.packets_sent);
    let pkts_in = rate(|c| c.packets_recv);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    Ok(Traffic {
        window_s: secs,
        sent_mean_bps: mean(&sent),
        sent_max_bps: sent.iter().copied().fold(0.0, f64::max),
        recv_mean_bps: mean(&recv),
        packets_sent_mean_ps: mean(&pkts),
        packets_recv_mean_ps: mean(&pkts_in),
        sent_per_node_bps: sent,
        recv_per_node_bps: recv,
    })
}

async fn kill_and_restart(c: &mut Cluster, victim: usize, p: &Params) -> Result<KillResult> {
    let old_id = c.nodes[victim].id.clone();
    let bind = c.nodes[victim].addr;
    let t_kill = now_ms();
    c.nodes[victim].kill().await?;
    c.killed.insert(old_id.clone(), t_kill);

    // Poll the survivors' event logs for their `failed` line about the victim.
    let survivors: Vec<usize> = (0..c.nodes.len()).filter(|&i| i != victim).collect();
    let mut seen: Vec<Option<f64>> = vec![None; survivors.len()];
    let deadline = Instant::now() + Duration::from_secs(p.detect_timeout_secs);
    while Instant::now() < deadline && seen.iter().any(Option::is_none) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for (slot, &i) in seen.iter_mut().zip(&survivors) {
            if slot.is_none() {
                *slot = c.nodes[i]
                    .events()
                    .iter()
                    .find(|e| e.event == "failed" && e.member == old_id)
                    .map(|e| e.ts_ms.saturating_sub(t_kill) as f64 / 1000.0);
            }
        }
    }
    let detected: Vec<f64> = seen.iter().flatten().copied().collect();
    let all_s =
        (detected.len() == seen.len()).then(|| detected.iter().copied().fold(0.0, f64::max));
    let first_s = detected.iter().copied().reduce(f64::min);

    let api_disagreements = if c.system.kind == Kind::Agent {
        let mut n = 0;
        for &i in &survivors {
            match c.nodes[i].live_view().await {
                Ok(v) if !v.contains(&old_id) => {}
                _ => n += 1,
            }
        }
        Some(n)
    } else {
        None
    };

    // Restart as a new identity on the same address (or any address if that one is taken).
    let intro = c.introducer();
    let restarted = Instant::now();
    let node = match c.spawn(bind, Some(intro)).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("  restart on {bind} failed ({e:#}); restarting on a new port");
            c.spawn(SocketAddr::from(([127, 0, 0, 1], 0)), Some(intro))
                .await?
        }
    };
    c.nodes[victim] = node;
    let rejoin_s = c
        .wait_converged(Duration::from_secs(p.converge_timeout_secs))
        .await
        .map(|_| restarted.elapsed().as_secs_f64());

    Ok(KillResult {
        victim: old_id,
        per_survivor_s: seen,
        all_s,
        first_s,
        api_disagreements,
        rejoin_s,
    })
}

async fn measure_loss(c: &mut Cluster, p: &Params, res: &mut LossResult) -> Result<()> {
    if p.loss_secs == 0 {
        res.skipped = Some("--loss-secs 0".into());
        return Ok(());
    }
    let target = 1.min(c.nodes.len() - 1);
    let port = c.nodes[target].addr.port();
    let rule = match LossRule::install(port, p.loss_percent) {
        Ok(r) => r,
        Err(e) => {
            let why = format!("no loss rule could be installed: {e:#}");
            eprintln!(
                "[{}] SKIPPING the false-positive phase: {why}",
                c.system.name
            );
            res.skipped = Some(why);
            return Ok(());
        }
    };
    res.rule = Some(rule.describe());
    res.lossy_member = Some(c.nodes[target].id.clone());
    eprintln!(
        "[{}] {}% receive loss on {} for {} s ({})",
        c.system.name,
        p.loss_percent,
        c.nodes[target].id,
        p.loss_secs,
        rule.backend().name()
    );
    let before = c.counters().await?;
    let t0 = now_ms();
    let start = Instant::now();
    let total = Duration::from_secs(p.loss_secs);
    while start.elapsed() < total {
        let step = (total - start.elapsed()).min(Duration::from_secs(30));
        tokio::time::sleep(step).await;
        let so_far = c.false_failed(t0, now_ms()).len();
        eprintln!(
            "[{}]   {:>4.0} s: {so_far} false `failed` events so far",
            c.system.name,
            start.elapsed().as_secs_f64()
        );
    }
    res.secs = start.elapsed().as_secs_f64();
    res.dropped_packets = rule.dropped_packets();
    let after = c.counters().await?;
    rule.remove()?;
    // Suspicions raised just before the rule went away may still end in a declaration.
    tokio::time::sleep(Duration::from_secs(p.settle_secs.max(3))).await;
    let wrong = c.false_failed(t0, now_ms());
    res.false_failed_events = wrong.len();
    res.members_wrongly_failed = wrong.iter().collect::<BTreeSet<_>>().len();
    if c.system.kind == Kind::Agent {
        let delta = |f: fn(&crate::node::Counters) -> Option<u64>| -> Option<u64> {
            before
                .iter()
                .zip(&after)
                .map(|(b, a)| Some(f(a)?.saturating_sub(f(b)?)))
                .sum()
        };
        res.refuted = delta(|c| c.refuted);
        res.false_failures = delta(|c| c.false_failures);
        res.suspicions = delta(|c| c.suspicions);
    }
    res.converged_at_end = c.check_converged().await.is_ok();
    Ok(())
}
