//! openraft on top of Prism's storage seams. Everything that names an openraft type lives
//! under this module, so that a move to openraft 0.10 (which rewrites the storage and network
//! traits) stays inside it.

pub mod groups;
pub mod liveness;
pub mod log_store;
pub mod metadata_group;
pub mod network;
pub mod proposal;
pub mod quiescence;
pub mod snapshot;
pub mod state_machine;
pub mod types;

/// Runs blocking work (file I/O, fsyncs, joins) off the async workers. On a current-thread
/// runtime (the simulation's) there are no workers to protect, and running it in place keeps a
/// seeded run deterministic: a blocking thread would finish at a moment no seed decides.
pub(crate) async fn off_workers<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::CurrentThread
    {
        return work();
    }
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Only a runtime that shuts down cancels blocking work; this task will not be
            // polled again.
            Err(_) => std::future::pending().await,
        },
    }
}

/// Drops `value` off the async workers (dropping a snapshot handle may remove a directory).
pub(crate) fn drop_off_workers<T: Send + 'static>(value: T) {
    if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::CurrentThread
    {
        drop(value);
    } else {
        tokio::task::spawn_blocking(move || drop(value));
    }
}

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod simulation;
#[cfg(test)]
mod tests;
