//! Refutation of failure claims (issue 18) and identities at one address, stepping one core by hand.

use super::*;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn id(port: u16) -> NodeId {
    NodeId::new(addr(port), 1_000)
}

fn update(id: NodeId, incarnation: u32, kind: UpdateKind) -> Update {
    Update {
        id,
        incarnation,
        kind,
    }
}

fn gossip(updates: &[Update]) -> Vec<u8> {
    Message::Gossip {
        updates: updates.to_vec(),
    }
    .encode()
}

/// Member `me` of a converged group of ports 1..=4, all alive at incarnation 0.
fn core_of(me: u16, now: Instant) -> Membership {
    let mut core = Membership::new(
        id(me),
        MembershipConfig::preset(dml_shared::config::Preset::Lan),
        Vec::new(),
        7,
        now,
    );
    core.bootstrap(&(1..=4).map(id).collect::<Vec<_>>(), now);
    core
}

/// `core` hears from `from` that `who` failed, at incarnation 0.
fn told_failed(core: &mut Membership, from: u16, who: NodeId, now: Instant) {
    let failed = gossip(&[update(who, 0, UpdateKind::Failed)]);
    core.handle_datagram(addr(from), &failed, now).unwrap();
}

fn live(core: &Membership, n: NodeId) -> bool {
    core.live_members().contains(&n)
}

fn sent_alive(out: &[(SocketAddr, Vec<u8>)], to: SocketAddr, about: NodeId, inc: u32) -> bool {
    out.iter().any(|(a, b)| {
        *a == to
            && match Message::decode(b) {
                Ok(
                    Message::Gossip { updates }
                    | Message::Sync {
                        members: updates, ..
                    },
                ) => updates.contains(&update(about, inc, UpdateKind::Alive)),
                _ => false,
            }
    })
}

#[test]
fn a_member_told_it_failed_refutes_with_a_higher_incarnation_and_keeps_its_identity() {
    let now = Instant::now();
    let mut a = core_of(1, now);
    a.drain_events();
    told_failed(&mut a, 2, id(1), now);
    assert_eq!(a.id(), id(1), "same identity");
    assert_eq!(a.incarnation(), 1);
    assert_eq!(a.drain_events(), [Event::Refuted(id(1))]);
    assert!(sent_alive(&a.drain_outbox(), addr(2), id(1), 1));
    assert_eq!(a.counters().false_failures, 1);
    // The group is unchanged: a member of the majority drops none of its view.
    assert_eq!(a.live_members(), (1..=4).map(id).collect::<Vec<_>>());

    // A claim older than the refutation costs no incarnation; the claimant hears of it.
    told_failed(&mut a, 3, id(1), now);
    assert_eq!(a.incarnation(), 1);
    assert!(a.drain_events().is_empty());
    assert!(sent_alive(&a.drain_outbox(), addr(3), id(1), 1));
    assert_eq!(
        a.counters().false_failures,
        1,
        "the same failure counts once"
    );
}

#[test]
fn a_failure_already_refuted_by_a_suspicion_s_refutation_still_counts_once() {
    // Thawed after a pause, the suspicion that came before the failure was refuted first.
    let now = Instant::now();
    let mut a = core_of(1, now);
    a.drain_events();
    let suspect = update(id(1), 0, UpdateKind::Suspect { by: 9 });
    a.handle_datagram(addr(2), &gossip(&[suspect]), now)
        .unwrap();
    assert_eq!(a.incarnation(), 1);
    told_failed(&mut a, 2, id(1), now);
    assert_eq!(a.incarnation(), 1, "no second refutation needed");
    assert_eq!(a.drain_events(), [Event::Refuted(id(1))]);
    assert_eq!(a.counters().false_failures, 1);
    assert!(sent_alive(&a.drain_outbox(), addr(2), id(1), 1));
}

#[test]
fn a_failed_member_is_reinstated_by_its_own_higher_incarnation() {
    let now = Instant::now();
    let mut a = core_of(1, now);
    told_failed(&mut a, 3, id(2), now);
    assert!(!live(&a, id(2)));
    a.drain_events();
    // Its refutation, sent by itself: a sender held failed still speaks for itself.
    a.handle_datagram(
        addr(2),
        &gossip(&[update(id(2), 1, UpdateKind::Alive)]),
        now,
    )
    .unwrap();
    assert!(live(&a, id(2)), "reinstated");
    assert_eq!(a.drain_events(), [Event::Reinstated(id(2))]);
    assert_eq!(a.counters().reinstated, 1);
    let info = a.member_infos(now);
    let b = info.iter().find(|m| m.id == id(2)).unwrap();
    assert_eq!((b.state, b.incarnation), (MemberState::Alive, 1));
}

