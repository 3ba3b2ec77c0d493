//! [`StepLimiter`]: enforces one step's limits, a concurrency slot and then a start under the
//! rate, for every run that shares it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::{Rate, StepLimits};

/// Enforces the [`StepLimits`] of one step for every run sharing a
/// [`LimitRegistry`](super::LimitRegistry).
#[derive(Debug)]
pub(crate) struct StepLimiter {
    limits: StepLimits,
    /// The concurrency slots, and how many there are.
    concurrency: Option<(Arc<Semaphore>, usize)>,
    /// The rate's queue of waiters.
    rate: Option<RateQueue>,
}

impl StepLimiter {
    pub(crate) fn new(limits: StepLimits) -> Self {
        let concurrency = limits.concurrency.map(|n| {
            let permits = usize::try_from(n.get())
                .unwrap_or(usize::MAX)
                .min(Semaphore::MAX_PERMITS);
            (Arc::new(Semaphore::new(permits)), permits)
        });
        StepLimiter {
            limits,
            concurrency,
            rate: limits.rate.map(RateQueue::new),
        }
    }

    /// The limits this limiter enforces.
    pub(crate) fn limits(&self) -> StepLimits {
        self.limits
    }

    /// Waits until an attempt may start under both limits; the attempt holds the returned permit
    /// until it ends.
    ///
    /// Takes a concurrency slot first (callers are served in order), then, holding it, waits for
    /// its turn under the rate (in order too) and starts when the rate allows.
    ///
    /// Cancel safe: dropping the future while it waits releases its concurrency slot and its place
    /// in the rate's queue; the callers behind it move up.
    pub(crate) async fn acquire(&self) -> LimitPermit {
        let permit = match &self.concurrency {
            // The semaphore is never closed, so `Err` cannot happen; it would mean no slot.
            Some((semaphore, _)) => semaphore.clone().acquire_owned().await.ok(),
            None => None,
        };
        if let Some(rate) = &self.rate {
            rate.start().await;
        }
        LimitPermit { _slot: permit }
    }

    #[cfg(test)]
    /// How many permits are held now; `None` without a concurrency limit.
    pub(crate) fn in_flight(&self) -> Option<usize> {
        self.concurrency
            .as_ref()
            .map(|(semaphore, permits)| permits.saturating_sub(semaphore.available_permits()))
    }

    #[cfg(test)]
    /// How many permits could be taken now without waiting for a slot; `None` without a
    /// concurrency limit.
    pub(crate) fn available(&self) -> Option<usize> {
        self.concurrency
            .as_ref()
            .map(|(semaphore, _)| semaphore.available_permits())
    }
}

/// The right of one attempt to run, from [`StepLimiter::acquire`]: dropping it frees the
/// attempt's concurrency slot.
#[derive(Debug)]
#[must_use = "the attempt's concurrency slot is released as soon as the permit is dropped"]
pub(crate) struct LimitPermit {
    _slot: Option<OwnedSemaphorePermit>,
}

/// A rate limit: waiters queue, and each starts when the generic cell rate algorithm allows,
/// checked when the start happens.
#[derive(Debug)]
struct RateQueue {
    /// The spacing of starts.
    interval: Duration,
    /// How far ahead of its theoretical time a start may happen: `interval * (burst - 1)`.
    tolerance: Duration,
    /// The queue of waiters, served in order; its holder alone reads and moves the theoretical
    /// arrival time: when the next start would happen if starts were strictly spaced. `None`
    /// until the first start.
    tat: tokio::sync::Mutex<Option<Instant>>,
}

impl RateQueue {
    fn new(rate: Rate) -> Self {
        let interval = rate.interval();
        RateQueue {
            interval,
            tolerance: interval.saturating_mul(rate.burst_size() - 1),
            tat: tokio::sync::Mutex::new(None),
        }
    }

    /// Waits for the caller's turn in the queue, then until a start conforms to the rate, and
    /// records the start. The check is made with the clock read at the start, never with a time
    /// reserved earlier, so starts conform however late the executor polls the waiters.
    ///
    /// Cancel safe: a waiter that goes away, wherever it is in the queue, has reserved nothing.
    async fn start(&self) {
        let mut tat = self.tat.lock().await;
        let mut slept = false;
        loop {
            let now = Instant::now();
            match self.conforms(*tat, now, slept) {
                Ok(next) => {
                    *tat = Some(next);
                    return;
                }
                Err(earliest) => {
                    tokio::time::sleep_until(earliest).await;
                    slept = true;
                }
            }
        }
    }

