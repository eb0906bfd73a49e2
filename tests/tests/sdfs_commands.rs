//! SDFS through the `dml` binary against 10 real agents: every command round-trips with
//! equal bytes, versions are numbered in order, and bad input gets a clear error, a
//! non-zero exit and leaves nothing visible.
//!
//! What is committed is checked over the agent API (`dml_tests::sdfs::api`), not through
//! the command under test. Build the binaries first: `cargo build --workspace --bins`.

use dml_shared::sdfs::MetaRequest;
use dml_shared::sdfs::MetaResponse;
use dml_shared::sdfs_client::{merge_header, no_progress, version_file_name};
use dml_tests::sdfs::content::{pattern, text, write_file};
use dml_tests::sdfs::json::{mentions, u64_fields};
use dml_tests::sdfs::{SDFS_POLL, SdfsCluster, SdfsOptions, api, cluster_slot, disk};
use dml_tests::wait_until;
use std::time::{Duration, Instant};

/// Time for deleted versions to leave every disk: reconcile runs every second in tests.
const RECONCILE: Duration = Duration::from_secs(30);
/// A non-voter (agents 7..9 are not among the first 2m + 1 = 7).
const NON_VOTER: usize = 8;

/// The one error line a failed command should print, for assertion messages.
fn said(out: &dml_tests::DmlOutput) -> String {
    format!(
        "`{}` exited {:?}; stderr: {}",
        out.command,
        out.code(),
        out.stderr.trim()
    )
}