#[test]
fn a_stale_alive_does_not_resurrect_a_failed_member() {
    let now = Instant::now();
    let mut a = core_of(1, now);
    // Declared failed at incarnation 2 (it had refuted twice before).
    a.handle_datagram(
        addr(3),
        &gossip(&[update(id(2), 2, UpdateKind::Failed)]),
        now,
    )
    .unwrap();
    a.drain_events();
    for inc in [0, 1, 2] {
        a.handle_datagram(
            addr(4),
            &gossip(&[update(id(2), inc, UpdateKind::Alive)]),
            now,
        )
        .unwrap();
        assert!(!live(&a, id(2)), "alive at {inc} resurrected it");
    }
    // A suspicion at a higher incarnation does not either (only its own alive does).
    a.handle_datagram(
        addr(4),
        &gossip(&[update(id(2), 5, UpdateKind::Suspect { by: 9 })]),
        now,
    )
    .unwrap();
    assert!(!live(&a, id(2)));
    assert!(a.drain_events().is_empty());
    assert_eq!(a.counters().reinstated, 0);
}

#[test]
fn a_failure_claim_older_than_a_refutation_is_ignored() {
    let now = Instant::now();
    let mut a = core_of(1, now);
    a.handle_datagram(
        addr(2),
        &gossip(&[update(id(2), 3, UpdateKind::Alive)]),
        now,
    )
    .unwrap();
    a.handle_datagram(
        addr(4),
        &gossip(&[update(id(2), 2, UpdateKind::Failed)]),
        now,
    )
    .unwrap();
    assert!(live(&a, id(2)));
    a.handle_datagram(
        addr(4),
        &gossip(&[update(id(2), 3, UpdateKind::Failed)]),
        now,
    )
    .unwrap();
    assert!(!live(&a, id(2)), "a claim at its incarnation holds");
}

#[test]
fn a_left_member_is_not_reinstated() {
    let now = Instant::now();
    let mut a = core_of(1, now);
    a.handle_datagram(addr(2), &gossip(&[update(id(2), 0, UpdateKind::Left)]), now)
        .unwrap();
    a.handle_datagram(
        addr(2),
        &gossip(&[update(id(2), 1, UpdateKind::Alive)]),
        now,
    )
    .unwrap();
    assert!(!live(&a, id(2)));
}

#[test]
fn a_restarted_identity_is_a_new_member_not_a_reinstatement() {
    let now = Instant::now();
    let mut a = core_of(1, now);
    told_failed(&mut a, 3, id(2), now);
    a.drain_events();
    let restarted = NodeId::new(addr(2), 2_000);
    a.handle_datagram(
        addr(2),
        &gossip(&[update(restarted, 0, UpdateKind::Alive)]),
        now,
    )
    .unwrap();
    assert_eq!(a.drain_events(), [Event::Joined(restarted)]);
    assert!(live(&a, restarted) && !live(&a, id(2)));
    // The old identity's refutation, late, changes nothing: it was superseded.
    a.handle_datagram(
        addr(3),
        &gossip(&[update(id(2), 1, UpdateKind::Alive)]),
        now,
    )
    .unwrap();
    assert!(!live(&a, id(2)));
    assert_eq!(a.counters().reinstated, 0);
}

#[test]
fn a_cut_off_sender_s_claims_count_only_about_the_receiver_and_itself() {
    let now = Instant::now();
    let mut a = core_of(1, now);
    // The majority (1, 2, 3) declared 4 failed while it was cut off.
    told_failed(&mut a, 3, id(4), now);
    a.drain_outbox();
    // 4's stale view: the others failed, itself alive at the incarnation it was declared at.
    let stale = Message::Sync {
        members: vec![
            update(id(4), 0, UpdateKind::Alive),
            update(id(1), 0, UpdateKind::Failed),
            update(id(2), 0, UpdateKind::Failed),
            update(id(3), 0, UpdateKind::Failed),
        ],
        reply: false,
    }
    .encode();
    a.handle_datagram(addr(4), &stale, now).unwrap();
    assert_eq!(a.incarnation(), 1, "refuted");
    assert!(
        live(&a, id(2)) && live(&a, id(3)),
        "claims about others not taken"
    );
    assert!(!live(&a, id(4)), "its alive is not newer than its failure");
    assert!(sent_alive(&a.drain_outbox(), addr(4), id(1), 1));
}

