//! [`Cluster`]: an introducer and agents joining through it, all in one [`TestDir`].

use crate::agent::{Agent, AgentSpec};
use crate::dir::TestDir;
use crate::view::wait_converged;
use anyhow::{Context, Result};
use dml_shared::NodeId;
use dml_shared::config::{MembershipConfig, Preset};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Timers for real-process tests: a few times faster than the `local` preset, with enough
/// slack (a ping timeout of 150 ms, suspicions of 1–2 s) that a loaded two-core machine
/// running two 10-agent clusters does not produce false failures. A crash is detected in
/// about `ping_interval + 2 * ping_timeout + suspicion_timeout`, under 3 s.
pub fn test_membership() -> MembershipConfig {
    let ms = Duration::from_millis;
    MembershipConfig {
        ping_interval: ms(400),
        ping_timeout: ms(150),
        suspicion_min: ms(1000),
        suspicion_timeout: ms(2000),
        push_pull_interval: ms(3000),
        join_backoff_max: ms(1000),
        ..MembershipConfig::preset(Preset::Local)
    }
}

/// Agents on 127.0.0.1 sharing one membership config. `agents[0]` is the introducer when
/// started with [`Cluster::start`]; agents are killed when the cluster is dropped, and the
/// directory is kept if the test failed.
pub struct Cluster {
    /// Declared before `dir` so the agents die before their directory is removed.
    pub agents: Vec<Agent>,
    membership: MembershipConfig,
    dir: TestDir,
    next: usize,
}

impl Cluster {
    /// A cluster with no agent yet, its files under a new [`TestDir`] named `name`.
    pub fn new(name: &str, membership: MembershipConfig) -> Result<Self> {
        Ok(Self::with_dir(TestDir::new(name)?, membership))
    }

    /// [`Cluster::new`] with its directory under `base` (the bench keeps its data in
    /// `target/bench/`).
    pub fn new_in(base: &Path, name: &str, membership: MembershipConfig) -> Result<Self> {
        Ok(Self::with_dir(TestDir::new_in(base, name)?, membership))
    }

    fn with_dir(dir: TestDir, membership: MembershipConfig) -> Self {
        Self {
            agents: Vec::new(),
            membership,
            dir,
            next: 0,
        }
    }

    /// Starts an introducer, then `n - 1` agents joining through it. Does not wait for them
    /// to converge (see [`Cluster::wait_converged`]).
    pub async fn start(name: &str, n: usize, membership: MembershipConfig) -> Result<Self> {
        let mut c = Self::new(name, membership)?;
        for _ in 0..n {
            c.add().await?;
        }
        Ok(c)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn membership(&self) -> &MembershipConfig {
        &self.membership
    }

    /// The first agent's address, which the others join through.
    pub fn introducer_addr(&self) -> Option<SocketAddr> {
        self.agents.first().map(Agent::addr)
    }

    /// A spec for the next agent: named `a<i>`, this cluster's timers, joining through the
    /// introducer if there is one.
    pub fn spec(&mut self) -> AgentSpec {
        let spec = AgentSpec::new(format!("a{}", self.next), self.membership.clone());
        self.next += 1;
        match self.introducer_addr() {
            Some(i) => spec.introducer(i),
            None => spec,
        }
    }

    /// Starts an agent from `spec` in this cluster's directory; returns its index.
    pub async fn spawn(&mut self, spec: AgentSpec) -> Result<usize> {
        let name = spec.name.clone();
        let agent = match Agent::start(spec, self.dir.path()).await {
            Ok(a) => a,
            Err(e) => {
                // The error is returned rather than panicked; keep the logs for it anyway.
                self.dir.keep();
                return Err(e).with_context(|| {
                    format!(
                        "starting agent {name} (files in {})",
                        self.dir.path().display()
                    )
                });
            }
        };
        self.agents.push(agent);
        Ok(self.agents.len() - 1)
    }

    /// Replaces agent `i` with a new process started from `spec` (the old one is killed
    /// and reaped first if it still runs). With the same name, the new process reuses the
    /// old one's directory, and so its data unless `spec.data_dir` says otherwise.
    pub async fn respawn(&mut self, i: usize, spec: AgentSpec) -> Result<()> {
        let old = &mut self.agents[i];
        if old.is_running() {
            old.kill()?;
            old.wait_exit(Duration::from_secs(10)).await?;
        }
        let name = spec.name.clone();
        match Agent::start(spec, self.dir.path()).await {
            Ok(a) => {
                self.agents[i] = a;
                Ok(())
            }
            Err(e) => {
                self.dir.keep();
                Err(e).with_context(|| {
                    format!(
                        "restarting agent {name} (files in {})",
                        self.dir.path().display()
                    )
                })
            }
        }
    }

    /// Keeps the cluster's directory after drop even if the test passes.
    pub fn keep_dir(&mut self) {
        self.dir.keep();
    }

    /// Starts one more agent joining through the introducer; returns its index.
    pub async fn add(&mut self) -> Result<usize> {
        let spec = self.spec();
        self.spawn(spec).await
    }

    /// The agents whose processes have not exited (stopped ones included).
    pub fn running(&mut self) -> Vec<&Agent> {
        self.agents
            .iter_mut()
            .filter_map(|a| a.is_running().then_some(&*a))
            .collect()
    }

    /// The agents at `indices`.
    pub fn pick(&self, indices: &[usize]) -> Vec<&Agent> {
        indices.iter().map(|&i| &self.agents[i]).collect()
    }

    /// The agents not at `indices`.
    pub fn others(&self, indices: &[usize]) -> Vec<&Agent> {
        (0..self.agents.len())
            .filter(|i| !indices.contains(i))
            .map(|i| &self.agents[i])
            .collect()
    }

    /// The start identities of the agents at `indices`.
    pub fn ids(&self, indices: &[usize]) -> Vec<NodeId> {
        indices.iter().map(|&i| self.agents[i].id()).collect()
    }

    /// Waits until every running agent lists exactly the running agents as live.
    pub async fn wait_converged(&mut self, timeout: Duration) -> Result<BTreeSet<NodeId>> {
        let running = self.running();
        wait_converged(&running, timeout).await
    }
}
