//! `dml credential`: a client credential (admin or read-only) derived from
//! the cluster key, written as a key file of its own.

use crate::cli::CredentialRole;
use anyhow::{Context, Result};
use dml_shared::auth::{ClusterKey, Role};
use dml_tui::error::ClientError;
use serde_json::json;
use std::io::Write;
use std::path::Path;

/// What a credential of `role` can and cannot do, in one sentence.
pub fn abilities(role: Role) -> &'static str {
    match role {
        Role::ReadOnly => {
            "it can view members, stats, the leader, ls, get, jobs, output, rates, latency, \
             placement and the console, but cannot put, delete, submit-job, set-batch-size, \
             join or leave"
        }
        Role::Admin => {
            "it can do what an operator does (put, delete, submit-job, set-batch-size, join, \
             leave and every view), but cannot act as an agent (Raft, repair copies, worker \
             leases)"
        }
        Role::Peer => "it is an agent's cluster key and can do everything",
    }
}

/// `dml credential`.
pub fn run(
    key_file: Option<&Path>,
    role: CredentialRole,
    out: &Path,
    force: bool,
    json: bool,
) -> Result<()> {
    let role = match role {
        CredentialRole::Admin => Role::Admin,
        CredentialRole::ReadOnly => Role::ReadOnly,
    };
    let path = crate::key::find(key_file).ok_or_else(|| ClientError::Missing {
        what: "the cluster key",
        path: crate::key::KEYGEN_PATH.into(),
        hint: "give the cluster key the credential derives from with --key-file or DML_KEY_FILE",
    })?;
    let key = ClusterKey::load(&path)?;
    let cred = key.credential(role);
    write_private(out, &cred.to_hex(), force)?;
    if json {
        println!(
            "{}",
            json!({
                "path": out,
                "role": role.name(),
                "fingerprint": cred.fingerprint(),
                "derived_from": key.fingerprint(),
            })
        );
    } else {
        println!(
            "wrote {role} credential {} to {} (mode 0600), derived from cluster key {}; {}. \
             Use it with --key-file {} or DML_KEY_FILE; it stops working when key {} is \
             removed from the agents' keyrings.",
            cred.fingerprint(),
            out.display(),
            key.fingerprint(),
            abilities(role),
            out.display(),
            key.fingerprint(),
        );
    }
    Ok(())
}

/// Writes `hex` and a newline to `path` with mode 0600; an existing file
/// only with `force`.
fn write_private(path: &Path, hex: &str, force: bool) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| ClientError::io("create", dir, e))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(0o600);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::Error::from(ClientError::InTheWay(format!(
                "{} already exists; pass --force to replace it",
                path.display()
            )))
        } else {
            ClientError::io("write", path, e).into()
        }
    })?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|()| f.write_all(format!("{hex}\n").as_bytes()))
        .and_then(|()| f.sync_all())
        .map_err(|e| ClientError::io("write", path, e))
        .context("cannot write the credential")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_file_is_private_loadable_and_not_replaced_by_accident() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("dml-cred-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let key_path = dir.join("cluster.key");
        let key = ClusterKey::write_new(&key_path, false).unwrap();
        let out = dir.join("ro.key");
        run(Some(&key_path), CredentialRole::ReadOnly, &out, false, true).unwrap();
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            ClusterKey::load(&out).unwrap(),
            key.credential(Role::ReadOnly)
        );
        let e = run(Some(&key_path), CredentialRole::Admin, &out, false, true).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        run(Some(&key_path), CredentialRole::Admin, &out, true, true).unwrap();
        assert_eq!(ClusterKey::load(&out).unwrap(), key.credential(Role::Admin));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
