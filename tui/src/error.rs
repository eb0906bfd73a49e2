//! Failures `dml` finds on its own side, before or without asking an agent
//! (a bad value, a file it cannot read or write, a local cluster in the
//! way), each with the [`ErrorKind`] that sets the exit code.

use dml_shared::ErrorKind;
use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A value given on the command line is not acceptable.
    #[error("{what} \"{value}\": {reason}")]
    BadValue {
        what: &'static str,
        value: String,
        reason: String,
    },
    /// A batch size outside the model's limits.
    #[error("batch size {size} for \"{model}\": {reason}")]
    BadBatchSize {
        model: String,
        size: u32,
        reason: String,
    },
    /// `dml local up`'s ports do not fit in 1..=65535.
    #[error("--base-port {base} with -n {count} needs ports up to {last}; ports run 1 to 65535")]
    BadPorts { base: u16, count: u16, last: u32 },
    /// A local file or directory could not be read, created or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// A file `dml` needs is not where it looked.
    #[error("{what} not found at {}: {hint}", path.display())]
    Missing {
        what: &'static str,
        path: PathBuf,
        hint: &'static str,
    },
    /// A local tool or script `dml` runs is not installed, in words saying
    /// where it looked and how to install it.
    #[error("{0}")]
    NotInstalled(String),
    /// Something on this machine is in the way (live agents, a busy port).
    #[error("{0}")]
    InTheWay(String),
    #[error("the console needs a terminal; use a subcommand instead, e.g. `dml members`")]
    NoTerminal,
    /// `dml local start|stop|restart|kill PORT` names no recorded agent.
    #[error("no agent on port {port} is recorded in {}{}", run_dir.display(), known_ports(known))]
    NoSuchAgent {
        port: u16,
        run_dir: PathBuf,
        known: Vec<u16>,
    },
}

fn known_ports(known: &[u16]) -> String {
    if known.is_empty() {
        "; it records no cluster (`dml local up` starts one)".into()
    } else {
        let list: Vec<String> = known.iter().map(u16::to_string).collect();
        format!("; its agents' ports: {}", list.join(", "))
    }
}

impl ClientError {
    /// `value` of `what` is refused for `reason`.
    pub fn bad_value(what: &'static str, value: impl ToString, reason: impl Into<String>) -> Self {
        ClientError::BadValue {
            what,
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// `action` ("read", "write", "create") on `path` failed.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        ClientError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// What kind of failure it is (README, "Exit codes").
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClientError::BadValue { .. }
            | ClientError::BadBatchSize { .. }
            | ClientError::BadPorts { .. }
            | ClientError::NoTerminal => ErrorKind::Invalid,
            ClientError::Io { source, .. } => match source.kind() {
                io::ErrorKind::NotFound => ErrorKind::NotFound,
                io::ErrorKind::PermissionDenied => ErrorKind::Refused,
                _ => ErrorKind::Invalid,
            },
            ClientError::Missing { .. }
            | ClientError::NotInstalled(_)
            | ClientError::NoSuchAgent { .. } => ErrorKind::NotFound,
            ClientError::InTheWay(_) => ErrorKind::Conflict,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_failure_has_the_kind_a_script_can_act_on() {
        let io_kind =
            |k: io::ErrorKind| ClientError::io("write", "/x/y", io::Error::from(k)).kind();
        assert_eq!(io_kind(io::ErrorKind::NotFound), ErrorKind::NotFound);
        assert_eq!(io_kind(io::ErrorKind::PermissionDenied), ErrorKind::Refused);
        assert_eq!(io_kind(io::ErrorKind::IsADirectory), ErrorKind::Invalid);
        let bad = ClientError::bad_value("agent address", "nowhere", "is not HOST:PORT");
        assert_eq!(bad.kind(), ErrorKind::Invalid);
        assert_eq!(
            bad.to_string(),
            "agent address \"nowhere\": is not HOST:PORT"
        );
        let missing = ClientError::Missing {
            what: "agent binary",
            path: "/n/dml-agent".into(),
            hint: "pass --agent-bin PATH",
        };
        assert_eq!(missing.kind(), ErrorKind::NotFound);
        assert_eq!(
            missing.to_string(),
            "agent binary not found at /n/dml-agent: pass --agent-bin PATH"
        );
        assert_eq!(ClientError::NoTerminal.kind(), ErrorKind::Invalid);
        assert_eq!(
            ClientError::InTheWay("x".into()).kind(),
            ErrorKind::Conflict
        );
    }
}
