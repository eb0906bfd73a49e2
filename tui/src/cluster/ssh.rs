//! One SSH connection to a host (async-ssh2-lite on tokio): host key checked
//! against known_hosts, login by key file or ssh-agent, commands, and atomic
//! SFTP uploads (temp name, then rename).

use super::hosts::{Auth, Host};
use anyhow::{Context, Result, anyhow, bail};
use async_ssh2_lite::ssh2::{CheckResult, KnownHostFileKind, OpenFlags, OpenType};
use async_ssh2_lite::{AsyncSession, TokioTcpStream};
use futures::AsyncWriteExt;
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Bytes per SFTP write.
const UPLOAD_CHUNK: usize = 256 * 1024;

/// `'text'` for a POSIX shell.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

pub struct Ssh {
    session: AsyncSession<TokioTcpStream>,
}

impl Ssh {
    /// Connects, checks the host key, logs in.
    pub async fn connect(
        host: &Host,
        auth: &Auth,
        known_hosts: &Path,
        timeout: Duration,
    ) -> Result<Self> {
        let session = tokio::time::timeout(timeout, Self::open(host, auth, known_hosts))
            .await
            .map_err(|_| anyhow!("no SSH session within {timeout:?}"))??;
        Ok(Self { session })
    }

    async fn open(
        host: &Host,
        auth: &Auth,
        known_hosts: &Path,
    ) -> Result<AsyncSession<TokioTcpStream>> {
        let addr = tokio::net::lookup_host((host.address.as_str(), host.ssh_port))
            .await
            .with_context(|| format!("cannot resolve {}", host.address))?
            .next()
            .with_context(|| format!("{} resolves to no address", host.address))?;
        let stream = TokioTcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        let mut session = AsyncSession::new(stream, None)?;
        session.handshake().await.context("SSH handshake")?;
        check_host_key(&session, host, known_hosts)?;
        match auth {
            Auth::KeyFile(key) => {
                if !key.is_file() {
                    bail!("key_file {} does not exist", key.display());
                }
                session
                    .userauth_pubkey_file(&host.user, None, key, None)
                    .await
                    .with_context(|| {
                        format!(
                            "login as {} with key {} refused (a key with a passphrase \
                             needs an ssh-agent)",
                            host.user,
                            key.display()
                        )
                    })?;
            }
            Auth::Agent => {
                if std::env::var_os("SSH_AUTH_SOCK").is_none() {
                    bail!("no key_file in hosts.toml and no ssh-agent (SSH_AUTH_SOCK is unset)");
                }
                session
                    .userauth_agent_with_try_next(&host.user)
                    .await
                    .with_context(|| {
                        format!("login as {} with the ssh-agent's keys refused", host.user)
                    })?;
            }
        }
        if !session.authenticated() {
            bail!("login as {} refused", host.user);
        }
        Ok(session)
    }

    /// Runs `script` with `sh -c` and returns its exit status and output
    /// (stdout and stderr together).
    pub async fn exec(&self, script: &str) -> Result<(i32, String)> {
        let mut ch = self.session.channel_session().await?;
        ch.exec(&format!("sh -c {} 2>&1", quote(script))).await?;
        let mut out = Vec::new();
        ch.read_to_end(&mut out).await?;
        let mut err = Vec::new();
        let _ = ch.stderr().read_to_end(&mut err).await;
        ch.wait_close().await?;
        let status = ch.exit_status()?;
        out.extend(err);
        Ok((status, String::from_utf8_lossy(&out).into_owned()))
    }

    /// As [`exec`](Self::exec), failing on a non-zero status with the output.
    pub async fn run(&self, what: &str, script: &str) -> Result<String> {
        let (status, out) = self.exec(script).await?;
        if status != 0 {
            bail!("{what} failed (exit {status}): {}", out.trim());
        }
        Ok(out)
    }

    /// Writes `data` to `dest` atomically, see [`upload`](Self::upload).
    pub async fn upload_bytes(&self, data: &[u8], dest: &str, mode: i32) -> Result<()> {
        self.upload_from(&mut &data[..], dest, mode, |_| {}).await
    }

    /// Copies the local file `src` to `dest` over SFTP: into `dest.tmp-PID`,
    /// then renamed over `dest` (a running binary is never written in place).
    pub async fn upload(
        &self,
        src: &Path,
        dest: &str,
        mode: i32,
        progress: impl FnMut(u64),
    ) -> Result<()> {
        let mut f = tokio::fs::File::open(src)
            .await
            .with_context(|| format!("cannot open {}", src.display()))?;
        self.upload_from(&mut f, dest, mode, progress).await
    }

    async fn upload_from<R: tokio::io::AsyncRead + Unpin>(
        &self,
        src: &mut R,
        dest: &str,
        mode: i32,
        mut progress: impl FnMut(u64),
    ) -> Result<()> {
        let tmp = format!("{dest}.tmp-{}", std::process::id());
        let sftp = self.session.sftp().await.context("cannot start SFTP")?;
        let mut file = sftp
            .open_mode(
                Path::new(&tmp),
                OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
                mode,
                OpenType::File,
            )
            .await
            .with_context(|| format!("cannot create {tmp}"))?;
        let mut buf = vec![0u8; UPLOAD_CHUNK];
        let mut sent = 0u64;
        loop {
            let n = src.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n])
                .await
                .with_context(|| format!("writing {tmp}"))?;
            sent += n as u64;
            progress(sent);
        }
        file.flush().await?;
        // fsync@openssh.com where the server has it.
        let _ = file.fsync().await;
        file.close().await?;
        drop(file);
        // SFTP v3 rename refuses an existing target; `mv -f` is rename(2) too.
        if sftp
            .rename(Path::new(&tmp), Path::new(dest), None)
            .await
            .is_err()
        {
            self.run(
                &format!("renaming {tmp} to {dest}"),
                &format!("mv -f {} {}", quote(&tmp), quote(dest)),
            )
            .await?;
        }
        Ok(())
    }

    pub async fn close(self) {
        let _ = self.session.disconnect(None, "bye", None).await;
    }
}

fn check_host_key(
    session: &AsyncSession<TokioTcpStream>,
    host: &Host,
    known_hosts: &Path,
) -> Result<()> {
    let (key, _) = session.host_key().context("the server sent no host key")?;
    let mut kh = session.known_hosts()?;
    if let Err(e) = kh.read_file(known_hosts, KnownHostFileKind::OpenSSH) {
        bail!(
            "cannot read known_hosts {}: {e}; create it with \
             `ssh-keyscan -p {} {} >> {}` after checking the key",
            known_hosts.display(),
            host.ssh_port,
            host.address,
            known_hosts.display()
        );
    }
    match kh.check_port(&host.address, host.ssh_port, key) {
        CheckResult::Match => Ok(()),
        CheckResult::Mismatch => bail!(
            "host key of {}:{} does NOT match {}: possible man-in-the-middle; refusing",
            host.address,
            host.ssh_port,
            known_hosts.display()
        ),
        CheckResult::NotFound => bail!(
            "host key of {}:{} is not in {}; check it and add it with \
             `ssh-keyscan -p {} {} >> {}`",
            host.address,
            host.ssh_port,
            known_hosts.display(),
            host.ssh_port,
            host.address,
            known_hosts.display()
        ),
        CheckResult::Failure => bail!(
            "cannot check the host key of {}:{} against {}",
            host.address,
            host.ssh_port,
            known_hosts.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
    }
}
