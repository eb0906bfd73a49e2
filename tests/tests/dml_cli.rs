//! The `dml` command line against real agents: `dml leave` takes an agent out of the
//! group, `dml join` brings it back as a new identity.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use dml_shared::NodeId;
use dml_shared::api::MemberState;
use dml_tests::events::EventKind;
use dml_tests::view::{VIEW_POLL, check_not_live, state_of, wait_converged};
use dml_tests::{Agent, Cluster, test_membership, wait_for, wait_until};
use std::collections::BTreeSet;
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(30);
const REMOVE: Duration = Duration::from_secs(20);
/// Time for one `dml` command.
const DML: Duration = Duration::from_secs(15);

/// `dml --agent <addr> id --json`, parsed: (id, joined).
async fn dml_id(agent: &Agent) -> anyhow::Result<(NodeId, bool)> {
    let out = agent.dml(&["id", "--json"], DML).await?;
    out.ensure_success()?;
    let v = out.json()?;
    let id = v["id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no \"id\" string in {v}"))?
        .parse::<NodeId>()
        .map_err(anyhow::Error::msg)?;
    let joined = v["joined"]
        .as_bool()
        .ok_or_else(|| anyhow::anyhow!("no \"joined\" boolean in {v}"))?;
    Ok((id, joined))
}

#[tokio::test]
async fn dml_leave_takes_the_agent_out_and_dml_join_brings_it_back_as_a_new_member() {
    let mut c = Cluster::start("dml-leave-join", 4, test_membership())
        .await
        .unwrap();
    c.wait_converged(CONVERGE).await.unwrap();
    let v = 1;
    let old = c.agents[v].id();
    assert_eq!(dml_id(&c.agents[v]).await.unwrap(), (old, true));

    c.agents[v]
        .dml(&["leave"], DML)
        .await
        .unwrap()
        .ensure_success()
        .unwrap();

    let others = c.others(&[v]);
    wait_until(
        "the others to log the leave",
        REMOVE,
        VIEW_POLL,
        async || {
            for o in &others {
                let logged = o
                    .events()?
                    .iter()
                    .any(|e| e.member == old && e.event == EventKind::Left);
                anyhow::ensure!(logged, "agent {} has not logged the leave", o.name());
            }
            check_not_live(&others, &[old]).await
        },
    )
    .await
    .unwrap();
    for o in &others {
        let state = state_of(o.addr(), old).await.unwrap();
        assert!(
            state.is_none_or(|s| s == MemberState::Left),
            "agent {} lists the departed {old} as {state:?}",
            o.name()
        );
        assert!(
            !o.events()
                .unwrap()
                .iter()
                .any(|e| e.member == old && e.event == EventKind::Failed),
            "agent {} took the leave for a failure",
            o.name()
        );
    }
    let (_, joined) = dml_id(&c.agents[v]).await.unwrap();
    assert!(!joined, "`dml id` after `dml leave` says joined");
    wait_converged(&others, CONVERGE).await.unwrap();

    c.agents[v]
        .dml(&["join"], DML)
        .await
        .unwrap()
        .ensure_success()
        .unwrap();
    let agent = &c.agents[v];
    let new = wait_for("the agent to rejoin", CONVERGE, VIEW_POLL, async || {
        let (id, joined) = dml_id(agent).await?;
        anyhow::ensure!(joined && id != old, "id {id}, joined {joined}");
        Ok(id)
    })
    .await
    .unwrap();
    assert_eq!(new.addr, old.addr);
    assert!(new.started > old.started, "{new} is newer than {old}");

    let all: Vec<&Agent> = c.agents.iter().collect();
    let live = wait_converged(&all, CONVERGE).await.unwrap();
    assert!(live.contains(&new) && !live.contains(&old));
}

