//! `foca-node`: one member of a [foca](https://docs.rs/foca) (SWIM) cluster over UDP.
//!
//! It is the peer that `bench membership` measures `dml-agent` against, so it speaks the
//! same small command-line contract as the agent (docs/AGENT_CLI.md):
//!
//! - `--bind ADDR` (port 0 picks one) and `--introducer ADDR` (announce target; retried
//!   every `--join-retry` while this node knows no member);
//! - prints `listening <addr> <addr>#<started>` on stdout once bound;
//! - `--event-log PATH` writes `{"ts_ms":..,"event":"joined"|"failed"|..,"member":"addr#started"}`
//!   lines, `failed` meaning this node saw the member go down;
//! - `--stats PATH` holds one JSON object, rewritten every second and on every membership
//!   change: payload bytes and packets sent and received, and the live members;
//! - SIGTERM / SIGINT: leave the cluster, write the stats one last time, exit 0.
//!
//! The identity is the address plus the start time in ms, renewed (`started + 1`) when the
//! cluster declares this node down, as the agent's `NodeId` does.
//!
//! The foca parameters start from `Config::new_lan(--cluster-size)` and every timing the
//! bench maps from our `lan` preset can be overridden by a flag.

use anyhow::{Context, Result};
use clap::Parser;
use dml_shared::NodeId;
use foca::{Config, Foca, Notification, PeriodicParams, PostcardCodec, Runtime, Timer};
use foca_rand::SeedableRng;
use foca_rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::UdpSocket;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{Instant, MissedTickBehavior};

#[derive(Parser, Debug)]
#[command(
    name = "foca-node",
    about = "One foca (SWIM) member over UDP, for the membership bench"
)]
struct Args {
    /// UDP address to bind; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// Member to announce to; a node given its own address starts alone.
    #[arg(long)]
    introducer: Vec<SocketAddr>,
    /// Expected cluster size, the input of foca's `Config::new_lan` base config.
    #[arg(long, default_value_t = 10)]
    cluster_size: u32,
    /// Time between probes (foca `probe_period`).
    #[arg(long, value_parser = humantime::parse_duration)]
    probe_period: Option<Duration>,
    /// Wait for a direct ack before indirect probes (foca `probe_rtt`).
    #[arg(long, value_parser = humantime::parse_duration)]
    probe_rtt: Option<Duration>,
    /// Members asked to probe indirectly (foca `num_indirect_probes`).
    #[arg(long)]
    num_indirect_probes: Option<usize>,
    /// Suspicion length before a member is declared down (foca `suspect_to_down_after`).
    #[arg(long, value_parser = humantime::parse_duration)]
    suspect_to_down_after: Option<Duration>,
    /// Times each update is piggybacked (foca `max_transmissions`).
    #[arg(long)]
    max_transmissions: Option<u8>,
    /// Period of foca's extra gossip round; `0s` disables it.
    #[arg(long, value_parser = humantime::parse_duration)]
    periodic_gossip: Option<Duration>,
    /// Period of foca's announce to one random member (member discovery); `0s` disables it.
    #[arg(long, value_parser = humantime::parse_duration)]
    periodic_announce: Option<Duration>,
    /// Largest datagram foca produces and accepts.
    #[arg(long)]
    max_packet_size: Option<usize>,
    /// Re-announce to the introducers this often while no member is known.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    join_retry: Duration,
    /// JSON-lines membership event log.
    #[arg(long)]
    event_log: Option<PathBuf>,
    /// File rewritten with the current counters and members.
    #[arg(long)]
    stats: Option<PathBuf>,
    /// Print the resolved foca config to stderr and continue.
    #[arg(long)]
    print_config: bool,
}

/// Foca identity: the agent's `NodeId` (address + start time in ms).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
struct Id(NodeId);

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl foca::Identity for Id {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Id(NodeId::new(self.0.addr, self.0.started + 1)))
    }

    fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.0.started > adversary.0.started
    }
}

