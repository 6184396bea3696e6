//! The threads searches run on: a fixed number, apart from the async runtime's workers, fed
//! by a bounded queue. A full queue refuses at once ([`Error::SearchesQueued`], 429), so that
//! any number of slow searches leaves the runtime free to answer `/health`, writes and cheap
//! requests, and the node's memory holds a known number of searches.
//!
//! Searches are queued per collection and taken round-robin, and one collection's searches
//! never hold every thread: one is always left for the others. Runaway searches against one
//! collection therefore slow only that collection.
//!
//! Each job carries its [`SearchBudget`]: one that is cancelled or out of time when a thread
//! takes it is answered without running, and stopping the pool cancels every search in flight.
//!
//! Handing a search to a thread and its answer back costs two cross-thread wake-ups, which
//! on a small machine cost as much CPU as a cheap search itself. So [`SearchPool::start`]
//! first runs a search on the calling thread within a short slice, when the searches of its
//! collection recently took well under that slice and an inline slot is free. A search the
//! slice cuts short is dropped (searches have no side effects) and queued with its whole
//! budget. The calling async worker is thus held at most one slice, and at most
//! `inline slots` workers at once: the rest stay free for `/health` and writes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

use super::budget::{SearchBudget, SearchLimits};
use crate::error::{Error, Result};

type Job = Box<dyn FnOnce() + Send>;

/// Which queued search runs next. Pure: the pool's threads hold it under a lock.
#[derive(Default)]
struct Schedule {
    /// Waiting searches by collection.
    queued: HashMap<String, VecDeque<Job>>,
    /// Collections with waiting searches, in the order they are served.
    turns: VecDeque<String>,
    /// Running searches by collection.
    running: HashMap<String, usize>,
    waiting: usize,
    stopped: bool,
}

impl Schedule {
    fn push(&mut self, key: &str, job: Job) {
        let queue = self.queued.entry(key.to_string()).or_default();
        if queue.is_empty() {
            self.turns.push_back(key.to_string());
        }
        queue.push_back(job);
        self.waiting += 1;
    }

    /// The next search of the first collection in turn that runs fewer than `per_key`.
    fn next(&mut self, per_key: usize) -> Option<(String, Job)> {
        let position = self
            .turns
            .iter()
            .position(|key| self.running.get(key).copied().unwrap_or(0) < per_key)?;
        let key = self.turns.remove(position)?;
        let queue = self.queued.get_mut(&key)?;
        let job = queue.pop_front()?;
        if queue.is_empty() {
            self.queued.remove(&key);
        } else {
            self.turns.push_back(key.clone());
        }
        self.waiting -= 1;
        *self.running.entry(key.clone()).or_default() += 1;
        Some((key, job))
    }

    fn finished(&mut self, key: &str) {
        if let Some(n) = self.running.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.running.remove(key);
            }
        }
    }
}

struct Shared {
    schedule: Mutex<Schedule>,
    ready: Condvar,
}

/// Whether a collection's recent searches are short enough to try the next one inline:
/// they took under half the slice on average, or none has run yet.
fn worth_running_inline(recent: Option<Duration>, slice: Duration) -> bool {
    !slice.is_zero() && recent.is_none_or(|recent| recent < slice / 2)
}

/// The average time of a collection's recent searches (inline or on the pool), weighing the
/// latest by a quarter.
#[derive(Default)]
struct RecentCosts {
    by_key: HashMap<String, Duration>,
}

/// Collections remembered at most; past it the memory starts afresh (deleted collections
/// leave their names behind).
const MOST_REMEMBERED_COLLECTIONS: usize = 4096;

impl RecentCosts {
    fn get(&self, key: &str) -> Option<Duration> {
        self.by_key.get(key).copied()
    }

    fn record(&mut self, key: &str, took: Duration) {
        if let Some(average) = self.by_key.get_mut(key) {
            *average = (*average * 3 + took) / 4;
            return;
        }
        if self.by_key.len() >= MOST_REMEMBERED_COLLECTIONS {
            self.by_key.clear();
        }
        self.by_key.insert(key.to_string(), took);
    }
}

/// How searches may run on the calling thread before they go to the pool.
struct Inline {
    /// The longest an inline attempt runs; zero never runs one.
    slice: Duration,
    /// Most inline attempts at once.
    slots: usize,
    running: AtomicUsize,
    costs: Mutex<RecentCosts>,
    answered: AtomicU64,
    moved: AtomicU64,
}

