//! The chaos test's pieces: a seeded generator ([`Rng`]), the fault schedule it draws
//! ([`Schedule`]: kills, freezes and receive-side drop rules, at most a few agents faulted
//! at a time, every fault healed before the end), and [`DropRule`], a firewall rule that
//! drops every packet sent to one agent's port, removed on drop.
//!
//! The schedule is a pure function of the seed and [`ScheduleParams`], so a failing run is
//! reproduced by running again with `DML_CHAOS_SEED` set to the seed it printed.

use crate::firewall::{nft_dropped, run};
use anyhow::{Result, anyhow, bail};
use std::fmt;
use std::time::Duration;

/// Environment variable holding the chaos seed (decimal or `0x` hex); unset draws one.
pub const SEED_ENV: &str = "DML_CHAOS_SEED";

/// splitmix64: small, fast and fully determined by its seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The seed from [`SEED_ENV`], or a fresh one from the clock and the pid.
pub fn seed_from_env() -> Result<u64> {
    match std::env::var(SEED_ENV) {
        Ok(s) => parse_seed(&s),
        Err(std::env::VarError::NotPresent) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            Ok(Rng::new(nanos ^ u64::from(std::process::id()).rotate_left(32)).next_u64())
        }
        Err(e) => bail!("{SEED_ENV}: {e}"),
    }
}

/// A seed written in decimal or as `0x` hex.
pub fn parse_seed(s: &str) -> Result<u64> {
    let t = s.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse(),
    };
    parsed.map_err(|e| anyhow!("{SEED_ENV}=\"{s}\" is not a 64-bit seed (decimal or 0x hex): {e}"))
}

/// What happens to an agent at one point of the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Heals come first at equal times, so a slot is free before it is reused.
    Restart,
    Cont,
    Undrop,
    /// SIGKILL.
    Kill,
    /// SIGSTOP.
    Stop,
    /// A drop rule for every packet to the agent's port.
    Drop,
}

impl Action {
    pub fn is_fault(self) -> bool {
        matches!(self, Action::Kill | Action::Stop | Action::Drop)
    }

    /// The action that ends this fault.
    pub fn heal(self) -> Action {
        match self {
            Action::Kill => Action::Restart,
            Action::Stop => Action::Cont,
            Action::Drop => Action::Undrop,
            heal => heal,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Action::Restart => "restart",
            Action::Cont => "sigcont",
            Action::Undrop => "undrop",
            Action::Kill => "sigkill",
            Action::Stop => "sigstop",
            Action::Drop => "drop",
        }
    }
}

/// One step: `action` on agent `target`, `at` after the chaos starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub at: Duration,
    pub action: Action,
    pub target: usize,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "+{:6.2}s {:8} a{}",
            self.at.as_secs_f64(),
            self.action.name(),
            self.target
        )
    }
}

/// How a schedule is drawn.
#[derive(Clone, Debug)]
pub struct ScheduleParams {
    /// Agents `0..agents` may be faulted.
    pub agents: usize,
    /// Most agents faulted at the same time.
    pub max_faulted: usize,
    /// Faults start within this time, and every fault is healed by its end.
    pub length: Duration,
    /// Time between one group of faults and the next, in milliseconds.
    pub gap_ms: (u64, u64),
    /// How long a fault lasts, in milliseconds.
    pub fault_ms: (u64, u64),
    /// Least time between an agent's heal and its next fault.
    pub cooldown: Duration,
}

/// The faults and heals of one run, in time order.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub seed: u64,
    pub steps: Vec<Step>,
}

impl Schedule {
    /// Draws a schedule: groups of one or two faults (kill, stop or drop, equally likely)
    /// on agents that are healthy and past their cooldown, never more than `max_faulted`
    /// at once; each fault lasts `fault_ms`, cut short so it heals by `length`.
    pub fn draw(seed: u64, p: &ScheduleParams) -> Schedule {
        let mut rng = Rng::new(seed);
        // Per agent: (fault action, heal time) while faulted; the last heal time.
        let mut faulted: Vec<Option<(Action, Duration)>> = vec![None; p.agents];
        let mut healed: Vec<Option<Duration>> = vec![None; p.agents];
        let mut steps = Vec::new();
        let mut t = rng.millis(p.gap_ms.0, p.gap_ms.1);
        // A fault shorter than this is not worth starting.
        let min_fault = Duration::from_millis(p.fault_ms.0.min(1000));
        while t + min_fault < p.length {
            for (i, slot) in faulted.iter_mut().enumerate() {
                if let Some((_, end)) = *slot
                    && end <= t
                {
                    *slot = None;
                    healed[i] = Some(end);
                }
            }
            let busy = faulted.iter().filter(|f| f.is_some()).count();
            let group = if rng.chance(30) { 2 } else { 1 };
            for _ in 0..group.min(p.max_faulted - busy) {
                let free: Vec<usize> = (0..p.agents)
                    .filter(|&i| {
                        faulted[i].is_none() && healed[i].is_none_or(|h| h + p.cooldown <= t)
                    })
                    .collect();
                if free.is_empty() {
                    break;
                }
                let target = free[rng.below(free.len() as u64) as usize];
                let action = [Action::Kill, Action::Stop, Action::Drop][rng.below(3) as usize];
                let end = (t + rng.millis(p.fault_ms.0, p.fault_ms.1)).min(p.length);
                faulted[target] = Some((action, end));
                steps.push(Step {
                    at: t,
                    action,
                    target,
                });
                steps.push(Step {
                    at: end,
                    action: action.heal(),
                    target,
                });
            }
            t += rng.millis(p.gap_ms.0, p.gap_ms.1);
        }
        steps.sort_by_key(|s| (s.at, s.action, s.target));
        Schedule { seed, steps }
    }

