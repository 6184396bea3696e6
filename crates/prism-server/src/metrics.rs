//! Prometheus metrics: per-route request counts and latency histograms, documents indexed,
//! and per-collection sizes sampled at scrape time.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS: &str = "prism_http_requests_total";
pub const REQUEST_SECONDS: &str = "prism_http_request_duration_seconds";
pub const DOCS_INDEXED: &str = "prism_documents_indexed_total";
pub const DOCS_DELETED: &str = "prism_documents_deleted_total";
pub const COLLECTION_DOCS: &str = "prism_collection_documents";
pub const COLLECTION_BYTES: &str = "prism_collection_size_bytes";
/// Searches that reached their deadline and answered `timed_out: true`.
pub const SEARCHES_TIMED_OUT: &str = "prism_search_timed_out_total";
/// Searches waiting for a search thread, and running, sampled at scrape time.
pub const SEARCHES_QUEUED: &str = "prism_search_queued";
pub const SEARCHES_RUNNING: &str = "prism_search_running";
/// Bytes reserved by requests in flight, sampled at scrape time.
pub const IN_FLIGHT_BYTES: &str = "prism_in_flight_bytes";
/// Client connections open, sampled at scrape time.
pub const CONNECTIONS_OPEN: &str = "prism_http_connections_open";

/// Federated searches by what the BM25 statistics cache gave: `hit`, `miss` or `stale`.
pub const STATS_CACHE: &str = "prism_cluster_stats_cache_total";
/// Cluster mode, per Raft group (`group` label; `metadata` for the metadata group): spec
/// 002's names.
pub const RAFT_STATE: &str = "raft_state";
pub const RAFT_TERM: &str = "raft_term";
pub const RAFT_COMMIT_INDEX: &str = "raft_commit_index";
pub const RAFT_APPLIED_INDEX: &str = "raft_applied_index";
pub const RAFT_PEERS: &str = "raft_peers";
/// Catch-up by snapshot, per local copy: installed, receptions abandoned, bytes of the one
/// being received (0 when none).
pub const RAFT_SNAPSHOTS_INSTALLED: &str = "raft_snapshots_installed_total";
pub const RAFT_SNAPSHOT_RECEPTIONS_FAILED: &str = "raft_snapshot_receptions_failed_total";
pub const RAFT_SNAPSHOT_RECEIVING_BYTES: &str = "raft_snapshot_receiving_bytes";
pub const RAFT_REPLICATION_LAG_ENTRIES: &str = "raft_replication_lag_entries";
pub const RAFT_REPLICATION_LAG_SECONDS: &str = "raft_replication_lag_seconds";
pub const REPLICATION_LAG_SECONDS: &str = "prism_replication_lag_seconds";
/// Spec 001's: this node's state (1 when healthy), and each local shard copy's status.
pub const NODE_STATE: &str = "prism_node_state";
pub const SHARD_STATUS: &str = "prism_shard_status";

/// Gauges are set at each scrape, just before rendering; one not set for this long belongs
/// to something gone (a deleted collection, a group or member that left) and is dropped.
const GAUGES_IDLE_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// Installs the process-wide recorder and returns the handle `/metrics` renders.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .idle_timeout(metrics_util::MetricKindMask::GAUGE, Some(GAUGES_IDLE_AFTER))
        .set_buckets_for_metric(
            Matcher::Full(REQUEST_SECONDS.to_string()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ],
        )?
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))
}

/// Counts and times every request under its route pattern, not its concrete path, so that
/// label cardinality stays bounded.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(REQUESTS, "route" => route.clone(), "method" => method.clone(), "status" => status).increment(1);
    metrics::histogram!(REQUEST_SECONDS, "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}
