//! What the chaos test's drop rules and the bench's loss rule share: running
//! `nft` / `iptables` quietly, and reading an nftables table's drop counter.

use anyhow::{Context, Result, bail};
use std::process::{Command, Stdio};

/// Runs a command quietly; the error carries its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Packets counted by the first `counter` of nftables table `inet <table>`.
pub fn nft_dropped(table: &str) -> Option<u64> {
    let out = run("nft", &["list", "table", "inet", table]).ok()?;
    let after = out.split("counter packets ").nth(1)?;
    after.split_whitespace().next()?.parse().ok()
}
