//! Kernel advice for files the SDFS client and replicas stream: early
//! writeback and read-ahead. Both are hints; a failure changes speed only.
//! (They sit in `shared` because both the client's sinks and the agent's
//! store use them.)

/// Starts writing a range of `file` back to disk without waiting for it
/// (Linux `sync_file_range`); elsewhere the final fsync does it all.
pub fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid open descriptor and a plain range; the call only
        // schedules writeback and its failure is harmless (fsync follows).
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Tells the kernel `file` is about to be read from start to end, so it
/// reads ahead in larger steps (`posix_fadvise(SEQUENTIAL)`): a cold
/// `sendfile` otherwise reads the disk in pipe-sized pieces. With `prefetch`,
/// its first `prefetch` bytes are also asked for at once (`WILLNEED`).
/// Harmless if it fails.
pub fn read_sequentially(file: &std::fs::File, prefetch: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        // SAFETY: a valid open descriptor; the calls are only advice.
        unsafe {
            libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_SEQUENTIAL);
            if prefetch > 0 {
                let len = libc::off_t::try_from(prefetch).unwrap_or(libc::off_t::MAX);
                libc::posix_fadvise(fd, 0, len, libc::POSIX_FADV_WILLNEED);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, prefetch);
}
