//! Wiring of one agent: binds the TCP listener and the UDP socket on the same
//! port, starts membership, the control plane (it needs membership) and the
//! API, and stops them in order.

use crate::api::{ApiServer, Services};
use crate::control::{ControlHandle, ControlPlane, Settings};
use crate::infer::worker::{Worker, WorkerOptions};
use crate::membership::Membership;
use crate::membership::driver::{self, MembershipHandle, MembershipTask};
use crate::sdfs::{MetaPath, SdfsHandle, SdfsOptions, SdfsService};
use crate::telemetry::{self, Telemetry, TelemetryService};
use anyhow::{Context, bail};
use dml_shared::NodeId;
use dml_shared::config::Config;
use std::net::SocketAddr;
use tokio::net::{TcpListener, UdpSocket};

/// Tries at finding a port free for both TCP and UDP when binding port 0.
const PORT_PICK_TRIES: usize = 32;

pub struct Agent {
    pub id: NodeId,
    worker: Option<std::sync::Arc<Worker>>,
    metrics: Option<crate::metrics::MetricsServer>,
    membership: MembershipTask,
    control: ControlPlane,
    sdfs: SdfsService,
    api: ApiServer,
    telemetry: TelemetryService,
    keyring: crate::keyring::KeyringService,
}

/// Binds TCP and UDP to the same port number.
async fn bind_pair(
    addr: SocketAddr,
    udp_buffer: usize,
) -> anyhow::Result<(TcpListener, UdpSocket)> {
    let tries = if addr.port() == 0 { PORT_PICK_TRIES } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let tcp = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on TCP {addr}"))?;
        let bound = tcp.local_addr()?;
        match driver::bind_udp(bound, udp_buffer) {
            Ok(udp) => return Ok((tcp, udp)),
            Err(e) => last = Some(e),
        }
    }
    let e = last.expect("at least one try");
    bail!("cannot bind UDP on the TCP port of {addr}: {e}")
}

/// The agent's local socket ([`dml_shared::stream`]), for clients on this
/// host. A name another process holds is an error: it may be a local user
/// waiting to read what clients send. Other failures leave clients on TCP.
async fn bind_local(addr: SocketAddr) -> anyhow::Result<Option<tokio::net::UnixListener>> {
    #[cfg(target_os = "linux")]
    match dml_shared::stream::local_addr(addr).and_then(|a| tokio::net::UnixListener::bind_addr(&a))
    {
        Ok(l) => return Ok(Some(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            bail!(
                "the local socket @{} is already held by {}: a local user may be squatting it \
                 to read what clients on this host send; stop that process, or bind this agent \
                 to another address",
                dml_shared::stream::local_name(addr),
                local_holder(addr).await
            )
        }
        Err(e) => tracing::warn!(error = %e, "no local socket; clients on this host use TCP"),
    }
    Ok(None)
}

/// Who listens on the local socket of `addr`: pid, command and uid, as far
/// as the kernel tells (`SO_PEERCRED`).
#[cfg(target_os = "linux")]
async fn local_holder(addr: SocketAddr) -> String {
    let cred = match dml_shared::stream::local_addr(addr) {
        Ok(a) => tokio::net::UnixStream::connect_addr(&a)
            .await
            .and_then(|s| s.peer_cred()),
        Err(e) => Err(e),
    };
    match cred {
        Ok(c) => {
            let pid = c.pid().unwrap_or(0);
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            format!("pid {pid} (\"{}\", uid {})", comm.trim(), c.uid())
        }
        Err(e) => format!("another process (it did not accept a connection: {e})"),
    }
}

/// Creates the data directory 0700, or tightens an existing one readable or
/// writable by others: objects and the Raft log are the cluster's data.
fn private_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let name = || format!("cannot make data directory \"{}\" private", dir.display());
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(name)?;
    let mode = std::fs::metadata(dir)
        .with_context(name)?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(name)?;
        tracing::warn!(dir = %dir.display(), was = format!("{:o}", mode & 0o777), "data directory was open to other users; now 0700");
    }
    Ok(())
}