    /// Faults of each kind: (kills, stops, drops).
    pub fn counts(&self) -> (usize, usize, usize) {
        let n = |a| self.steps.iter().filter(|s| s.action == a).count();
        (n(Action::Kill), n(Action::Stop), n(Action::Drop))
    }

    /// Most agents faulted at the same time.
    pub fn max_concurrent(&self) -> usize {
        let mut now = 0usize;
        let mut max = 0;
        for s in &self.steps {
            if s.action.is_fault() {
                now += 1;
                max = max.max(now);
            } else {
                now -= 1;
            }
        }
        max
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (k, s, d) = self.counts();
        writeln!(
            f,
            "chaos schedule, seed {} (rerun with {SEED_ENV}={}): {} steps, {k} kills, {s} stops, {d} drop rules, at most {} agents faulted at once",
            self.seed,
            self.seed,
            self.steps.len(),
            self.max_concurrent()
        )?;
        for s in &self.steps {
            writeln!(f, "  {s}")?;
        }
        Ok(())
    }
}

/// Prefix of the nftables tables this module makes: `<prefix><pid>_<port>`.
const TABLE_PREFIX: &str = "dml_chaos_";

/// Which firewall front-end holds a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firewall {
    Nft,
    Iptables,
}

impl Firewall {
    /// nftables if it can add and delete a table here, else iptables if it can list its
    /// rules; the error says why neither works (both need root).
    pub fn detect() -> Result<Firewall> {
        let probe = format!("{TABLE_PREFIX}{}_probe", std::process::id());
        let nft = run("nft", &["add", "table", "inet", &probe])
            .and_then(|_| run("nft", &["delete", "table", "inet", &probe]));
        let nft_err = match nft {
            Ok(_) => return Ok(Firewall::Nft),
            Err(e) => e,
        };
        match run("iptables", &["-S", "INPUT"]) {
            Ok(_) => Ok(Firewall::Iptables),
            Err(e) => bail!(
                "the chaos test adds drop rules and needs nftables or iptables as root \
                 (bash scripts/setup.sh installs both): nftables: {nft_err:#}; iptables: {e:#}"
            ),
        }
    }
}

/// Deletes the tables of earlier chaos runs whose process is gone (a run killed by its
/// runner cannot remove its own); returns their names.
pub fn remove_stale_tables() -> Vec<String> {
    let Ok(out) = run("nft", &["list", "tables"]) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for line in out.lines() {
        let Some(name) = line.trim().strip_prefix("table inet ") else {
            continue;
        };
        let Some(rest) = name.strip_prefix(TABLE_PREFIX) else {
            continue;
        };
        let pid = rest.split('_').next().unwrap_or("");
        let alive = pid.parse::<u32>().is_ok_and(|p| {
            p == std::process::id() || std::path::Path::new(&format!("/proc/{p}")).exists()
        });
        if !alive && run("nft", &["delete", "table", "inet", name]).is_ok() {
            removed.push(name.to_string());
        }
    }
    removed
}

/// A rule dropping every TCP and UDP packet sent to `port` (the receiving side of one
/// agent: it hears no probe, ack or API call, while what it sends still leaves). Removed
/// when dropped, also while a failing test unwinds.
#[derive(Debug)]
pub struct DropRule {
    firewall: Firewall,
    port: u16,
    removed: bool,
}

