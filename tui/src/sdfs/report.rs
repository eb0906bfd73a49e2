//! Text tables and JSON values for the SDFS commands and `dml leader`; pure
//! functions, no IO.

use crate::report::{rate, render_table};
use dml_shared::api::LeaderInfo;
use dml_shared::sdfs::{
    BalancePlan, Checksum, FileInfo, Holding, VersionInfo, describe_failed, printable,
};
use dml_shared::sdfs_client::{
    Count, GetAllReport, GetReport, LoadReport, PutReport, VersionsReport, throughput,
};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, UNIX_EPOCH};

/// Hex digits of a checksum shown in tables (JSON has all 64).
const SHORT_CHECKSUM: usize = 12;

pub use dml_tui::units::bytes as size;
pub use dml_tui::units::duration as elapsed;

pub fn hex(c: &Checksum) -> String {
    c.iter().map(|b| format!("{b:02x}")).collect()
}

fn short_hex(c: &Checksum) -> String {
    hex(c)[..SHORT_CHECKSUM].to_string()
}

fn addrs(a: &[SocketAddr]) -> String {
    if a.is_empty() {
        return "-".into();
    }
    a.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn addrs_json(a: &[SocketAddr]) -> Vec<String> {
    a.iter().map(|x| x.to_string()).collect()
}

/// A commit time (Unix ms) as RFC 3339 UTC, to the second.
pub fn when(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// "… in 1.2 s (53.3 MiB/s)".
fn speed(bytes: u64, d: Duration) -> String {
    format!(
        "{} in {} ({})",
        size(bytes),
        elapsed(d),
        rate(throughput(bytes, d))
    )
}

pub fn put_text(r: &PutReport) -> String {
    format!(
        "stored \"{}\" version {}: {}, on {}\n",
        printable(&r.name),
        r.version,
        speed(r.size, r.elapsed),
        addrs(&r.holders)
    )
}

/// The stderr warning of a put some replicas did not store, if any.
pub fn put_warning(r: &PutReport) -> Option<String> {
    (!r.failed.is_empty()).then(|| {
        format!(
            "warning: \"{}\" version {} is on {} of {} replicas; not stored on {}",
            printable(&r.name),
            r.version,
            r.holders.len(),
            r.holders.len() + r.failed.len(),
            describe_failed(&r.failed)
        )
    })
}

pub fn put_json(r: &PutReport) -> Value {
    json!({
        "name": r.name,
        "version": r.version,
        "size": r.size,
        "checksum": hex(&r.checksum),
        "holders": addrs_json(&r.holders),
        "failed": r.failed.iter().map(|(a, why)| json!({"agent": a.to_string(), "reason": why})).collect::<Vec<_>>(),
        "elapsed_ms": r.elapsed.as_millis() as u64,
        "bytes_per_s": throughput(r.size, r.elapsed),
    })
}

pub fn get_text(r: &GetReport) -> String {
    format!(
        "fetched \"{}\" version {} into {}: {}, from {}\n",
        printable(&r.name),
        r.version,
        r.path.display(),
        speed(r.size, r.elapsed),
        r.from
    )
}

pub fn get_json(r: &GetReport) -> Value {
    json!({
        "name": r.name,
        "version": r.version,
        "size": r.size,
        "from": r.from.to_string(),
        "path": r.path,
        "elapsed_ms": r.elapsed.as_millis() as u64,
        "bytes_per_s": throughput(r.size, r.elapsed),
    })
}

fn version_json(v: &VersionInfo) -> Value {
    json!({
        "version": v.version,
        "size": v.size,
        "checksum": hex(&v.checksum),
        "replicas": addrs_json(&v.replicas),
        "committed_ms": v.committed_ms,
    })
}

pub fn file_json(f: &FileInfo) -> Value {
    json!({
        "name": f.name,
        "versions": f.versions.iter().map(version_json).collect::<Vec<_>>(),
    })
}

/// `dml ls`: one row per version, oldest first.
pub fn ls_table(f: &FileInfo) -> String {
    let rows: Vec<Vec<String>> = f
        .versions
        .iter()
        .map(|v| {
            vec![
                v.version.to_string(),
                size(v.size),
                short_hex(&v.checksum),
                when(v.committed_ms),
                addrs(&v.replicas),
            ]
        })
        .collect();
    format!(
        "{}\n{}",
        printable(&f.name),
        render_table(
            &["VERSION", "SIZE", "BLAKE3", "COMMITTED", "REPLICAS"],
            &rows
        )
    )
}

/// `dml ls-all` and `dml sdfs files`: one row per file, about its newest version.
pub fn files_table(files: &[FileInfo]) -> String {
    if files.is_empty() {
        return "no files\n".into();
    }
    render_table(&FILES_HEADERS, &files_rows(files))
}

const FILES_HEADERS: [&str; 5] = ["NAME", "VERSIONS", "LATEST", "SIZE", "REPLICAS"];

/// `dml ls-all` printed page by page as the leader answers: the same table
/// (columns as wide as the first page needs) or JSON array as
/// [`files_table`] and [`files_json`] give for the whole list.
pub struct FilesStream {
    json: bool,
    widths: Option<Vec<usize>>,
    started: bool,
}

impl FilesStream {
    pub fn new(json: bool) -> Self {
        Self {
            json,
            widths: None,
            started: false,
        }
    }

    /// What to print for one more page.
    pub fn page(&mut self, files: &[FileInfo]) -> String {
        let mut out = String::new();
        if self.json {
            for f in files {
                out.push(if self.started { ',' } else { '[' });
                self.started = true;
                out += &file_json(f).to_string();
            }
            return out;
        }
        let rows = files_rows(files);
        let widths = self.widths.get_or_insert_with(|| {
            let mut w: Vec<usize> = FILES_HEADERS.iter().map(|h| h.chars().count()).collect();
            for row in &rows {
                for (w, cell) in w.iter_mut().zip(row) {
                    *w = (*w).max(cell.chars().count());
                }
            }
            w
        });
        if !self.started && !rows.is_empty() {
            out += &table_line(widths, &FILES_HEADERS);
            self.started = true;
        }
        for row in &rows {
            let cells: Vec<&str> = row.iter().map(String::as_str).collect();
            out += &table_line(widths, &cells);
        }
        out
    }

    /// What to print once the last page is in.
    pub fn end(&self) -> String {
        match (self.json, self.started) {
            (true, true) => "]\n".into(),
            (true, false) => "[]\n".into(),
            (false, true) => String::new(),
            (false, false) => "no files\n".into(),
        }
    }
}

/// One row of a table: each cell but the last padded to its column.
fn table_line(widths: &[usize], cells: &[&str]) -> String {
    let mut s = String::new();
    for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
        if i + 1 == cells.len() {
            s.push_str(cell);
        } else {
            s.push_str(&format!("{cell:<w$}  "));
        }
    }
    s.trim_end().to_string() + "\n"
}

fn files_rows(files: &[FileInfo]) -> Vec<Vec<String>> {
    files
        .iter()
        .map(|f| {
            let latest = f.versions.last();
            vec![
                printable(&f.name).into_owned(),
                f.versions.len().to_string(),
                latest.map_or("-".into(), |v| v.version.to_string()),
                latest.map_or("-".into(), |v| size(v.size)),
                latest.map_or("-".into(), |v| addrs(&v.replicas)),
            ]
        })
        .collect()
}

pub fn files_json(files: &[FileInfo]) -> Value {
    Value::Array(files.iter().map(file_json).collect())
}

fn holding_json(h: &Holding) -> Value {
    json!({"name": h.name, "version": h.version, "size": h.size})
}

/// `dml store`.
pub fn store_table(node: SocketAddr, held: &[Holding]) -> String {
    if held.is_empty() {
        return format!("{node} stores nothing\n");
    }
    let rows: Vec<Vec<String>> = held
        .iter()
        .map(|h| {
            let name = printable(&h.name).into_owned();
            vec![name, h.version.to_string(), size(h.size)]
        })
        .collect();
    format!(
        "{node} stores {} version{}, {}\n{}",
        held.len(),
        if held.len() == 1 { "" } else { "s" },
        size(held.iter().map(|h| h.size).sum()),
        render_table(&["NAME", "VERSION", "SIZE"], &rows)
    )
}

pub fn store_json(node: SocketAddr, held: &[Holding]) -> Value {
    json!({
        "node": node.to_string(),
        "holdings": held.iter().map(holding_json).collect::<Vec<_>>(),
    })
}

/// Each node's part of the bytes held, and that part over an even spread
/// (1.0 is even; 0 for an agent that holds nothing, as one that joined late).
fn shares(nodes: &[(SocketAddr, Vec<Holding>)]) -> Vec<(f64, f64)> {
    let bytes: Vec<u64> = nodes
        .iter()
        .map(|(_, held)| held.iter().map(|h| h.size).sum())
        .collect();
    let total: u64 = bytes.iter().sum();
    bytes
        .iter()
        .map(|&b| {
            let part = if total == 0 {
                0.0
            } else {
                b as f64 / total as f64
            };
            (part, part * nodes.len() as f64)
        })
        .collect()
}

/// `dml sdfs nodes`: one row per node with the versions it holds and its
/// share of the bytes against an even spread.
pub fn nodes_table(nodes: &[(SocketAddr, Vec<Holding>)]) -> String {
    if nodes.is_empty() {
        return "no node holds anything\n".into();
    }
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .zip(shares(nodes))
        .map(|((n, held), (part, even))| {
            let list: Vec<String> = held
                .iter()
                .map(|h| format!("{}@v{}", printable(&h.name), h.version))
                .collect();
            vec![
                n.to_string(),
                held.len().to_string(),
                size(held.iter().map(|h| h.size).sum()),
                format!("{:.1}% ({even:.2}x even)", part * 100.0),
                format!("{:.1}%", 100.0 / nodes.len() as f64),
                if list.is_empty() {
                    "-".into()
                } else {
                    list.join(" ")
                },
            ]
        })
        .collect();
    render_table(
        &["NODE", "VERSIONS", "BYTES", "SHARE", "EVEN", "FILES"],
        &rows,
    )
}

pub fn nodes_json(nodes: &[(SocketAddr, Vec<Holding>)]) -> Value {
    Value::Array(
        nodes
            .iter()
            .zip(shares(nodes))
            .map(|((n, held), (part, even))| {
                let mut v = store_json(*n, held);
                v["share"] = json!(part);
                v["share_of_even"] = json!(even);
                v["even_share"] = json!(1.0 / nodes.len() as f64);
                v
            })
            .collect(),
    )
}

/// `dml sdfs balance`: the moves between agents, and each alive agent's
/// bytes and share now and once they are done.
pub fn balance_text(p: &BalancePlan) -> String {
    let what = if p.started { "started" } else { "dry run" };
    let mut out = if p.moves == 0 {
        format!("{what}: balanced, no copy to move\n")
    } else {
        format!("{what}: {} copies to move, {}\n", p.moves, size(p.bytes))
    };
    if p.waiting_for_repair > 0 {
        out.push_str(&format!(
            "{} versions wait for repair first (a holder down or copies missing)\n",
            p.waiting_for_repair
        ));
    }
    if !p.flows.is_empty() {
        let rows: Vec<Vec<String>> = p
            .flows
            .iter()
            .map(|f| {
                vec![
                    f.from.to_string(),
                    f.to.to_string(),
                    f.moves.to_string(),
                    size(f.bytes),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&render_table(&["FROM", "TO", "COPIES", "BYTES"], &rows));
    }
    let share = |b: u64, total: u64| match total {
        0 => 0.0,
        t => b as f64 / t as f64 * p.agents.len() as f64,
    };
    let (now, after): (u64, u64) = p
        .agents
        .iter()
        .fold((0, 0), |(n, a), s| (n + s.now, a + s.after));
    let rows: Vec<Vec<String>> = p
        .agents
        .iter()
        .map(|s| {
            vec![
                s.agent.to_string(),
                format!("{} ({:.2}x even)", size(s.now), share(s.now, now)),
                format!("{} ({:.2}x even)", size(s.after), share(s.after, after)),
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push('\n');
        out.push_str(&render_table(&["AGENT", "NOW", "AFTER"], &rows));
    }
    out
}

pub fn balance_json(p: &BalancePlan) -> Value {
    serde_json::to_value(p).unwrap_or(Value::Null)
}

pub fn count_text(c: &Count) -> String {
    format!(
        "files     {}\nversions  {}\nbytes     {} ({})\n",
        c.files,
        c.versions,
        c.bytes,
        size(c.bytes)
    )
}

pub fn count_json(c: &Count) -> Value {
    json!({"files": c.files, "versions": c.versions, "bytes": c.bytes})
}

pub fn versions_text(r: &VersionsReport) -> String {
    let total: u64 = r.versions.iter().map(|v| v.size).sum();
    let list: Vec<String> = r.versions.iter().map(|v| v.version.to_string()).collect();
    let mut out = format!(
        "fetched {} versions of \"{}\" (newest first: {}): {}\n",
        r.versions.len(),
        printable(&r.name),
        list.join(", "),
        speed(total, r.elapsed)
    );
    if r.merged {
        if let Some(v) = r.versions.first() {
            out += &format!("  merged into {}\n", v.path.display());
        }
    } else {
        for v in &r.versions {
            out += &format!("  {}\n", v.path.display());
        }
    }
    out
}

pub fn versions_json(r: &VersionsReport) -> Value {
    json!({
        "name": r.name,
        "merged": r.merged,
        "elapsed_ms": r.elapsed.as_millis() as u64,
        "versions": r.versions.iter().map(|v| json!({
            "version": v.version,
            "size": v.size,
            "from": v.from.to_string(),
            "path": v.path,
        })).collect::<Vec<_>>(),
    })
}

pub fn get_all_text(r: &GetAllReport) -> String {
    let mut out = String::new();
    let mut bytes = 0;
    for (name, res) in &r.items {
        let name = printable(name);
        match res {
            Ok(g) => {
                bytes += g.size;
                out += &format!("ok     {name} v{} -> {}\n", g.version, g.path.display());
            }
            Err(e) => out += &format!("FAILED {name}: {e}\n"),
        }
    }
    let ok = r.items.iter().filter(|(_, r)| r.is_ok()).count();
    out += &format!(
        "fetched {ok} of {} files: {}\n",
        r.items.len(),
        speed(bytes, r.elapsed)
    );
    out
}

pub fn get_all_json(r: &GetAllReport) -> Value {
    json!({
        "elapsed_ms": r.elapsed.as_millis() as u64,
        "files": r.items.iter().map(|(name, res)| match res {
            Ok(g) => json!({"name": name, "ok": true, "version": g.version,
                            "size": g.size, "path": g.path, "from": g.from.to_string()}),
            Err(e) => json!({"name": name, "ok": false, "error": e.to_string()}),
        }).collect::<Vec<_>>(),
    })
}

pub fn load_text(r: &LoadReport) -> String {
    let mut out = String::new();
    for i in &r.items {
        match &i.result {
            Ok(p) => {
                out += &format!(
                    "ok     {} -> {} v{}\n",
                    i.local.display(),
                    printable(&i.name),
                    p.version
                )
            }
            Err(e) => {
                let name = printable(&i.name);
                out += &format!("FAILED {} -> {name}: {e}\n", i.local.display())
            }
        }
    }
    out += &format!(
        "loaded {} of {} files: {}\n",
        r.items.len() - r.failed(),
        r.items.len(),
        speed(r.bytes(), r.elapsed)
    );
    out
}

pub fn load_json(r: &LoadReport) -> Value {
    json!({
        "elapsed_ms": r.elapsed.as_millis() as u64,
        "bytes": r.bytes(),
        "failed": r.failed(),
        "files": r.items.iter().map(|i| match &i.result {
            Ok(p) => json!({"local": i.local, "name": i.name, "ok": true,
                            "version": p.version, "size": p.size}),
            Err(e) => json!({"local": i.local, "name": i.name, "ok": false,
                             "error": e.to_string()}),
        }).collect::<Vec<_>>(),
    })
}

pub fn leader_text(agent: SocketAddr, l: &LeaderInfo) -> String {
    let leader = l
        .leader
        .map_or("none known (election in progress?)".into(), |a| {
            a.to_string()
        });
    let mut out = format!("leader   {leader}\nterm     {}\n", l.term);
    out += &format!("voters   {}\n", addrs(&l.voters));
    out += &format!(
        "{agent} is {}",
        if l.is_voter { "a voter" } else { "not a voter" }
    );
    if let Some(i) = l.last_applied {
        out += &format!(", last applied index {i}");
    }
    if let Some(d) = &l.applied_digest {
        out += &format!(" (state digest {d})");
    }
    out.push('\n');
    for (i, (id, a)) in l.raft_ids.iter().enumerate() {
        if l.raft_ids[..i].iter().any(|(_, b)| b == a) {
            out += &format!("replacing {a}: it lost its state and rejoins as Raft node {id}\n");
        }
    }
    if let Some(ms) = l.unacked_ms {
        out += &format!(
            "warning: no majority of the voters has acknowledged this leader for {}: it is cut off, and the others may have elected a new leader\n",
            dml_tui::console::fmt::age_ms(ms)
        );
    }
    out
}

pub fn leader_json(agent: SocketAddr, l: &LeaderInfo) -> Value {
    json!({
        "agent": agent.to_string(),
        "leader": l.leader.map(|a| a.to_string()),
        "term": l.term,
        "voters": addrs_json(&l.voters),
        "is_voter": l.is_voter,
        "last_applied": l.last_applied,
        "applied_digest": l.applied_digest,
        "unacked_ms": l.unacked_ms,
        "raft_ids": l.raft_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn a(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    fn file() -> FileInfo {
        FileInfo {
            name: "imgs/cat.jpg".into(),
            versions: vec![
                VersionInfo {
                    version: 1,
                    size: 2048,
                    checksum: [0xab; 32],
                    replicas: vec![a(8001), a(8002)],
                    committed_ms: 0,
                },
                VersionInfo {
                    version: 2,
                    size: 10,
                    checksum: [1; 32],
                    replicas: vec![a(8003)],
                    committed_ms: 1_700_000_000_000,
                },
            ],
        }
    }

    #[test]
    fn sizes_pick_a_binary_unit() {}

    #[test]
    fn ls_lists_versions_with_their_replicas() {
        let t = ls_table(&file());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "imgs/cat.jpg");
        assert!(lines[1].starts_with("VERSION"), "{t}");
        assert!(lines[2].starts_with("1 "), "{t}");
        assert!(lines[2].contains("2.0 KiB"), "{t}");
        assert!(lines[2].contains("abababababab "), "{t}");
        assert!(lines[2].contains("1970-01-01T00:00:00Z"), "{t}");
        assert!(lines[2].ends_with("127.0.0.1:8001 127.0.0.1:8002"), "{t}");
        assert!(lines[3].contains("2023-11-14T22:13:20Z"), "{t}");
        let j = file_json(&file());
        assert_eq!(j["versions"][1]["replicas"][0], "127.0.0.1:8003");
        assert_eq!(j["versions"][0]["checksum"].as_str().unwrap().len(), 64);
    }

    #[test]
    fn files_table_shows_the_newest_version() {
        let t = files_table(&[file()]);
        let row = t.lines().nth(1).unwrap();
        assert!(row.starts_with("imgs/cat.jpg  2 "), "{t}");
        assert!(row.ends_with("10 B  127.0.0.1:8003"), "{t}");
        assert_eq!(files_table(&[]), "no files\n");
    }

    #[test]
    fn ls_all_page_by_page_prints_what_the_whole_list_prints() {
        let files: Vec<FileInfo> = (0..5)
            .map(|i| FileInfo {
                name: format!("imgs/{i}.jpg"),
                ..file()
            })
            .collect();
        for json in [false, true] {
            let mut stream = FilesStream::new(json);
            let mut out = String::new();
            for page in files.chunks(2) {
                out += &stream.page(page);
            }
            out += &stream.end();
            let whole = match json {
                true => files_json(&files).to_string() + "\n",
                false => files_table(&files),
            };
            assert_eq!(out, whole, "json: {json}");
            let empty = FilesStream::new(json);
            assert_eq!(empty.end(), if json { "[]\n" } else { "no files\n" });
        }
    }

    #[test]
    fn put_reports_throughput() {
        let r = PutReport {
            name: "x".into(),
            version: 3,
            size: 4 << 20,
            checksum: [0; 32],
            holders: vec![a(8001), a(8002)],
            failed: vec![],
            elapsed: Duration::from_secs(2),
            phases: Default::default(),
        };
        assert_eq!(
            put_text(&r),
            "stored \"x\" version 3: 4.0 MiB in 2.0s (2.0 MiB/s), on 127.0.0.1:8001 127.0.0.1:8002\n"
        );
        let j = put_json(&r);
        assert_eq!(j["bytes_per_s"], 2.0 * 1048576.0);
        assert_eq!(j["elapsed_ms"], 2000);
        assert_eq!(j["failed"], json!([]));
        assert_eq!(put_warning(&r), None);
    }

    #[test]
    fn a_put_short_of_replicas_warns_with_the_reasons() {
        let r = PutReport {
            name: "x".into(),
            version: 1,
            size: 10,
            checksum: [0; 32],
            holders: vec![a(8001), a(8002)],
            failed: vec![(a(8003), "disk full on agent 127.0.0.1:8003".into())],
            elapsed: Duration::from_secs(1),
            phases: Default::default(),
        };
        assert_eq!(
            put_warning(&r).unwrap(),
            "warning: \"x\" version 1 is on 2 of 3 replicas; not stored on 127.0.0.1:8003: disk full on agent 127.0.0.1:8003"
        );
        let j = put_json(&r);
        assert_eq!(j["failed"][0]["agent"], "127.0.0.1:8003");
        assert!(
            j["failed"][0]["reason"]
                .as_str()
                .unwrap()
                .contains("disk full")
        );
    }

    #[test]
    fn get_versions_text_says_the_order() {
        let g = |v: u64| GetReport {
            name: "x".into(),
            version: v,
            size: 1,
            from: a(8001),
            path: PathBuf::from(format!("out/x.v{v}")),
            elapsed: Duration::ZERO,
            lookup: Duration::ZERO,
            phases: Default::default(),
        };
        let r = VersionsReport {
            name: "x".into(),
            versions: vec![g(3), g(2)],
            merged: false,
            elapsed: Duration::from_millis(5),
        };
        let t = versions_text(&r);
        assert!(
            t.starts_with("fetched 2 versions of \"x\" (newest first: 3, 2)"),
            "{t}"
        );
        assert!(t.contains("  out/x.v2\n"), "{t}");
        assert_eq!(versions_json(&r)["versions"][0]["version"], 3);
    }

    #[test]
    fn leader_text_handles_an_unknown_leader() {
        let l = LeaderInfo {
            leader: None,
            term: 0,
            voters: vec![],
            is_voter: false,
            last_applied: None,
            applied_digest: None,
            unacked_ms: None,
            raft_ids: Vec::new(),
        };
        let t = leader_text(a(8005), &l);
        assert!(t.starts_with("leader   none known"), "{t}");
        assert!(t.contains("127.0.0.1:8005 is not a voter"), "{t}");
        assert_eq!(leader_json(a(8005), &l)["leader"], Value::Null);
        assert!(!t.contains("warning"), "{t}");

        let cut_off = LeaderInfo {
            leader: Some(a(8005)),
            term: 3,
            voters: vec![a(8005)],
            is_voter: true,
            unacked_ms: Some(45_200),
            raft_ids: Vec::new(),
            ..l
        };
        let t = leader_text(a(8005), &cut_off);
        assert!(
            t.contains("no majority of the voters has acknowledged this leader for 45s"),
            "{t}"
        );
        assert_eq!(leader_json(a(8005), &cut_off)["unacked_ms"], 45_200);
    }

    #[test]
    fn nodes_table_lists_versions_per_node() {
        let held = vec![Holding {
            name: "a".into(),
            version: 2,
            size: 5,
        }];
        let t = nodes_table(&[(a(8001), held.clone()), (a(8002), vec![])]);
        assert!(t.lines().nth(1).unwrap().ends_with("a@v2"), "{t}");
        assert!(t.lines().nth(2).unwrap().ends_with("-"), "{t}");
        assert!(
            t.lines().nth(1).unwrap().contains("100.0% (2.00x even)"),
            "{t}"
        );
        assert!(
            t.lines().nth(2).unwrap().contains("0.0% (0.00x even)"),
            "{t}"
        );
        assert!(
            t.lines().nth(1).unwrap().contains("50.0%"),
            "the even share: {t}"
        );
        let j = nodes_json(&[(a(8001), held), (a(8002), vec![])]);
        assert_eq!(j[0]["holdings"][0]["version"], 2);
        assert_eq!(j[1]["even_share"].as_f64(), Some(0.5));
        assert_eq!(
            (j[0]["share_of_even"].as_f64(), j[1]["share"].as_f64()),
            (Some(2.0), Some(0.0))
        );
    }

    #[test]
    fn balance_shows_the_moves_between_agents_and_the_shares_after() {
        use dml_shared::sdfs::{BalanceFlow, BalanceShare};
        let p = BalancePlan {
            moves: 3,
            bytes: 3 << 20,
            flows: vec![BalanceFlow {
                from: a(8001),
                to: a(8002),
                moves: 3,
                bytes: 3 << 20,
            }],
            agents: vec![
                BalanceShare {
                    agent: a(8001),
                    now: 6 << 20,
                    after: 3 << 20,
                },
                BalanceShare {
                    agent: a(8002),
                    now: 0,
                    after: 3 << 20,
                },
            ],
            started: false,
            waiting_for_repair: 0,
        };
        let t = balance_text(&p);
        assert!(t.starts_with("dry run: 3 copies to move, 3.0 MiB"), "{t}");
        assert!(t.contains("127.0.0.1:8001  127.0.0.1:8002  3"), "{t}");
        assert!(
            t.contains("(2.00x even)") && t.contains("(1.00x even)"),
            "{t}"
        );
        let done = BalancePlan {
            started: true,
            ..BalancePlan::default()
        };
        assert!(balance_text(&done).starts_with("started: balanced, no copy to move"));
        assert_eq!(balance_json(&p)["flows"][0]["moves"], 3);
    }

    #[test]
    fn tables_escape_unprintable_characters_in_names() {
        let mut f = file();
        f.name = "a\u{1b}[2Jb\nc".into();
        let held = vec![Holding {
            name: f.name.clone(),
            version: 1,
            size: 1,
        }];
        for t in [
            files_table(std::slice::from_ref(&f)),
            ls_table(&f),
            store_table(a(8001), &held),
            nodes_table(&[(a(8001), held.clone())]),
        ] {
            assert!(t.contains("a\\u{1b}[2Jb\\u{a}c"), "{t}");
            assert!(!t.contains('\u{1b}'), "{t:?}");
        }
    }
}
