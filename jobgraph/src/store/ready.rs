//! Readiness news: what wakes an idle worker ([`Queue::wait_ready`](super::queue::Queue::wait_ready))
//! before its poll interval ends. PostgreSQL hears it from `NOTIFY` (any process); SQLite from
//! the store's own commits (the processes that share the store's handle).
//!
//! Each piece of news has a generation. A claim of some jobs notes the generation it began at;
//! a wait for those jobs returns once news of one of them came after its latest claim began.
//! So news that arrives between a claim and the wait that follows it is not lost: the claim
//! may not have seen the step it announces.

#[cfg(feature = "sqlite")]
use std::sync::Mutex;
use std::time::Duration;

use foldhash::HashMap;
use tokio::sync::watch;

/// What was heard: a generation per piece of news, and the latest of each job's.
#[derive(Debug, Default)]
pub(super) struct News {
    generation: u64,
    /// The generation at which news of any job may have come (or been lost).
    any: u64,
    jobs: HashMap<String, u64>,
}

impl News {
    /// The latest generation.
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// One more piece of news: of `job`, or of anything (`None`).
    pub(super) fn heard(&mut self, job: Option<&str>) {
        self.generation += 1;
        let generation = self.generation;
        match job {
            None => self.any = generation,
            Some(job) => match self.jobs.get_mut(job) {
                Some(latest) => *latest = generation,
                None => {
                    self.jobs.insert(job.to_owned(), generation);
                }
            },
        }
    }

    /// Whether news of `job` came after generation `since`.
    fn fresh(&self, job: &str, since: u64) -> bool {
        self.any > since || self.jobs.get(job).is_some_and(|&g| g > since)
    }
}

/// Per job: the news' generation when its latest claim began.
#[derive(Debug, Default)]
pub(super) struct Claimed(HashMap<String, u64>);

impl Claimed {
    /// A claim of `jobs` begins at `generation`.
    pub(super) fn note(&mut self, jobs: &[&str], generation: u64) {
        for job in jobs {
            match self.0.get_mut(*job) {
                Some(since) => *since = generation,
                None => {
                    self.0.insert((*job).to_owned(), generation);
                }
            }
        }
    }

    /// When the latest claim of each of `jobs` began; `None` if one was never claimed (since
    /// the news started: [`clear`](Claimed::clear)).
    pub(super) fn since(&self, jobs: &[&str]) -> Option<Vec<u64>> {
        jobs.iter().map(|j| self.0.get(*j).copied()).collect()
    }

    /// The news starts again from generation 0.
    #[cfg(feature = "postgres")]
    pub(super) fn clear(&mut self) {
        self.0.clear();
    }
}

/// `timeout` from now: a poll interval too long to add (`Duration::MAX`) is about forever, 30
/// years.
pub(super) fn deadline(timeout: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400))
}

/// Waits until `news` says something of `jobs` came after `since` (each job's latest claim),
/// or `deadline`. `false` if the news stopped first (its sender was dropped).
pub(super) async fn news_of(
    news: &mut watch::Receiver<News>,
    jobs: &[&str],
    since: &[u64],
    deadline: tokio::time::Instant,
) -> bool {
    let fresh = |news: &News| jobs.iter().zip(since).any(|(j, &s)| news.fresh(j, s));
    !matches!(
        tokio::time::timeout_at(deadline, news.wait_for(fresh)).await,
        Ok(Err(_))
    )
}

/// News a store hears from its own commits (SQLite, which has no `NOTIFY`): shared by the
/// store's clones, so a submit or a commit wakes the idle workers of the same process at once;
/// workers in other processes poll.
#[cfg(feature = "sqlite")]
#[derive(Debug)]
pub(super) struct Local {
    news: watch::Sender<News>,
    claimed: Mutex<Claimed>,
}

#[cfg(feature = "sqlite")]
impl Default for Local {
    fn default() -> Self {
        Local {
            news: watch::Sender::new(News::default()),
            claimed: Mutex::default(),
        }
    }
}

#[cfg(feature = "sqlite")]
impl Local {
    /// A commit made a step of `job` ready (`None`: of any job, or maybe ready).
    pub(super) fn heard(&self, job: Option<&str>) {
        self.news.send_modify(|news| news.heard(job));
    }

    /// A claim of `jobs` begins: what it finds ready is as of now.
    pub(super) fn claiming(&self, jobs: &[&str]) {
        let generation = self.news.borrow().generation();
        self.lock().note(jobs, generation);
    }

    /// [`Queue::wait_ready`](super::queue::Queue::wait_ready): until news of `jobs` came after
    /// their latest claims began, or `timeout`; at once for a job not claimed yet.
    pub(super) async fn wait(&self, jobs: &[&str], timeout: Duration) {
        let deadline = deadline(timeout);
        let Some(since) = self.lock().since(jobs) else {
            return;
        };
        // The sender lives as long as `self`: the news does not stop while this waits.
        news_of(&mut self.news.subscribe(), jobs, &since, deadline).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Claimed> {
        self.claimed.lock().unwrap_or_else(|e| e.into_inner())
    }
}
