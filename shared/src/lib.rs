//! `dml-shared`: what the agent (`dml-agent`) and the operator binary (`dml`) both speak.
//!
//! - [`id`]: node identity (address plus start time).
//! - [`config`]: the agent's TOML config, presets and `validate()`.
//! - [`wire`]: the envelope (magic, protocol version, kind) around postcard payloads.
//! - [`framing`]: length-prefixed TCP frames with a hard size limit.
//! - [`access`]: the role (read-only, admin, peer) each API request needs.
//! - [`auth`]: the cluster key, sealed UDP datagrams with replay protection, the TCP handshake.
//! - [`conn`]: authenticated connections ([`conn::Conn`]) carrying frames, encrypted on TCP.
//! - [`channel`]: a connection's byte stream: Noise transport messages, or the socket itself.
//! - [`stream`]: the socket under them: TCP, or an agent's local Unix socket.
//! - [`disk`]: kernel writeback and read-ahead advice for streamed files.
//! - [`glob`]: SDFS name globs, compiled once and capped in length.
//! - [`view`]: members and the leader as one agent sees them (API and telemetry both carry them).
//! - [`control`]: control-plane requests (SDFS metadata, inference), served at the leader.
//! - [`api`]: request and response types of the agent API.
//! - [`version`]: one committed version of a file (its checksum, replicas).
//! - [`sdfs`]: SDFS names, version metadata, metadata and data-path requests.
//! - [`keyring`]: `dml keyring`: versioned keyrings, their requests and the agent's keyring file.
//! - [`infer`]: inference jobs, queries, results and the C1–C5 figures.
//! - [`models`]: the model registry (`assets/models.toml`).
//! - [`ort_lib`]: finding ONNX Runtime's shared library in a virtualenv.
//! - [`telemetry`]: the frames agents stream to console subscribers.
//! - [`client`]: an async client for that API.
//! - [`clock`]: Unix wall-clock time (ms, µs), the one place it is read.
//! - [`router`]: the one way to the control-plane leader ([`router::LeaderRouter`]).
//! - [`sdfs_client`]: the client side of every SDFS flow (put, get, ls, ...).
//! - [`error`]: typed errors.

pub mod access;
pub mod api;
pub mod auth;
pub mod channel;
pub mod client;
pub mod clock;
pub mod config;
pub mod conn;
pub mod control;
pub mod disk;
pub mod error;
pub mod framing;
pub mod glob;
pub mod id;
pub mod infer;
pub mod keyring;
pub mod models;
pub mod ort_lib;
pub mod router;
pub mod sdfs;
pub mod sdfs_client;
pub mod stream;
pub mod telemetry;
pub mod version;
pub mod view;
pub mod wire;

pub use error::{Error, ErrorKind, RemoteError, Result};
pub use id::NodeId;
