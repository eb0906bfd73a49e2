//! Captures the bytes that cross the loopback interface, to show what an
//! attacker on the network would see: an `AF_PACKET` socket bound to `lo`
//! (needs root, or `CAP_NET_RAW`), read on a thread of its own until
//! [`Capture::stop`]. Every packet's bytes (headers included) are kept, so a
//! test can search them for a marker.

use anyhow::{Context, Result, bail};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// Longest capture kept, so a runaway test cannot fill the memory.
const MAX_BYTES: usize = 512 << 20;

/// A running capture of `lo`.
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<u8>>>,
}

impl Capture {
    /// Starts capturing every packet on `lo`.
    pub fn start() -> Result<Capture> {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as libc::c_int) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .context("cannot open an AF_PACKET socket (the capture needs root)");
        }
        // SAFETY: fd was just opened and is owned here only.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        if index == 0 {
            bail!("no loopback interface: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a zeroed sockaddr_ll is valid; the fields set below are plain values.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = index as i32;
        // SAFETY: addr is a sockaddr_ll of the given size.
        let r = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r != 0 {
            bail!(
                "cannot bind the capture to lo: {}",
                std::io::Error::last_os_error()
            );
        }
        // A read times out every 100 ms, so the thread sees `stop`.
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: setsockopt with a timeval of the given size.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            let buf: libc::c_int = 64 << 20;
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&buf as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut buf = vec![0u8; 70_000];
            while !stopping.load(Ordering::Relaxed) && all.len() < MAX_BYTES {
                // SAFETY: reads into a buffer of the given length.
                let n =
                    unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n > 0 {
                    all.extend_from_slice(&buf[..n as usize]);
                }
            }
            all
        });
        Ok(Capture {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the capture and returns every byte seen.
    pub fn stop(mut self) -> Vec<u8> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
