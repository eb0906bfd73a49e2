//! Membership: a SWIM-style failure detector on a hash ring.
//!
//! - [`core`]: the synchronous state machine (packets and time in, packets and events out).
//! - [`msg`]: datagrams and piggybacked updates.
//! - [`ring`]: successors to probe and monitors of each member.
//! - [`suspicion`]: the Lifeguard suspicion timeout.
//! - [`broadcast`]: the piggyback queue.
//! - [`stats`]: counters and traffic rates.
//! - [`driver`]: the tokio task that runs the core over a transport, sealing datagrams.
//! - [`transport`]: the datagram transports: UDP, and an in-memory network for tests.

pub mod broadcast;
pub mod core;
pub mod driver;
pub mod msg;
pub mod ring;
pub mod stats;
pub mod suspicion;
pub mod transport;

pub use self::core::{Event, Membership, Status};