    /// Whether a start at `now` conforms, given the theoretical arrival time `tat`: if so, the
    /// theoretical arrival time after it; if not, the earliest time one would.
    ///
    /// A start that `slept` until it would conform is counted as starting when it could have,
    /// up to one interval before `now`: tokio's timer wakes a sleeper up to a millisecond late,
    /// and without this the lateness would be lost at every start, and a strictly spaced rate
    /// of 500/s would run at about 330/s. Lateness beyond an interval (a stalled executor) is
    /// lost, as it must be.
    ///
    /// The bound this keeps: the times counted, `c_k`, are those of the generic cell rate
    /// algorithm, so `c_n - c_1 >= (n - burst) * interval`; each start happens at most one
    /// interval after its `c_k`; so any window `w` holds at most `burst + 1 + w / interval`
    /// starts: the rate plus the burst, and one start more.
    fn conforms(
        &self,
        tat: Option<Instant>,
        now: Instant,
        slept: bool,
    ) -> Result<Instant, Instant> {
        if let Some(earliest) = tat.and_then(|t| t.checked_sub(self.tolerance))
            && earliest > now
        {
            return Err(earliest);
        }
        let counted = match now.checked_sub(self.interval) {
            Some(earlier) if slept => earlier,
            _ => now,
        };
        let from = tat.map_or(now, |t| t.max(counted));
        Ok(saturating_add(from, self.interval))
    }
}