#[tokio::test]
async fn every_sdfs_command_round_trips_and_the_bytes_compare_equal() {
    let _slot = cluster_slot().await;
    let t = Instant::now();
    let c = SdfsCluster::start("sdfs-commands", 10).await.unwrap();
    eprintln!("10 agents ready in {:.1?}", t.elapsed());

    // put, then get through another agent.
    let a1 = pattern(1, 300_000);
    let a2 = pattern(2, 123_457);
    c.must_put(NON_VOTER, "dir/a.bin", &a1).await.unwrap();
    c.must_get(3, "dir/a.bin", &a1).await.unwrap();

    // A second put is version 2; --json says so.
    let local = c.local_path("a2");
    write_file(&local, &a2).unwrap();
    let out = c
        .dml(0, &["put", &local.to_string_lossy(), "dir/a.bin", "--json"])
        .await
        .unwrap();
    out.ensure_success().unwrap();
    let v = out.json().unwrap();
    assert!(
        u64_fields(&v, "version").contains(&2),
        "put --json should report version 2: {v}"
    );
    c.must_get(5, "dir/a.bin", &a2).await.unwrap();

    // `-` is stdin for put and stdout for get; a directory target gets the name's last part.
    let piped = pattern(3, 200_003);
    let out = dml_stdio(&c, 2, &["put", "-", "dir/stdin.bin"], &piped).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = dml_stdio(&c, 4, &["get", "dir/stdin.bin", "-"], &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == piped, "get - wrote other bytes to stdout");
    let into = c.local_path("into");
    std::fs::create_dir_all(&into).unwrap();
    let target = format!("{}/", into.display());
    c.dml(6, &["get", "dir/stdin.bin", &target])
        .await
        .unwrap()
        .ensure_success()
        .unwrap();
    assert!(std::fs::read(into.join("stdin.bin")).unwrap() == piped);

    // The committed state, over the API: two versions, 4 replicas each.
    let f = c
        .wait_replicas(1, "dir/a.bin", 4, &(0..10).collect::<Vec<_>>(), RECONCILE)
        .await
        .unwrap();
    let numbers: Vec<u64> = f.versions.iter().map(|v| v.version).collect();
    assert_eq!(numbers, vec![1, 2]);
    assert_eq!(f.versions[0].size, a1.len() as u64);
    assert_eq!(f.versions[1].size, a2.len() as u64);
    assert_eq!(
        f.versions[1].checksum,
        *blake3::hash(&a2).as_bytes(),
        "the committed checksum is the BLAKE3 of the bytes put"
    );
    // Every replica really holds the bytes, and only the replicas do.
    for v in &f.versions {
        let bytes = if v.version == 1 { &a1 } else { &a2 };
        let on_disk = c.holders_on_disk(bytes).unwrap();
        let listed: std::collections::BTreeSet<usize> =
            v.replicas.iter().map(|r| c.index_of(*r).unwrap()).collect();
        assert_eq!(
            on_disk, listed,
            "v{}: disks vs committed replicas",
            v.version
        );
    }

    // ls: the nodes holding each version.
    let out = c.dml(2, &["ls", "dir/a.bin", "--json"]).await.unwrap();
    out.ensure_success().unwrap();
    let v = out.json().unwrap();
    for r in f.versions.iter().flat_map(|v| &v.replicas) {
        assert!(mentions(&v, &r.to_string()), "ls --json misses {r}: {v}");
    }
    let out = c.dml(2, &["ls", "dir/a.bin"]).await.unwrap();
    out.ensure_success().unwrap();
    for r in &f.versions[1].replicas {
        assert!(
            out.stdout.contains(&r.to_string()),
            "ls misses {r}: {}",
            out.stdout
        );
    }

    // store --node: what one replica holds, as its own API says.
    let holder = f.versions[1].replicas[0];
    let out = c
        .dml(4, &["store", "--node", &holder.to_string(), "--json"])
        .await
        .unwrap();
    out.ensure_success().unwrap();
    let v = out.json().unwrap();
    assert!(mentions(&v, "dir/a.bin"), "store --json: {v}");
    let held = api::store(holder).await.unwrap();
    assert!(
        held.iter().any(|h| h.name == "dir/a.bin" && h.version == 2),
        "{holder} store: {held:?}"
    );

    // get-versions: one file per version, and --merge with a header before each.
    let dir = c.local_path("versions");
    let out = c
        .dml(
            6,
            &["get-versions", "dir/a.bin", "2", &dir.to_string_lossy()],
        )
        .await
        .unwrap();
    out.ensure_success().unwrap();
    for (k, bytes) in [(1, &a1), (2, &a2)] {
        let p = dir.join(version_file_name("dir/a.bin", k));
        assert_eq!(&std::fs::read(&p).unwrap(), bytes, "{}", p.display());
    }
    let merged = c.local_path("merged");
    let out = c
        .dml(
            7,
            &[
                "get-versions",
                "dir/a.bin",
                "2",
                &merged.to_string_lossy(),
                "--merge",
            ],
        )
        .await
        .unwrap();
    out.ensure_success().unwrap();
    let mut want = Vec::new();
    for (k, bytes) in [(2, &a2), (1, &a1)] {
        want.extend_from_slice(merge_header("dir/a.bin", k, bytes.len() as u64).as_bytes());
        want.extend_from_slice(bytes);
        want.push(b'\n');
    }
    assert!(
        std::fs::read(&merged).unwrap() == want,
        "merged file differs"
    );

    // ls-all and get-all over a glob.
    let x1 = pattern(11, 5000);
    let x2 = pattern(12, 70_000);
    let y = pattern(13, 10);
    c.must_put(1, "glob/x1", &x1).await.unwrap();
    c.must_put(9, "glob/x2", &x2).await.unwrap();
    c.must_put(4, "other/y", &y).await.unwrap();
    let out = c.dml(3, &["ls-all", "glob/*", "--json"]).await.unwrap();
    out.ensure_success().unwrap();
    let v = out.json().unwrap();
    assert!(mentions(&v, "glob/x1") && mentions(&v, "glob/x2"), "{v}");
    assert!(!mentions(&v, "other/y"), "ls-all glob/* lists other/y: {v}");
    let all = c.local_path("all");
    let out = c
        .dml(2, &["get-all", "glob/*", &all.to_string_lossy()])
        .await
        .unwrap();
    out.ensure_success().unwrap();
    let mut got: Vec<_> = disk::files_under(&all)
        .unwrap()
        .into_iter()
        .map(|p| {
            (
                p.strip_prefix(&all).unwrap().to_path_buf(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("glob/x1".into(), x1.clone()),
            ("glob/x2".into(), x2.clone())
        ]
    );

    // sdfs load: a local tree becomes prefix/<relative path>.
    let tree = c.local_path("tree");
    let l1 = pattern(21, 2048);
    let l2 = pattern(22, 99_999);
    write_file(&tree.join("one"), &l1).unwrap();
    write_file(&tree.join("sub/two"), &l2).unwrap();
    let out = c
        .dml(
            NON_VOTER,
            &["sdfs", "load", &tree.to_string_lossy(), "loaded"],
        )
        .await
        .unwrap();
    out.ensure_success().unwrap();
    c.must_get(0, "loaded/one", &l1).await.unwrap();
    c.must_get(9, "loaded/sub/two", &l2).await.unwrap();

    // sdfs files / nodes / count agree with the API.
    let names = [
        "dir/a.bin",
        "glob/x1",
        "glob/x2",
        "other/y",
        "loaded/one",
        "loaded/sub/two",
    ];
    let out = c.dml(5, &["sdfs", "files", "--json"]).await.unwrap();
    out.ensure_success().unwrap();
    let v = out.json().unwrap();
    for n in names {
        assert!(mentions(&v, n), "sdfs files --json misses {n}: {v}");
    }
    let out = c.dml(5, &["sdfs", "nodes", "--json"]).await.unwrap();
    out.ensure_success().unwrap();
    let v = out.json().unwrap();
    let MetaResponse::Nodes(nodes) = api::meta(c.addrs[0], MetaRequest::Nodes).await.unwrap()
    else {
        panic!("Nodes answered with something else")
    };
    for (addr, held) in &nodes {
        if !held.is_empty() {
            assert!(
                mentions(&v, &addr.to_string()),
                "sdfs nodes misses {addr}: {v}"
            );
        }
    }
    // Each agent's share of the bytes, against an even spread: they add up.
    let (parts, evens): (f64, f64) = v
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["share"].as_f64().unwrap(),
                n["share_of_even"].as_f64().unwrap(),
            )
        })
        .fold((0.0, 0.0), |(p, e), (a, b)| (p + a, e + b));
    let n = v.as_array().unwrap().len() as f64;
    assert!(
        (parts - 1.0).abs() < 1e-6 && (evens - n).abs() < 1e-6,
        "{v}"
    );
    let MetaResponse::Count {
        files,
        versions,
        bytes,
    } = api::meta(c.addrs[0], MetaRequest::Count).await.unwrap()
    else {
        panic!("Count answered with something else")
    };
    assert_eq!((files, versions), (7, 8));
    let total: usize = [&a1, &a2, &piped, &x1, &x2, &y, &l1, &l2]
        .iter()
        .map(|b| b.len())
        .sum();
    assert_eq!(bytes, total as u64);
    let out = c.dml(6, &["sdfs", "count", "--json"]).await.unwrap();
    out.ensure_success().unwrap();
    let v = out.json().unwrap();
    assert_eq!(u64_fields(&v, "files"), vec![7], "{v}");
    assert_eq!(u64_fields(&v, "versions"), vec![8], "{v}");

    // delete: every version goes, from the metadata at once and from every disk soon.
    c.dml(1, &["delete", "dir/a.bin"])
        .await
        .unwrap()
        .ensure_success()
        .unwrap();
    assert!(c.file(8, "dir/a.bin").await.unwrap().is_none());
    let (out, _) = c.get_bytes(2, "dir/a.bin").await.unwrap();
    assert_eq!(out.code(), Some(3), "get after delete: {}", said(&out));
    let again = c.dml(3, &["delete", "dir/a.bin"]).await.unwrap();
    // A missing file is `not-found`: exit 3.
    assert!(
        again.code() == Some(3) && again.stderr.contains("no such SDFS file \"dir/a.bin\""),
        "delete again: {}",
        said(&again)
    );
    let t = Instant::now();
    wait_until(
        "deleted copies to leave every disk",
        RECONCILE,
        SDFS_POLL,
        async || {
            let left: Vec<_> = [&a1, &a2]
                .iter()
                .map(|b| c.holders_on_disk(b))
                .collect::<anyhow::Result<_>>()?;
            anyhow::ensure!(
                left.iter().all(|s| s.is_empty()),
                "still on agents {left:?}"
            );
            Ok(())
        },
    )
    .await
    .unwrap();
    eprintln!(
        "deleted copies gone from disk {:.1?} after delete",
        t.elapsed()
    );
    c.must_get(3, "glob/x1", &x1).await.unwrap();
}

