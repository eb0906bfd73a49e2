//! Property tests of the membership datagrams: every `Message` round-trips through its
//! encoder and decoder, `update_len` is each update's encoded size, no strict prefix or
//! padded copy of a datagram decodes, and arbitrary bytes never panic the decoder.

use dml_agent::membership::msg::{Message, Update, UpdateKind, update_len};
use dml_shared::NodeId;
use dml_shared::wire;
use proptest::collection::vec;
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

fn node() -> impl Strategy<Value = NodeId> {
    // serde writes a V6 address without flow info or scope id, so none is generated.
    let ip = prop_oneof![
        any::<Ipv4Addr>().prop_map(IpAddr::V4),
        any::<Ipv6Addr>().prop_map(IpAddr::V6),
    ];
    (ip, any::<u16>(), any::<u64>())
        .prop_map(|(ip, port, started)| NodeId::new(SocketAddr::new(ip, port), started))
}

fn update() -> impl Strategy<Value = Update> {
    let kind = prop_oneof![
        Just(UpdateKind::Alive),
        any::<u32>().prop_map(|by| UpdateKind::Suspect { by }),
        Just(UpdateKind::Failed),
        Just(UpdateKind::Left),
    ];
    (node(), any::<u32>(), kind).prop_map(|(id, incarnation, kind)| Update {
        id,
        incarnation,
        kind,
    })
}

fn updates() -> impl Strategy<Value = Vec<Update>> {
    vec(update(), 0..12)
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u16>(), any::<u16>(), updates()).prop_map(|(seq, target, updates)| {
            Message::Ping {
                seq,
                target,
                updates,
            }
        }),
        (any::<u16>(), updates()).prop_map(|(seq, updates)| Message::Ack { seq, updates }),
        (any::<u16>(), node()).prop_map(|(seq, target)| Message::PingReq { seq, target }),
        node().prop_map(|id| Message::Join { id }),
        updates().prop_map(|members| Message::JoinReply { members }),
        (updates(), any::<bool>()).prop_map(|(members, reply)| Message::Sync { members, reply }),
        updates().prop_map(|updates| Message::Gossip { updates }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_message_round_trips(m in message()) {
        let bytes = m.encode();
        prop_assert_eq!(&Message::decode(&bytes).unwrap(), &m);
        for cut in 0..bytes.len() {
            prop_assert!(Message::decode(&bytes[..cut]).is_err(), "a {}-byte prefix decoded", cut);
        }
        let mut padded = bytes.clone();
        padded.push(0);
        prop_assert!(Message::decode(&padded).is_err());
        // Not a gossip datagram: refused by kind.
        let as_request = wire::encode(wire::Kind::Request, &m);
        prop_assert!(Message::decode(&as_request).is_err());
    }

    #[test]
    fn update_len_is_the_encoded_size(us in updates()) {
        // A message's size is its header plus the updates' sizes plus a length prefix,
        // which is what packet filling relies on.
        let m = Message::Gossip { updates: us.clone() };
        let sum: usize = us.iter().map(update_len).sum();
        let empty = Message::Gossip { updates: Vec::new() }.encode().len();
        prop_assert_eq!(m.encode().len(), empty + sum);
        for u in &us {
            prop_assert_eq!(update_len(u), postcard::to_stdvec(u).unwrap().len());
        }
    }

    #[test]
    fn arbitrary_datagrams_never_panic_the_decoder(b in vec(any::<u8>(), 0..1500)) {
        let _ = Message::decode(&b);
        let mut framed = vec![0xD3, 0x4C, wire::PROTOCOL_VERSION, wire::Kind::Gossip as u8];
        framed.extend_from_slice(&b);
        if let Ok(m) = Message::decode(&framed) {
            // Whatever decodes is a message that round-trips.
            prop_assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
    }
}
