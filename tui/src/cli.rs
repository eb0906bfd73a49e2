//! The command line of `dml`, declared with clap's derive API.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

// The Examples sections of `--help` (and of the man pages).
const EX_DML: &str = "\
Examples:
  dml local up -n 10               start 10 agents here (the current context)
  dml                              open the console
  dml members --json | jq .        one-shot commands, as JSON
  dml --context lab put a.jpg x/a  against another cluster (dml context list)";
const EX_PUT: &str = "\
Examples:
  dml put photo.jpg images/photo.jpg     one file
  tar c dir | dml put - backups/dir.tar  from stdin
  dml put ./dataset datasets/sample      a directory, in batches
  dml put a.jpg b.jpg images             several files under a prefix";
const EX_LOGS: &str = "\
Examples:
  dml logs -n 20                        the agent's last 20 lines
  dml --agent 127.0.0.1:8003 logs       another agent's
  dml logs --json | jq -r '.lines[]'    as JSON";
const EX_GET: &str = "\
Examples:
  dml get images/photo.jpg photo.jpg    to a file (atomically, verified)
  dml get images/photo.jpg ./out/       into a directory, as out/photo.jpg
  dml get images/photo.jpg - | file -   to stdout";
const EX_GET_VERSIONS: &str = "\
Examples:
  dml get-versions notes.txt 3 ./notes/          one file per version
  dml get-versions notes.txt 3 all.txt --merge   one file with delimiters";
const EX_LS_ALL: &str = "\
Examples:
  dml ls-all '*'                     everything
  dml ls-all 'datasets/sample/*.jpg' one dataset's images (quote the glob)";
const EX_SET_BATCH_SIZE: &str = "\
Examples:
  dml set-batch-size resnet50 8                        batches of up to 8 images
  dml set-batch-size resnet50 16 --max-queue-delay 50ms
  dml set-batch-size resnet50 --p99-target 2s          the leader picks the size
  dml set-batch-size resnet50 --p99-target off";
const EX_SUBMIT_JOB: &str = "\
Examples:
  dml submit-job ResNet50 100                  classify 100 sample images
  dml submit-job inceptionv3 40 --wait         follow it to the end
  dml submit-job resnet50 500 --dataset datasets/mine";
const EX_BENCH_MODEL: &str = "\
Examples:
  dml bench-model resnet50                         batch 1,2,4,8,16, 1 job, 64 images each
  dml bench-model tiny --batch-sizes 1,4 --concurrency 1,2 --images 40
  dml bench-model resnet50 --duration 20s --chart docs/resnet50.svg --json";
const EX_LOCAL_UP: &str = "\
Examples:
  dml local up                   10 agents on 127.0.0.1:8001-8010
  dml local up -n 5 --tmux       5 agents, one tmux window each
  dml local kill 8003            crash one (dml local start 8003 brings it back)";

/// Address of the agent `dml` talks to when none is given.
pub const DEFAULT_AGENT: &str = "127.0.0.1:8001";

/// Operator tool for an AwesomeDML cluster. Without a subcommand it opens the
/// full-screen console.
#[derive(Debug, Parser)]
#[command(name = "dml", version, about, after_help = EX_DML)]
pub struct Cli {
    /// Agent to talk to (HOST:PORT). Default: the context's first agent that
    /// answers, else 127.0.0.1:8001.
    #[arg(long, global = true, env = "DML_AGENT")]
    pub agent: Option<String>,

    /// The context (a named cluster: agents and key file) to use instead of
    /// the current one; `dml context list` shows them. For `local up` and
    /// `cluster up`, the name to save the new cluster under.
    #[arg(long, global = true, env = "DML_CONTEXT")]
    pub context: Option<String>,

    /// The cluster key file. Default: .dml/run/cluster.key (made by `dml local
    /// up`), else .dml/cluster.key (made by `dml keygen`).
    #[arg(long, global = true, env = "DML_KEY_FILE")]
    pub key_file: Option<PathBuf>,

    /// Print machine-readable JSON on stdout instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

