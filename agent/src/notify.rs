//! systemd notifications through the `sd-notify` crate, to the socket systemd
//! names in `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket), as
//! `Type=notify` units expect: readiness and stopping with a status line
//! ([`notify`]), and watchdog pings while the agent's loops answer
//! ([`spawn_watchdog`], `WatchdogSec=`). Without `NOTIFY_SOCKET` nothing is sent.

use dml_agent::membership::driver::MembershipHandle;
use sd_notify::NotifyState;
use std::future::Future;
use std::io;
use std::time::Duration;

/// The environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Watchdog pings per `WatchdogSec=` period: a stall longer than about
/// three quarters of it stops them in time.
const PINGS_PER_PERIOD: u32 = 4;

/// The service manager's notification socket, when it named one.
#[derive(Debug)]
pub struct Notifier(());

impl Notifier {
    /// `Ok(None)` when `NOTIFY_SOCKET` is unset; an error when its value is
    /// neither an absolute path nor an `@abstract` name.
    pub fn from_env() -> io::Result<Option<Self>> {
        let Some(value) = std::env::var_os(NOTIFY_SOCKET) else {
            return Ok(None);
        };
        check(&value.to_string_lossy()).map(|()| Some(Notifier(())))
    }
}

/// Refuses what `sd-notify` could never send to, at start rather than at
/// the first notification.
fn check(value: &str) -> io::Result<()> {
    let bad = |why: &str| {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET \"{value}\": {why}"),
        ))
    };
    match value.strip_prefix('@') {
        Some("") => bad("empty abstract name"),
        Some(_) => Ok(()),
        None if value.starts_with('/') => Ok(()),
        None => bad("neither an absolute path nor an @abstract name"),
    }
}

/// Sends `state` (newline-separated assignments such as
/// `"READY=1\nSTATUS=joined"`) if there is a notifier; a failure is logged,
/// never fatal.
pub fn notify(n: Option<&Notifier>, state: &str) {
    if n.is_some()
        && let Err(e) = sd_notify::notify(&[NotifyState::Custom(state)])
    {
        tracing::warn!(error = %e, state, "cannot notify systemd");
    }
}

/// Pings systemd's watchdog if the unit enabled it (`WATCHDOG_USEC`): every
/// quarter period, once the membership loop has answered a request within
/// that quarter. The task runs on the agent's runtime, so a stalled runtime
/// or membership loop stops the pings, and systemd restarts the agent.
pub fn spawn_watchdog(membership: MembershipHandle) -> Option<tokio::task::JoinHandle<()>> {
    let period = sd_notify::watchdog_enabled()?;
    // A zero interval would make tokio panic; systemd's floor is far above 1 ms.
    let every = (period / PINGS_PER_PERIOD).max(Duration::from_millis(1));
    tracing::info!(
        ?period,
        "systemd watchdog: pinging while the agent's loops answer"
    );
    let alive = move || {
        let m = membership.clone();
        async move { m.id().await.is_some() }
    };
    let ping = || {
        if let Err(e) = sd_notify::notify(&[NotifyState::Watchdog]) {
            tracing::warn!(error = %e, "cannot ping the systemd watchdog");
        }
    };
    Some(tokio::spawn(watchdog(every, alive, ping)))
}

/// Every `every`, asks `alive` (which has `every` to answer) and calls `ping`
/// when it answers yes.
async fn watchdog<F, Fut>(every: Duration, mut alive: F, mut ping: impl FnMut())
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stalled = false;
    loop {
        tick.tick().await;
        let ok = tokio::time::timeout(every, alive()).await.unwrap_or(false);
        match (ok, stalled) {
            (true, true) => tracing::info!("the agent's loops answer again; watchdog pings resume"),
            (false, false) => tracing::error!(
                "the membership loop did not answer within {every:?}; watchdog pings stop"
            ),
            _ => {}
        }
        if ok {
            ping();
        }
        stalled = !ok;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[test]
    fn bad_values_are_refused_with_the_value() {
        let e = check("relative/sock").unwrap_err().to_string();
        assert!(e.contains("\"relative/sock\""), "{e}");
        assert!(check("@").is_err());
        check("@name").unwrap();
        check("/run/systemd/notify").unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_pings_while_the_loops_answer_and_stops_when_they_stall() {
        let every = Duration::from_secs(5);
        let stalled = Arc::new(AtomicBool::new(false));
        let pings = Arc::new(AtomicUsize::new(0));
        let (s, p) = (stalled.clone(), pings.clone());
        let alive = move || {
            let s = s.clone();
            async move {
                if s.load(Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                true
            }
        };
        tokio::spawn(watchdog(every, alive, move || {
            p.fetch_add(1, Ordering::SeqCst);
        }));
        tokio::time::sleep(every * 3 + every / 2).await;
        let before = pings.load(Ordering::SeqCst);
        assert_eq!(before, 4, "one ping at once, then one per interval");
        stalled.store(true, Ordering::SeqCst);
        tokio::time::sleep(every * 10).await;
        let during = pings.load(Ordering::SeqCst);
        assert!(during <= before + 1, "{before} then {during} while stalled");
        stalled.store(false, Ordering::SeqCst);
        tokio::time::sleep(every * 3).await;
        assert!(pings.load(Ordering::SeqCst) > during, "pings resume");
    }
}