/// `t + d`, or as far after `t` as an `Instant` goes (at most about 30 years).
fn saturating_add(t: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    t.checked_add(d)
        .or_else(|| t.checked_add(d.min(FAR)))
        .unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::FutureExt;

    use super::*;

    const CONCURRENCY_2: StepLimits = StepLimits::NONE.with_concurrency(2);

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrency_is_never_exceeded() {
        let limiter = Arc::new(StepLimiter::new(StepLimits::NONE.with_concurrency(3)));
        let running = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (limiter, running, max) = (limiter.clone(), running.clone(), max.clone());
                tokio::spawn(async move {
                    let _permit = limiter.acquire().await;
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(now, Ordering::SeqCst);
                    assert!(limiter.in_flight().unwrap() <= 3);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(max.load(Ordering::SeqCst), 3);
        assert_eq!(limiter.in_flight(), Some(0));
        assert_eq!(limiter.available(), Some(3));
    }

    /// Acquires `n` permits one after the other, each held for `hold`; returns when each started,
    /// relative to the call.
    async fn start_times(limiter: &StepLimiter, n: usize) -> Vec<Duration> {
        let t0 = Instant::now();
        let mut times = Vec::new();
        for _ in 0..n {
            let _permit = limiter.acquire().await;
            times.push(t0.elapsed());
        }
        times
    }

    fn millis(ms: &[u64]) -> Vec<Duration> {
        ms.iter().copied().map(Duration::from_millis).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn rate_spaces_starts() {
        let limiter = StepLimiter::new(StepLimits::NONE.with_rate(Rate::per_second(10)));
        assert_eq!(limiter.in_flight(), None);
        let expected: Vec<u64> = (0..20).map(|i| i * 100).collect();
        assert_eq!(start_times(&limiter, 20).await, millis(&expected));

        // After a quiet spell longer than the interval, the next start is immediate again.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(start_times(&limiter, 2).await, millis(&[0, 100]));
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_spaced() {
        let limiter = StepLimiter::new(StepLimits::NONE.with_rate(Rate::per_second(10).burst(5)));
        assert_eq!(
            start_times(&limiter, 8).await,
            millis(&[0, 0, 0, 0, 0, 100, 200, 300])
        );
        // A quiet spell of 250ms earns back 2.5 starts: 2 at once, then spaced.
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(start_times(&limiter, 4).await, millis(&[0, 0, 50, 150]));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_waiters_are_served_in_order() {
        let limiter = Arc::new(StepLimiter::new(
            StepLimits::NONE.with_rate(Rate::per_second(10)),
        ));
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(async move {
                    let _permit = limiter.acquire().await;
                    t0.elapsed()
                })
            })
            .collect();
        let mut times = Vec::new();
        for task in tasks {
            times.push(task.await.unwrap());
        }
        let expected: Vec<u64> = (0..10).map(|i| i * 100).collect();
        assert_eq!(times, millis(&expected));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_applies_while_holding_the_slot() {
        // One slot, 10/s: each attempt runs 30ms, yet starts stay 100ms apart, and the slot is
        // taken before waiting for the rate.
        let limiter = Arc::new(StepLimiter::new(
            StepLimits::NONE
                .with_concurrency(1)
                .with_rate(Rate::per_second(10)),
        ));
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(async move {
                    let _permit = limiter.acquire().await;
                    let started = t0.elapsed();
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    started
                })
            })
            .collect();
        let mut times = Vec::new();
        for task in tasks {
            times.push(task.await.unwrap());
        }
        assert_eq!(times, millis(&[0, 100, 200, 300, 400]));
        assert_eq!(limiter.available(), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_waiters_leak_nothing() {
        // Waiting for a concurrency slot.
        let limiter = StepLimiter::new(CONCURRENCY_2);
        let a = limiter.acquire().await;
        let b = limiter.acquire().await;
        assert_eq!(limiter.acquire().now_or_never().map(drop), None);
        assert_eq!(
            (limiter.in_flight(), limiter.available()),
            (Some(2), Some(0))
        );
        drop(a);
        assert_eq!(limiter.available(), Some(1));
        let c = limiter.acquire().now_or_never().expect("a slot is free");
        drop((b, c));
        assert_eq!(limiter.available(), Some(2));

        // Waiting for the rate while holding a slot: the slot is released.
        let limiter = StepLimiter::new(
            StepLimits::NONE
                .with_concurrency(1)
                .with_rate(Rate::per_second(1)),
        );
        drop(limiter.acquire().await);
        assert_eq!(limiter.acquire().now_or_never().map(drop), None);
        assert_eq!(limiter.available(), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_rate_waiters_give_their_place_back() {
        let limiter = StepLimiter::new(StepLimits::NONE.with_rate(Rate::per_second(10)));
        let t0 = Instant::now();
        drop(limiter.acquire().await);

        // The last waiter going away...
        assert_eq!(limiter.acquire().now_or_never().map(drop), None);
        // ...and one in the middle of the queue: those behind it move up.
        let mut first = Box::pin(limiter.acquire());
        let mut middle = Box::pin(limiter.acquire());
        let mut last = Box::pin(limiter.acquire());
        for waiter in [&mut first, &mut middle, &mut last] {
            assert!(waiter.now_or_never().is_none());
        }
        drop(middle);
        let _permit = first.await;
        assert_eq!(t0.elapsed(), Duration::from_millis(100));
        let _permit = last.await;
        assert_eq!(t0.elapsed(), Duration::from_millis(200));
        let _permit = limiter.acquire().await;
        assert_eq!(t0.elapsed(), Duration::from_millis(300));
    }

    #[test]
    fn a_start_conforms_within_the_burst_and_no_earlier() {
        let rate = RateQueue::new(Rate::per_second(10).burst(3));
        let t0 = Instant::now() + Duration::from_secs(1);
        let at = |ms| t0 + Duration::from_millis(ms);
        // The first start sets the theoretical arrival time one interval on.
        assert_eq!(rate.conforms(None, t0, false), Ok(at(100)));
        // Up to `tolerance` (200ms) ahead of it conforms, and moves it on by one interval.
        assert_eq!(rate.conforms(Some(at(200)), t0, false), Ok(at(300)));
        assert_eq!(rate.conforms(Some(at(300)), t0, false), Err(at(100)));
        assert_eq!(rate.conforms(Some(at(300)), at(100), true), Ok(at(400)));
        // After a quiet spell, the time of the start counts, not the old theoretical one.
        assert_eq!(rate.conforms(Some(at(300)), at(5000), false), Ok(at(5100)));
    }

    #[test]
    fn a_sleeper_woken_late_keeps_up_to_one_interval_of_its_lateness() {
        let rate = RateQueue::new(Rate::per_second(10));
        let t0 = Instant::now() + Duration::from_secs(1);
        let at = |ms| t0 + Duration::from_millis(ms);
        // Due at 100ms, woken at 101ms: the next is due at 200ms, not 201ms.
        assert_eq!(rate.conforms(Some(at(100)), at(101), true), Ok(at(200)));
        // Woken 50ms late: still counted from when it could have started.
        assert_eq!(rate.conforms(Some(at(100)), at(150), true), Ok(at(200)));
        // Woken 300ms late (the executor stalled): counted from one interval before the start.
        assert_eq!(rate.conforms(Some(at(100)), at(400), true), Ok(at(400)));
        // A start that did not sleep is counted when it happens.
        assert_eq!(rate.conforms(Some(at(100)), at(150), false), Ok(at(250)));
    }

    /// The most of `starts` (sorted) that fall in any closed window `width` long.
    fn most_in_any_window(starts: &[std::time::Instant], width: Duration) -> usize {
        (0..starts.len())
            .map(|i| {
                starts[i..]
                    .iter()
                    .take_while(|t| t.duration_since(starts[i]) <= width)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// On the real clock, a stall of the executor (here a blocking sleep inside one task of a
    /// current-thread runtime) must not release at once every waiter whose time passed during it:
    /// in any window `w`, at most `burst + 1 + w / interval` starts.
    #[test]
    fn a_stalled_executor_does_not_release_a_crowd() {
        const WAITERS: usize = 100;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        // 1000/s burst 5: any window of 5ms holds at most 5 + 1 + 5 starts.
        let limiter = Arc::new(StepLimiter::new(
            StepLimits::NONE.with_rate(Rate::per_second(1000).burst(5)),
        ));
        let starts = Arc::new(Mutex::new(Vec::new()));
        runtime.block_on(async {
            let tasks: Vec<_> = (0..WAITERS)
                .map(|i| {
                    let (limiter, starts) = (limiter.clone(), starts.clone());
                    tokio::spawn(async move {
                        let _permit = limiter.acquire().await;
                        starts.lock().unwrap().push(std::time::Instant::now());
                        if i == 10 {
                            // Blocks the only thread: every timer due meanwhile fires late.
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        });
        let mut starts = starts.lock().unwrap().clone();
        assert_eq!(starts.len(), WAITERS);
        starts.sort();
        // The bound is 11. The slack of 4 absorbs a start measured late because the OS
        // preempted this thread between the start and its measurement; a crowd released after
        // the stall is about 50.
        let most = most_in_any_window(&starts, Duration::from_millis(5));
        assert!(most <= 15, "{most} starts within 5ms, at most 11 allowed");
    }

    /// On the real clock, a waiter in the middle of the queue that goes away gives its place
    /// back: the waiter behind it starts one interval earlier.
    #[test]
    fn a_cancelled_waiter_in_the_middle_gives_its_place_back_on_the_real_clock() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            // 2/s: starts 500ms apart.
            let limiter = StepLimiter::new(StepLimits::NONE.with_rate(Rate::per_second(2)));
            let t0 = std::time::Instant::now();
            drop(limiter.acquire().await);
            let mut first = Box::pin(limiter.acquire());
            let mut middle = Box::pin(limiter.acquire());
            let mut last = Box::pin(limiter.acquire());
            for waiter in [&mut first, &mut middle, &mut last] {
                assert!(waiter.now_or_never().is_none());
            }
            drop(middle);
            let (first, last) = tokio::join!(
                async {
                    drop(first.await);
                    t0.elapsed()
                },
                async {
                    drop(last.await);
                    t0.elapsed()
                },
            );
            // `first` at 500ms, `last` in `middle`'s place at 1s, not 1.5s. The upper bounds
            // leave 400ms for a loaded machine.
            assert!(first >= Duration::from_millis(500), "{first:?}");
            assert!(first < Duration::from_millis(900), "{first:?}");
            assert!(last >= Duration::from_millis(1000), "{last:?}");
            assert!(last < Duration::from_millis(1400), "{last:?}");
        });
    }
}
