//! `dml completion SHELL` and `dml install`: completion scripts (clap_complete)
//! and man pages (clap_mangen) generated from the same clap definition the
//! command line parses with, and `dml`/`dml-agent` linked onto PATH.

use crate::agent_bin::AGENT_BIN_NAME;
use crate::cli::Cli;
use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;
use dml_tui::error::ClientError;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes the completion script for `shell`.
pub fn completion(shell: Shell, out: &mut dyn Write) {
    clap_complete::generate(shell, &mut Cli::command(), "dml", out);
}

/// Where each shell looks for completions under a `share` directory.
fn completion_path(share: &Path, shell: Shell) -> PathBuf {
    match shell {
        Shell::Bash => share.join("bash-completion/completions/dml"),
        Shell::Zsh => share.join("zsh/site-functions/_dml"),
        Shell::Fish => share.join("fish/vendor_completions.d/dml.fish"),
        Shell::Elvish => share.join("elvish/lib/dml.elv"),
        Shell::PowerShell => share.join("powershell/dml.ps1"),
        _ => share.join(format!("dml-completion.{shell}")),
    }
}

/// The man pages: `dml.1`, and `dml-CMD.1` for each subcommand (and
/// `dml-CMD-SUB.1` below it), as (file name, roff text).
pub fn man_pages() -> Result<Vec<(String, Vec<u8>)>> {
    fn walk(cmd: &clap::Command, name: &str, out: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
        let cmd = cmd
            .clone()
            .name(name.to_string())
            .bin_name(name.replace('-', " "));
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .render(&mut page)
            .with_context(|| format!("rendering the man page of {name}"))?;
        out.push((format!("{name}.1"), page));
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            walk(sub, &format!("{name}-{}", sub.get_name()), out)?;
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(&Cli::command(), "dml", &mut out)?;
    Ok(out)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ClientError::io("create", dir, e))?;
    }
    std::fs::write(path, bytes).map_err(|e| ClientError::io("write", path, e))?;
    Ok(())
}

/// `link` points at `target` afterwards (an older link or file there is replaced).
fn symlink(target: &Path, link: &Path) -> Result<()> {
    if let Some(dir) = link.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ClientError::io("create", dir, e))?;
    }
    match std::fs::remove_file(link) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ClientError::io("replace", link, e).into()),
    }
    std::os::unix::fs::symlink(target, link).map_err(|e| ClientError::io("link", link, e))?;
    Ok(())
}

pub fn install(prefix: Option<&Path>, json: bool) -> Result<()> {
    let prefix = match prefix {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".local"))
            .ok_or_else(|| {
                ClientError::bad_value("--prefix", "", "HOME is unset; give --prefix")
            })?,
    };
    let (bin, share) = (prefix.join("bin"), prefix.join("share"));
    let me = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .context("cannot tell where this dml is")?;
    let mut linked = vec![bin.join("dml")];
    symlink(&me, &linked[0])?;
    let agent = me.with_file_name(AGENT_BIN_NAME);
    if agent.is_file() {
        linked.push(bin.join(AGENT_BIN_NAME));
        symlink(&agent, &linked[1])?;
    }
    let mut written = Vec::new();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut script = Vec::new();
        completion(shell, &mut script);
        let path = completion_path(&share, shell);
        write_file(&path, &script)?;
        written.push(path);
    }
    let man = share.join("man/man1");
    let pages = man_pages()?;
    for (name, page) in &pages {
        write_file(&man.join(name), page)?;
    }
    let on_path =
        std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d == bin));
    if json {
        println!(
            "{}",
            json!({
                "links": linked,
                "completions": written,
                "man_dir": man,
                "man_pages": pages.len(),
                "bin_on_path": on_path,
            })
        );
    } else {
        for l in &linked {
            println!(
                "linked {} -> {}",
                l.display(),
                std::fs::read_link(l)?.display()
            );
        }
        for w in &written {
            println!("completion {}", w.display());
        }
        println!("{} man pages in {} (`man dml`)", pages.len(), man.display());
        if !on_path {
            println!(
                "note: {} is not on PATH; add it (e.g. `export PATH=\"{}:$PATH\"` in ~/.profile)",
                bin.display(),
                bin.display()
            );
        }
    }
    Ok(())
}
