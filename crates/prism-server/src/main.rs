//! `prism-server`: one Prism node. Reads its configuration, opens the data directory, creates
//! collections from `--schemas-dir`, and serves the HTTP API until SIGINT or SIGTERM.

mod answers;
mod budget;
#[cfg(feature = "cluster")]
mod cluster;
mod config;
mod error;
mod http;
mod metrics;
mod openapi;
#[cfg(feature = "cluster")]
mod raft_cluster;
mod serve;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use prism_core::engine::{Engine, EngineConfig};
use prism_core::schema::CollectionSchema;
use tracing_subscriber::EnvFilter;

/// glibc gives threads their own arenas, up to eight per core, and raises its mmap threshold
/// after every large free, so the multi-megabyte bodies of bulk requests stay resident in
/// whichever arena parsed them. One arena per core and a fixed 256 KiB threshold (larger
/// buffers are mapped, and unmapped when freed) cut the peak RSS of loading and searching
/// nave-kjv with vectors from 314 to 196 MiB. `MALLOC_ARENA_MAX` / `MALLOC_MMAP_THRESHOLD_`
/// in the environment still win.
#[cfg(target_env = "gnu")]
fn tune_allocator() {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    // SAFETY: mallopt only sets allocator parameters; no other thread exists yet.
    unsafe {
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            libc::mallopt(libc::M_ARENA_MAX, cores.clamp(2, 64) as libc::c_int);
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        }
    }
}