impl Agent {
    /// Starts an agent; `join` says whether it joins the group right away.
    pub async fn start(cfg: &Config, join: bool) -> anyhow::Result<Self> {
        // Before anything binds: a bad token file stops the start.
        let metrics_token = cfg
            .metrics
            .token_file
            .as_deref()
            .map(crate::metrics::token::Token::load)
            .transpose()?;
        let (tcp, udp) = bind_pair(cfg.bind, cfg.membership.udp_buffer).await?;
        let addr = tcp.local_addr()?;
        if addr.ip().is_unspecified() {
            bail!(
                "bind address {addr} is a wildcard; give the address other members reach this agent at"
            );
        }
        let local = bind_local(addr).await?;
        private_data_dir(&cfg.data_dir)?;
        let id = crate::identity::next(&cfg.data_dir, addr).with_context(|| {
            format!(
                "cannot record this agent's identity in \"{}\"",
                cfg.data_dir.display()
            )
        })?;
        let seed = id.ring_hash() ^ id.started;
        let core = Membership::new(
            id,
            cfg.membership.clone(),
            cfg.introducers.clone(),
            seed,
            std::time::Instant::now(),
        )
        .with_seeds(cfg.nodes.iter().copied());
        let mut sdfs = SdfsService::start(SdfsOptions::from_config(cfg, addr))
            .await
            .context("cannot open the SDFS store")?;
        // This agent's own counters, apart from other agents in the process.
        let auth = dml_shared::auth::installed()?
            .sharing_keyring()
            .with_encrypt_tcp(cfg.security.encrypt_tcp);
        // Before the first datagram: a rotated keyring wins over key_file,
        // and a newer one the others run is fetched.
        let keyring_version = crate::keyring::load(&cfg.data_dir, &auth)?;
        let keyring_version = match cfg.security.encrypt_tcp {
            false => keyring_version,
            true => {
                let peers: Vec<SocketAddr> = cfg
                    .voters()
                    .into_iter()
                    .chain(cfg.introducers.iter().copied())
                    .collect();
                crate::keyring::catch_up(
                    &auth,
                    &cfg.data_dir,
                    keyring_version,
                    addr,
                    &peers,
                    &cfg.voters(),
                    cfg.control.rpc_timeout,
                )
                .await
            }
        };
        let membership = driver::spawn(udp, core, join, auth.clone())
            .context("cannot start the membership thread")?;
        // Ends with the membership events, at shutdown.
        tokio::spawn(crate::identity::follow(
            cfg.data_dir.clone(),
            addr,
            membership.handle.subscribe(),
        ));
        let telemetry_handle = Telemetry::new(addr, sdfs.handle());
        let registry = std::sync::Arc::new(match &cfg.inference.registry {
            Some(path) => dml_shared::models::Registry::load(path)?,
            None => dml_shared::models::Registry::builtin(),
        });
        let control = ControlPlane::start(
            Settings::from_config(cfg, addr, registry.clone()),
            &cfg.data_dir,
            membership.handle.clone(),
        )
        .await
        .context("cannot start the control plane")?;
        sdfs.start_upkeep(MetaPath::Local(control.handle()));
        let keyring = crate::keyring::KeyringService::start(
            crate::keyring::Options {
                auth: auth.clone(),
                data_dir: cfg.data_dir.clone(),
                version: keyring_version,
                encrypt_tcp: cfg.security.encrypt_tcp,
                ask_timeout: cfg.control.rpc_timeout,
                me: addr,
                voters: cfg.voters(),
            },
            control.handle(),
            membership.handle.clone(),
        );
        let telemetry = TelemetryService::start_with(
            telemetry_handle,
            telemetry::Sources {
                me: addr,
                membership: membership.handle.clone(),
                control: control.handle(),
                sdfs: sdfs.handle(),
                replicas: cfg.replicas() as u32,
            },
        );
        let services = Services {
            membership: membership.handle.clone(),
            control: control.handle(),
            sdfs: sdfs.handle(),
            telemetry: telemetry.handle(),
            auth: auth.clone(),
            keyring: keyring.handle(),
        };
        let api = ApiServer::spawn(tcp, local, cfg.api.clone(), services);
        let worker = match cfg.inference.worker {
            false => None,
            true => Some(
                Worker::spawn(
                    WorkerOptions {
                        me: addr,
                        data_dir: cfg.data_dir.clone(),
                        intra_threads: cfg.inference.intra_threads,
                        ort_dylib: cfg.inference.ort_dylib.clone(),
                        registry,
                        slots: host_slots(&cfg.inference),
                        fetch_timeout: cfg.inference.fetch_timeout,
                    },
                    control.handle(),
                    sdfs.handle(),
                )
                .context("cannot start the inference worker's threads")?
                .into(),
            ),
        };
        let metrics = match cfg.metrics.bind {
            None => None,
            Some(bind) => Some(
                crate::metrics::MetricsServer::start(
                    bind,
                    metrics_token,
                    crate::metrics::Sources {
                        me: addr,
                        membership: membership.handle.clone(),
                        control: control.handle(),
                        sdfs: sdfs.handle(),
                        worker: worker.clone(),
                        auth: auth.clone(),
                        replicas: cfg.replicas(),
                    },
                )
                .await?,
            ),
        };
        Ok(Self {
            id,
            worker,
            metrics,
            membership,
            control,
            sdfs,
            api,
            telemetry,
            keyring,
        })
    }

    pub fn membership(&self) -> &MembershipHandle {
        &self.membership.handle
    }

    /// The control plane (a handle that refuses everything if no voters are configured).
    pub fn control(&self) -> ControlHandle {
        self.control.handle()
    }

    /// Leaves the group gracefully, then stops every service.
    pub async fn shutdown(self) {
        if let Some(m) = self.metrics {
            m.shutdown().await;
        }
        // The metrics server held the only other reference to the worker.
        if let Some(w) = self.worker.and_then(std::sync::Arc::into_inner) {
            w.shutdown().await;
        }
        self.telemetry.shutdown().await;
        self.keyring.shutdown().await;
        self.membership.shutdown().await;
        self.control.shutdown().await;
        self.api.shutdown().await;
        self.sdfs.shutdown().await;
    }

    /// The telemetry publisher (event log, subscriptions).
    pub fn telemetry(&self) -> Telemetry {
        self.telemetry.handle()
    }

    /// The SDFS store and data path.
    pub fn sdfs(&self) -> SdfsHandle {
        self.sdfs.handle()
    }
}

/// The host's compute slots from `[inference]`; `None` when turned off (or
/// when the slot directory cannot be used, which is logged: queries then run
/// without turns).
fn host_slots(
    i: &dml_shared::config::InferenceConfig,
) -> Option<std::sync::Arc<crate::infer::slots::HostSlots>> {
    use crate::infer::slots::HostSlots;
    let count = i
        .host_slots
        .unwrap_or_else(|| HostSlots::default_count(i.intra_threads));
    if count == 0 {
        return None;
    }
    let dir = i.slot_dir.clone().unwrap_or_else(HostSlots::default_dir);
    // A holder frozen mid-query delays the others by at most half a lease.
    match HostSlots::open(&dir, count, i.lease_timeout / 2) {
        Ok(s) => {
            tracing::info!(slots = count, dir = %dir.display(), "inference: host compute slots");
            Some(std::sync::Arc::new(s))
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "inference: cannot use the host's compute slots; queries run without turns");
            None
        }
    }
}
