//! The HTTP accept loop, and what bounds the connections it holds:
//! - a connection that sends nothing before its first request is closed after
//!   `header_read_timeout` (hyper's own header timeout starts only at the first byte);
//! - a connection with no request in flight that stays silent for `idle_timeout` is closed;
//! - at `max_connections`, the connection idle the longest is closed to make room, so that a
//!   client holding many silent sockets cannot lock others out; when every connection has a
//!   request in flight, the new one is refused with a 503 and closed.
//!
//! Shutdown stops accepting and lets requests in flight finish.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Longest shutdown waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Open files kept for the node itself beside its connections: logs, index files being
/// written, the listener, peers.
const FILES_KEPT_FROM_CONNECTIONS: u64 = 256;

/// The most connections a default allows, whatever the open-file limit.
const DEFAULT_MAX_CONNECTIONS: u64 = 10_000;

/// How long a client may keep connections, and how many.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Longest a client may take to send a request's headers, and its first request.
    pub header_read_timeout: Duration,
    /// Longest a connection with no request in flight may stay silent.
    pub idle_timeout: Duration,
    /// Most open connections.
    pub max_connections: usize,
}

/// `server.max_connections` checked against the open-file limit, or its default: a quarter
/// of the limit (collections need the rest), at most 10,000.
pub fn max_connections(open_files: u64, configured: Option<usize>) -> Result<usize, String> {
    let ceiling = open_files.saturating_sub(FILES_KEPT_FROM_CONNECTIONS);
    match configured {
        Some(n) if n as u64 > ceiling => Err(format!(
            "server.max_connections = {n} leaves no headroom below the open-file limit of {open_files} (ulimit -n): set it to at most {ceiling}, or raise the limit"
        )),
        Some(n) => Ok(n.max(1)),
        None => Ok((open_files / 4).min(DEFAULT_MAX_CONNECTIONS).min(ceiling).max(1) as usize),
    }
}

/// Which connection to close to make room for a new one: the one idle the longest, among
/// those with no request in flight. None when every connection is busy.
fn longest_idle(connections: impl Iterator<Item = (u64, usize, u64)>) -> Option<u64> {
    connections
        .filter(|(_, in_flight, _)| *in_flight == 0)
        .min_by_key(|(id, _, last_active)| (*last_active, *id))
        .map(|(id, _, _)| id)
}

/// What the accept loop knows of one connection.
struct Activity {
    /// Requests being served.
    in_flight: AtomicUsize,
    /// Milliseconds since the server started, at the last byte read or response finished.
    last_active_ms: AtomicU64,
    /// Whether a request has arrived yet.
    served: AtomicBool,
    /// Closes the connection when notified.
    close: Notify,
}

