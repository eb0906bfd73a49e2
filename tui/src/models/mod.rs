//! `dml models`: the models as the cluster knows them (batch size, SDFS
//! version) and the local file of each; `models build|fetch|upload`.
//!
//! - [`local`]: where model files live on this machine, and the project root.
//! - [`fetch`]: verified downloads.

pub mod fetch;
pub mod local;

use crate::cli::{ModelsArgs, ModelsCommand};
use crate::report::render_table;
use crate::sdfs::PartialFailure;
use crate::sdfs::progress::Bar;
use crate::sdfs::report::{elapsed, size};
use anyhow::{Context, Result, bail};
use dml_shared::infer::ModelInfo;
use dml_shared::models::{ModelSpec, Registry};
use dml_shared::sdfs_client::{Progress, Sdfs};
use dml_tui::error::ClientError;
use local::{ModelDirs, find_up};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// The registry given by `--registry`, else the built-in one.
fn registry(path: Option<&Path>) -> Result<Registry> {
    match path {
        Some(p) => Ok(Registry::load(p)?),
        None => Ok(Registry::builtin()),
    }
}

/// The named models (all of `all` when none is named), each checked.
fn select<'a>(
    reg: &'a Registry,
    names: &[String],
    all: impl Fn(&ModelSpec) -> bool,
) -> Result<Vec<&'a ModelSpec>> {
    if names.is_empty() {
        return Ok(reg.models.iter().filter(|m| all(m)).collect());
    }
    names
        .iter()
        .map(|n| Ok(reg.require(n).map_err(dml_shared::Error::from)?))
        .collect()
}

/// Runs `dml models [build|fetch|upload]`.
pub async fn run(args: &ModelsArgs, agent: &str, json: bool) -> Result<()> {
    let reg = registry(args.registry.as_deref())?;
    let dirs = ModelDirs::resolve(args.dir.as_deref());
    let resolve = || crate::oneshot::resolve_agent(agent);
    match &args.action {
        None => list(&reg, &dirs, resolve()?, json).await,
        Some(ModelsCommand::Build {
            models,
            out,
            missing,
        }) => build(&reg, &dirs, models, out.as_deref(), *missing, json),
        Some(ModelsCommand::Fetch { models }) => {
            let reg = reg.clone();
            let models = models.clone();
            let dir = dirs.fetched.clone();
            tokio::task::spawn_blocking(move || fetch_all(&reg, &dir, &models, json))
                .await
                .context("the download task")?
        }
        Some(ModelsCommand::Upload { models }) => {
            upload(&reg, &dirs, models, resolve()?, json).await
        }
    }
}

/// Where the local copy of a model is, for tables: "built .dml/models/built/x.onnx".
fn local_json(dirs: &ModelDirs, file: &str) -> Value {
    match dirs.find(file) {
        Some((s, p)) => json!({"source": s.as_str(), "path": p}),
        None => json!({"source": "missing", "path": null}),
    }
}

fn local_text(dirs: &ModelDirs, file: &str) -> String {
    match dirs.find(file) {
        Some((s, p)) => format!("{} {}", s.as_str(), p.display()),
        None => "missing".into(),
    }
}

/// The local file name of a model the cluster knows.
fn file_of(reg: &Registry, name: &str) -> String {
    reg.get(name)
        .map_or_else(|| format!("{name}.onnx"), |m| m.file.clone())
}

pub fn models_json(infos: &[ModelInfo], reg: &Registry, dirs: &ModelDirs) -> Value {
    Value::Array(
        infos
            .iter()
            .map(|m| {
                json!({
                    "name": m.name,
                    "batch_size": m.batch_size,
                    "effective_batch": m.effective_batch,
                    "max_queue_delay_ms": m.max_queue_delay_ms,
                    "p99_target_ms": m.p99_target_ms,
                    "max_batch": m.max_batch,
                    "file": m.file,
                    "version": m.version,
                    "local": local_json(dirs, &file_of(reg, &m.name)),
                })
            })
            .collect(),
    )
}

