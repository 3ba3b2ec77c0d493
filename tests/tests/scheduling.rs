//! Scheduling: steps start the moment their dependencies complete, run concurrently, share
//! their parents' outputs by reference, and respect `after(..)` ordering.

use std::sync::Mutex;
use std::time::Duration;

use jobgraph::job;
use tokio::sync::Barrier;
use tokio::time::{Instant, sleep, timeout};

/// Turns a hang into a failure; with the paused clock it costs no real time.
const HANG: Duration = Duration::from_secs(60);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Records, per step, when it started and ended, relative to `t0`.
struct Timeline {
    t0: Instant,
    events: Mutex<Vec<(&'static str, &'static str, Duration)>>,
}

impl Timeline {
    fn new() -> Self {
        Timeline {
            t0: Instant::now(),
            events: Mutex::new(Vec::new()),
        }
    }

    fn record(&self, step: &'static str, what: &'static str) {
        let at = self.t0.elapsed();
        self.events.lock().unwrap().push((step, what, at));
    }

    fn at(&self, step: &str, what: &str) -> Duration {
        let events = self.events.lock().unwrap();
        let found = events.iter().find(|(s, w, _)| *s == step && *w == what);
        found
            .unwrap_or_else(|| panic!("no `{what}` event for `{step}` in {events:?}"))
            .2
    }

    fn position(&self, step: &str, what: &str) -> usize {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .position(|(s, w, _)| *s == step && *w == what)
            .unwrap_or_else(|| panic!("no `{what}` event for `{step}` in {events:?}"))
    }

    async fn span(&self, step: &'static str, duration: Duration) {
        self.record(step, "start");
        sleep(duration).await;
        self.record(step, "end");
    }
}

/// `root` feeds a slow branch (100ms) and a fast chain (10ms + 10ms); `join` needs both.
///
/// `root` takes 10ms. A level-by-level barrier would start `fast_child` only once `slow` ended
/// (t=110ms) and finish at 120ms; start-when-ready starts it at 20ms and finishes on the critical
/// path, root + slow = 110ms.
struct Uneven {
    timeline: Timeline,
}

#[job]
impl Uneven {
    #[step]
    async fn root(&self) -> u32 {
        self.timeline.span("root", ms(10)).await;
        1
    }

    #[step]
    async fn slow(&self, root: &u32) -> u32 {
        self.timeline.span("slow", ms(100)).await;
        root + 100
    }

    #[step]
    async fn fast(&self, root: &u32) -> u32 {
        self.timeline.span("fast", ms(10)).await;
        root + 10
    }

    #[step]
    async fn fast_child(&self, fast: &u32) -> u32 {
        self.timeline.span("fast_child", ms(10)).await;
        fast + 10
    }

    #[step]
    async fn join(&self, slow: &u32, fast_child: &u32) -> u32 {
        self.timeline.span("join", ms(0)).await;
        slow + fast_child
    }
}

#[tokio::test(start_paused = true)]
async fn a_step_starts_as_soon_as_its_parents_complete() {
    let job = Uneven {
        timeline: Timeline::new(),
    };
    let t0 = job.timeline.t0;
    let out = timeout(HANG, job.run()).await.expect("run hung").unwrap();
    let elapsed = t0.elapsed();

    assert_eq!(
        (out.root, out.slow, out.fast, out.fast_child, out.join),
        (1, 101, 11, 21, 122)
    );
    let tl = &job.timeline;
    assert_eq!(tl.at("root", "start"), ms(0));
    assert_eq!(tl.at("root", "end"), ms(10));
    assert_eq!(tl.at("slow", "start"), ms(10));
    assert_eq!(tl.at("fast", "start"), ms(10));
    assert_eq!(tl.at("fast", "end"), ms(20));
    assert_eq!(
        tl.at("fast_child", "start"),
        ms(20),
        "fast_child must start when fast ends, not when its slow sibling `slow` ends"
    );
    assert_eq!(tl.at("fast_child", "end"), ms(30));
    assert_eq!(tl.at("slow", "end"), ms(110));
    assert_eq!(tl.at("join", "start"), ms(110));
    assert_eq!(elapsed, ms(110), "the run takes exactly the critical path");
}

/// A root that takes time, so that its children's start is observable.
struct Chain {
    timeline: Timeline,
}

#[job]
impl Chain {
    #[step]
    async fn first(&self) -> u8 {
        self.timeline.span("first", ms(10)).await;
        1
    }

    #[step]
    async fn slow_sibling(&self) -> u8 {
        self.timeline.span("slow_sibling", ms(100)).await;
        2
    }

    #[step]
    async fn second(&self, first: &u8) -> u8 {
        self.timeline.span("second", ms(10)).await;
        first + 1
    }

    #[step]
    async fn third(&self, second: &u8) -> u8 {
        self.timeline.span("third", ms(10)).await;
        second + 1
    }
}

#[tokio::test(start_paused = true)]
async fn a_chain_runs_back_to_back_beside_a_slow_sibling() {
    let job = Chain {
        timeline: Timeline::new(),
    };
    let out = timeout(HANG, job.run()).await.expect("run hung").unwrap();
    assert_eq!(
        (out.first, out.second, out.third, out.slow_sibling),
        (1, 2, 3, 2)
    );
    let tl = &job.timeline;
    assert_eq!(tl.at("second", "start"), ms(10));
    assert_eq!(tl.at("third", "start"), ms(20));
    assert_eq!(tl.at("third", "end"), ms(30));
    assert_eq!(tl.at("slow_sibling", "end"), ms(100));
    assert_eq!(tl.t0.elapsed(), ms(100));
}