#[test]
fn a_cut_off_member_refutes_forgets_its_failures_and_takes_the_group_s_view() {
    let now = Instant::now();
    let mut d = core_of(4, now);
    // Cut off, 4 declared the other three failed.
    for n in 1..=3 {
        d.handle_datagram(
            addr(9),
            &gossip(&[update(id(n), 0, UpdateKind::Failed)]),
            now,
        )
        .unwrap();
    }
    assert_eq!(d.live_members(), [id(4)]);
    d.drain_events();
    d.drain_outbox();
    // Member 1's full state after the heal: all alive, 4 failed.
    let state = Message::Sync {
        members: vec![
            update(id(1), 0, UpdateKind::Alive),
            update(id(2), 0, UpdateKind::Alive),
            update(id(3), 0, UpdateKind::Alive),
            update(id(4), 0, UpdateKind::Failed),
        ],
        reply: false,
    }
    .encode();
    d.handle_datagram(addr(1), &state, now).unwrap();
    assert_eq!(d.id(), id(4), "no new identity");
    assert_eq!(d.incarnation(), 1);
    assert_eq!(d.live_members(), (1..=4).map(id).collect::<Vec<_>>());
    assert!(d.drain_events().contains(&Event::Refuted(id(4))));
    let out = d.drain_outbox();
    assert!(sent_alive(&out, addr(1), id(4), 1));
    // Its own failure claims are gone, not gossiped on.
    let infos = d.member_infos(now);
    assert!(
        infos.iter().all(|m| m.state != MemberState::Failed),
        "{infos:?}"
    );
    // For a suspicion's length, its partition-mates' stale claims are not taken.
    told_failed(&mut d, 9, id(2), now);
    assert!(live(&d, id(2)));

    // Member 1 takes 4 back from its refutation.
    let mut a = core_of(1, now);
    told_failed(&mut a, 3, id(4), now);
    for (to, bytes) in out.iter().filter(|(to, _)| *to == addr(1)) {
        let _ = to;
        a.handle_datagram(addr(4), bytes, now).unwrap();
    }
    assert!(live(&a, id(4)));
    assert!(a.drain_events().contains(&Event::Reinstated(id(4))));
}

/// Delivers the two cores' datagrams to each other (others are dropped) and ticks both,
/// 100 ms at a time, for `rounds` rounds.
fn exchange(a: &mut Membership, b: &mut Membership, mut now: Instant, rounds: u32) -> Instant {
    for _ in 0..rounds {
        now += Duration::from_millis(100);
        a.handle_tick(now);
        b.handle_tick(now);
        for (to, bytes) in a.drain_outbox() {
            if to == b.id().addr {
                b.handle_datagram(a.id().addr, &bytes, now).unwrap();
            }
        }
        for (to, bytes) in b.drain_outbox() {
            if to == a.id().addr {
                a.handle_datagram(b.id().addr, &bytes, now).unwrap();
            }
        }
    }
    now
}

#[test]
fn a_restart_whose_clock_is_behind_its_predecessor_s_takes_a_newer_identity() {
    let now = Instant::now();
    let mut a = core_of(1, now);
    // Member 2 (started at 1000) was declared failed; its host's clock then stepped back and
    // it restarted on an emptied data directory, at 500.
    told_failed(&mut a, 3, id(2), now);
    let mut b = Membership::new(
        NodeId::new(addr(2), 500),
        MembershipConfig::preset(dml_shared::config::Preset::Lan),
        vec![addr(1)],
        9,
        now,
    );
    b.join(now);
    exchange(&mut a, &mut b, now, 30);
    let newer = NodeId::new(addr(2), 1_001);
    assert_eq!(b.id(), newer, "one past the predecessor's start time");
    assert!(b.drain_events().contains(&Event::Joined(newer)));
    assert!(live(&a, newer), "a lists it: {:?}", a.live_members());
    assert!(!live(&a, id(2)));
    assert!(live(&b, id(1)));
}