    /// The console's first agent (HOST:PORT); default: --agent. It then
    /// follows the leader and fails over to other live members.
    #[arg(long)]
    pub connect: Option<String>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a shell completion script: `dml completion bash > ~/.local/share/bash-completion/completions/dml`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Draw the live console once, after following the cluster for a few
    /// seconds, and write it as an SVG picture (the README's is made so).
    Screenshot {
        /// Where to write the SVG.
        #[arg(long, default_value = "console.svg")]
        out: PathBuf,
        /// Columns and rows of the picture.
        #[arg(long, default_value_t = 140)]
        width: u16,
        #[arg(long, default_value_t = 42)]
        height: u16,
        /// Seconds of telemetry to gather first (rates and sparklines fill in).
        #[arg(long, default_value_t = 5)]
        settle_secs: u64,
    },
    /// Put `dml` and `dml-agent` on PATH (symlinks in PREFIX/bin) and install
    /// the shell completions and man pages under PREFIX/share.
    Install {
        /// Default: ~/.local (bin/ is on a Debian user's PATH once it exists).
        #[arg(long)]
        prefix: Option<PathBuf>,
    },
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
    /// The agent's newest log lines, oldest first (it keeps the last 500 in
    /// memory; its whole log is its stderr, a file under `dml local`).
    #[command(after_help = EX_LOGS)]
    Logs {
        /// How many lines.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: u32,
    },
    /// Who leads the control plane (Raft), as the agent sees it.
    Leader,
    /// Store a local file in SDFS as a new version of SDFSNAME; or several
    /// files, or a directory, under the prefix SDFSNAME (in batches).
    #[command(after_help = EX_PUT)]
    Put {
        /// The local file to store (`-` reads it from stdin); several files
        /// go to SDFSNAME/<file name>; a directory's files (recursively) to
        /// SDFSNAME/<relative path>, as `dml sdfs load` does.
        #[arg(required = true, num_args = 1..)]
        localfiles: Vec<PathBuf>,
        /// Its name in SDFS (relative, '/'-separated, no '..'); the prefix
        /// for several files or a directory.
        sdfsname: String,
    },
    /// Fetch the newest committed version of SDFSNAME into LOCALFILE.
    #[command(after_help = EX_GET)]
    Get {
        sdfsname: String,
        /// Where to write it; into a directory (or a path ending in '/') under
        /// the name's last component; `-` writes it to stdout.
        localfile: PathBuf,
    },
    /// Delete every version of SDFSNAME.
    Delete { sdfsname: String },
    /// The versions of SDFSNAME and the nodes that hold each.
    Ls { sdfsname: String },
    /// The files and versions stored on one agent.
    Store {
        /// The agent to ask (HOST:PORT); default: --agent.
        #[arg(long)]
        node: Option<String>,
    },
    /// Fetch the last N versions of SDFSNAME, newest first.
    ///
    /// Without --merge, LOCALPATH is a directory that receives one file per
    /// version, named <last part of SDFSNAME>.v<VERSION>. With --merge,
    /// LOCALPATH is one file: each version is preceded by a line
    /// "===== SDFSNAME version K (SIZE bytes) =====" and followed by a newline.
    #[command(after_help = EX_GET_VERSIONS)]
    GetVersions {
        sdfsname: String,
        #[arg(value_parser = clap::value_parser!(u64).range(1..))]
        n: u64,
        localpath: PathBuf,
        /// Write all versions into one file, with a delimiter line before each.
        #[arg(long)]
        merge: bool,
    },
    /// Fetch the newest version of every file matching GLOB into LOCALDIR/<name>.
    GetAll {
        /// Shell-style pattern over whole names ('*' also crosses '/'); quote it.
        glob: String,
        localdir: PathBuf,
    },
    /// The files matching GLOB, with their versions and replicas.
    #[command(after_help = EX_LS_ALL)]
    LsAll {
        /// Shell-style pattern over whole names ('*' also crosses '/'); quote it.
        glob: String,
    },
    /// Whole-store SDFS views and bulk loading.
    #[command(subcommand)]
    Sdfs(SdfsCommand),
    /// Rotate the cluster key without downtime: list, install, use, remove.
    #[command(subcommand)]
    Keyring(KeyringCommand),
    /// Write a new random cluster key (mode 0600) and print its fingerprint.
    Keygen {
        /// Where to write it.
        #[arg(long, default_value = KEYGEN_PATH)]
        out: PathBuf,
        /// Replace an existing file (every agent then needs the new key).
        #[arg(long)]
        force: bool,
    },
    /// Write a client credential derived from the cluster key (--key-file):
    /// admin (everything an operator does) or read-only (views only).
    ///
    /// Agents derive the same credential from every key in their keyring, so
    /// it needs no distribution; it stops working when the key it came from
    /// is removed. Use it as any key file: --key-file, DML_KEY_FILE.
    Credential {
        /// What it may do.
        #[arg(long, value_enum)]
        role: CredentialRole,
        /// Where to write it (mode 0600).
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Named clusters (agents and key file) that `dml` uses from any
    /// directory; `local up` and `cluster up` add one.
    #[command(subcommand)]
    Context(ContextCommand),
    /// Run a cluster of agents on this machine.
    #[command(subcommand)]
    Local(LocalCommand),
    /// Deploy and run agents on remote hosts over SSH (hosts.toml).
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// C4: run MODEL over NUM_IMAGES images of a dataset; prints the job id.
    #[command(after_help = EX_SUBMIT_JOB)]
    SubmitJob {
        /// A model name, in any case (`ResNet50` is `resnet50`).
        #[arg(value_parser = model_arg)]
        model: String,
        /// Images to classify: the first ones under the dataset prefix in name
        /// order, cycling if there are fewer.
        #[arg(value_parser = clap::value_parser!(u32).range(1..))]
        num_images: u32,
        /// SDFS prefix of the images.
        #[arg(long, default_value = DEFAULT_DATASET)]
        dataset: String,
        /// Weight in fair sharing: running jobs share the workers' time in
        /// proportion to their weights (as in Slurm fair-share).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
        weight: u32,
        /// Follow the job until it ends (a progress bar on a terminal, else a
        /// line per change); exit 0 when every image has a result, 1 when the
        /// job failed or was cancelled.
        #[arg(long)]
        wait: bool,
    },
    /// Stop a running job for good (needs an admin credential): its queries
    /// in flight are released and the results it has stay readable.
    Cancel { job: u64 },
    /// One job in detail: progress per worker, errors, queue and compute time.
    Job { job: u64 },
    /// C4: a job's per-image top-5 labels and scores (JSONL, or CSV).
    ///
    /// Written to FILE, or stdout when no FILE is given. CSV when --format csv
    /// or FILE ends in .csv. A job still running gives its results so far.
    GetOutput {
        job: u64,
        file: Option<PathBuf>,
        #[arg(long, value_enum)]
        format: Option<OutputFormat>,
    },
    /// C3: the largest batch of a model's queries not yet dispatched, and
    /// its dynamic batching.
    ///
    /// Queries of several jobs of the model run as one batch of up to N
    /// images; a partial batch waits up to --max-queue-delay for more.
    /// With --p99-target the leader picks the batch size up to N that meets
    /// it at the highest throughput (`dml models` shows its choice).
    #[command(after_help = EX_SET_BATCH_SIZE)]
    SetBatchSize {
        /// A model name, in any case (`InceptionV3` is `inceptionv3`).
        #[arg(value_parser = model_arg)]
        model: String,
        /// Between 1 and the model's max_batch.
        #[arg(required_unless_present_any = ["max_queue_delay", "p99_target"])]
        n: Option<u32>,
        /// Longest a partial batch waits for more images (e.g. 50ms; 0 for none).
        #[arg(long, value_parser = humantime::parse_duration)]
        max_queue_delay: Option<std::time::Duration>,
        /// p99 query time to keep to (e.g. 500ms), or `off`.
        #[arg(long, value_parser = p99_target_arg)]
        p99_target: Option<std::time::Duration>,
    },
    /// Throughput and query latency of MODEL over a sweep of batch sizes and
    /// concurrent jobs, against the live cluster (as Triton's perf_analyzer).
    ///
    /// Each setting sets the batch size, runs real jobs over the dataset and
    /// reads from the leader the jobs' times (images/s) and every query's C2
    /// time, queue plus compute (p50/p95/p99). The batch size is restored at
    /// the end, also after an error or Ctrl-C. Progress goes to stderr; the
    /// table (or --json) to stdout; the curve to an SVG chart.
    #[command(after_help = EX_BENCH_MODEL)]
    BenchModel {
        /// A model name, in any case.
        #[arg(value_parser = model_arg)]
        model: String,
        /// Batch sizes to sweep, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
        batch_sizes: Vec<u32>,
        /// Numbers of jobs run at once, comma-separated; each is swept over
        /// every batch size.
        #[arg(long, value_delimiter = ',', default_value = "1")]
        concurrency: Vec<u32>,
        /// Images per setting, split over its concurrent jobs (default 64
        /// unless --duration is given).
        #[arg(long, conflicts_with = "duration", value_parser = clap::value_parser!(u32).range(1..))]
        images: Option<u32>,
        /// Time per setting instead (e.g. 20s, 1m): each concurrent job is
        /// followed by another (of 8 batches) until it has passed.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        /// SDFS prefix of the images.
        #[arg(long, default_value = DEFAULT_DATASET)]
        dataset: String,
        /// Images of an unmeasured first job, so the workers load the model.
        #[arg(long, default_value_t = 20)]
        warmup: u32,
        /// Where to write the SVG chart (default target/bench/bench-model-MODEL.svg).
        #[arg(long)]
        chart: Option<PathBuf>,
        /// The chart's title, e.g. the machine it ran on.
        #[arg(long)]
        title: Option<String>,
    },
    /// C1: queries and images per second (last 10 s) and totals, per model.
    Rates,
    /// C2: query time per model (avg, std, p50, p90, p95, p99, ms), and its queue and compute parts.
    Latency,
    /// C5: the workers running each job's queries right now, with each job's weight and its
    /// shares of the queries and of the worker time of the last 10 s.
    Placement,
    /// Every job: progress, state, errors.
    Jobs,
    /// The models: batch size, SDFS version, local file; or build, fetch, upload them.
    Models(ModelsArgs),
    /// Sample image datasets.
    #[command(subcommand)]
    Dataset(DatasetCommand),
}

/// SDFS prefix `dml submit-job` takes images from by default.
pub const DEFAULT_DATASET: &str = "datasets/sample/";

/// The role of a `dml credential`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CredentialRole {
    /// Views and writes: put, delete, submit-job, cancel, set-batch-size, join, leave.
    Admin,
    /// Views only: members, ls, get, jobs, rates, the console.
    ReadOnly,
}