#[tokio::test]
async fn dml_members_json_lists_every_member_alive_with_its_ring_monitors() {
    let mut c = Cluster::start("dml-members", 3, test_membership())
        .await
        .unwrap();
    let ids = c.wait_converged(CONVERGE).await.unwrap();
    let agent = &c.agents[0];
    // Poll: a member may be briefly suspect on a loaded machine.
    wait_until(
        "`dml members --json` to show 3 alive members",
        CONVERGE,
        VIEW_POLL,
        async || {
            let out = agent.dml(&["members", "--json"], DML).await?;
            out.ensure_success()?;
            let v = out.json()?;
            let rows = v
                .as_array()
                .ok_or_else(|| anyhow::anyhow!("not an array: {v}"))?;
            let mut seen = BTreeSet::new();
            for row in rows {
                let id: NodeId = row["id"]
                    .as_str()
                    .unwrap_or_default()
                    .parse()
                    .map_err(anyhow::Error::msg)?;
                anyhow::ensure!(row["state"] == "alive", "{id} is {}", row["state"]);
                // With 3 members and M = 3, each is probed by both others.
                let monitors: BTreeSet<NodeId> = row["monitors"]
                    .as_array()
                    .ok_or_else(|| anyhow::anyhow!("no monitors in {row}"))?
                    .iter()
                    .map(|m| {
                        m.as_str()
                            .unwrap_or_default()
                            .parse()
                            .map_err(anyhow::Error::msg)
                    })
                    .collect::<anyhow::Result<_>>()?;
                let expected: BTreeSet<NodeId> = ids.iter().copied().filter(|x| *x != id).collect();
                anyhow::ensure!(
                    monitors == expected,
                    "monitors of {id}: {monitors:?}, expected {expected:?}"
                );
                seen.insert(id);
            }
            anyhow::ensure!(seen == ids, "listed {seen:?}, expected {ids:?}");
            Ok(())
        },
    )
    .await
    .unwrap();

    // `dml members --json | head -c 0`: the reader is gone before dml writes.
    // It ends quietly with 141, as `git` does, not with a panic (101).
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = tokio::process::Command::new(dml_tests::bins::dml_bin().unwrap())
        .args(["--agent", &agent.addr().to_string(), "members", "--json"])
        .env("DML_KEY_FILE", dml_tests::key::path().unwrap())
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
        // Not `output()`: tokio's would replace the closed pipe with its own.
        .wait_with_output();
    let out = tokio::time::timeout(DML, out).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[tokio::test]
async fn dml_leader_without_voters_says_there_is_no_control_plane() {
    // Agents started without `--node` or voters run membership only.
    let c = Cluster::start("dml-no-voters", 1, test_membership())
        .await
        .unwrap();
    let agent = &c.agents[0];
    let out = agent.dml(&["leader"], DML).await.unwrap();
    assert_eq!(out.code(), Some(7), "{out:?}");
    assert!(
        out.stderr.contains("no control-plane voters configured") && out.stderr.contains("--node"),
        "{}",
        out.stderr
    );
    let out = agent.dml(&["leader", "--json"], DML).await.unwrap();
    assert_eq!(out.code(), Some(7), "{out:?}");
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .or_else(|_| serde_json::from_str(out.stderr.trim()))
        .unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(v["kind"], "refused", "{v}");
}

/// An argument error under `--json` is JSON too, with kind `usage` and clap's exit code 2;
/// without `--json` it stays clap's text.
#[tokio::test]
async fn argument_errors_follow_json() {
    let out = dml_tests::dml::run_dml(&["--json", "submit-job", "resnet50", "0"], DML)
        .await
        .unwrap();
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    let v = out.json().unwrap();
    assert_eq!(v["kind"], "usage", "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("'0'") && msg.contains("NUM_IMAGES"), "{msg}");
    let plain = dml_tests::dml::run_dml(&["submit-job", "resnet50", "0"], DML)
        .await
        .unwrap();
    assert_eq!(plain.code(), Some(2));
    assert!(plain.stdout.is_empty() && plain.stderr.contains("NUM_IMAGES"));
}