pub fn models_table(infos: &[ModelInfo], reg: &Registry, dirs: &ModelDirs) -> String {
    let rows: Vec<Vec<String>> = infos
        .iter()
        .map(|m| {
            let batching = crate::infer::report::batching_settings(m);
            vec![
                m.name.clone(),
                crate::infer::report::effective_batch(m),
                m.max_batch.to_string(),
                if batching.is_empty() {
                    "-".into()
                } else {
                    batching
                },
                m.version
                    .map_or("not uploaded".into(), |v| format!("{} v{v}", m.file)),
                local_text(dirs, &file_of(reg, &m.name)),
            ]
        })
        .collect();
    render_table(
        &[
            "MODEL",
            "BATCH",
            "MAX",
            "DYNAMIC BATCHING",
            "SDFS",
            "LOCAL FILE",
        ],
        &rows,
    )
}

async fn list(reg: &Registry, dirs: &ModelDirs, agent: SocketAddr, json: bool) -> Result<()> {
    let infos = crate::infer::models(&Sdfs::new(agent)).await?;
    if json {
        println!("{}", models_json(&infos, reg, dirs));
    } else {
        print!("{}", models_table(&infos, reg, dirs));
    }
    Ok(())
}

/// Where the project venv's python is looked for, below the checkout root.
const VENV_PYTHON: &str = ".venv/bin/python";

/// The checkout holding the project venv, or an error saying how to make it.
fn venv_root(found: Option<PathBuf>) -> Result<PathBuf> {
    let missing = || {
        ClientError::NotInstalled(format!(
            "no project venv ({VENV_PYTHON}) above the dml executable or the current directory; run bash scripts/setup.sh"
        ))
    };
    Ok(found.ok_or_else(missing)?)
}