/// An inline slot, given back when dropped (also when the search panics).
struct InlineSlot<'a>(&'a AtomicUsize);

impl Drop for InlineSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a started search is.
pub enum Started<T> {
    /// It ran on the calling thread; here is its answer.
    Answered(Result<T>),
    /// It waits for or runs on a search thread; the receiver gets its answer, and an error
    /// when it panicked.
    Queued(oneshot::Receiver<Result<T>>),
}

/// A bounded pool of search threads.
pub struct SearchPool {
    shared: Arc<Shared>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    threads: usize,
    capacity: usize,
    stopping: Arc<AtomicBool>,
    limits: SearchLimits,
    inline: Arc<Inline>,
}

impl SearchPool {
    /// Starts `threads` search threads (at least two: one is always left for collections
    /// other than the busiest) with room for `queue` waiting searches.
    pub fn new(threads: usize, queue: usize, limits: SearchLimits) -> std::io::Result<Self> {
        let threads = threads.max(2);
        let per_key = threads - 1;
        let shared = Arc::new(Shared {
            schedule: Mutex::new(Schedule::default()),
            ready: Condvar::new(),
        });
        let mut workers = Vec::with_capacity(threads);
        for n in 0..threads {
            let shared = shared.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("prism-search-{n}"))
                    .spawn(move || {
                        yield_to_other_work();
                        work(&shared, per_key)
                    })?,
            );
        }
        Ok(SearchPool {
            shared,
            workers: Mutex::new(workers),
            threads,
            capacity: queue,
            stopping: Arc::new(AtomicBool::new(false)),
            limits,
            inline: Arc::new(Inline {
                slice: Duration::ZERO,
                slots: 0,
                running: AtomicUsize::new(0),
                costs: Mutex::default(),
                answered: AtomicU64::new(0),
                moved: AtomicU64::new(0),
            }),
        })
    }

    /// Lets [`SearchPool::start`] run up to `slots` searches at once on their callers'
    /// threads, each for at most `slice` (zero: never).
    pub fn with_inline(mut self, slots: usize, slice: Duration) -> Self {
        self.inline = Arc::new(Inline {
            slice,
            slots,
            running: AtomicUsize::new(0),
            costs: Mutex::default(),
            answered: AtomicU64::new(0),
            moved: AtomicU64::new(0),
        });
        self
    }

    /// Searches answered on their caller's thread, and searches an inline slice cut short
    /// that went to the pool, since the start.
    pub fn inline_counts(&self) -> (u64, u64) {
        (
            self.inline.answered.load(Ordering::Relaxed),
            self.inline.moved.load(Ordering::Relaxed),
        )
    }

    /// The node-wide search settings.
    pub fn limits(&self) -> &SearchLimits {
        &self.limits
    }

    /// The number of search threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// A budget for a search that asked for `timeout` (or for the default), ended early if
    /// the pool stops.
    pub fn budget(&self, timeout: Option<Duration>) -> Result<Arc<SearchBudget>> {
        let timeout = self.limits.timeout(timeout)?;
        Ok(Arc::new(
            SearchBudget::new(&self.limits, timeout).stopped_by(self.stopping.clone()),
        ))
    }

    /// Searches waiting for a thread.
    pub fn queued(&self) -> usize {
        self.shared.schedule.lock().waiting
    }

    /// Searches running now, on the pool and inline.
    pub fn running(&self) -> usize {
        let pooled: usize = self.shared.schedule.lock().running.values().sum();
        pooled + self.inline.running.load(Ordering::Relaxed)
    }

    /// Runs `work` against collection `key`: on this thread within the inline slice when
    /// that is worth trying (the module's documentation says when), else, or when the slice
    /// cut it short, on the pool as [`SearchPool::submit`] does.
    pub fn start<T: Send + 'static>(
        &self,
        key: &str,
        budget: Arc<SearchBudget>,
        work: impl Fn(&Arc<SearchBudget>) -> Result<T> + Send + 'static,
    ) -> Result<Started<T>> {
        if let Some(slot) = self.inline_slot(key) {
            let slice = Arc::new(budget.sliced(self.inline.slice));
            let started = Instant::now();
            let answer = work(&slice);
            drop(slot);
            self.inline.costs.lock().record(key, started.elapsed());
            // Cut short by the slice, with time left for a whole run: run it again on the
            // pool. With less left than a slice, the partial answer is the better one.
            let cut_short = slice.timed_out()
                && !budget.exhausted()
                && budget
                    .remaining()
                    .is_none_or(|left| left > self.inline.slice);
            if !cut_short {
                self.inline.answered.fetch_add(1, Ordering::Relaxed);
                return Ok(Started::Answered(answer));
            }
            self.inline.moved.fetch_add(1, Ordering::Relaxed);
        }
        self.submit(key, budget, work).map(Started::Queued)
    }

    /// An inline slot for a search of `key`, when one is free, nothing waits for the pool
    /// (a queued search goes first) and `key`'s recent searches were short.
    fn inline_slot(&self, key: &str) -> Option<InlineSlot<'_>> {
        let inline = &*self.inline;
        if !worth_running_inline(inline.costs.lock().get(key), inline.slice) {
            return None;
        }
        if self.shared.schedule.lock().waiting > 0 {
            return None;
        }
        inline
            .running
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < inline.slots).then_some(n + 1)
            })
            .ok()
            .map(|_| InlineSlot(&inline.running))
    }

    /// Queues `work` against collection `key` with its budget; the receiver gets its answer.
    /// Refused at once when the queue is full or the pool has stopped.
    pub fn submit<T: Send + 'static>(
        &self,
        key: &str,
        budget: Arc<SearchBudget>,
        work: impl FnOnce(&Arc<SearchBudget>) -> Result<T> + Send + 'static,
    ) -> Result<oneshot::Receiver<Result<T>>> {
        let (reply, answer) = oneshot::channel();
        let queued_at = Instant::now();
        let inline = self.inline.clone();
        let collection = key.to_string();
        let job: Job = Box::new(move || {
            if budget.is_cancelled() {
                let _ = reply.send(Err(Error::Cancelled));
                return;
            }
            if budget.exhausted() {
                let _ = reply.send(Err(Error::SearchTimedOut {
                    waited_ms: queued_at.elapsed().as_millis() as u64,
                }));
                return;
            }
            // A panic is a bug in one search: the thread lives on, and the dropped `reply`
            // tells the caller the search failed.
            let started = Instant::now();
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&budget)));
            if !inline.slice.is_zero() {
                inline.costs.lock().record(&collection, started.elapsed());
            }
            if let Ok(result) = ran {
                let _ = reply.send(result);
            } else {
                tracing::error!("a search panicked; its client gets an internal error");
            }
        });
        let mut schedule = self.shared.schedule.lock();
        if schedule.stopped {
            return Err(Error::ShuttingDown);
        }
        if schedule.waiting >= self.capacity {
            return Err(Error::SearchesQueued {
                queued: schedule.waiting,
                threads: self.threads,
            });
        }
        schedule.push(key, job);
        drop(schedule);
        self.shared.ready.notify_one();
        Ok(answer)
    }

    /// Cancels every search queued or running, refuses new ones, and lets the threads end
    /// once their current search notices (at its next budget check).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.shared.schedule.lock().stopped = true;
        self.shared.ready.notify_all();
    }

    /// Stops the pool and waits up to `grace` for its threads to end.
    pub fn stop_and_join(&self, grace: Duration) {
        self.stop();
        let deadline = Instant::now() + grace;
        let workers = std::mem::take(&mut *self.workers.lock());
        for worker in workers {
            while !worker.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if worker.is_finished() {
                let _ = worker.join();
            }
        }
    }
}

