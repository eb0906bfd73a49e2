//! What an attacker on the network sees of an SDFS put and get: the loopback traffic is
//! captured while a client on TCP (not the local socket) puts and gets a file whose name
//! and content carry a marker. Encrypted (the default), the marker never crosses the
//! wire, not between client and agent nor along the replica chain; with
//! `security.encrypt_tcp = false` on every agent and the client it does, which shows the
//! capture would have caught it. Needs root (an `AF_PACKET` socket); its own test binary,
//! because the in-process client's setting is the process's.

use dml_shared::auth;
use dml_shared::sdfs_client::{Options, Sdfs, no_progress};
use dml_tests::capture::{self, Capture};
use dml_tests::sdfs::content::write_file;
use dml_tests::sdfs::{SdfsCluster, SdfsOptions, cluster_slot};

const MARKER: &str = "MARKER-d5c1e7-never-on-the-wire";

/// Puts and gets a marked file over TCP through agent 0 of a fresh 3-agent cluster with
/// `encrypt_tcp`, and returns the captured loopback bytes.
async fn capture_put_and_get(encrypt_tcp: bool) -> Vec<u8> {
    let mut opts = SdfsOptions::new(3);
    if !encrypt_tcp {
        opts.extra_config = "\n[security]\nencrypt_tcp = false\n".into();
    }
    let name = if encrypt_tcp { "enc" } else { "clear" };
    // The harness's own checks go through this process's setting too.
    auth::set_encrypt_tcp(encrypt_tcp);
    let c = SdfsCluster::start_with(&format!("wire-{name}"), opts)
        .await
        .unwrap();
    let content: Vec<u8> = (0..2000)
        .flat_map(|i| format!("{MARKER} line {i}\n").into_bytes())
        .collect();
    let local = c.local_path("marked");
    write_file(&local, &content).unwrap();
    let client = Sdfs::with_options(
        c.addrs[0],
        Options {
            local_socket: false,
            ..Options::default()
        },
    );
    let sdfs_name = format!("dir/{MARKER}-{name}.txt");
    let cap = Capture::start().unwrap();
    client.put(&local, &sdfs_name, &no_progress).await.unwrap();
    let back = c.local_path("back");
    client.get(&sdfs_name, &back, &no_progress).await.unwrap();
    let seen = cap.stop();
    assert_eq!(std::fs::read(&back).unwrap(), content);
    assert!(
        seen.len() > content.len(),
        "the capture saw only {} bytes of a {}-byte put and get",
        seen.len(),
        content.len()
    );
    seen
}

#[tokio::test]
async fn an_sdfs_put_and_get_over_tcp_show_neither_name_nor_content_on_the_wire() {
    let _slot = cluster_slot().await;
    let seen = capture_put_and_get(true).await;
    assert!(
        !capture::contains(&seen, MARKER.as_bytes()),
        "the marker crossed the wire in clear text with encryption on"
    );
    // The same with encryption off: the marker is there, so the capture works.
    let seen = capture_put_and_get(false).await;
    auth::set_encrypt_tcp(true);
    assert!(
        capture::contains(&seen, MARKER.as_bytes()),
        "the capture did not see the marker even without encryption"
    );
}
