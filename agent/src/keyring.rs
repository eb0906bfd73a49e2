//! The agent's side of `dml keyring` (see docs/PROTOCOL.md, "Key rotation").
//!
//! - At start, [`load`] installs the keyring kept in `<data_dir>/keyring.toml`
//!   in the process's [`AuthContext`]. There is none until the cluster's
//!   keyring first changes; until then `security.key_file` is the only key.
//!   Once there is one it wins over `security.key_file`, whose key then only
//!   seeds a new data directory (after a rotation it is usually the old,
//!   removed key: update it for agents yet to be made).
//! - The sync task (one per agent, the only writer of the file and of the
//!   installed keyring) asks the leader every [`KEYRING_SYNC`] for the
//!   committed keyring if its version differs from the one installed, and on
//!   an answer writes the file, then installs it. An agent that was down
//!   during a change catches up this way once it is back: it still holds a
//!   key the cluster accepts unless that key was removed meanwhile.
//! - [`KeyringHandle::handle`] serves `Request::Keyring`: changes go to the
//!   leader (after asking every live agent whether the change is safe: `use`
//!   waits until every live agent holds the key, `remove` until none sends
//!   with it); `list` counts what every live agent holds.
//!
//! Keyring requests carry secrets, so an agent whose TCP is not encrypted
//! (`security.encrypt_tcp = false`) refuses them and does not sync.

use crate::control::ControlHandle;
use crate::membership::driver::MembershipHandle;
use crate::timing::KEYRING_SYNC;
use dml_shared::api::{Request, Response};
use dml_shared::auth::AuthContext;
use dml_shared::client::Client;
use dml_shared::control::{ControlRequest, ControlResponse};
use dml_shared::keyring::file::{self, FILE_NAME};
use dml_shared::keyring::{
    KeyListing, KeyringAnswer, KeyringCommand, KeyringList, KeyringRequest, KeyringResponse,
    KeyringState, LocalKeyring,
};
use dml_shared::{ErrorKind, RemoteError};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// The keyring file of the agent whose data directory is `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Installs the keyring kept in `data_dir` in `auth`, if there is one, and
/// returns its version (0: none, `auth` keeps the `security.key_file` key).
pub fn load(data_dir: &Path, auth: &AuthContext) -> dml_shared::Result<u64> {
    let Some(state) = file::load(&path(data_dir))? else {
        return Ok(0);
    };
    let configured = auth.key();
    let ring = state.to_keyring();
    if !ring.keys().contains(&configured) {
        tracing::warn!(
            key_file = %configured.fingerprint(),
            keyring = ?state.summary(),
            "security.key_file's key is not in this agent's keyring, which wins: the key file \
             only seeds a new data directory"
        );
    }
    tracing::info!(version = state.version, primary = %ring.primary().fingerprint(), "keyring loaded");
    auth.set_keyring(ring);
    Ok(state.version)
}

/// What the handle and the sync task share.
struct Inner {
    auth: AuthContext,
    data_dir: PathBuf,
    /// The version installed (only the sync task writes it).
    version: AtomicU64,
    encrypt_tcp: bool,
    control: ControlHandle,
    membership: MembershipHandle,
    /// Timeout of one agent's answer to `list` and the safety checks.
    ask_timeout: Duration,
    me: SocketAddr,
    /// The configured voters, asked to relay a fetch.
    voters: Vec<SocketAddr>,
    /// Wakes the sync task at once (after a change through this agent).
    poke: Notify,
}

/// Reaches the agent's keyring; cheap to clone.
#[derive(Clone)]
pub struct KeyringHandle {
    inner: Arc<Inner>,
}

/// The running sync task; [`KeyringService::shutdown`] stops it.
pub struct KeyringService {
    handle: KeyringHandle,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// What the keyring service needs.
pub struct Options {
    pub auth: AuthContext,
    pub data_dir: PathBuf,
    /// The version [`load`] installed.
    pub version: u64,
    pub encrypt_tcp: bool,
    pub ask_timeout: Duration,
    /// This agent's address.
    pub me: SocketAddr,
    pub voters: Vec<SocketAddr>,
}

impl KeyringService {
    pub fn start(opts: Options, control: ControlHandle, membership: MembershipHandle) -> Self {
        if !opts.encrypt_tcp {
            tracing::warn!(
                "security.encrypt_tcp is off: this agent neither syncs nor changes the keyring \
                 (keys would cross the network in clear)"
            );
        }
        let inner = Arc::new(Inner {
            auth: opts.auth,
            data_dir: opts.data_dir,
            version: AtomicU64::new(opts.version),
            encrypt_tcp: opts.encrypt_tcp,
            control,
            membership,
            ask_timeout: opts.ask_timeout,
            me: opts.me,
            voters: opts.voters,
            poke: Notify::new(),
        });
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(sync_loop(inner.clone(), rx));
        Self {
            handle: KeyringHandle { inner },
            stop,
            task,
        }
    }