/// How much lower than the rest of the node search threads are scheduled (`nice`): when
/// searches keep every core busy, the writer, the async workers answering `/health` and
/// consensus traffic still run first; alone, searches use every core all the same.
const SEARCH_THREAD_NICENESS: i32 = 10;

/// Lowers this thread's scheduling priority to [`SEARCH_THREAD_NICENESS`] (Linux schedules
/// threads one by one; raising one's own niceness needs no privilege).
fn yield_to_other_work() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take no pointers; failing leaves the priority as is.
        let failed = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, SEARCH_THREAD_NICENESS) != 0
        };
        if failed {
            tracing::warn!("cannot lower the priority of a search thread; searches compete with writes and health checks as equals");
        }
    }
}

/// One search thread: takes the next search allowed to run, until the pool stops and its
/// queue is drained (queued searches then answer `Cancelled` at once).
fn work(shared: &Shared, per_key: usize) {
    let mut schedule = shared.schedule.lock();
    loop {
        if let Some((key, job)) = schedule.next(per_key) {
            drop(schedule);
            job();
            schedule = shared.schedule.lock();
            schedule.finished(&key);
            // A collection under its cap again may have work another thread skipped; without
            // waiting work, waking a thread would cost two context switches for nothing.
            if schedule.waiting > 0 {
                shared.ready.notify_one();
            }
            continue;
        }
        if schedule.stopped && schedule.waiting == 0 {
            return;
        }
        shared.ready.wait(&mut schedule);
    }
}