/// What one call into foca asked for, drained by the driver right after the call.
#[derive(Default)]
struct Outbox {
    sends: Vec<(SocketAddr, Vec<u8>)>,
    timers: Vec<(Duration, Timer<Id>)>,
    /// Event name and member; `None` means this node itself.
    events: Vec<(&'static str, Option<Id>)>,
}

impl Runtime<Id> for Outbox {
    fn notify(&mut self, notification: Notification<'_, Id>) {
        let ev = match notification {
            Notification::MemberUp(m) => ("joined", Some(*m)),
            Notification::MemberDown(m) => ("failed", Some(*m)),
            // The old identity is replaced by a newer one at the same address.
            Notification::Rename(old, _new) => ("replaced", Some(*old)),
            Notification::Rejoin(me) => ("rejoined", Some(*me)),
            Notification::Defunct => ("defunct", None),
            Notification::Idle => ("idle", None),
            Notification::Active => ("active", None),
        };
        self.events.push(ev);
    }

    fn send_to(&mut self, to: Id, data: &[u8]) {
        self.sends.push((to.0.addr, data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<Id>, after: Duration) {
        self.timers.push((after, event));
    }
}

/// Payload counters, as the agent's `Stats` counts them (UDP payload only).
#[derive(Default, Serialize)]
struct Counters {
    bytes_sent: u64,
    bytes_recv: u64,
    packets_sent: u64,
    packets_recv: u64,
    /// Packets foca refused (undecodable, from a down member, ...).
    rejected: u64,
}

#[derive(Serialize)]
struct StatsLine<'a> {
    ts_ms: u64,
    id: String,
    #[serde(flatten)]
    counters: &'a Counters,
    members: Vec<String>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn build_config(a: &Args) -> Result<Config> {
    let size = NonZeroU32::new(a.cluster_size).context("--cluster-size must be above zero")?;
    let mut c = Config::new_lan(size);
    if let Some(v) = a.probe_period {
        c.probe_period = v;
    }
    if let Some(v) = a.probe_rtt {
        c.probe_rtt = v;
    }
    if let Some(v) = a.num_indirect_probes {
        c.num_indirect_probes =
            NonZeroUsize::new(v).context("--num-indirect-probes must be above zero")?;
    }
    if let Some(v) = a.suspect_to_down_after {
        c.suspect_to_down_after = v;
    }
    if let Some(v) = a.max_transmissions {
        c.max_transmissions =
            NonZeroU8::new(v).context("--max-transmissions must be above zero")?;
    }
    let periodic = |d: Duration, old: Option<PeriodicParams>| {
        (!d.is_zero()).then(|| PeriodicParams {
            frequency: d,
            num_members: old.map_or(NonZeroUsize::MIN, |p| p.num_members),
        })
    };
    if let Some(v) = a.periodic_gossip {
        c.periodic_gossip = periodic(v, c.periodic_gossip.take());
    }
    if let Some(v) = a.periodic_announce {
        c.periodic_announce = periodic(v, c.periodic_announce.take());
    }
    if let Some(v) = a.max_packet_size {
        c.max_packet_size = NonZeroUsize::new(v).context("--max-packet-size must be above zero")?;
    }
    anyhow::ensure!(
        !c.probe_rtt.is_zero() && c.probe_rtt < c.probe_period,
        "--probe-rtt must be above zero and below --probe-period"
    );
    anyhow::ensure!(
        !c.suspect_to_down_after.is_zero(),
        "--suspect-to-down-after must be above zero"
    );
    Ok(c)
}

/// One line of the event log, fields in the agent's order.
#[derive(Serialize)]
struct EventLine<'a> {
    ts_ms: u64,
    event: &'a str,
    member: String,
}

/// Appends membership events in the agent's `--event-log` format.
struct EventLog(Option<File>);

impl EventLog {
    fn open(path: Option<&Path>) -> Result<Self> {
        path.map(|p| File::create(p).with_context(|| format!("create event log {}", p.display())))
            .transpose()
            .map(EventLog)
    }