    pub fn handle(&self) -> KeyringHandle {
        self.handle.clone()
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn sync_loop(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    if !inner.encrypt_tcp {
        let _ = stop.changed().await;
        return;
    }
    loop {
        let synced = tokio::select! {
            r = inner.sync() => r,
            _ = stop.changed() => return,
        };
        if let Err(e) = synced {
            tracing::debug!(error = %e, "keyring sync failed; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(KEYRING_SYNC) => {}
            _ = inner.poke.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

/// The committed keyring unless its version is `have`, relayed to the
/// leader by the first of `voters` (other than `me`) that answers.
async fn relayed(
    voters: &[SocketAddr],
    me: SocketAddr,
    have: u64,
    timeout: Duration,
) -> Result<Option<KeyringState>, RemoteError> {
    let req = Request::Control {
        req: ControlRequest::Keyring(KeyringCommand::Fetch { have }),
        leader_only: false,
    };
    let mut last = RemoteError::new(ErrorKind::Unavailable, "no other voter is configured");
    for v in voters.iter().filter(|v| **v != me) {
        let mut c = Client::new(*v).with_timeout(timeout);
        match c.call(&req).await {
            Ok(answer) => match ring(answer) {
                Ok(r) => return Ok(r),
                Err(e) => last = e,
            },
            Err(dml_shared::Error::Remote(e)) => last = e,
            Err(e) => last = RemoteError::new(ErrorKind::Unavailable, e.to_string()),
        }
    }
    Err(last)
}

/// Before the agent joins: if another agent already runs a newer keyring
/// than this one's `version` (this agent was down during a change), fetches
/// and installs it, so the first datagrams it gets open. Asks `peers` for
/// their version first (no leader needed), so a cluster starting fresh, all
/// at version 0, starts without delay. Returns the version installed.
pub async fn catch_up(
    auth: &AuthContext,
    data_dir: &Path,
    version: u64,
    me: SocketAddr,
    peers: &[SocketAddr],
    voters: &[SocketAddr],
    timeout: Duration,
) -> u64 {
    let mut asks = tokio::task::JoinSet::new();
    for p in peers.iter().copied().filter(|p| *p != me) {
        asks.spawn(async move {
            let mut c = Client::new(p).with_timeout(timeout);
            match c.call(&Request::Keyring(KeyringRequest::Local)).await {
                Ok(Response::Keyring(KeyringResponse::Local(l))) => Ok(l.version),
                Err(e @ dml_shared::Error::Auth { .. }) => Err(Some(e.to_string())),
                _ => Err(None),
            }
        });
    }
    let answers = asks.join_all().await;
    let newest = answers
        .iter()
        .filter_map(|a| a.as_ref().ok())
        .max()
        .copied();
    let refused: Vec<&String> = answers
        .iter()
        .filter_map(|a| a.as_ref().err()?.as_ref())
        .collect();
    if newest.is_none() && !refused.is_empty() {
        tracing::warn!(
            refused = ?refused,
            "every agent that answered refused this agent's keys: they may have been removed \
             from the cluster's keyring (`dml keyring remove`) while it was down; give it a \
             current key (security.key_file on a fresh data directory, or its keyring.toml)"
        );
    }
    let newest = newest.unwrap_or(0);
    if newest <= version {
        return version;
    }
    tracing::info!(
        version,
        newest,
        "this agent missed keyring changes; fetching before it joins"
    );
    let fetched = tokio::time::timeout(timeout * 4, relayed(voters, me, version, timeout)).await;
    match fetched {
        Ok(Ok(Some(state))) if state.check().is_ok() => match file::save(&path(data_dir), &state) {
            Ok(()) => {
                auth.set_keyring(state.to_keyring());
                tracing::info!(version = state.version, "keyring installed before joining");
                state.version
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot keep the fetched keyring; the sync task retries");
                version
            }
        },
        other => {
            tracing::warn!(outcome = ?other.map(|r| r.map(|s| s.map(|s| s.summary()))), "cannot fetch the keyring before joining; the sync task retries");
            version
        }
    }
}

/// The keyring in an answer to a fetch.
fn ring(answer: Response) -> Result<Option<KeyringState>, RemoteError> {
    match answer {
        Response::Control(ControlResponse::Keyring(KeyringAnswer::Ring(r))) => Ok(r),
        Response::Error(e) => Err(e),
        other => Err(RemoteError::internal(format!(
            "unexpected answer to a keyring fetch: {other:?}"
        ))),
    }
}

fn refused(msg: impl Into<String>) -> Response {
    Response::Error(RemoteError::new(ErrorKind::Refused, msg))
}

impl Inner {
    /// Asks the leader for the committed keyring and installs it if it is
    /// another version than this agent's.
    async fn sync(&self) -> Result<(), RemoteError> {
        let have = self.version.load(Ordering::Relaxed);
        let Some(state) = self.fetch(have).await? else {
            return Ok(());
        };
        if state.version == have {
            return Ok(());
        }
        self.install(&state)
    }

    /// The committed keyring unless its version is `have`: through this
    /// agent's route to the leader, else relayed by a voter. (A voter that
    /// missed a `use` while down cannot take the leader's Raft RPCs, sent
    /// with the new key, so it does not know the leader; a voter does, and
    /// accepts this agent's older key until it is removed.)
    async fn fetch(&self, have: u64) -> Result<Option<KeyringState>, RemoteError> {
        let req = ControlRequest::Keyring(KeyringCommand::Fetch { have });
        let own = tokio::time::timeout(self.ask_timeout, self.control.control(req.clone(), false));
        let own = match own.await {
            Ok(answer) => match ring(answer) {
                Ok(r) => return Ok(r),
                Err(e) => e,
            },
            Err(_) => RemoteError::new(ErrorKind::Unavailable, "no leader answered in time"),
        };
        if self.voters.iter().all(|v| *v == self.me) {
            return Err(own);
        }
        relayed(&self.voters, self.me, have, self.ask_timeout).await
    }

    /// Writes `state` to the data directory, then installs it.
    fn install(&self, state: &KeyringState) -> Result<(), RemoteError> {
        state
            .check()
            .map_err(|e| RemoteError::internal(format!("the leader sent a bad keyring: {e}")))?;
        file::save(&path(&self.data_dir), state)
            .map_err(|e| RemoteError::internal(e.to_string()))?;
        let ring = state.to_keyring();
        tracing::info!(
            version = state.version,
            primary = %ring.primary().fingerprint(),
            keys = ring.keys().len(),
            "keyring installed"
        );
        self.auth.set_keyring(ring);
        self.version.store(state.version, Ordering::Relaxed);
        Ok(())
    }

    fn local(&self) -> LocalKeyring {
        let ring = self.auth.keyring();
        LocalKeyring {
            version: self.version.load(Ordering::Relaxed),
            primary: ring.primary().fingerprint(),
            keys: ring.keys().iter().map(|k| k.fingerprint()).collect(),
        }
    }

    /// Every live agent's keyring (this one's without asking), and the
    /// agents that did not answer.
    async fn survey(&self) -> Result<Survey, RemoteError> {
        let members = self.membership.members().await.ok_or_else(|| {
            RemoteError::new(ErrorKind::Unavailable, "membership task is shutting down")
        })?;
        let me = self.membership.id().await.map(|i| i.id.addr);
        let mut addrs: Vec<SocketAddr> = members
            .iter()
            .filter(|m| m.state.is_live())
            .map(|m| m.id.addr)
            .collect();
        addrs.sort();
        addrs.dedup();
        let mut asks = tokio::task::JoinSet::new();
        for a in addrs.iter().copied().filter(|a| Some(*a) != me) {
            let timeout = self.ask_timeout;
            asks.spawn(async move {
                let mut c = Client::new(a).with_timeout(timeout);
                let r = match c.call(&Request::Keyring(KeyringRequest::Local)).await {
                    Ok(Response::Keyring(KeyringResponse::Local(l))) => Ok(l),
                    Ok(Response::Error(e)) => Err(e.message),
                    Ok(other) => Err(format!("unexpected answer {other:?}")),
                    Err(e) => Err(e.to_string()),
                };
                (a, r)
            });
        }
        let mut s = Survey::default();
        if let Some(me) = me {
            s.answered.push((me, self.local()));
        }
        while let Some(j) = asks.join_next().await {
            if let Ok((a, r)) = j {
                match r {
                    Ok(l) => s.answered.push((a, l)),
                    Err(e) => s.unreachable.push((a, e)),
                }
            }
        }
        s.answered.sort_by_key(|(a, _)| *a);
        s.unreachable.sort();
        Ok(s)
    }

    /// A change through the leader; this agent then syncs at once.
    async fn change(&self, cmd: KeyringCommand) -> Response {
        let answer = self
            .control
            .control(ControlRequest::Keyring(cmd), false)
            .await;
        match answer {
            Response::Control(ControlResponse::Keyring(KeyringAnswer::Changed(c))) => {
                self.poke.notify_one();
                Response::Keyring(KeyringResponse::Changed(c))
            }
            Response::Error(e) => Response::Error(e),
            other => Response::Error(RemoteError::internal(format!(
                "unexpected answer to a keyring change: {other:?}"
            ))),
        }
    }

    /// The committed keyring, by fingerprint.
    async fn committed(&self) -> Result<LocalKeyring, RemoteError> {
        Ok(match self.fetch(u64::MAX).await? {
            Some(s) => s.summary(),
            // Never changed: every agent's key_file key, as this one holds it.
            None => LocalKeyring {
                version: 0,
                ..self.local()
            },
        })
    }

    /// `fp` as typed, checked against the committed keyring: an unknown
    /// key, or (`removing`) the primary, is refused here with the words the
    /// leader would use.
    async fn known(&self, fp: &str, removing: bool) -> Result<String, RemoteError> {
        let fp = normalize(fp)?;
        let committed = self.committed().await?;
        if !committed.keys.contains(&fp) {
            return Err(RemoteError::new(
                ErrorKind::NotFound,
                format!(
                    "no key with fingerprint \"{fp}\" is installed (installed: {})",
                    committed.keys.join(", ")
                ),
            ));
        }
        if removing && committed.primary == fp {
            return Err(RemoteError::new(
                ErrorKind::Conflict,
                format!(
                    "key {fp} is the primary: agents send with it; make another key primary \
                     (`dml keyring use`) before removing it"
                ),
            ));
        }
        Ok(fp)
    }

    async fn list(&self) -> Result<KeyringList, RemoteError> {
        let committed = self.committed().await?;
        let survey = self.survey().await?;
        let mut keys: Vec<KeyListing> = Vec::new();
        let listing = |fp: &String, committed_key: bool| KeyListing {
            fingerprint: fp.clone(),
            primary: *fp == committed.primary,
            committed: committed_key,
            installed_on: survey.holding(fp),
            primary_on: survey.sending(fp),
        };
        let mut order = vec![committed.primary.clone()];
        order.extend(
            committed
                .keys
                .iter()
                .filter(|k| **k != committed.primary)
                .cloned(),
        );
        for fp in &order {
            keys.push(listing(fp, true));
        }
        for (_, l) in &survey.answered {
            for fp in &l.keys {
                if !keys.iter().any(|k| k.fingerprint == *fp) {
                    keys.push(listing(fp, false));
                }
            }
        }
        Ok(KeyringList {
            version: committed.version,
            keys,
            agents: (survey.answered.len() + survey.unreachable.len()) as u32,
            unreachable: survey.unreachable,
        })
    }
}

/// What the live agents hold.
#[derive(Default)]
struct Survey {
    answered: Vec<(SocketAddr, LocalKeyring)>,
    unreachable: Vec<(SocketAddr, String)>,
}

impl Survey {
    fn holding(&self, fp: &str) -> u32 {
        self.answered
            .iter()
            .filter(|(_, l)| l.keys.iter().any(|k| k == fp))
            .count() as u32
    }

    fn sending(&self, fp: &str) -> u32 {
        self.answered
            .iter()
            .filter(|(_, l)| l.primary == fp)
            .count() as u32
    }

    fn total(&self) -> usize {
        self.answered.len() + self.unreachable.len()
    }

    /// Why a change is not safe yet: agents that did not answer, or
    /// `blocking` (named by `why`) among those that did.
    fn refusal(
        &self,
        what: &str,
        why: &str,
        blocking: impl Fn(&LocalKeyring) -> bool,
    ) -> Option<String> {
        let blocked: Vec<String> = self
            .answered
            .iter()
            .filter(|(_, l)| blocking(l))
            .map(|(a, _)| a.to_string())
            .collect();
        if blocked.is_empty() && self.unreachable.is_empty() {
            return None;
        }
        let mut parts = Vec::new();
        if !blocked.is_empty() {
            parts.push(format!(
                "{} of {} live agents {why} ({})",
                blocked.len(),
                self.total(),
                blocked.join(", ")
            ));
        }
        for (a, e) in &self.unreachable {
            parts.push(format!("{a} did not answer: {e}"));
        }
        Some(format!(
            "not safe to {what} yet: {}; retry once `dml keyring list` shows every live agent converged",
            parts.join("; ")
        ))
    }
}

/// The refusal of a keyring request that would carry secrets, on an agent
/// whose connections are not encrypted.
fn unencrypted(encrypt_tcp: bool) -> Option<Response> {
    (!encrypt_tcp).then(|| {
        refused(
            "keyring requests carry cluster keys, and this agent's connections are not \
             encrypted (security.encrypt_tcp = false): turn it on to rotate keys",
        )
    })
}

/// Takes `fp` as an operator typed it.
fn normalize(fp: &str) -> Result<String, RemoteError> {
    let fp = fp.trim().to_ascii_lowercase();
    if fp.len() != 16 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(RemoteError::invalid(format!(
            "\"{fp}\" is not a key fingerprint (16 hex digits, as `dml keyring list` shows)"
        )));
    }
    Ok(fp)
}

impl KeyringHandle {
    /// Serves one `Request::Keyring`.
    pub async fn handle(&self, req: KeyringRequest) -> Response {
        let i = &self.inner;
        if let KeyringRequest::Local = req {
            return Response::Keyring(KeyringResponse::Local(i.local()));
        }
        if let Some(r) = unencrypted(i.encrypt_tcp) {
            return r;
        }
        let unavailable = |e: RemoteError| Response::Error(e);
        match req {
            KeyringRequest::Local => unreachable!("answered above"),
            KeyringRequest::List => match i.list().await {
                Ok(l) => Response::Keyring(KeyringResponse::List(l)),
                Err(e) => unavailable(e),
            },
            KeyringRequest::Install { key } => i.change(KeyringCommand::Install { key }).await,
            KeyringRequest::Use { fingerprint } => {
                let fp = match i.known(&fingerprint, false).await {
                    Ok(f) => f,
                    Err(e) => return Response::Error(e),
                };
                let survey = match i.survey().await {
                    Ok(s) => s,
                    Err(e) => return unavailable(e),
                };
                let why = format!("do not hold key {fp}");
                if let Some(r) = survey.refusal("make it primary", &why, |l| !l.keys.contains(&fp))
                {
                    return refused(r);
                }
                i.change(KeyringCommand::Use { fingerprint: fp }).await
            }
            KeyringRequest::Remove { fingerprint } => {
                let fp = match i.known(&fingerprint, true).await {
                    Ok(f) => f,
                    Err(e) => return Response::Error(e),
                };
                let survey = match i.survey().await {
                    Ok(s) => s,
                    Err(e) => return unavailable(e),
                };
                let why = format!("still send with key {fp}");
                if let Some(r) = survey.refusal("remove it", &why, |l| l.primary == fp) {
                    return refused(r);
                }
                i.change(KeyringCommand::Remove { fingerprint: fp }).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyring_requests_are_refused_without_encryption_and_fingerprints_are_checked() {
        assert!(unencrypted(true).is_none());
        match unencrypted(false) {
            Some(Response::Error(e)) => {
                assert_eq!(e.kind, ErrorKind::Refused);
                assert!(e.message.contains("security.encrypt_tcp = false"), "{e:?}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            normalize(" 0011AABBCCDDEEFF\n").unwrap(),
            "0011aabbccddeeff"
        );
        let e = normalize("0011").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert!(
            e.message.contains("\"0011\" is not a key fingerprint"),
            "{e:?}"
        );
    }

    #[test]
    fn a_change_is_refused_while_an_agent_blocks_it_or_does_not_answer() {
        let local = |primary: &str, keys: &[&str]| LocalKeyring {
            version: 1,
            primary: primary.into(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
        };
        let a = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let mut s = Survey {
            answered: vec![
                (a(1), local("k1", &["k1", "k2"])),
                (a(2), local("k1", &["k1"])),
            ],
            unreachable: vec![],
        };
        assert_eq!((s.holding("k2"), s.sending("k1")), (1, 2));
        let r = s
            .refusal("make it primary", "do not hold key k2", |l| {
                !l.keys.contains(&"k2".to_string())
            })
            .unwrap();
        assert!(
            r.contains("1 of 2 live agents do not hold key k2 (127.0.0.1:2)"),
            "{r}"
        );
        s.answered[1].1 = local("k1", &["k1", "k2"]);
        assert_eq!(
            s.refusal("x", "y", |l| !l.keys.contains(&"k2".to_string())),
            None
        );
        s.unreachable.push((a(3), "timed out".into()));
        let r = s.refusal("x", "y", |_| false).unwrap();
        assert!(r.contains("127.0.0.1:3 did not answer: timed out"), "{r}");
    }
}
