//! `dml models fetch`: downloads a model's registry `url` into
//! `DIR/fetched/<file>`, streamed to a temp file, SHA-256 checked, then
//! renamed. A wrong hash or an HTTP error leaves no file behind; an entry
//! without a sha256 is refused.

use anyhow::{Context, Result, anyhow, bail};
use dml_shared::models::ModelSpec;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Time to open a connection and to get the response headers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a whole model download may take.
const BODY_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const BUF: usize = 256 * 1024;

/// A model file in place and verified.
#[derive(Clone, Debug, PartialEq)]
pub struct Fetched {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
    /// The file was already there with the right hash; nothing was downloaded.
    pub already: bool,
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 (hex) and size of a file.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0; BUF];
    let mut n = 0u64;
    loop {
        let got = f.read(&mut buf)?;
        if got == 0 {
            return Ok((hex(&h.finalize()), n));
        }
        h.update(&buf[..got]);
        n += got as u64;
    }
}

/// The url and expected hash of a model, or why it cannot be fetched.
pub fn source(spec: &ModelSpec) -> Result<(&str, &str)> {
    let url = spec
        .url
        .as_deref()
        .ok_or_else(|| anyhow!("{}: the registry gives no url to fetch it from", spec.name))?;
    let sha = spec.sha256.as_deref().ok_or_else(|| {
        anyhow!(
            "{}: the registry gives no sha256 for {url}; refusing an unverified download (add sha256 = \"<64 hex digits>\" to its entry)",
            spec.name
        )
    })?;
    Ok((url, sha))
}

/// Downloads `spec`'s url into `dir/<file>` unless a verified copy is there.
pub fn fetch(spec: &ModelSpec, dir: &Path) -> Result<Fetched> {
    let (url, want) = source(spec)?;
    let path = dir.join(&spec.file);
    if path.is_file()
        && let Ok((have, bytes)) = sha256_file(&path)
        && have == want
    {
        return Ok(Fetched {
            path,
            bytes,
            sha256: have,
            already: true,
        });
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create {}", spec.name, dir.display()))?;
    let tmp = dir.join(format!(".{}.part-{}", spec.file, std::process::id()));
    let result = download(url, &tmp).and_then(|(have, bytes)| {
        if have != want {
            bail!(
                "{}: downloaded {bytes} bytes from {url} but their sha256 is {have}, expected {want}; nothing installed",
                spec.name
            );
        }
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("{}: cannot move it to {}", spec.name, path.display()))?;
        Ok(Fetched {
            path: path.clone(),
            bytes,
            sha256: have,
            already: false,
        })
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("fetch {}", spec.name))
}

/// Streams `url` into `tmp` (fsynced); its SHA-256 and size.
fn download(url: &str, tmp: &Path) -> Result<(String, u64)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_recv_response(Some(RESPONSE_TIMEOUT))
        .timeout_recv_body(Some(BODY_TIMEOUT))
        .build()
        .into();
    let resp = agent.get(url).call().map_err(|e| match e {
        ureq::Error::StatusCode(code) => anyhow!("GET {url}: HTTP status {code}"),
        e => anyhow!("GET {url}: {e}"),
    })?;
    let mut body = resp.into_body().into_reader();
    let mut out = File::create(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0; BUF];
    let mut n = 0u64;
    loop {
        let got = body
            .read(&mut buf)
            .with_context(|| format!("GET {url}: reading the body after {n} bytes"))?;
        if got == 0 {
            break;
        }
        h.update(&buf[..got]);
        out.write_all(&buf[..got])
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        n += got as u64;
    }
    out.sync_all()
        .with_context(|| format!("cannot sync {}", tmp.display()))?;
    Ok((hex(&h.finalize()), n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dml_shared::models::Registry;
    use std::io::BufRead;
    use std::net::TcpListener;

    /// Serves `/good.onnx`, `/bad.onnx` and 404 for anything else, until dropped.
    struct Server {
        addr: std::net::SocketAddr,
    }

    fn serve(good: &'static [u8], bad: &'static [u8]) -> Server {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                // Skip the headers.
                let mut h = String::new();
                while reader.read_line(&mut h).is_ok_and(|n| n > 2) {
                    h.clear();
                }
                let path = line.split_whitespace().nth(1).unwrap_or("");
                let (status, body): (&str, &[u8]) = match path {
                    "/good.onnx" => ("200 OK", good),
                    "/bad.onnx" => ("200 OK", bad),
                    _ => ("404 Not Found", b"no such file"),
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(body);
            }
        });
        Server { addr }
    }

    const GOOD: &[u8] = b"pretend ONNX bytes, good copy";
    const BAD: &[u8] = b"pretend ONNX bytes, corrupted";

    fn registry(addr: std::net::SocketAddr, sha: &str) -> Registry {
        let entry = |name: &str, path: &str, sha: Option<&str>| {
            format!(
                "[[model]]\nname = \"{name}\"\nfile = \"{name}.onnx\"\ninput_size = 32\nresize = 36\nmean = [0.5, 0.5, 0.5]\nstd = [0.5, 0.5, 0.5]\nlabels = \"l.txt\"\nbatch = 2\nmax_batch = 8\nurl = \"http://{addr}/{path}\"\n{}\n",
                sha.map(|s| format!("sha256 = \"{s}\"")).unwrap_or_default()
            )
        };
        let text = [
            entry("good", "good.onnx", Some(sha)),
            entry("corrupt", "bad.onnx", Some(sha)),
            entry("gone", "gone.onnx", Some(sha)),
            entry("unsigned", "good.onnx", None),
        ]
        .concat();
        Registry::parse("test.toml", &text, |_| Ok("a\nb\n".into())).unwrap()
    }

    #[test]
    fn fetch_verifies_the_hash_and_leaves_nothing_on_failure() {
        let server = serve(GOOD, BAD);
        let want = hex(&Sha256::digest(GOOD));
        let reg = registry(server.addr, &want);
        let dir = std::env::temp_dir().join(format!("dml-fetch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);

        let f = fetch(reg.get("good").unwrap(), &dir).unwrap();
        assert!(!f.already);
        assert_eq!(f.sha256, want);
        assert_eq!(std::fs::read(dir.join("good.onnx")).unwrap(), GOOD);
        // A second fetch finds the verified copy.
        assert!(fetch(reg.get("good").unwrap(), &dir).unwrap().already);

        let e = format!(
            "{:#}",
            fetch(reg.get("corrupt").unwrap(), &dir).unwrap_err()
        );
        let bad_hash = hex(&Sha256::digest(BAD));
        assert!(
            e.contains("corrupt") && e.contains(&want) && e.contains(&bad_hash),
            "{e}"
        );
        let e = format!("{:#}", fetch(reg.get("gone").unwrap(), &dir).unwrap_err());
        assert!(e.contains("gone") && e.contains("404"), "{e}");
        let e = format!(
            "{:#}",
            fetch(reg.get("unsigned").unwrap(), &dir).unwrap_err()
        );
        assert!(e.contains("unsigned") && e.contains("no sha256"), "{e}");

        // Only the good file is there: no temp files, nothing for the failures.
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["good.onnx"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_existing_file_is_downloaded_again() {
        let server = serve(GOOD, BAD);
        let want = hex(&Sha256::digest(GOOD));
        let reg = registry(server.addr, &want);
        let dir = std::env::temp_dir().join(format!("dml-refetch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("good.onnx"), b"truncated").unwrap();
        let f = fetch(reg.get("good").unwrap(), &dir).unwrap();
        assert!(!f.already);
        assert_eq!(std::fs::read(dir.join("good.onnx")).unwrap(), GOOD);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