#[tokio::test]
async fn versions_are_numbered_in_order_and_get_versions_returns_them_newest_first() {
    let _slot = cluster_slot().await;
    let c = SdfsCluster::start("sdfs-versions", 10).await.unwrap();
    let name = "logs/ver.txt";
    let contents: Vec<Vec<u8>> = (1..=5).map(|k| text(&format!("v{k}"), 1000 * k)).collect();
    for (k, bytes) in contents.iter().enumerate() {
        // Each put through a different agent, voters and non-voters alike.
        c.must_put((k * 3) % 10, name, bytes).await.unwrap();
        let f = c.file(k % 10, name).await.unwrap().expect("committed");
        let numbers: Vec<u64> = f.versions.iter().map(|v| v.version).collect();
        assert_eq!(numbers, (1..=k as u64 + 1).collect::<Vec<_>>());
        c.must_get(9 - k, name, bytes).await.unwrap();
    }
    let f = c.file(0, name).await.unwrap().unwrap();
    for (v, bytes) in f.versions.iter().zip(&contents) {
        assert_eq!(
            v.checksum,
            *blake3::hash(bytes).as_bytes(),
            "v{}",
            v.version
        );
        assert_eq!(v.size, bytes.len() as u64);
    }
    assert!(
        f.versions
            .windows(2)
            .all(|w| w[0].committed_ms <= w[1].committed_ms),
        "commit times follow version numbers: {:?}",
        f.versions
    );

    // More versions asked than exist: all of them, one file each.
    let dir = c.local_path("all-versions");
    c.dml(4, &["get-versions", name, "9", &dir.to_string_lossy()])
        .await
        .unwrap()
        .ensure_success()
        .unwrap();
    for (k, bytes) in contents.iter().enumerate() {
        let p = dir.join(version_file_name(name, k as u64 + 1));
        assert_eq!(&std::fs::read(&p).unwrap(), bytes, "{}", p.display());
    }
    assert_eq!(disk::files_under(&dir).unwrap().len(), 5);

    // The last 3, merged: v5, v4, v3, each after its header.
    let merged = c.local_path("merged");
    c.dml(
        2,
        &[
            "get-versions",
            name,
            "3",
            &merged.to_string_lossy(),
            "--merge",
        ],
    )
    .await
    .unwrap()
    .ensure_success()
    .unwrap();
    let mut want = Vec::new();
    for k in [5u64, 4, 3] {
        let bytes = &contents[k as usize - 1];
        want.extend_from_slice(merge_header(name, k, bytes.len() as u64).as_bytes());
        want.extend_from_slice(bytes);
        want.push(b'\n');
    }
    let got = std::fs::read(&merged).unwrap();
    assert!(
        got == want,
        "merged file differs:\n{}",
        String::from_utf8_lossy(&got[..got.len().min(400)])
    );
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_a_nonzero_exit_and_leaves_nothing_visible() {
    let _slot = cluster_slot().await;
    let c = SdfsCluster::start("sdfs-bad-input", 10).await.unwrap();
    let bytes = pattern(7, 10_000);

    // Bad names, through the binary: absolute, `..`, empty components, too long.
    let long = "n".repeat(1025);
    for name in ["/etc/passwd", "a/../b", "../up", "a//b", "", long.as_str()] {
        let out = c.put_bytes(NON_VOTER, name, &bytes).await.unwrap();
        assert!(!out.status.success(), "put to {name:?} succeeded");
        assert!(
            out.stderr.to_lowercase().contains("name"),
            "the error should be about the name {name:?}: {}",
            said(&out)
        );
    }
    // A name with NUL cannot travel in argv: straight to the agent and through the client.
    let e = api::meta(
        c.addrs[0],
        MetaRequest::BeginPut {
            name: "a\0b".into(),
            size: 1,
        },
    )
    .await
    .unwrap_err();
    assert!(format!("{e:#}").to_lowercase().contains("nul"), "{e:#}");
    let local = c.local_path("nul");
    write_file(&local, &bytes).unwrap();
    assert!(c.client(3).put(&local, "a\0b", &no_progress).await.is_err());

    // A missing local file.
    let out = c
        .dml(2, &["put", "/nonexistent/dml-test-file", "missing-local"])
        .await
        .unwrap();
    assert!(!out.status.success(), "put of a missing file succeeded");
    assert!(
        out.stderr.contains("/nonexistent/dml-test-file"),
        "the error should name the local file: {}",
        said(&out)
    );

    // A missing SDFS file: get, ls, get-versions; the local target is not created.
    let target = c.local_path("never");
    for args in [
        vec!["get", "no/such/file", &*target.to_string_lossy()],
        vec!["ls", "no/such/file"],
        vec![
            "get-versions",
            "no/such/file",
            "2",
            &*target.to_string_lossy(),
        ],
    ] {
        let out = c.dml(5, &args).await.unwrap();
        assert!(!out.status.success(), "{} succeeded", out.command);
        assert!(
            out.stderr.contains("no/such/file"),
            "the error should name the SDFS file: {}",
            said(&out)
        );
    }
    assert!(!target.exists(), "a failed get left {}", target.display());

    // Nothing became visible, and no agent stores anything.
    let files = api::list(c.addrs[0], "*").await.unwrap();
    assert!(
        files.iter().all(|f| f.versions.is_empty()),
        "visible after bad input: {files:?}"
    );
    for i in 0..10 {
        let held = api::store(c.addrs[i]).await.unwrap();
        assert!(held.is_empty(), "agent a{i} stores {held:?}");
    }
    // The cluster still works.
    c.must_put(1, "good", &bytes).await.unwrap();
    c.must_get(6, "good", &bytes).await.unwrap();
}

#[tokio::test]
async fn a_put_with_fewer_live_agents_than_the_write_quorum_fails_and_leaves_nothing() {
    let _slot = cluster_slot().await;
    // Two agents, both voters; the write quorum stays 3.
    let c = SdfsCluster::start_with("sdfs-no-quorum", SdfsOptions::new(2))
        .await
        .unwrap();
    let bytes = pattern(8, 50_000);
    let t = Instant::now();
    let out = c.put_bytes(1, "q/file", &bytes).await.unwrap();
    assert!(!out.status.success(), "put with 2 agents succeeded");
    let err = out.stderr.to_lowercase();
    assert!(
        err.contains("quorum") || err.contains("agents"),
        "the error should say there are too few agents: {}",
        said(&out)
    );
    eprintln!("put refused in {:.1?}: {}", t.elapsed(), out.stderr.trim());
    assert!(c.file(0, "q/file").await.unwrap().is_none());
    // No copy stays on disk once the put timeout has passed.
    let deadline = c.opts.sdfs.put_timeout + RECONCILE;
    wait_until("no copy to remain", deadline, SDFS_POLL, async || {
        let on = c.holders_on_disk(&bytes)?;
        anyhow::ensure!(on.is_empty(), "copies on agents {on:?}");
        Ok(())
    })
    .await
    .unwrap();
}

/// Runs `dml args` through agent `i` with `stdin` on its standard input, and
/// its standard output captured.
async fn dml_stdio(c: &SdfsCluster, i: usize, args: &[&str], stdin: &[u8]) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(dml_tests::bins::dml_bin().unwrap())
        .arg("--agent")
        .arg(c.agent(i).addr().to_string())
        .args(args)
        .env("DML_KEY_FILE", dml_tests::key::path().unwrap())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap()
        .unwrap()
}