impl DropRule {
    pub fn install(firewall: Firewall, port: u16) -> Result<DropRule> {
        let rule = DropRule {
            firewall,
            port,
            removed: false,
        };
        match firewall {
            Firewall::Nft => {
                let table = rule.table();
                let _ = run("nft", &["delete", "table", "inet", &table]);
                let r = run("nft", &["add", "table", "inet", &table])
                    .and_then(|_| {
                        run(
                            "nft",
                            &[
                                "add",
                                "chain",
                                "inet",
                                &table,
                                "input",
                                "{ type filter hook input priority -10 ; policy accept ; }",
                            ],
                        )
                    })
                    .and_then(|_| {
                        let port = port.to_string();
                        run(
                            "nft",
                            &[
                                "add", "rule", "inet", &table, "input", "meta", "l4proto", "{",
                                "tcp,", "udp", "}", "th", "dport", &port, "counter", "drop",
                            ],
                        )
                    });
                // On an error the guard drops here and deletes the half-made table.
                r.map(|_| rule)
            }
            Firewall::Iptables => {
                for proto in ["udp", "tcp"] {
                    Self::iptables("-I", proto, port)?;
                }
                Ok(rule)
            }
        }
    }

    fn table(&self) -> String {
        format!("{TABLE_PREFIX}{}_{}", std::process::id(), self.port)
    }

    fn iptables(op: &str, proto: &str, port: u16) -> Result<String> {
        let port = port.to_string();
        run(
            "iptables",
            &[op, "INPUT", "-p", proto, "--dport", &port, "-j", "DROP"],
        )
    }

    /// Packets dropped so far (nftables only: its counter).
    pub fn dropped_packets(&self) -> Option<u64> {
        if self.firewall != Firewall::Nft {
            return None;
        }
        nft_dropped(&self.table())
    }

    /// Removes the rule now; dropping the guard does the same.
    pub fn remove(mut self) -> Result<()> {
        self.removed = true;
        self.remove_inner()
    }

    fn remove_inner(&self) -> Result<()> {
        match self.firewall {
            Firewall::Nft => run("nft", &["delete", "table", "inet", &self.table()]).map(drop),
            Firewall::Iptables => {
                let udp = Self::iptables("-D", "udp", self.port);
                let tcp = Self::iptables("-D", "tcp", self.port);
                udp.and(tcp).map(drop)
            }
        }
    }
}

impl Drop for DropRule {
    fn drop(&mut self) {
        if !self.removed
            && let Err(e) = self.remove_inner()
        {
            eprintln!(
                "chaos: could not remove the drop rule for port {} ({e:#}); remove it by hand",
                self.port
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> ScheduleParams {
        ScheduleParams {
            agents: 8,
            max_faulted: 3,
            length: Duration::from_secs(60),
            gap_ms: (1000, 4000),
            fault_ms: (3000, 12_000),
            cooldown: Duration::from_secs(2),
        }
    }

    #[test]
    fn schedules_repeat_by_seed_and_respect_their_bounds() {
        let p = params();
        assert_eq!(Schedule::draw(7, &p).steps, Schedule::draw(7, &p).steps);
        assert_ne!(Schedule::draw(7, &p).steps, Schedule::draw(8, &p).steps);
        let mut kinds = (0, 0, 0);
        for seed in 0..300 {
            let s = Schedule::draw(seed, &p);
            assert!(s.max_concurrent() <= 3, "seed {seed}:\n{s}");
            assert!(s.steps.windows(2).all(|w| w[0].at <= w[1].at));
            // Per agent: fault, heal, fault, heal, ... with the cooldown between.
            for a in 0..p.agents {
                let mine: Vec<&Step> = s.steps.iter().filter(|x| x.target == a).collect();
                assert!(mine.len().is_multiple_of(2), "seed {seed} a{a}:\n{s}");
                for pair in mine.chunks(2) {
                    assert!(pair[0].action.is_fault(), "seed {seed} a{a}:\n{s}");
                    assert_eq!(pair[1].action, pair[0].action.heal());
                    assert!(pair[1].at <= p.length);
                }
                for w in mine.windows(3).step_by(2) {
                    assert!(w[1].at + p.cooldown <= w[2].at, "seed {seed} a{a}:\n{s}");
                }
            }
            let (k, st, d) = s.counts();
            assert!(k + st + d >= 8, "seed {seed}: too few faults:\n{s}");
            kinds = (kinds.0 + k, kinds.1 + st, kinds.2 + d);
        }
        assert!(kinds.0 > 0 && kinds.1 > 0 && kinds.2 > 0, "{kinds:?}");
    }

    #[test]
    fn seeds_parse_in_decimal_and_hex_and_bad_ones_are_named() {
        assert_eq!(parse_seed("42").unwrap(), 42);
        assert_eq!(parse_seed(" 0xff ").unwrap(), 255);
        let e = parse_seed("abc").unwrap_err().to_string();
        assert!(e.contains(SEED_ENV) && e.contains("abc"), "{e}");
    }
}
