//! The command line of `dml`, declared with clap's derive API.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Address of the agent `dml` talks to when none is given.
pub const DEFAULT_AGENT: &str = "127.0.0.1:8001";

/// Operator tool for an AwesomeDML cluster. Without a subcommand it opens the
/// full-screen console.
#[derive(Debug, Parser)]
#[command(name = "dml", version, about)]
pub struct Cli {
    /// Agent to talk to (HOST:PORT).
    #[arg(long, global = true, env = "DML_AGENT", default_value = DEFAULT_AGENT)]
    pub agent: String,

    /// Print machine-readable JSON on stdout instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every member the agent knows: state, incarnation, last heard, ring monitors.
    Members,
    /// The agent's own identity.
    Id,
    /// Ask the agent to (re)join the group through its introducers.
    Join,
    /// Ask the agent to leave the group gracefully (it keeps running).
    Leave,
    /// Traffic and failure-detector counters of the agent.
    Stats,
    /// Run a cluster of agents on this machine.
    #[command(subcommand)]
    Local(LocalCommand),
}

#[derive(Debug, Subcommand)]
pub enum LocalCommand {
    /// Start N agents on 127.0.0.1, ports BASE..BASE+N-1; the first is the introducer.
    Up(UpArgs),
    /// Report on each agent recorded in the run directory.
    Status(RunDirArg),
    /// Stop exactly the agents recorded in the run directory.
    Down(DownArgs),
}

/// Failure-detector preset passed to every agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PresetArg {
    Local,
    Lan,
    Wan,
}

impl PresetArg {
    pub fn as_str(self) -> &'static str {
        match self {
            PresetArg::Local => "local",
            PresetArg::Lan => "lan",
            PresetArg::Wan => "wan",
        }
    }
}

#[derive(Debug, Args)]
pub struct RunDirArg {
    /// Directory holding logs, pid files and cluster.json.
    #[arg(long, default_value = ".dml/run")]
    pub run_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Number of agents.
    #[arg(short = 'n', long = "count", default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub count: u16,

    /// Port of the first agent (the introducer).
    #[arg(long, default_value_t = dml_shared::config::DEFAULT_PORT)]
    pub base_port: u16,

    /// Failure-detector preset of every agent.
    #[arg(long, value_enum, default_value_t = PresetArg::Local)]
    pub preset: PresetArg,

    #[command(flatten)]
    pub run: RunDirArg,

    /// Run the agents in tmux session `dml`, one window each.
    #[arg(long)]
    pub tmux: bool,

    /// The dml-agent binary (default: next to this `dml`).
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,

    /// Seconds to wait for every agent to answer and to see all the others.
    #[arg(long, default_value_t = 30)]
    pub wait_secs: u64,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    #[command(flatten)]
    pub run: RunDirArg,

    /// Seconds to wait after SIGTERM before sending SIGKILL.
    #[arg(long, default_value_t = 5)]
    pub timeout_secs: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn local_up_defaults_match_the_original_ports() {
        let cli = Cli::try_parse_from(["dml", "local", "up"]).unwrap();
        let Some(Command::Local(LocalCommand::Up(up))) = cli.command else {
            panic!("parsed {:?}", cli.command);
        };
        assert_eq!(up.count, 10);
        assert_eq!(up.base_port, 8001);
        assert_eq!(up.preset, PresetArg::Local);
        assert_eq!(up.run.run_dir, PathBuf::from(".dml/run"));
        assert!(!up.tmux);
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli =
            Cli::try_parse_from(["dml", "members", "--json", "--agent", "10.0.0.1:9000"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.agent, "10.0.0.1:9000");
    }

    #[test]
    fn zero_agents_is_refused() {
        assert!(Cli::try_parse_from(["dml", "local", "up", "-n", "0"]).is_err());
    }
}