fn main() -> std::process::ExitCode {
    #[cfg(target_env = "gnu")]
    tune_allocator();
    let cli = config::Cli::parse();
    let config = match config::load(&cli, |k| std::env::var(k).ok()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // PRISM_LOG wins over [observability] log_level.
    let filter = EnvFilter::try_from_env("PRISM_LOG")
        .or_else(|_| EnvFilter::try_new(&config.observability.log_level));
    let filter = match filter {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!(
                "error: observability.log_level = {:?} is not a log filter: {e}",
                config.observability.log_level
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.observability.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Raises the open-file limit to its hard maximum and derives how many collections the
/// process limits hold.
fn process_capacity(configured: Option<usize>) -> prism_core::limits::Capacity {
    use prism_core::limits::{collection_capacity, ProcessLimits};
    let open_files = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit; assuming 1024");
            1024
        }
    };
    let read_proc = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let max_map_count = read_proc("/proc/sys/vm/max_map_count").unwrap_or(65530);
    let nproc = rlimit::getrlimit(rlimit::Resource::NPROC)
        .map(|(soft, _)| soft)
        .unwrap_or(u64::MAX);
    let max_threads = nproc.min(read_proc("/proc/sys/kernel/threads-max").unwrap_or(u64::MAX));
    let limits = ProcessLimits {
        open_files,
        max_map_count,
        max_threads,
    };
    let capacity = collection_capacity(limits, configured);
    tracing::info!(
        open_files,
        max_map_count,
        max_threads,
        max_collections = capacity.collections,
        bound_by = capacity.bound_by,
        "process limits: this node holds at most max_collections collections (raise ulimit -n or vm.max_map_count for more)"
    );
    capacity
}

async fn run(cli: config::Cli, config: config::Config) -> anyhow::Result<()> {
    let unimplemented = config.unimplemented()?;
    if !unimplemented.is_empty() {
        tracing::warn!(
            sections = ?unimplemented,
            "these sections of the original Prism's configuration are accepted because they are disabled; Prism does not implement them"
        );
    }
    match &config.file {
        Some(file) => tracing::info!(file = %file.display(), "configuration file read"),
        None => tracing::info!(
            "no configuration file (--config / PRISM_CONFIG unset, no ./prism.toml): defaults, PRISM_* variables and flags apply"
        ),
    }
    let metrics = if config.observability.metrics_enabled {
        Some(metrics::install()?)
    } else {
        None
    };
    let data_dir = config.storage.data_dir.clone();
    let capacity = process_capacity(config.storage.max_collections);
    let engine_config = EngineConfig {
        data_dir: data_dir.clone(),
        shard: prism_core::shard::ShardConfig {
            truncate_corrupt_log: cli.truncate_corrupt_log,
            ..config.storage.shard_config()
        },
        max_collections: capacity.collections,
    };
    // The port opens before any log replays: collections answer `collection_recovering`
    // (and `/health` shows their progress) until they are open.
    let shard_config = engine_config.shard.clone();
    let engine = Engine::open_deferred(engine_config)
        .with_context(|| format!("cannot open data directory {}", data_dir.display()))?;
    let engine = Arc::new(engine);
    // As the original Prism does, `<data_dir>/schemas` is read when no directory is named.
    let default_schemas = data_dir.join("schemas");
    let schemas = match &config.storage.schemas_dir {
        Some(dir) => read_schemas(dir)?,
        None if default_schemas.is_dir() => read_schemas(&default_schemas)?,
        None => Vec::new(),
    };
    // As the original Prism: `conf/pipelines/*.yaml` beside the config file (or under the
    // working directory without one).
    let pipelines_dir = config
        .file
        .as_deref()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."))
        .join("conf")
        .join("pipelines");
    let pipelines = Arc::new(prism_core::pipeline::load_dir(&pipelines_dir)?);
    if !pipelines.is_empty() {
        tracing::info!(dir = %pipelines_dir.display(), pipelines = ?pipelines.keys().collect::<Vec<_>>(), "ingest pipelines loaded");
    }
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let schema_failures = Arc::new(std::sync::Mutex::new(Vec::new()));

    let listener = tokio::net::TcpListener::bind(&config.server.bind_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; is another server using it? choose another with --port",
                config.server.bind_addr
            )
        })?;
    tracing::info!(addr = %listener.local_addr()?, "prism-server listening");
    #[cfg(feature = "cluster")]
    let raft_cluster = if config.cluster.enabled && config.cluster.raft {
        Some(
            raft_cluster::RaftCluster::start(
                config.cluster.clone(),
                config.federation.clone(),
                engine.clone(),
                shard_config,
            )
            .await?,
        )
    } else {
        None
    };
    #[cfg(feature = "cluster")]
    let cluster = if config.cluster.enabled && !config.cluster.raft {
        Some(
            cluster::Cluster::start(
                config.cluster.clone(),
                config.federation.clone(),
                engine.clone(),
            )
            .await?,
        )
    } else {
        None
    };
    tokio::spawn(return_freed_memory());
    let recovery = {
        let engine = engine.clone();
        let ready = ready.clone();
        let schema_failures = schema_failures.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            engine.recover();
            tracing::info!(
                data_dir = %data_dir.display(),
                collections = engine.collections().len(),
                unavailable = engine.unavailable().len(),
                ms = started.elapsed().as_millis() as u64,
                "data directory recovered"
            );
            if engine.is_closed() {
                return;
            }
            let failures = create_from_schemas(&engine, schemas);
            *schema_failures.lock().expect("not poisoned") = failures;
            ready.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let search_threads = config.search.threads();
    let (inline_slots, inline_slice) = config.search.inline();
    let search_pool = Arc::new(
        prism_core::search::pool::SearchPool::new(
            search_threads,
            config.search.queue_size,
            config.search.limits()?,
        )
        .context("cannot start the search threads")?
        .with_inline(inline_slots, inline_slice),
    );
    let in_flight = budget::InFlightBudget::new(
        config
            .server
            .max_in_flight_bytes
            .unwrap_or_else(default_in_flight_limit),
    );
    tracing::info!(
        search_threads,
        search_queue = config.search.queue_size,
        inline_slots,
        inline_slice_ms = inline_slice.as_millis() as u64,
        max_in_flight_bytes = in_flight.limit(),
        "request limits"
    );
    let state = Arc::new(http::AppState {
        ready,
        pipelines,
        schema_failures,
        engine: engine.clone(),
        #[cfg(feature = "cluster")]
        cluster: cluster.clone(),
        #[cfg(feature = "cluster")]
        raft: raft_cluster.clone(),
        metrics,
        started: Instant::now(),
        search_pool: search_pool.clone(),
        in_flight,
        max_body_bytes: config.server.max_body_bytes,
    });
    let app = http::router(
        state,
        config.server.max_body_bytes,
        std::time::Duration::from_millis(config.server.body_read_timeout_ms.max(1)),
    );
    let app = match cors_layer(&config.server.cors)? {
        Some(layer) => app.layer(layer),
        None => app,
    };
    let stopping_searches = search_pool.clone();
    serve::serve(
        listener,
        app,
        serve::ConnectionLimits {
            header_read_timeout: std::time::Duration::from_millis(
                config.server.header_read_timeout_ms.max(1),
            ),
            idle_timeout: std::time::Duration::from_millis(config.server.idle_timeout_ms.max(1)),
            max_connections: max_connections(config.server.max_connections)?,
        },
        async move {
            shutdown_signal().await;
            // Searches in flight end at their next check instead of holding the drain.
            stopping_searches.stop();
        },
    )
    .await;
    let joining = search_pool.clone();
    tokio::task::spawn_blocking(move || joining.stop_and_join(std::time::Duration::from_secs(5)))
        .await?;
    // Peers see the connections close now rather than at their idle timeout.
    #[cfg(feature = "cluster")]
    if let Some(cluster) = &cluster {
        cluster.close();
    }
    #[cfg(feature = "cluster")]
    if let Some(raft) = &raft_cluster {
        raft.close().await;
    }
    tracing::info!("shutting down: writing checkpoints");
    let closing = engine.clone();
    tokio::task::spawn_blocking(move || closing.close()).await??;
    if !recovery.is_finished() {
        tracing::info!("waiting for the collection being recovered to open, to close it");
    }
    recovery.await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// `server.max_in_flight_bytes` when unset: from the machine's memory and `ulimit -v`.
fn default_in_flight_limit() -> u64 {
    let mem_total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let address_space = rlimit::getrlimit(rlimit::Resource::AS)
        .ok()
        .map(|(soft, _)| soft)
        .filter(|soft| *soft != rlimit::INFINITY);
    budget::default_limit(mem_total, address_space)
}

/// `server.max_connections`, checked against the open-file limit (raised to its hard limit
/// at start), or its default from that limit.
fn max_connections(configured: Option<usize>) -> anyhow::Result<usize> {
    let open_files = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    serve::max_connections(open_files, configured).map_err(|e| anyhow::anyhow!(e))
}

/// `[server.cors]` as a tower-http layer: preflights and `Access-Control-Allow-*` headers for
/// the listed origins (`"*"`: any), every method and header.
fn cors_layer(config: &config::CorsConfig) -> anyhow::Result<Option<tower_http::cors::CorsLayer>> {
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    if !config.enabled {
        return Ok(None);
    }
    let origin = if config.origins.is_empty() || config.origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let origins = config
            .origins
            .iter()
            .map(|o| {
                axum::http::HeaderValue::from_str(o).map_err(|e| {
                    anyhow::anyhow!("server.cors.origins: {o:?} is not a valid origin: {e}")
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        AllowOrigin::list(origins)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods(Any)
            .allow_headers(Any),
    ))
}

/// Gives memory freed by closed index writers back to the OS. glibc keeps it in its
/// per-thread arenas otherwise: measured with 1,000 collections, 3.0 GB stayed resident after
/// every writer closed, against 0.25 GB for the same data after a restart.
async fn return_freed_memory() {
    let mut seen = prism_core::shard::writers_closed();
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        let closed = prism_core::shard::writers_closed();
        if closed != seen {
            seen = closed;
            #[cfg(target_env = "gnu")]
            let _ = tokio::task::spawn_blocking(|| {
                // SAFETY: malloc_trim only releases free memory; it has no preconditions.
                unsafe { libc::malloc_trim(0) }
            })
            .await;
        }
    }
}

/// Reads the collection schemas in `dir` (`*.yaml`, `*.yml`, `*.json`); a file that does not
/// parse stops the start.
fn read_schemas(dir: &Path) -> anyhow::Result<Vec<(std::path::PathBuf, CollectionSchema)>> {
    let mut schemas = Vec::new();
    let paths = prism_core::schema::files_with_extensions(dir, &["yaml", "yml", "json"])
        .with_context(|| format!("cannot read --schemas-dir {}", dir.display()))?;
    for path in paths {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let schema = if ext == "json" {
            CollectionSchema::from_json(text.as_bytes())
        } else {
            CollectionSchema::from_yaml(&text)
        }
        .with_context(|| format!("schema file {}", path.display()))?;
        schemas.push((path, schema));
    }
    Ok(schemas)
}

/// Creates each collection of `schemas` that does not exist, once the data directory is
/// recovered; returns the collections that could not be created, with why (`/health` lists
/// them).
fn create_from_schemas(
    engine: &Engine,
    schemas: Vec<(std::path::PathBuf, CollectionSchema)>,
) -> Vec<(String, String)> {
    let mut failures = Vec::new();
    for (path, schema) in schemas {
        let name = schema.name.clone();
        match engine.create_collection(schema) {
            Ok((_, true)) => {
                tracing::info!(collection = %name, file = %path.display(), "collection created from schema file")
            }
            Ok((_, false)) => {}
            Err(prism_core::Error::CollectionExists(_)) => tracing::warn!(
                collection = %name,
                file = %path.display(),
                "collection exists with a different schema; keeping the existing one"
            ),
            Err(e) => {
                tracing::error!(
                    collection = %name,
                    file = %path.display(),
                    error = %e,
                    "the collection of this schema file could not be created; fix the cause and restart"
                );
                failures.push((
                    name,
                    format!(
                        "schema file {} could not be applied: {e}; fix the cause and restart",
                        path.display()
                    ),
                ));
            }
        }
    }
    failures
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
