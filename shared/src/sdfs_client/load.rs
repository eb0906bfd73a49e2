//! `load`: every file under a directory put as SDFS files, a few at a time;
//! and the bounded runner `get_all` shares.

use super::local::walk_files;
use super::{LoadItem, LoadReport, Phase, Progress, ProgressFn, Sdfs};
use crate::error::{Error, Result};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Instant;

impl Sdfs {
    /// [`Sdfs::put_many`] of `(local, name)` jobs, reported per file.
    async fn put_reported(
        &self,
        jobs: Vec<(PathBuf, String)>,
        start: Instant,
        progress: ProgressFn<'_>,
    ) -> LoadReport {
        let keys = jobs.clone();
        let results = self.put_many(jobs, progress).await;
        LoadReport {
            items: keys
                .into_iter()
                .zip(results)
                .map(|((local, name), result)| LoadItem {
                    local,
                    name,
                    result,
                })
                .collect(),
            elapsed: start.elapsed(),
        }
    }

    /// Puts every regular file under `dir` (recursively, in path order) as
    /// `prefix/<relative path>` (just the relative path when `prefix` is
    /// empty), small files in batches ([`Sdfs::put_many`]). A failed file
    /// does not stop the others.
    pub async fn load(
        &self,
        dir: &Path,
        prefix: &str,
        progress: ProgressFn<'_>,
    ) -> Result<LoadReport> {
        let start = Instant::now();
        let files = walk_files(dir)?;
        let jobs: Vec<(PathBuf, String)> = files
            .into_iter()
            .map(|(path, rel)| {
                let name = load_name(prefix, &rel);
                (path, name)
            })
            .collect();
        Ok(self.put_reported(jobs, start, progress).await)
    }
}

impl Sdfs {
    /// `dml put` of several local files or a directory, under `prefix`: a
    /// file as `prefix/<its file name>`; a directory's files as
    /// `prefix/<relative path>` when it is the only path, else as
    /// `prefix/<directory name>/<relative path>`. Small files go in batches.
    pub async fn put_paths(
        &self,
        paths: &[PathBuf],
        prefix: &str,
        progress: ProgressFn<'_>,
    ) -> Result<LoadReport> {
        let start = Instant::now();
        let mut jobs: Vec<(PathBuf, String)> = Vec::new();
        for path in paths {
            let last = || {
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| Error::LocalFile {
                        path: path.display().to_string(),
                        reason: std::io::Error::other("has no file name to put it under"),
                    })
            };
            if path.is_dir() {
                let under = if paths.len() == 1 {
                    prefix.to_string()
                } else {
                    load_name(prefix, &last()?)
                };
                for (file, rel) in walk_files(path)? {
                    jobs.push((file, load_name(&under, &rel)));
                }
            } else {
                jobs.push((path.clone(), load_name(prefix, &last()?)));
            }
        }
        Ok(self.put_reported(jobs, start, progress).await)
    }
}

/// The SDFS name `load` gives a file at `rel` under its directory.
pub fn load_name(prefix: &str, rel: &str) -> String {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        rel.to_string()
    } else {
        format!("{prefix}/{rel}")
    }
}

/// Runs `f` on every item, `limit` at a time, reporting files done; results
/// come back in the items' order.
pub(super) async fn bounded<T, R, F, Fut>(
    items: Vec<T>,
    limit: usize,
    f: F,
    progress: ProgressFn<'_>,
) -> Vec<Result<R>>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<R>> + Send + 'static,
    R: Send + 'static,
{
    let total = items.len() as u64;
    let mut results: Vec<Option<Result<R>>> = (0..items.len()).map(|_| None).collect();
    let mut set = tokio::task::JoinSet::new();
    let mut items = items.into_iter().enumerate();
    let mut done = 0;
    progress(Progress {
        phase: Phase::Files,
        done,
        total,
    });
    loop {
        while set.len() < limit.max(1) {
            let Some((i, item)) = items.next() else { break };
            let fut = f(item);
            set.spawn(async move { (i, fut.await) });
        }
        let Some(joined) = set.join_next().await else {
            break;
        };
        if let Ok((i, r)) = joined {
            results[i] = Some(r);
        }
        done += 1;
        progress(Progress {
            phase: Phase::Files,
            done,
            total,
        });
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::Io(std::io::Error::other("task panicked")))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_names_join_prefix_and_relative_path() {
        assert_eq!(load_name("", "a/b.jpg"), "a/b.jpg");
        assert_eq!(load_name("imgs", "a.jpg"), "imgs/a.jpg");
        assert_eq!(load_name("imgs//", "a.jpg"), "imgs/a.jpg");
    }
}