    fn write(&mut self, event: &str, member: &Id) {
        if let Some(f) = &mut self.0 {
            let line = serde_json::to_string(&EventLine {
                ts_ms: now_ms(),
                event,
                member: member.0.to_string(),
            })
            .unwrap_or_default();
            // A full disk must not stop the member; the bench notices missing lines.
            let _ = writeln!(f, "{line}").and_then(|()| f.flush());
        }
    }
}

/// The single task that owns foca: packets, timers, the stats tick and signals all come
/// into one loop, and what foca asks for goes out after each call.
struct Driver {
    foca: Foca<Id, PostcardCodec, SmallRng, foca::NoCustomBroadcast>,
    socket: UdpSocket,
    timers: BinaryHeap<Reverse<(Instant, Timer<Id>)>>,
    outbox: Outbox,
    counters: Counters,
    events: EventLog,
    stats_path: Option<PathBuf>,
    introducers: Vec<SocketAddr>,
}

impl Driver {
    /// Sends, schedules and logs what the last foca call produced.
    async fn drain(&mut self) -> bool {
        let now = Instant::now();
        for (after, t) in self.outbox.timers.drain(..) {
            self.timers.push(Reverse((now + after, t)));
        }
        for (to, data) in std::mem::take(&mut self.outbox.sends) {
            if self.socket.send_to(&data, to).await.is_ok() {
                self.counters.packets_sent += 1;
                self.counters.bytes_sent += data.len() as u64;
            }
        }
        let changed = !self.outbox.events.is_empty();
        let me = *self.foca.identity();
        for (ev, member) in std::mem::take(&mut self.outbox.events) {
            let member = member.unwrap_or(me);
            self.events.write(ev, &member);
        }
        changed
    }

    fn write_stats(&self) {
        let Some(path) = &self.stats_path else {
            return;
        };
        let line = StatsLine {
            ts_ms: now_ms(),
            id: self.foca.identity().0.to_string(),
            counters: &self.counters,
            members: self
                .foca
                .iter_members()
                .map(|m| m.id().0.to_string())
                .collect(),
        };
        let tmp = path.with_extension("tmp");
        let body = serde_json::to_string(&line).unwrap_or_default();
        if std::fs::write(&tmp, body + "\n").is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }

    fn announce(&mut self) {
        let me = self.foca.identity().0.addr;
        for intro in self.introducers.clone() {
            if intro != me {
                let dst = Id(NodeId::new(intro, 0));
                if let Err(e) = self.foca.announce(dst, &mut self.outbox) {
                    eprintln!("foca-node: announce to {intro}: {e}");
                }
            }
        }
    }

    async fn run(mut self, join_retry: Duration) -> Result<()> {
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_announce = Instant::now();
        let mut buf = vec![0u8; 65_536];

        self.announce();
        loop {
            if self.drain().await {
                self.write_stats();
            }
            let next = self.timers.peek().map(|Reverse((at, _))| *at);
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => {
                    let (n, _from) = match r {
                        Ok(v) => v,
                        // ICMP port-unreachable from a killed peer surfaces here; ignore it.
                        Err(_) => continue,
                    };
                    self.counters.packets_recv += 1;
                    self.counters.bytes_recv += n as u64;
                    if self.foca.handle_data(&buf[..n], &mut self.outbox).is_err() {
                        self.counters.rejected += 1;
                    }
                }
                () = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    let now = Instant::now();
                    while let Some(Reverse((at, _))) = self.timers.peek() {
                        if *at > now {
                            break;
                        }
                        let Some(Reverse((_, t))) = self.timers.pop() else { break };
                        if let Err(e) = self.foca.handle_timer(t, &mut self.outbox) {
                            eprintln!("foca-node: timer: {e}");
                        }
                    }
                }
                _ = tick.tick() => {
                    if self.foca.num_members() == 0 && last_announce.elapsed() >= join_retry {
                        last_announce = Instant::now();
                        self.announce();
                    }
                    self.write_stats();
                }
                _ = sigterm.recv() => break,
                _ = sigint.recv() => break,
            }
        }
        let _ = self.foca.leave_cluster(&mut self.outbox);
        self.drain().await;
        self.write_stats();
        Ok(())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let config = build_config(&args)?;
    if args.print_config {
        eprintln!("{config:#?}");
    }
    let socket = UdpSocket::bind(args.bind)
        .await
        .with_context(|| format!("bind {}", args.bind))?;
    let addr = socket.local_addr()?;
    let id = Id(NodeId::new(addr, now_ms()));
    let seed = now_ms() ^ (u64::from(std::process::id()) << 32);
    let foca = Foca::new(id, config, SmallRng::seed_from_u64(seed), PostcardCodec);
    let driver = Driver {
        foca,
        socket,
        timers: BinaryHeap::new(),
        outbox: Outbox::default(),
        counters: Counters::default(),
        events: EventLog::open(args.event_log.as_deref())?,
        stats_path: args.stats.clone(),
        introducers: args.introducer.clone(),
    };
    driver.write_stats();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening {addr} {}", id.0)?;
        out.flush()?;
    }
    driver.run(args.join_retry).await
}
