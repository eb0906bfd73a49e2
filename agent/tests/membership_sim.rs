//! Deterministic cluster simulations of the membership core (issue 2, "Tests").
//!
//! Every scenario runs the real [`Membership`](dml_agent::membership::Membership)
//! state machine on a virtual clock and an in-memory network (see `sim/mod.rs`),
//! with the `lan` preset unless said otherwise.

mod sim;

use dml_agent::membership::Event;
use dml_shared::NodeId;
use sim::{NetConfig, Sim, Step, median_max};
use std::time::Duration;

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Slack on top of the protocol's own timers in the detection bound. The
/// declarer sends the failure straight to every live member, so dissemination
/// costs one network delay (≤ 1.5 ms here); the rest covers a second monitor's
/// suspicion that started up to one more timer step later and the 10 ms
/// granularity of the checks. One second is far more than all of these.
const DETECTION_SLACK: Duration = Duration::from_secs(1);

/// A cluster of `n` nodes that joined through node 0 and converged.
fn joined_cluster(seed: u64, n: usize) -> Sim {
    let mut sim = Sim::lan(seed);
    sim.add_joined(n, 0);
    let took = sim.run_until(secs(60), Sim::converged);
    assert!(took.is_some(), "no convergence in 60 s\n{sim:?}");
    sim
}

/// Crashes `victims` at once and returns, for every survivor and victim, how
/// long the survivor took to declare the victim failed.
fn crash_and_time_detection(sim: &mut Sim, victims: &[usize]) -> Vec<Duration> {
    let survivors: Vec<usize> = sim.up().into_iter().filter(|i| !victims.contains(i)).collect();
    let victim_ids: Vec<NodeId> = victims.iter().map(|&v| sim.id(v)).collect();
    let t0 = sim.elapsed();
    for &v in victims {
        sim.crash(v);
    }
    let bound = sim.detection_bound(DETECTION_SLACK);
    let gone = |s: &Sim| {
        survivors
            .iter()
            .all(|&i| victim_ids.iter().all(|v| !s.core(i).live_members().contains(v)))
    };
    let took = sim.run_until(bound, gone);
    assert!(
        took.is_some(),
        "survivors still list a crashed node {bound:?} after the crash\n{sim:?}"
    );
    let mut times = Vec::new();
    for &s in &survivors {
        for v in &victim_ids {
            let at = sim
                .first_event(s, t0, |e| *e == Event::Failed(*v))
                .unwrap_or_else(|| panic!("node {s} removed {v} without a Failed event"));
            times.push(at - t0);
        }
    }
    assert!(times.iter().all(|t| *t <= bound));
    times
}

#[test]
fn ten_nodes_join_through_one_introducer_and_converge() {
    let mut sim = Sim::lan(1);
    sim.add_joined(10, 0);
    let took = sim
        .run_until(secs(30), Sim::converged)
        .unwrap_or_else(|| panic!("no convergence\n{sim:?}"));
    eprintln!("10 nodes converged after {took:?} of simulated time");
    for i in 0..10 {
        assert_eq!(sim.core(i).live_members().len(), 10);
    }
    // And they stay converged, with nobody suspected along the way.
    sim.advance(secs(60));
    assert!(sim.converged(), "{sim:?}");
    assert_eq!(sim.total(|c| c.suspicions), 0);
    assert_eq!(sim.failed_events(), 0);
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let run = |seed| {
        let mut sim = Sim::lan(seed).with_net(NetConfig {
            loss: 0.1,
            ..NetConfig::default()
        });
        sim.add_joined(8, 0);
        sim.advance(secs(20));
        sim.crash(3);
        sim.advance(secs(20));
        (sim.log().to_vec(), sim.net_stats())
    };
    let (a, b) = (run(7), run(7));
    assert_eq!(a.1, b.1, "network totals differ");
    let diverged = a.0.iter().zip(&b.0).position(|(x, y)| x != y);
    assert_eq!(diverged, None, "event logs diverge");
    assert_eq!(a.0.len(), b.0.len());
    assert!(a.0.len() > 100);
}

#[test]
fn one_crash_is_detected_by_every_survivor_within_the_bound() {
    let mut all = Vec::new();
    for seed in 0..5 {
        let mut sim = joined_cluster(100 + seed, 10);
        sim.advance(secs(5));
        let victim = 1 + (seed as usize * 3) % 9;
        all.extend(crash_and_time_detection(&mut sim, &[victim]));
        sim.advance(secs(10));
        assert!(sim.converged(), "{sim:?}");
        assert_eq!(sim.total(|c| c.false_failures), 0);
    }
    let (median, max) = median_max(all);
    eprintln!(
        "1 crash, 10 nodes, 5 seeds: detection median {median:?}, max {max:?} (bound {:?})",
        Sim::lan(0).detection_bound(DETECTION_SLACK)
    );
}

#[test]
fn three_simultaneous_crashes_are_detected_by_every_survivor_within_the_bound() {
    let mut all = Vec::new();
    for seed in 0..5 {
        let mut sim = joined_cluster(200 + seed, 10);
        sim.advance(secs(5));
        // Three ring neighbours at once is the worst case for M = 3: take the
        // victims next to each other on node 1's ring.
        let first = sim.id(1);
        let mut ring: Vec<usize> = (0..10).collect();
        ring.sort_by_key(|&i| (sim.id(i).ring_hash(), sim.id(i)));
        let at = ring.iter().position(|&i| sim.id(i) == first).unwrap();
        let victims: Vec<usize> = (0..3).map(|k| ring[(at + k + seed as usize) % 10]).collect();
        all.extend(crash_and_time_detection(&mut sim, &victims));
        sim.advance(secs(10));
        assert!(sim.converged(), "{sim:?}");
        assert_eq!(sim.total(|c| c.false_failures), 0);
    }
    let (median, max) = median_max(all);
    eprintln!("3 simultaneous crashes, 10 nodes, 5 seeds: detection median {median:?}, max {max:?}");
}