fn build(
    reg: &Registry,
    dirs: &ModelDirs,
    names: &[String],
    out: Option<&Path>,
    missing: bool,
    json: bool,
) -> Result<()> {
    let mut chosen = select(reg, names, |_| true)?;
    if missing {
        chosen.retain(|m| !dirs.has_fetched_or_built(&m.file));
        if chosen.is_empty() {
            let msg = "every model has a fetched or built file; nothing to build";
            if json {
                println!("{}", json!({"built": [], "note": msg}));
            } else {
                println!("{msg}");
            }
            return Ok(());
        }
    }
    let root = venv_root(find_up(VENV_PYTHON))?;
    let python = root.join(VENV_PYTHON);
    let script = root.join("scripts/models/build_models.py");
    if !script.is_file() {
        let missing = format!("the model build script {} is missing", script.display());
        return Err(ClientError::NotInstalled(missing).into());
    }
    let out = out.map_or_else(|| dirs.built.clone(), Path::to_path_buf);
    let mut cmd = std::process::Command::new(&python);
    cmd.arg(&script).arg("--out").arg(&out);
    let list: Vec<&str> = chosen.iter().map(|m| m.name.as_str()).collect();
    cmd.arg("--models").arg(list.join(","));
    // The script's own output goes to stderr, so stdout stays ours (--json).
    let stderr = std::io::stderr();
    let to_stderr = std::os::fd::AsFd::as_fd(&stderr)
        .try_clone_to_owned()
        .context("duplicate stderr")?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(to_stderr))
        .status()
        .with_context(|| format!("cannot run {} {}", python.display(), script.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    let built: Vec<(&str, PathBuf)> = chosen
        .iter()
        .map(|m| (m.name.as_str(), out.join(&m.file)))
        .filter(|(_, p)| p.is_file())
        .collect();
    if json {
        let v: Vec<Value> = built
            .iter()
            .map(|(n, p)| json!({"model": n, "path": p}))
            .collect();
        println!("{}", json!({"built": v, "out": out}));
    } else {
        for (n, p) in &built {
            println!("{n}: built {} (random weights)", p.display());
        }
    }
    if built.len() < chosen.len() {
        let absent: Vec<&str> = chosen
            .iter()
            .map(|m| m.name.as_str())
            .filter(|n| !built.iter().any(|(b, _)| b == n))
            .collect();
        bail!(
            "the build script left no file for {} in {}",
            absent.join(", "),
            out.display()
        );
    }
    Ok(())
}

/// Ends a bulk command: prints the report and fails if any model failed.
fn finish(lines: Vec<String>, items: Vec<Value>, failures: Vec<String>, json: bool) -> Result<()> {
    let failed = failures.len();
    let total = items.len();
    if json {
        let mut v = json!({ "models": items });
        if failed > 0 {
            v["error"] = json!(format!("{failed} of {total} models failed"));
        }
        println!("{v}");
    } else {
        for l in lines {
            println!("{l}");
        }
    }
    if failed == 0 {
        return Ok(());
    }
    for f in &failures {
        eprintln!("error: {f}");
    }
    Err(PartialFailure(format!("{failed} of {total} models failed")).into())
}

fn fetch_all(reg: &Registry, dir: &Path, names: &[String], json: bool) -> Result<()> {
    let chosen = select(reg, names, |m| m.url.is_some())?;
    if chosen.is_empty() {
        bail!("no model of the registry has a url to fetch");
    }
    let (mut lines, mut items, mut failures) = (vec![], vec![], vec![]);
    for m in chosen {
        if !json {
            eprintln!("{}: fetching {}", m.name, m.url.as_deref().unwrap_or("-"));
        }
        match fetch::fetch(m, dir) {
            Ok(f) => {
                lines.push(format!(
                    "{}: {} {} ({}, sha256 {})",
                    m.name,
                    if f.already {
                        "already fetched"
                    } else {
                        "fetched"
                    },
                    f.path.display(),
                    size(f.bytes),
                    f.sha256
                ));
                items.push(json!({"model": m.name, "path": f.path, "bytes": f.bytes, "sha256": f.sha256, "already": f.already}));
            }
            Err(e) => {
                let msg = crate::error_message(&e);
                items.push(json!({"model": m.name, "error": msg}));
                failures.push(msg);
            }
        }
    }
    finish(lines, items, failures, json)
}

async fn upload(
    reg: &Registry,
    dirs: &ModelDirs,
    names: &[String],
    agent: SocketAddr,
    json: bool,
) -> Result<()> {
    let chosen = select(reg, names, |_| true)?;
    let sdfs = Sdfs::new(agent);
    let (mut lines, mut items, mut failures) = (vec![], vec![], vec![]);
    for m in chosen {
        match upload_one(&sdfs, m, dirs, json).await {
            Ok((line, item)) => {
                if !json {
                    println!("{line}");
                }
                items.push(item);
            }
            Err(e) => {
                let msg = crate::error_message(&e);
                items.push(json!({"model": m.name, "error": msg}));
                failures.push(msg);
            }
        }
    }
    // Each line was printed as it happened.
    lines.clear();
    finish(lines, items, failures, json)
}

/// Puts the best local file of `m` into SDFS unless its newest version
/// already has the same bytes.
async fn upload_one(
    sdfs: &Sdfs,
    m: &ModelSpec,
    dirs: &ModelDirs,
    json: bool,
) -> Result<(String, Value)> {
    let Some((source, path)) = dirs.find(&m.file) else {
        bail!(
            "{}: no local {} in {}, {} or {}; run `dml models fetch` or `dml models build`",
            m.name,
            m.file,
            dirs.fetched.display(),
            dirs.built.display(),
            dirs.bundled.display()
        );
    };
    let name = m.sdfs_name();
    let using = format!("{}: using {} {}", m.name, source.describe(), path.display());
    let local = {
        let p = path.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<[u8; 32]> {
            let mut h = blake3::Hasher::new();
            h.update_reader(std::fs::File::open(&p)?)?;
            Ok(*h.finalize().as_bytes())
        })
        .await
        .context("the hashing task")?
        .with_context(|| format!("{}: cannot read {}", m.name, path.display()))?
    };
    let newest = sdfs
        .ls_all(&name)
        .await
        .with_context(|| format!("{}: look up \"{name}\"", m.name))?
        .into_iter()
        .find(|f| f.name == name)
        .and_then(|f| f.versions.last().cloned());
    let item = |version: u64, already: bool| json!({"model": m.name, "source": source.as_str(), "path": path, "sdfs": name, "version": version, "already": already});
    if let Some(v) = newest
        && v.checksum == local
    {
        return Ok((
            format!(
                "{using}; already in SDFS as \"{name}\" version {}",
                v.version
            ),
            item(v.version, true),
        ));
    }
    if !json {
        eprintln!("{using}: uploading");
    }
    let bar = Bar::for_terminal(json);
    let progress = |p: Progress| bar.update(p);
    let r = sdfs.put(&path, &name, &progress).await;
    bar.finish();
    let r = r.with_context(|| format!("{}: put {} as \"{name}\"", m.name, path.display()))?;
    Ok((
        format!(
            "{using}; stored \"{name}\" version {} ({} in {})",
            r.version,
            size(r.size),
            elapsed(r.elapsed)
        ),
        item(r.version, false),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_table_shows_sdfs_version_and_local_file() {
        let reg = Registry::builtin();
        let base = std::env::temp_dir().join(format!("dml-models-{}", std::process::id()));
        let dirs = ModelDirs::new(&base.join("m"), &base);
        std::fs::create_dir_all(&dirs.built).unwrap();
        std::fs::write(dirs.built.join("resnet50.onnx"), b"x").unwrap();
        let infos = [
            ModelInfo {
                name: "resnet50".into(),
                batch_size: 8,
                max_batch: 64,
                file: "models/resnet50.onnx".into(),
                version: Some(2),
                max_queue_delay_ms: 50,
                p99_target_ms: Some(500),
                effective_batch: 4,
            },
            ModelInfo {
                name: "tiny".into(),
                batch_size: 4,
                max_batch: 64,
                file: "models/tiny.onnx".into(),
                version: None,
                max_queue_delay_ms: 0,
                p99_target_ms: None,
                effective_batch: 4,
            },
        ];
        let t = models_table(&infos, &reg, &dirs);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].contains("models/resnet50.onnx v2"), "{t}");
        assert!(lines[1].contains("built "), "{t}");
        assert!(
            lines[1].contains("4 of 8") && lines[1].contains("delay 50 ms, p99 target 500 ms"),
            "{t}"
        );
        assert!(
            lines[2].contains("not uploaded") && lines[2].ends_with("missing"),
            "{t}"
        );
        let v = models_json(&infos, &reg, &dirs);
        assert_eq!(v[0]["local"]["source"], "built");
        assert_eq!(v[1]["local"]["source"], "missing");
        assert_eq!(v[0]["version"], 2);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_missing_venv_says_how_to_make_it() {
        let base = std::env::temp_dir().join(format!("dml-novenv-{}", std::process::id()));
        std::fs::create_dir_all(base.join("a/b")).unwrap();
        let e = venv_root(local::find_up_from(&base.join("a/b"), VENV_PYTHON))
            .unwrap_err()
            .to_string();
        assert!(e.contains("run bash scripts/setup.sh"), "{e}");
        std::fs::create_dir_all(base.join("a/.venv/bin")).unwrap();
        std::fs::write(base.join("a").join(VENV_PYTHON), b"").unwrap();
        let root = venv_root(local::find_up_from(&base.join("a/b"), VENV_PYTHON)).unwrap();
        assert_eq!(root, base.join("a"));
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn unknown_models_are_refused_by_name() {
        let reg = Registry::builtin();
        let e = select(&reg, &["vgg".into()], |_| true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"vgg\"") && e.contains("resnet50"), "{e}");
        let with_url = select(&reg, &[], |m| m.url.is_some()).unwrap();
        assert!(with_url.iter().all(|m| m.name != "tiny"));
    }
}
