//! Replica placement: rendezvous (highest-random-weight) consistent hashing
//! of an SDFS name over agent addresses. Each agent gets a score from
//! hash(name, address); the highest scores hold the file. Adding or removing
//! one agent moves only the files it scores highest for.

use std::net::SocketAddr;

fn fnv1a(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h ^= u64::from(*b);
        *h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
}

/// The score of `node` for `name`; same on every agent and every build.
pub fn score(name: &str, node: SocketAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    fnv1a(&mut h, name.as_bytes());
    fnv1a(&mut h, &[0]);
    fnv1a(&mut h, node.to_string().as_bytes());
    // Avalanche so neighbouring ports spread out.
    avalanche(h)
}

/// Every distinct candidate, best first for `name`.
pub fn rank(name: &str, candidates: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut all: Vec<SocketAddr> = candidates.to_vec();
    all.sort();
    all.dedup();
    all.sort_by_key(|a| (std::cmp::Reverse(score(name, *a)), *a));
    all
}

/// The `count` agents that hold `name` (fewer if there are fewer candidates),
/// in chain order.
pub fn place(name: &str, candidates: &[SocketAddr], count: usize) -> Vec<SocketAddr> {
    let mut r = rank(name, candidates);
    r.truncate(count);
    r
}

/// [`place`] for many names over the same candidates: each address is
/// written out once, not once per name and score (balance places every
/// committed version; formatting the addresses was most of its time).
pub struct Placer {
    /// Distinct candidates in address order, with their text.
    nodes: Vec<(SocketAddr, String)>,
}

impl Placer {
    pub fn new(candidates: &[SocketAddr]) -> Self {
        let mut all: Vec<SocketAddr> = candidates.to_vec();
        all.sort();
        all.dedup();
        Self {
            nodes: all.into_iter().map(|a| (a, a.to_string())).collect(),
        }
    }

    /// The same as `place(name, candidates, count)`.
    pub fn place(&self, name: &str, count: usize) -> Vec<SocketAddr> {
        let mut h0: u64 = 0xcbf2_9ce4_8422_2325;
        fnv1a(&mut h0, name.as_bytes());
        fnv1a(&mut h0, &[0]);
        let mut scored: Vec<(std::cmp::Reverse<u64>, SocketAddr)> = self
            .nodes
            .iter()
            .map(|(a, text)| {
                let mut h = h0;
                fnv1a(&mut h, text.as_bytes());
                (std::cmp::Reverse(avalanche(h)), *a)
            })
            .collect();
        scored.sort_unstable();
        scored.into_iter().take(count).map(|(_, a)| a).collect()
    }
}

fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 8001 + i)))
            .collect()
    }

    #[test]
    fn placement_is_deterministic_and_distinct() {
        let all = nodes(10);
        let mut shuffled = all.clone();
        shuffled.reverse();
        for name in ["a", "b", "img/001.jpg", "model.onnx"] {
            let p = place(name, &all, 4);
            assert_eq!(p.len(), 4);
            assert_eq!(p, place(name, &shuffled, 4), "order of candidates matters");
            let mut d = p.clone();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), 4, "duplicates in {p:?}");
        }
    }

    #[test]
    fn a_placer_places_as_place_does() {
        let mut all = nodes(10);
        all.push(SocketAddr::from(([10, 0, 0, 7], 7000)));
        all.push(all[2]);
        let placer = Placer::new(&all);
        for i in 0..2000 {
            let name = format!("data/{:05}/{i}.jpg", i % 97);
            for count in [1, 4, 20] {
                assert_eq!(
                    placer.place(&name, count),
                    place(&name, &all, count),
                    "{name}"
                );
            }
        }
        assert!(Placer::new(&[]).place("a", 4).is_empty());
    }

    #[test]
    fn fewer_candidates_give_fewer_replicas() {
        assert_eq!(place("a", &nodes(2), 4).len(), 2);
        assert!(place("a", &[], 4).is_empty());
        let dup = [nodes(1)[0], nodes(1)[0]];
        assert_eq!(place("a", &dup, 4).len(), 1);
    }

    #[test]
    fn removing_an_agent_moves_only_its_files() {
        let all = nodes(10);
        let gone = all[3];
        let rest: Vec<SocketAddr> = all.iter().copied().filter(|a| *a != gone).collect();
        for i in 0..200 {
            let name = format!("file-{i}");
            let before = place(&name, &all, 4);
            let after = place(&name, &rest, 4);
            let kept: Vec<SocketAddr> = before.iter().copied().filter(|a| *a != gone).collect();
            // The survivors keep their places; at most one newcomer.
            assert_eq!(&after[..kept.len()], &kept[..], "{name}");
        }
    }

    #[test]
    fn load_spreads_over_agents() {
        let all = nodes(10);
        let mut per = std::collections::HashMap::new();
        for i in 0..1000 {
            for a in place(&format!("f{i}"), &all, 4) {
                *per.entry(a).or_insert(0) += 1;
            }
        }
        // 4000 copies over 10 agents: 400 each on average.
        for (a, n) in per {
            assert!((250..=550).contains(&n), "{a} holds {n}");
        }
    }
}