/// Two independent steps that can only finish if they run at the same time.
struct Rendezvous {
    barrier: Barrier,
}

#[job]
impl Rendezvous {
    #[step]
    async fn left(&self) -> bool {
        self.barrier.wait().await.is_leader()
    }

    #[step]
    async fn right(&self) -> bool {
        self.barrier.wait().await.is_leader()
    }

    #[step]
    async fn both(&self, left: &bool, right: &bool) -> u8 {
        u8::from(*left) + u8::from(*right)
    }
}

#[tokio::test(start_paused = true)]
async fn independent_steps_run_concurrently() {
    let job = Rendezvous {
        barrier: Barrier::new(2),
    };
    let out = timeout(HANG, job.run())
        .await
        .expect("`left` and `right` never met at the barrier: they did not run concurrently")
        .unwrap();
    assert_eq!(
        out.both, 1,
        "exactly one of the two is the barrier's leader"
    );
    assert_ne!(out.left, out.right);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_steps_run_concurrently_on_a_multi_thread_runtime() {
    let job = Rendezvous {
        barrier: Barrier::new(2),
    };
    let out = timeout(HANG, job.run())
        .await
        .expect("`left` and `right` never met at the barrier")
        .unwrap();
    assert_eq!(out.both, 1);
}

/// An output that cannot be cloned: children can only borrow it.
#[derive(Debug, PartialEq)]
struct Unique {
    value: u32,
}

struct Sharing;

#[job]
impl Sharing {
    #[step]
    async fn make(&self) -> Unique {
        Unique { value: 7 }
    }

    #[step]
    async fn left(&self, make: &Unique) -> (usize, u32) {
        (std::ptr::from_ref(make) as usize, make.value * 2)
    }

    #[step]
    async fn right(&self, make: &Unique) -> (usize, u32) {
        // Yield first so that both borrows are alive across a suspension point.
        tokio::task::yield_now().await;
        (std::ptr::from_ref(make) as usize, make.value * 3)
    }
}

#[tokio::test]
async fn children_borrow_the_same_parent_output() {
    let out = Sharing.run().await.unwrap();
    let (left_addr, left) = out.left;
    let (right_addr, right) = out.right;
    assert_eq!((left, right), (14, 21));
    assert_eq!(
        left_addr, right_addr,
        "both children must see the one value the parent produced"
    );
    assert_eq!(out.make, Unique { value: 7 });
}

/// `gate` orders `gated` without passing data; `free` has no dependencies at all.
struct Ordered {
    timeline: Timeline,
}

#[job]
impl Ordered {
    #[step]
    async fn gate(&self) -> u32 {
        self.timeline.span("gate", ms(10)).await;
        42
    }

    #[step]
    async fn free(&self) {
        self.timeline.span("free", ms(0)).await;
    }

    #[step(after(gate))]
    async fn gated(&self) -> &'static str {
        self.timeline.span("gated", ms(0)).await;
        "gated"
    }

    #[step(after(gated, free))]
    async fn last(&self, gate: &u32) -> u32 {
        self.timeline.span("last", ms(0)).await;
        *gate
    }
}

#[tokio::test(start_paused = true)]
async fn after_orders_steps_without_data() {
    let job = Ordered {
        timeline: Timeline::new(),
    };
    let out = timeout(HANG, job.run()).await.expect("run hung").unwrap();
    assert_eq!((out.gate, out.gated, out.last), (42, "gated", 42));
    let tl = &job.timeline;
    assert!(tl.position("gate", "end") < tl.position("gated", "start"));
    assert!(tl.position("gated", "end") < tl.position("last", "start"));
    assert!(tl.position("free", "end") < tl.position("last", "start"));
    assert_eq!(tl.at("free", "start"), ms(0));
    assert_eq!(
        tl.at("gated", "start"),
        ms(10),
        "`gated` starts the moment `gate` completes"
    );
    assert_eq!(tl.t0.elapsed(), ms(10));
}

/// A wide fan-out and fan-in: every step of the middle layer runs at once.
struct Fan {
    timeline: Timeline,
}

#[job]
impl Fan {
    #[step]
    async fn src(&self) -> u64 {
        2
    }
    #[step]
    async fn m1(&self, src: &u64) -> u64 {
        self.timeline.span("m1", ms(40)).await;
        *src
    }
    #[step]
    async fn m2(&self, src: &u64) -> u64 {
        self.timeline.span("m2", ms(30)).await;
        src * 2
    }
    #[step]
    async fn m3(&self, src: &u64) -> u64 {
        self.timeline.span("m3", ms(20)).await;
        src * 3
    }
    #[step]
    async fn m4(&self, src: &u64) -> u64 {
        self.timeline.span("m4", ms(10)).await;
        src * 4
    }
    #[step]
    async fn sink(&self, m1: &u64, m2: &u64, m3: &u64, m4: &u64) -> u64 {
        self.timeline.span("sink", ms(5)).await;
        m1 + m2 + m3 + m4
    }
}

#[tokio::test(start_paused = true)]
async fn fan_out_and_in_takes_the_longest_branch() {
    let job = Fan {
        timeline: Timeline::new(),
    };
    let out = timeout(HANG, job.run()).await.expect("run hung").unwrap();
    assert_eq!(out.sink, 20);
    let tl = &job.timeline;
    for m in ["m1", "m2", "m3", "m4"] {
        assert_eq!(tl.at(m, "start"), ms(0), "{m} starts with the others");
    }
    assert_eq!(tl.at("sink", "start"), ms(40));
    assert_eq!(tl.t0.elapsed(), ms(45));
}