impl Drop for SearchPool {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(threads: usize, queue: usize) -> SearchPool {
        SearchPool::new(threads, queue, SearchLimits::default()).unwrap()
    }

    /// Runs until its budget is exhausted, checking it as a search does.
    fn spin(budget: &Arc<SearchBudget>) -> Result<bool> {
        while !budget.exhausted() {
            std::thread::sleep(Duration::from_millis(1));
        }
        budget.check_cancelled()?;
        Ok(budget.timed_out())
    }

    fn wait_for(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_full_queue_refuses_at_once_and_stopping_cancels_everything() {
        let pool = pool(2, 1);
        // Two threads, one of which a single collection may use.
        let running = pool.submit("a", pool.budget(None).unwrap(), spin).unwrap();
        wait_for("the first search runs", || pool.running() == 1);
        let queued = pool.submit("a", pool.budget(None).unwrap(), spin).unwrap();
        let refused = pool.submit("b", pool.budget(None).unwrap(), spin);
        assert!(
            matches!(
                refused,
                Err(Error::SearchesQueued {
                    queued: 1,
                    threads: 2
                })
            ),
            "{refused:?}"
        );
        pool.stop_and_join(Duration::from_secs(5));
        assert!(matches!(
            running.blocking_recv().unwrap(),
            Err(Error::Cancelled)
        ));
        assert!(matches!(
            queued.blocking_recv().unwrap(),
            Err(Error::Cancelled)
        ));
        assert!(matches!(
            pool.submit("a", pool.budget(None).unwrap(), spin),
            Err(Error::ShuttingDown)
        ));
    }

    #[test]
    fn one_collection_never_holds_every_thread() {
        let pool = pool(3, 16);
        let runaway: Vec<_> = (0..6)
            .map(|_| {
                pool.submit("slow", pool.budget(None).unwrap(), spin)
                    .unwrap()
            })
            .collect();
        wait_for("two runaway searches run", || pool.running() == 2);
        let started = Instant::now();
        let other = pool
            .submit("other", pool.budget(None).unwrap(), |_| Ok(1))
            .unwrap();
        assert_eq!(other.blocking_recv().unwrap().unwrap(), 1);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        wait_for("the other search to be counted finished", || {
            pool.running() == 2
        });
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            pool.running(),
            2,
            "the runaway searches never got the third thread"
        );
        pool.stop_and_join(Duration::from_secs(5));
        for answer in runaway {
            assert!(matches!(
                answer.blocking_recv().unwrap(),
                Err(Error::Cancelled)
            ));
        }
    }

    #[test]
    fn a_deadline_ends_a_running_search_and_one_passed_in_the_queue_never_starts() {
        let pool = pool(2, 4);
        let first = pool
            .submit(
                "a",
                pool.budget(Some(Duration::from_millis(50))).unwrap(),
                spin,
            )
            .unwrap();
        wait_for("the first search runs", || pool.running() == 1);
        let second = pool
            .submit(
                "a",
                pool.budget(Some(Duration::from_millis(10))).unwrap(),
                |_| Ok(true),
            )
            .unwrap();
        assert!(first.blocking_recv().unwrap().unwrap(), "timed out");
        assert!(matches!(
            second.blocking_recv().unwrap(),
            Err(Error::SearchTimedOut { .. })
        ));
    }

    #[test]
    fn a_cancelled_search_stops_and_a_panic_spares_the_thread() {
        let pool = pool(2, 4);
        let budget = pool.budget(None).unwrap();
        let answer = pool.submit("a", budget.clone(), spin).unwrap();
        budget.cancel();
        assert!(matches!(
            answer.blocking_recv().unwrap(),
            Err(Error::Cancelled)
        ));
        for _ in 0..3 {
            let panicked = pool
                .submit("a", pool.budget(None).unwrap(), |_| -> Result<()> {
                    panic!("a bug in one search")
                })
                .unwrap();
            assert!(panicked.blocking_recv().is_err());
        }
        let after = pool
            .submit("a", pool.budget(None).unwrap(), |_| Ok(7))
            .unwrap();
        assert_eq!(after.blocking_recv().unwrap().unwrap(), 7);
    }