/// Format of `dml get-output`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// One JSON object per image and line.
    Jsonl,
    /// A header, then one row per image.
    Csv,
}

#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// Directory of the fetched/ and built/ model files (default: .dml/models
    /// under the project root).
    #[arg(long, global = true)]
    pub dir: Option<PathBuf>,

    /// Model registry file (default: the built-in assets/models.toml).
    #[arg(long, global = true)]
    pub registry: Option<PathBuf>,

    #[command(subcommand)]
    pub action: Option<ModelsCommand>,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Build ONNX models with random weights (scripts/models/build_models.py
    /// in the project venv).
    Build {
        /// Comma-separated model names (default: every model of the registry).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Output directory (default: DIR/built).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Only the models that have neither a fetched nor a built file.
        #[arg(long)]
        missing: bool,
    },
    /// Download each model's registry url into DIR/fetched, checking its sha256.
    Fetch {
        /// Comma-separated model names (default: every model with a url).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
    },
    /// Put the best local file of each model into SDFS as models/<name>.onnx:
    /// fetched, else built, else bundled.
    Upload {
        /// Comma-separated model names (default: every model of the registry).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DatasetCommand {
    /// Write a seeded sample dataset of JPEG and PNG images into DIR.
    Make {
        dir: PathBuf,
        /// Number of images.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        count: u32,
        /// Same seed, same images.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// `dml keyring`, as Consul's `consul keyring`: install a new key on every
/// agent, make it the primary (the one agents send with) once every agent
/// holds it, then remove the old one once no agent sends with it. Keys are
/// named by fingerprint; `list` shows each one's convergence.
#[derive(Debug, Subcommand)]
pub enum KeyringCommand {
    /// The cluster's keys: which is primary, and on how many live agents
    /// each is installed and primary ([n/m]).
    List,
    /// Add a key on every agent (it is accepted, not yet sent with).
    Install {
        /// The key as 64 hex digits (visible to other local users in the
        /// process list: prefer --from).
        hex: Option<String>,
        /// Read the key from this key file.
        #[arg(long, conflicts_with_all = ["hex", "generate"])]
        from: Option<PathBuf>,
        /// Make a new random key; its secret is printed once, or written to --out.
        #[arg(long, conflicts_with = "hex")]
        generate: bool,
        /// With --generate: write the new key to this file (mode 0600)
        /// instead of printing it.
        #[arg(long, requires = "generate")]
        out: Option<PathBuf>,
    },
    /// Make the key FINGERPRINT the primary on every agent; refused until
    /// every live agent holds it.
    Use { fingerprint: String },
    /// Remove the key FINGERPRINT from every agent; refused for the primary
    /// and while a live agent still sends with it.
    Remove { fingerprint: String },
}

#[derive(Debug, Subcommand)]
pub enum SdfsCommand {
    /// Every file in SDFS, with its versions.
    Files,
    /// The versions each node holds.
    Nodes,
    /// Move copies toward the placement the alive agents give (an agent that
    /// joined late gets its share); shows the moves, from agent to agent.
    Balance {
        /// Show the plan without starting it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Number of files, versions and bytes in SDFS.
    Count,
    /// Put every file under LOCALDIR (recursively) as PREFIX/<relative path>.
    Load {
        localdir: PathBuf,
        /// Directory in SDFS to load into (default: the top).
        #[arg(default_value = "")]
        prefix: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum LocalCommand {
    /// Start N agents on 127.0.0.1, ports BASE..BASE+N-1; the first is the introducer.
    #[command(after_help = EX_LOCAL_UP)]
    Up(UpArgs),
    /// Report on each agent recorded in the run directory.
    Status(RunDirArg),
    /// Stop exactly the agents recorded in the run directory.
    Down(DownArgs),
    /// Start a recorded agent that is not running, with its data directory and
    /// the command line `up` gave it (it rejoins as the same voter).
    Start(OneAgentArgs),
    /// Stop one agent gracefully (SIGTERM: it leaves the group), SIGKILL after
    /// --timeout-secs; it stays recorded, so `start` brings it back.
    Stop(OneAgentArgs),
    /// Stop one agent (as `stop`) and start it again.
    Restart(OneAgentArgs),
    /// SIGKILL one agent at once, as a crash: the others must detect it.
    Kill(OneAgentArgs),
}

#[derive(Debug, Args)]
pub struct OneAgentArgs {
    /// The agent's port (as `dml local status` lists them).
    pub port: u16,

    #[command(flatten)]
    pub run: RunDirArg,

    /// Seconds to wait after SIGTERM before sending SIGKILL.
    #[arg(long, default_value_t = 5)]
    pub timeout_secs: u64,

    /// Seconds to wait for a started agent to answer.
    #[arg(long, default_value_t = 30)]
    pub wait_secs: u64,
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

    /// Serve no Prometheus metrics (by default agent i serves them on
    /// 127.0.0.1, port `--metrics-base-port` + i).
    #[arg(long)]
    pub no_metrics: bool,

    /// Metrics port of the first agent (default: the port after the last agent's).
    #[arg(long, conflicts_with = "no_metrics")]
    pub metrics_base_port: Option<u16>,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    #[command(flatten)]
    pub run: RunDirArg,

    /// Seconds to wait after SIGTERM before sending SIGKILL.
    #[arg(long, default_value_t = 5)]
    pub timeout_secs: u64,
}

/// Model names are lowercase; a user may type them in any case.
fn model_arg(s: &str) -> Result<String, std::convert::Infallible> {
    Ok(dml_shared::models::model_key(s))
}

/// A duration, or `off` (zero: no target).
fn p99_target_arg(s: &str) -> Result<std::time::Duration, humantime::DurationError> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(std::time::Duration::ZERO);
    }
    humantime::parse_duration(s)
}

/// Where `dml keygen` writes the key by default.
pub const KEYGEN_PATH: &str = ".dml/cluster.key";

/// `dml context ...`.
#[derive(Debug, clap::Subcommand)]
pub enum ContextCommand {
    /// Every context; `*` marks the current one.
    List,
    /// Make NAME the current context.
    Use { name: String },
    /// One context (default: the current one).
    Show { name: Option<String> },
    /// Add (or replace) a context and make it current.
    Add {
        name: String,
        /// An agent address (repeatable; tried in order).
        #[arg(long = "agent-addr", required = true)]
        agents: Vec<std::net::SocketAddr>,
        /// Its key file or client credential (stored as an absolute path).
        #[arg(long = "key")]
        key_file: Option<PathBuf>,
    },
    /// Forget a context.
    Remove { name: String },
}

/// `dml cluster ...`'s arguments (run by the binary's `cluster` module).
pub mod cluster {
    use clap::{Args, Subcommand};
    use std::path::PathBuf;

    #[derive(Debug, Subcommand)]
    pub enum ClusterCommand {
        /// Upload dml-agent and each host's config over SFTP, start the agents
        /// (systemd where it is PID 1, else tmux) and wait until they are healthy.
        Up(UpArgs),
        /// Stop each host's agent with SIGTERM, so it leaves the group.
        Down(DownArgs),
        /// Each host's agent: process, pid, API, members seen, leader; then the
        /// running jobs that make no progress, and why.
        Status(HostsArg),
    }

    #[derive(Debug, Args)]
    pub struct HostsArg {
        /// The hosts file (see docs/DEPLOY.md).
        #[arg(long)]
        pub hosts: PathBuf,
    }

    #[derive(Debug, Args)]
    pub struct UpArgs {
        #[command(flatten)]
        pub hosts: HostsArg,
        /// The dml-agent binary to upload (default: hosts.toml's agent_bin, else next to dml).
        #[arg(long)]
        pub agent_bin: Option<PathBuf>,
        /// Seconds to wait for every agent to answer, see the others and a leader.
        #[arg(long, default_value_t = 90)]
        pub wait_secs: u64,
    }

    #[derive(Debug, Args)]
    pub struct DownArgs {
        #[command(flatten)]
        pub hosts: HostsArg,
        /// Seconds to wait after SIGTERM before SIGKILL.
        #[arg(long, default_value_t = 15)]
        pub timeout_secs: u64,
    }
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
        assert_eq!(cli.agent.as_deref(), Some("10.0.0.1:9000"));
    }

    #[test]
    fn sdfs_commands_parse_like_the_original() {
        let cli = Cli::try_parse_from(["dml", "get-versions", "a/b", "3", "out", "--merge"]);
        let Some(Command::GetVersions {
            sdfsname,
            n,
            localpath,
            merge,
        }) = cli.unwrap().command
        else {
            panic!("not get-versions");
        };
        assert_eq!((sdfsname.as_str(), n, merge), ("a/b", 3, true));
        assert_eq!(localpath, PathBuf::from("out"));
        assert!(Cli::try_parse_from(["dml", "get-versions", "a", "0", "out"]).is_err());
        let cli = Cli::try_parse_from(["dml", "sdfs", "load", "dir"]).unwrap();
        let Some(Command::Sdfs(SdfsCommand::Load { prefix, .. })) = cli.command else {
            panic!("not sdfs load");
        };
        assert_eq!(prefix, "");
        let cli = Cli::try_parse_from(["dml", "store", "--node", "h:1", "--json"]).unwrap();
        assert!(cli.json);
    }

    #[test]
    fn inference_commands_parse() {
        let cli = Cli::try_parse_from(["dml", "submit-job", "tiny", "40"]).unwrap();
        let Some(Command::SubmitJob {
            model,
            num_images,
            dataset,
            weight,
            wait,
        }) = cli.command
        else {
            panic!("not submit-job");
        };
        assert_eq!((model.as_str(), num_images, wait), ("tiny", 40, false));
        assert_eq!(dataset, DEFAULT_DATASET);
        assert_eq!(weight, 1);
        let cli = Cli::try_parse_from(["dml", "submit-job", "tiny", "4", "--weight", "8"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::SubmitJob { weight: 8, .. })
        ));
        let e = Cli::try_parse_from(["dml", "submit-job", "tiny", "4", "--weight", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--weight") && e.contains("1..=1000"), "{e}");
        let cli = Cli::try_parse_from(["dml", "submit-job", "tiny", "4", "--wait"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::SubmitJob { wait: true, .. })
        ));
        let cli = Cli::try_parse_from(["dml", "cancel", "7"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Cancel { job: 7 })));
        let cli = Cli::try_parse_from(["dml", "job", "7", "--json"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Job { job: 7 })));
        assert!(Cli::try_parse_from(["dml", "cancel", "x"]).is_err());
        assert!(Cli::try_parse_from(["dml", "submit-job", "tiny", "0"]).is_err());
        let cli = Cli::try_parse_from(["dml", "get-output", "3", "o.csv", "--format", "jsonl"]);
        let Some(Command::GetOutput { job, file, format }) = cli.unwrap().command else {
            panic!("not get-output");
        };
        assert_eq!((job, format), (3, Some(OutputFormat::Jsonl)));
        assert_eq!(file, Some(PathBuf::from("o.csv")));
        let cli = Cli::try_parse_from(["dml", "models", "upload", "--models", "tiny,resnet50"]);
        let Some(Command::Models(m)) = cli.unwrap().command else {
            panic!("not models");
        };
        let Some(ModelsCommand::Upload { models }) = m.action else {
            panic!("not upload");
        };
        assert_eq!(models, ["tiny", "resnet50"]);
        let cli = Cli::try_parse_from(["dml", "models", "--json"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Models(ModelsArgs { action: None, .. }))
        ));
        assert!(Cli::try_parse_from(["dml", "dataset", "make", "d", "--count", "0"]).is_err());
    }

    #[test]
    fn bench_model_parses_its_sweep() {
        let cli = Cli::try_parse_from(["dml", "bench-model", "ResNet50"]).unwrap();
        let Some(Command::BenchModel {
            model,
            batch_sizes,
            concurrency,
            images,
            duration,
            ..
        }) = cli.command
        else {
            panic!("not bench-model");
        };
        assert_eq!((model.as_str(), images, duration), ("resnet50", None, None));
        assert_eq!((batch_sizes, concurrency), (vec![1, 2, 4, 8, 16], vec![1]));
        let cli = Cli::try_parse_from([
            "dml",
            "bench-model",
            "tiny",
            "--concurrency",
            "1,4",
            "--duration",
            "20s",
        ]);
        assert!(matches!(
            cli.unwrap().command,
            Some(Command::BenchModel { duration: Some(d), .. }) if d.as_secs() == 20
        ));
        let both = [
            "dml",
            "bench-model",
            "tiny",
            "--images",
            "8",
            "--duration",
            "5s",
        ];
        assert!(Cli::try_parse_from(both).is_err());
        assert!(
            Cli::try_parse_from(["dml", "bench-model", "tiny", "--batch-sizes", "1,x"]).is_err()
        );
    }

    #[test]
    fn zero_agents_is_refused() {
        assert!(Cli::try_parse_from(["dml", "local", "up", "-n", "0"]).is_err());
    }
}
