//! Random receive loss on one UDP port, through nftables (or iptables as a fallback).
//!
//! [`LossRule`] is a guard: the rule goes away when it is dropped, which also happens when
//! the bench is interrupted (the run future is dropped) or panics (unwinding).

use anyhow::{Result, bail};
use dml_tests::firewall::{nft_dropped, run};

/// nftables table the bench owns; deleting it removes every rule the bench added.
const NFT_TABLE: &str = "dmlbench";

/// Which firewall front-end holds the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Iptables,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nft => "nftables",
            Backend::Iptables => "iptables",
        }
    }
}

/// A rule dropping `percent`% of the UDP datagrams received on `port`, removed on drop.
#[derive(Debug)]
pub struct LossRule {
    backend: Backend,
    port: u16,
    percent: u32,
    removed: bool,
}

impl LossRule {
    /// Installs the rule with nftables, falling back to iptables; the error says why both failed.
    pub fn install(port: u16, percent: u32) -> Result<Self> {
        let nft = Self::install_nft(port, percent);
        let nft_err = match nft {
            Ok(()) => {
                return Ok(Self {
                    backend: Backend::Nft,
                    port,
                    percent,
                    removed: false,
                });
            }
            Err(e) => e,
        };
        match Self::iptables("-I", port, percent) {
            Ok(_) => Ok(Self {
                backend: Backend::Iptables,
                port,
                percent,
                removed: false,
            }),
            Err(ipt_err) => bail!("nftables: {nft_err:#}; iptables: {ipt_err:#}"),
        }
    }

    fn install_nft(port: u16, percent: u32) -> Result<()> {
        // A table left over by a killed earlier run goes first.
        let _ = run("nft", &["delete", "table", "inet", NFT_TABLE]);
        run("nft", &["add", "table", "inet", NFT_TABLE])?;
        let r = run(
            "nft",
            &[
                "add",
                "chain",
                "inet",
                NFT_TABLE,
                "input",
                "{ type filter hook input priority -10 ; policy accept ; }",
            ],
        )
        .and_then(|_| {
            let rule = format!("udp dport {port} numgen random mod 100 < {percent} counter drop");
            let mut args = vec!["add", "rule", "inet", NFT_TABLE, "input"];
            args.extend(rule.split(' '));
            run("nft", &args)
        });
        if r.is_err() {
            let _ = run("nft", &["delete", "table", "inet", NFT_TABLE]);
        }
        r.map(|_| ())
    }

    /// The iptables arguments that insert (`-I`) or delete (`-D`) the rule.
    fn iptables_spec(op: &str, port: u16, percent: u32) -> Vec<String> {
        let prob = format!("{:.4}", f64::from(percent) / 100.0);
        let port = port.to_string();
        [
            op,
            "INPUT",
            "-p",
            "udp",
            "--dport",
            &port,
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &prob,
            "-j",
            "DROP",
        ]
        .map(String::from)
        .to_vec()
    }

    fn iptables(op: &str, port: u16, percent: u32) -> Result<String> {
        let spec = Self::iptables_spec(op, port, percent);
        let args: Vec<&str> = spec.iter().map(String::as_str).collect();
        run("iptables", &args)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A human-readable form of the rule, for the report.
    pub fn describe(&self) -> String {
        match self.backend {
            Backend::Nft => format!(
                "nft table inet {NFT_TABLE}, chain input: udp dport {} numgen random mod 100 < {} drop",
                self.port, self.percent
            ),
            Backend::Iptables => format!(
                "iptables -I INPUT -p udp --dport {} -m statistic --mode random --probability {:.2} -j DROP",
                self.port,
                f64::from(self.percent) / 100.0
            ),
        }
    }

    /// Packets the rule has dropped so far (nftables only: its counter).
    pub fn dropped_packets(&self) -> Option<u64> {
        if self.backend != Backend::Nft {
            return None;
        }
        nft_dropped(NFT_TABLE)
    }

    /// Removes the rule now; dropping the guard does the same.
    pub fn remove(mut self) -> Result<()> {
        self.removed = true;
        self.remove_inner()
    }

    fn remove_inner(&self) -> Result<()> {
        match self.backend {
            Backend::Nft => run("nft", &["delete", "table", "inet", NFT_TABLE]).map(|_| ()),
            Backend::Iptables => Self::iptables("-D", self.port, self.percent).map(|_| ()),
        }
    }
}

impl Drop for LossRule {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(e) = self.remove_inner() {
                eprintln!("bench: could not remove the loss rule ({e:#}); remove it by hand");
            } else {
                eprintln!("bench: loss rule removed");
            }
        }
    }
}