    fn inline_pool(slice_ms: u64) -> SearchPool {
        pool(2, 8).with_inline(1, Duration::from_millis(slice_ms))
    }

    /// Runs `took` (or until its budget is spent) and says whether it was cut short.
    fn search_taking(took: Duration) -> impl Fn(&Arc<SearchBudget>) -> Result<bool> {
        move |budget| {
            let started = Instant::now();
            while started.elapsed() < took {
                if budget.exhausted() {
                    return Ok(true);
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            Ok(false)
        }
    }

    /// Starts a search of `key` that takes `took`, with the default budget, and waits for
    /// it: whether it answered inline, and whether it was cut short.
    fn search(pool: &SearchPool, key: &str, took: Duration) -> (bool, Result<bool>) {
        answer(
            pool.start(key, pool.budget(None).unwrap(), search_taking(took))
                .unwrap(),
        )
    }

    fn answer<T>(started: Started<T>) -> (bool, Result<T>) {
        match started {
            Started::Answered(answer) => (true, answer),
            Started::Queued(answer) => (false, answer.blocking_recv().unwrap()),
        }
    }

    #[test]
    fn inline_is_tried_only_for_collections_whose_searches_are_short() {
        let slice = Duration::from_millis(2);
        assert!(worth_running_inline(None, slice));
        assert!(worth_running_inline(
            Some(Duration::from_micros(900)),
            slice
        ));
        assert!(!worth_running_inline(Some(Duration::from_millis(1)), slice));
        assert!(!worth_running_inline(None, Duration::ZERO));
        let mut costs = RecentCosts::default();
        costs.record("a", Duration::from_millis(8));
        costs.record("a", Duration::ZERO);
        assert_eq!(costs.get("a"), Some(Duration::from_millis(6)));
        assert_eq!(costs.get("b"), None);
    }

    #[test]
    fn a_short_search_answers_inline_and_a_long_one_moves_whole_to_the_pool() {
        let pool = inline_pool(20);
        let (inline, cut) = search(&pool, "a", Duration::ZERO);
        assert!(inline);
        assert!(!cut.unwrap());
        // Longer than the slice: cut short inline, then run again with its whole budget.
        let (inline, cut) = search(&pool, "a", Duration::from_millis(60));
        assert!(!inline, "the slice cut it short");
        assert!(!cut.unwrap(), "the pool ran it to its end");
        assert_eq!(pool.inline_counts(), (1, 1));
        // Collection a's searches are long now: the next goes straight to the pool.
        let (inline, _) = search(&pool, "a", Duration::ZERO);
        assert!(!inline);
        assert_eq!(pool.inline_counts(), (1, 1));
        // Another collection still runs inline.
        let (inline, _) = search(&pool, "b", Duration::ZERO);
        assert!(inline);
    }

    #[test]
    fn a_deadline_shorter_than_the_slice_answers_timed_out_inline() {
        let pool = inline_pool(200);
        let (inline, cut) = answer(
            pool.start(
                "a",
                pool.budget(Some(Duration::from_millis(10))).unwrap(),
                search_taking(Duration::from_secs(5)),
            )
            .unwrap(),
        );
        assert!(inline, "nothing is gained by running it again");
        assert!(cut.unwrap());
    }

    #[test]
    fn inline_slots_are_bounded_and_given_back_after_a_panic() {
        let pool = Arc::new(inline_pool(1000));
        let busy = {
            let pool = pool.clone();
            std::thread::spawn(move || search(&pool, "a", Duration::from_millis(300)).0)
        };
        wait_for("the first search holds the slot", || pool.running() == 1);
        let (inline, _) = search(&pool, "b", Duration::ZERO);
        assert!(!inline, "the only slot was taken");
        assert!(busy.join().unwrap());
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.start("c", pool.budget(None).unwrap(), |_| -> Result<()> {
                panic!("a bug in one search")
            })
        }));
        assert!(panicked.is_err());
        let (inline, _) = search(&pool, "d", Duration::ZERO);
        assert!(inline, "the panicked search gave its slot back");
    }
}