impl Activity {
    fn touch(&self, clock: &Instant) {
        self.last_active_ms
            .store(clock.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// The open connections, for eviction and for `/metrics`.
#[derive(Default)]
struct Connections {
    open: Mutex<HashMap<u64, Arc<Activity>>>,
}

impl Connections {
    fn len(&self) -> usize {
        self.open.lock().len()
    }

    /// Closes the connection idle the longest; false when none is idle.
    fn evict_one(&self) -> bool {
        let open = self.open.lock();
        let chosen = longest_idle(open.iter().map(|(id, a)| {
            (
                *id,
                a.in_flight.load(Ordering::Relaxed),
                a.last_active_ms.load(Ordering::Relaxed),
            )
        }));
        match chosen.and_then(|id| open.get(&id)) {
            Some(activity) => {
                // Counted busy until it closes, so a burst of accepts evicts distinct ones.
                activity.in_flight.fetch_add(1, Ordering::Relaxed);
                activity.close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Open client connections, for `/metrics`.
pub fn open_connections() -> usize {
    OPEN.load(Ordering::Relaxed)
}

static OPEN: AtomicUsize = AtomicUsize::new(0);

/// Serves `app` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let clock = Instant::now();
    let connections = Arc::new(Connections::default());
    let mut next_id = 0u64;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors, most likely: make room, and back off
                        // instead of spinning.
                        tracing::warn!(error = %e, open = connections.len(), "accepting a connection failed");
                        connections.evict_one();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if connections.len() >= limits.max_connections && !connections.evict_one() {
                    refuse(stream, limits.max_connections);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                next_id += 1;
                let id = next_id;
                let activity = Arc::new(Activity {
                    in_flight: AtomicUsize::new(0),
                    last_active_ms: AtomicU64::new(0),
                    served: AtomicBool::new(false),
                    close: Notify::new(),
                });
                activity.touch(&clock);
                connections.open.lock().insert(id, activity.clone());
                OPEN.fetch_add(1, Ordering::Relaxed);
                let service = Tracked {
                    inner: TowerToHyperService::new(app.clone()),
                    activity: activity.clone(),
                    clock,
                };
                let io = TrackedIo { inner: stream, activity: activity.clone(), clock };
                let connection = builder
                    .serve_connection_with_upgrades(TokioIo::new(io), service)
                    .into_owned();
                let connection = graceful.watch(connection);
                let connections = connections.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        result = connection => {
                            if let Err(e) = result {
                                tracing::debug!(error = %e, "connection ended with an error");
                            }
                        }
                        reason = watch_idle(&activity, limits, clock) => {
                            tracing::debug!(reason, "closing an idle connection");
                        }
                        _ = activity.close.notified() => {
                            tracing::debug!("closing the connection idle the longest: at server.max_connections");
                        }
                    }
                    connections.open.lock().remove(&id);
                    OPEN.fetch_sub(1, Ordering::Relaxed);
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; closing them");
    }
}

/// Ends when the connection has been silent too long with no request in flight.
async fn watch_idle(activity: &Activity, limits: ConnectionLimits, clock: Instant) -> &'static str {
    loop {
        let (allowed, reason) = if activity.served.load(Ordering::Relaxed) {
            (limits.idle_timeout, "idle past server.idle_timeout_ms")
        } else {
            (
                limits.header_read_timeout,
                "no request within server.header_read_timeout_ms",
            )
        };
        let now = clock.elapsed().as_millis() as u64;
        let silent = now.saturating_sub(activity.last_active_ms.load(Ordering::Relaxed));
        let allowed_ms = allowed.as_millis() as u64;
        if activity.in_flight.load(Ordering::Relaxed) == 0 && silent >= allowed_ms {
            return reason;
        }
        let wait = if silent >= allowed_ms {
            allowed_ms
        } else {
            allowed_ms - silent
        };
        tokio::time::sleep(Duration::from_millis(wait.max(10))).await;
    }
}

/// Answers a connection over the limit with a 503 it can read, then closes it.
fn refuse(stream: TcpStream, max: usize) {
    let body = format!(
        "{{\"error\":{{\"code\":\"too_many_connections\",\"message\":\"this node holds its maximum of {max} connections (server.max_connections), each with a request in flight; retry shortly\"}}}}"
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // Best effort: a socket buffer takes this at once, and nothing waits on a slow client.
    let _ = stream.try_write(response.as_bytes());
}

/// The service of one connection, counting its requests in flight.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    clock: Instant,
}

/// One request in flight on a connection; finishing it marks the connection active.
struct InFlight {
    activity: Arc<Activity>,
    clock: Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.touch(&self.clock);
        self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S, R> hyper::service::Service<R> for Tracked<S>
where
    S: hyper::service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn call(&self, request: R) -> Self::Future {
        self.activity.in_flight.fetch_add(1, Ordering::Relaxed);
        self.activity.served.store(true, Ordering::Relaxed);
        let in_flight = InFlight {
            activity: self.activity.clone(),
            clock: self.clock,
        };
        let answer = self.inner.call(request);
        Box::pin(async move {
            let result = answer.await;
            drop(in_flight);
            result
        })
    }
}

/// A client socket that records when it last received or sent bytes.
struct TrackedIo {
    inner: TcpStream,
    activity: Arc<Activity>,
    clock: Instant,
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch(&this.clock);
        }
        result
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            // A response still being written to a slow reader is not idle.
            this.activity.touch(&this.clock);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch(&this.clock);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_connections_keeps_headroom_below_the_open_file_limit() {
        assert_eq!(max_connections(1024, None), Ok(256));
        assert_eq!(max_connections(1 << 20, None), Ok(10_000));
        assert_eq!(max_connections(1024, Some(500)), Ok(500));
        let refused = max_connections(1024, Some(1000)).unwrap_err();
        assert!(refused.contains("at most 768"), "{refused}");
    }

    #[test]
    fn the_connection_idle_longest_makes_room_and_busy_ones_never_do() {
        // (id, requests in flight, last active)
        assert_eq!(
            longest_idle([(1, 0, 50), (2, 0, 10), (3, 1, 0)].into_iter()),
            Some(2)
        );
        assert_eq!(longest_idle([(1, 2, 50), (3, 1, 0)].into_iter()), None);
        assert_eq!(longest_idle(std::iter::empty()), None);
    }
}
