//! Polling a condition until it holds or a deadline passes.

use anyhow::{Result, anyhow};
use std::time::{Duration, Instant};

/// Polls `cond` every `poll` until it returns `Ok`, and returns that value.
///
/// An `Err` from `cond` means "not yet" and says why; after `timeout` the last reason is
/// returned inside an error naming `what`. The condition is always checked at least once,
/// and once more at the deadline.
pub async fn wait_for<T, F>(what: &str, timeout: Duration, poll: Duration, mut cond: F) -> Result<T>
where
    F: AsyncFnMut() -> Result<T>,
{
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        let err = match cond().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(anyhow!(
                "timed out after {:.1?} waiting for {what}; last check: {err:#}",
                now - start
            ));
        }
        tokio::time::sleep(poll.min(deadline - now)).await;
    }
}

/// [`wait_for`] without a value.
/// Waits until `counter` reaches `n`.
pub async fn wait_count(
    what: &str,
    counter: &std::sync::atomic::AtomicUsize,
    n: usize,
    timeout: Duration,
) -> Result<()> {
    let poll = Duration::from_millis(100);
    wait_until(what, timeout, poll, async || {
        let now = counter.load(std::sync::atomic::Ordering::SeqCst);
        anyhow::ensure!(now >= n, "{now} of {n}");
        Ok(())
    })
    .await
}

/// Logs how many of `outcomes` failed, with the first errors.
pub fn log_failures<'a, T: 'a, E: std::fmt::Debug + 'a>(
    what: &str,
    outcomes: impl Iterator<Item = &'a std::result::Result<T, E>>,
) -> usize {
    let all: Vec<_> = outcomes.collect();
    let failed: Vec<&E> = all.iter().filter_map(|o| o.as_ref().err()).collect();
    eprintln!(
        "{} {what}, {} acknowledged, {} failed: {:?}",
        all.len(),
        all.len() - failed.len(),
        failed.len(),
        failed.iter().take(5).collect::<Vec<_>>()
    );
    failed.len()
}

pub async fn wait_until<F>(what: &str, timeout: Duration, poll: Duration, cond: F) -> Result<()>
where
    F: AsyncFnMut() -> Result<()>,
{
    wait_for(what, timeout, poll, cond).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_once_the_condition_holds() {
        let mut n = 0;
        let v = wait_for(
            "n to reach 3",
            Duration::from_secs(5),
            Duration::ZERO,
            async || {
                n += 1;
                if n >= 3 {
                    Ok(n)
                } else {
                    Err(anyhow!("n is {n}"))
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(v, 3);
    }

    #[tokio::test]
    async fn times_out_with_the_last_reason() {
        let e = wait_until(
            "never",
            Duration::from_millis(50),
            Duration::from_millis(10),
            async || Err(anyhow!("still false")),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("never") && e.contains("still false"), "{e}");
    }
}
