//! Helpers shared by the agent's in-process cluster tests.

use dml_shared::config::{Config, Preset};
use std::net::SocketAddr;
use std::path::PathBuf;

/// A port free for both TCP and UDP right now, never the same twice in this process.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

/// A scratch directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "dml-{tag}-{}-{}",
            std::process::id(),
            dml_agent::membership::driver::unix_ms()
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A local-preset config for the agent at `addr` in a cluster of `all`
/// (every one a voter, joining through the first), stored under `dir`. The
/// agents of one test process share its cluster key.
pub fn config(addr: SocketAddr, all: &[SocketAddr], dir: &TempDir) -> Config {
    use dml_shared::auth::{ClusterKey, KEY_LEN, install};
    install(ClusterKey::from_bytes([3; KEY_LEN])).unwrap();
    let mut c = Config::preset(Preset::Local);
    c.bind = addr;
    c.introducers = vec![all[0]];
    c.nodes = all.to_vec();
    c.control.voters = all.to_vec();
    // One durable copy suffices: these tests are about the control plane
    // and membership, not replication.
    c.sdfs.write_quorum = 1;
    c.data_dir = dir.0.join(addr.port().to_string());
    c.validate().unwrap();
    c
}