/// The console's `:` line is read by the CLI's clap definition and runs the
/// `dml` binary: it prints what the CLI prints, errors included, and the
/// popup shows it.
#[tokio::test]
async fn the_consoles_colon_line_prints_what_the_cli_prints() {
    use dml_tui::console::app::{Action, App, Event};
    use dml_tui::console::exec::{self, Dml};
    use ratatui::crossterm::event::{KeyCode, KeyEvent};
    let _slot = cluster_slot().await;
    let c = SdfsCluster::start("sdfs-console-line", 4).await.unwrap();
    c.must_put(0, "dir/a.txt", &text("console", 2_000))
        .await
        .unwrap();
    c.must_put(1, "dir/b.bin", &pattern(8, 70_000))
        .await
        .unwrap();
    let dml = Dml {
        exe: dml_tests::bins::dml_bin().unwrap(),
        key_file: Some(dml_tests::key::path().unwrap()),
    };
    let agent = c.agent(2).addr();
    for line in [
        &["ls-all", "dir/*"][..],
        &["ls", "dir/b.bin"],
        &["sdfs", "count", "--json"],
        &["store"],
    ] {
        let words: Vec<String> = line.iter().map(ToString::to_string).collect();
        let console = exec::command(&dml, agent, &words).await.unwrap();
        let cli = c.dml(2, line).await.unwrap();
        cli.ensure_success().unwrap();
        assert_eq!(console, cli.stdout.trim_end(), ":{}", line.join(" "));
    }
    // A failure: the CLI's message and its kind.
    let words = vec!["ls".to_string(), "dir/missing".to_string()];
    let e = exec::command(&dml, agent, &words).await.unwrap_err();
    let cli = c.dml(2, &["ls", "dir/missing"]).await.unwrap();
    assert_eq!(cli.code(), Some(i32::from(e.kind().exit_code())), "{e}");
    assert!(cli.stderr.contains(&e.to_string()), "{e} vs {}", cli.stderr);

    // The SDFS pane's file view: every file with its versions and holders.
    match exec::run(&dml, agent, Action::Files).await {
        Event::Files(Ok(files)) => {
            let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
            assert!(
                names.contains(&"dir/a.txt") && names.contains(&"dir/b.bin"),
                "{names:?}"
            );
            let b = files.iter().find(|f| f.name == "dir/b.bin").unwrap();
            assert_eq!(b.versions.len(), 1);
            assert!(b.versions[0].replicas.len() >= 3, "{b:?}");
        }
        other => panic!("wanted the file list, got {other:?}"),
    }

    // `dml logs`: the agent's own newest lines, as the console's details show them.
    let out = c.dml(2, &["logs", "-n", "3", "--json"]).await.unwrap();
    out.ensure_success().unwrap();
    let v = out.json().unwrap();
    let lines = v["lines"].as_array().expect("a lines array");
    assert_eq!(lines.len(), 3, "{v}");
    assert!(
        lines.iter().all(|l| l
            .as_str()
            .is_some_and(|l| l.contains("INFO") || l.contains("WARN"))
            && !l.to_string().contains('\u{1b}')),
        "{v}"
    );

    // Through the App: typed, run, shown in the popup, recalled by Up.
    let mut app = App::new(agent, 0, (120, 40));
    let key = |c: KeyCode| Event::Key(KeyEvent::from(c));
    for ch in ":ls-all dir/*".chars() {
        app.handle(key(KeyCode::Char(ch)));
    }
    let action = app.handle(key(KeyCode::Enter)).expect("a command to run");
    assert!(
        matches!(&action, Action::Command(w) if w == &["ls-all", "dir/*"]),
        "{action:?}"
    );
    let done = exec::run(&dml, agent, action).await;
    app.handle(done);
    let mut term = ratatui::Terminal::new(ratatui::backend::TestBackend::new(120, 40)).unwrap();
    term.draw(|f| dml_tui::console::draw::draw(f, &app))
        .unwrap();
    let screen: String = term
        .backend()
        .buffer()
        .content()
        .iter()
        .map(|c| c.symbol())
        .collect();
    assert!(
        screen.contains("dir/a.txt") && screen.contains("dir/b.bin"),
        "the popup shows the table:\n{screen}"
    );
    app.handle(key(KeyCode::Esc));
    app.handle(key(KeyCode::Char(':')));
    app.handle(key(KeyCode::Up));
    assert!(
        matches!(&app.input, Some(dml_tui::console::app::Input::Command(t)) if t == "ls-all dir/*"),
        "Up recalls the line: {:?}",
        app.input
    );
}
