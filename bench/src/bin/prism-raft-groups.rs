//! Many Raft groups on three real processes over mutual-TLS QUIC: what idle groups cost a node
//! (CPU, wake-ups, RSS, threads, fsyncs and messages, per node and per group), with groups
//! that go quiet (`raft::liveness`) against openraft's own heartbeats, measured in the same
//! run; the write throughput of one collection at RF 3 against RF 1, with p50 and p99; and
//! how long after node 1 is killed every group has a leader again (`PRISM_BENCH_TRACE=1`
//! prints the copies still without one as it goes).
//!
//!   cargo run --release -p prism-bench --bin prism-raft-groups -- run
//!   cargo run --release -p prism-bench --bin prism-raft-groups -- run --collections 10 --idle-seconds 5
//!
//! `run` spawns this binary three times as `node` processes on loopback, each with a
//! certificate naming it (scripts/generate-certs.sh --node), drives them over stdin/stdout,
//! and reads their CPU and memory from /proc. Every group is a real shard copy with its own
//! log. Writes are proposed inside the leader's process (no client RPC), one document each.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use clap::{Parser, Subcommand};
use prism_cluster::network::Network;
use prism_cluster::raft::groups::{GroupNode, Liveness};
use prism_cluster::raft::proposal::Proposed;
use prism_cluster::raft::quiescence::{Role, Timing};
use prism_cluster::rpc::{Envelope, GroupId, Reply, Request};
use prism_core::schema::CollectionSchema;
use prism_core::shard::{Op, ShardConfig};
use serde_json::{json, Value};

#[path = "../cluster_node.rs"]
mod cluster_node;

use cluster_node::{name, say, NodeProcess};

const NODES: u64 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "prism-raft-groups",
    about = "Idle cost and write throughput of many Raft groups on 3 processes"
)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The whole benchmark: both liveness modes, idle then writes.
    Run {
        /// Idle collections of `shards` shards each, every shard at RF 3.
        #[arg(long, default_value_t = 100)]
        collections: u32,
        #[arg(long, default_value_t = 3)]
        shards: u32,
        /// Seconds over which idle CPU is measured.
        #[arg(long, default_value_t = 30)]
        idle_seconds: u64,
        /// Seconds of writes per replication factor.
        #[arg(long, default_value_t = 10)]
        write_seconds: u64,
        /// Concurrent writers per shard leader.
        #[arg(long, default_value_t = 8)]
        writers: usize,
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    /// One node process (spawned by `run`).
    #[command(hide = true)]
    Node {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        base_port: u16,
        #[arg(long)]
        certs: PathBuf,
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        collections: u32,
        #[arg(long)]
        shards: u32,
        /// "quiet" or "heartbeats".
        #[arg(long)]
        liveness: String,
    },
}

fn main() -> Result<()> {
    match Args::parse().command {
        Cmd::Run {
            collections,
            shards,
            idle_seconds,
            write_seconds,
            writers,
            out,
        } => run(
            collections,
            shards,
            idle_seconds,
            write_seconds,
            writers,
            &out,
        ),
        Cmd::Node {
            id,
            base_port,
            certs,
            data,
            collections,
            shards,
            liveness,
        } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(node(
                id,
                base_port,
                &certs,
                &data,
                collections,
                shards,
                &liveness,
            ))
        }
    }
}

fn address(base_port: u16, id: u64) -> String {
    format!("127.0.0.1:{}", base_port + id as u16)
}

/// Every group of the run and its members: the idle collections at RF 3, then `w3` (RF 3)
/// and `w1` (RF 1), 3 shards each. The first member initializes the group and so leads it
/// first: leaders are spread over the nodes.
fn groups(collections: u32, shards: u32) -> Vec<(GroupId, Vec<u64>)> {
    let mut all = Vec::new();
    let mut next = 0u64;
    let mut rotate = |rf: u64| {
        next += 1;
        (0..rf).map(|k| (next + k) % NODES + 1).collect::<Vec<_>>()
    };
    for c in 0..collections {
        for s in 0..shards {
            all.push((GroupId::shard(&format!("c{c}"), s, 1), rotate(3)));
        }
    }
    for (collection, rf) in [("w3", 3), ("w1", 1)] {
        for s in 0..3 {
            all.push((GroupId::shard(collection, s, 1), rotate(rf)));
        }
    }
    all
}

fn schema() -> Arc<CollectionSchema> {
    Arc::new(
        CollectionSchema::from_json(
            br#"{"name":"bench","fields":{"title":{"type":"text"},"body":{"type":"text"}}}"#,
        )
        .expect("a valid schema"),
    )
}

/// Counts the calls a node makes, by kind.
struct Counting {
    inner: Arc<dyn Network>,
    raft: AtomicU64,
    pings: AtomicU64,
    other: AtomicU64,
}

#[async_trait]
impl Network for Counting {
    async fn call(&self, to: &String, envelope: Envelope) -> Reply {
        let counter = match envelope.request {
            Request::Raft { .. } => &self.raft,
            Request::Ping | Request::Leaders { .. } => &self.pings,
            _ => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.inner.call(to, envelope).await
    }
}

async fn node(
    id: u64,
    base_port: u16,
    certs: &Path,
    data: &Path,
    collections: u32,
    shards: u32,
    liveness: &str,
) -> Result<()> {
    let liveness = match liveness {
        "quiet" => Liveness::Quiet(Timing::default()),
        // openraft's defaults.
        "heartbeats" => Liveness::Heartbeats {
            heartbeat_ms: 50,
            election_ms: 150,
        },
        other => bail!("unknown liveness {other:?}"),
    };
    let (host, transport) = cluster_node::start(id, certs, &address(base_port, id))?;
    let network = Arc::new(Counting {
        inner: transport,
        raft: AtomicU64::new(0),
        pings: AtomicU64::new(0),
        other: AtomicU64::new(0),
    });
    let groups_node =
        GroupNode::new(id, host, data, network.clone(), liveness).map_err(|e| anyhow!(e))?;
    let plan = groups(collections, shards);
    let shard_config = ShardConfig::default();
    let mine: Vec<_> = plan.iter().filter(|(_, m)| m.contains(&id)).collect();
    for (group, _) in &mine {
        groups_node
            .open_shard(group.clone(), schema(), shard_config.clone())
            .await
            .map_err(|e| anyhow!(e))?;
    }
    say(json!({"event": "opened", "groups": mine.len()}));
    // Peers must listen before the first election's votes go out.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (group, members) in &mine {
        if members[0] == id {
            let members: Vec<(u64, String)> = members
                .iter()
                .map(|m| (*m, address(base_port, *m)))
                .collect();
            groups_node
                .initialize(group, &members)
                .await
                .map_err(|e| anyhow!(e))?;
        }
    }
    let started = Instant::now();
    loop {
        let states = groups_node.states();
        if states.values().all(|s| s.leader.is_some()) {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("node {id}: groups without a leader after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    say(json!({"event": "ready", "seconds": started.elapsed().as_secs_f64()}));

    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
    while let Some(line) = lines.next_line().await? {
        let command: Value = serde_json::from_str(&line)?;
        match command["do"].as_str() {
            Some("counters") => {
                let states = groups_node.states();
                let leaders = states.values().filter(|s| s.role == Role::Leader).count();
                say(json!({
                    "syncs": prism_core::log::durable::syncs(),
                    "raft_calls": network.raft.load(Ordering::Relaxed),
                    "pings": network.pings.load(Ordering::Relaxed),
                    "other_calls": network.other.load(Ordering::Relaxed),
                    "groups": states.len(),
                    "leaders": leaders,
                }));
            }
            Some("write") => {
                let collection = command["collection"].as_str().unwrap_or("w3").to_string();
                let seconds = command["seconds"].as_u64().unwrap_or(10);
                let writers = command["writers"].as_u64().unwrap_or(8) as usize;
                let led: Vec<GroupId> = groups_node
                    .states()
                    .into_iter()
                    .filter(|(g, s)| g.collection == collection && s.role == Role::Leader)
                    .map(|(g, _)| g)
                    .collect();
                let syncs = prism_core::log::durable::syncs();
                let mut result = write_load(&groups_node, &led, seconds, writers).await;
                result["syncs"] = json!(prism_core::log::durable::syncs() - syncs);
                say(result);
            }
            Some("orphans") => {
                // Voter copies here whose leader is unknown or is node `dead`.
                let dead = command["dead"].as_u64().unwrap_or(0);
                let orphans = groups_node
                    .states()
                    .values()
                    .filter(|s| s.role != Role::Learner)
                    .filter(|s| s.leader.is_none_or(|l| l == dead))
                    .count();
                say(json!({"orphans": orphans}));
            }
            Some("quit") | None => break,
            Some(other) => say(json!({"error": format!("unknown command {other}")})),
        }
    }
    groups_node.shutdown().await;
    Ok(())
}

/// `writers` writers per led group, one document per proposal, for `seconds`.
async fn write_load(node: &GroupNode, led: &[GroupId], seconds: u64, writers: usize) -> Value {
    let schema = schema();
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    // `GroupNode` is not `'static` here: writers run on this task, interleaved.
    for group in led {
        for w in 0..writers {
            let schema = schema.clone();
            tasks.push(async move {
                let mut latencies = Vec::new();
                let mut failures = 0u64;
                let mut n = 0u64;
                while Instant::now() < until {
                    n += 1;
                    let doc = schema
                        .prepare_document(json!({
                            "id": format!("{}-{w}-{n}", group.shard),
                            "fields": {
                                "title": format!("document {n} of writer {w}"),
                                "body": "a short body of text, about as long as a product description in a catalogue",
                            },
                        }))
                        .expect("a valid document");
                    let at = Instant::now();
                    let outcome = node
                        .write(
                            group,
                            vec![Op::Upsert(Arc::new(doc))],
                            Duration::from_secs(1),
                            Duration::from_secs(5),
                        )
                        .await;
                    match outcome {
                        Proposed::Committed { .. } => latencies.push(at.elapsed().as_micros() as u64),
                        _ => failures += 1,
                    }
                }
                (latencies, failures)
            });
        }
    }
    let results = futures::future::join_all(tasks).await;
    // A node that leads none of the groups still follows them: its fsyncs count too.
    tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
    let mut latencies = Vec::new();
    let mut failures = 0;
    for (l, f) in results {
        latencies.extend(l);
        failures += f;
    }
    json!({
        "groups": led.len(),
        "seconds": started.elapsed().as_secs_f64(),
        "latencies_us": latencies,
        "failures": failures,
    })
}

/// utime + stime in seconds, voluntary + involuntary context switches of each thread,
/// threads, and RSS in bytes.
#[derive(Debug, Clone)]
struct Usage {
    cpu: f64,
    switches: BTreeMap<String, u64>,
    threads: u64,
    rss: u64,
}

/// Context switches between two samples, over the threads alive at both (a thread that
/// exits takes its count with it).
fn switches_between(before: &Usage, after: &Usage) -> u64 {
    after
        .switches
        .iter()
        .filter_map(|(tid, n)| Some(n.saturating_sub(*before.switches.get(tid)?)))
        .sum()
}

fn usage(pid: u32) -> Result<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks = 100.0; // USER_HZ
    let cpu = (fields[11].parse::<f64>()? + fields[12].parse::<f64>()?) / ticks;
    let threads = fields[17].parse()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    let mut switches = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?;
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let mut count = 0;
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                count += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
        switches.insert(task.file_name().to_string_lossy().into_owned(), count);
    }
    Ok(Usage {
        cpu,
        switches,
        threads,
        rss,
    })
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0
}

fn run(
    collections: u32,
    shards: u32,
    idle_seconds: u64,
    write_seconds: u64,
    writers: usize,
    out: &Path,
) -> Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("tls");
    cluster_node::generate_certs(&certs, NODES)?;
    let total_groups = groups(collections, shards).len();
    let mut report = json!({"collections": collections, "shards": shards, "groups": total_groups});
    let mut rows = Vec::new();
    let mut failovers = Vec::new();
    for (k, mode) in ["quiet", "heartbeats"].iter().enumerate() {
        let base_port = 17_400 + 10 * k as u16;
        let mut nodes = Vec::new();
        for id in 1..=NODES {
            let data = work.path().join(format!("{mode}-{}", name(id)));
            let mut command = Command::new(std::env::current_exe()?);
            command
                .args([
                    "node",
                    "--id",
                    &id.to_string(),
                    "--base-port",
                    &base_port.to_string(),
                ])
                .arg("--certs")
                .arg(&certs)
                .arg("--data")
                .arg(&data)
                .args(["--collections", &collections.to_string()])
                .args(["--shards", &shards.to_string(), "--liveness", mode]);
            let stderr = work.path().join(format!("{mode}-{}.stderr", name(id)));
            nodes.push(NodeProcess::spawn(command, stderr)?);
        }
        for node in &mut nodes {
            let opened = node.read()?;
            eprintln!("{mode}: {opened}");
        }
        for node in &mut nodes {
            let ready = node.read()?;
            eprintln!("{mode}: {ready}");
        }
        // Let every group settle (quiet groups need `idle_after` with nothing new).
        std::thread::sleep(Duration::from_secs(5));
        let before: Vec<(Usage, Value)> = nodes
            .iter_mut()
            .map(|n| Ok((usage(n.child.id())?, n.ask(json!({"do": "counters"}))?)))
            .collect::<Result<_>>()?;
        let clock = Instant::now();
        std::thread::sleep(Duration::from_secs(idle_seconds));
        let elapsed = clock.elapsed().as_secs_f64();
        let after: Vec<(Usage, Value)> = nodes
            .iter_mut()
            .map(|n| Ok((usage(n.child.id())?, n.ask(json!({"do": "counters"}))?)))
            .collect::<Result<_>>()?;
        let mut idle = Vec::new();
        for (id, ((u0, c0), (u1, c1))) in before.iter().zip(&after).enumerate() {
            let per_second = |key: &str| {
                (c1[key].as_u64().unwrap_or(0) - c0[key].as_u64().unwrap_or(0)) as f64 / elapsed
            };
            let groups_here = c1["groups"].as_u64().unwrap_or(1) as f64;
            let node = json!({
                "node": name(id as u64 + 1),
                "groups": groups_here,
                "leaders": c1["leaders"],
                "cpu_percent": 100.0 * (u1.cpu - u0.cpu) / elapsed,
                "wakeups_per_s": switches_between(u0, u1) as f64 / elapsed,
                "threads": u1.threads,
                "rss_mib": u1.rss as f64 / (1 << 20) as f64,
                "fsyncs_per_s": per_second("syncs"),
                "raft_messages_per_s": per_second("raft_calls"),
                "pings_per_s": per_second("pings"),
                "raft_messages_per_group_s": per_second("raft_calls") / groups_here,
            });
            eprintln!("{mode} idle: {node}");
            idle.push(node);
        }
        let mut writes = serde_json::Map::new();
        for collection in ["w1", "w3"] {
            for node in &mut nodes {
                node.send(json!({"do": "write", "collection": collection, "seconds": write_seconds, "writers": writers}))?;
            }
            let mut latencies = Vec::new();
            let mut failures = 0;
            let mut syncs = 0;
            let mut wall: f64 = 0.0;
            for node in &mut nodes {
                let result = node.read()?;
                failures += result["failures"].as_u64().unwrap_or(0);
                syncs += result["syncs"].as_u64().unwrap_or(0);
                wall = wall.max(result["seconds"].as_f64().unwrap_or(0.0));
                latencies.extend(
                    result["latencies_us"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_u64),
                );
            }
            latencies.sort_unstable();
            let summary = json!({
                "writes": latencies.len(),
                "writes_per_s": latencies.len() as f64 / wall.max(1e-9),
                "p50_ms": percentile(&latencies, 0.5),
                "p99_ms": percentile(&latencies, 0.99),
                "failures": failures,
                "log_fsyncs_per_write": syncs as f64 / latencies.len().max(1) as f64,
            });
            eprintln!("{mode} writes {collection}: {summary}");
            writes.insert(collection.into(), summary);
        }
        // Failover: node 1 is killed; how long until every group the others hold has a
        // leader among them.
        let led_by_1 = nodes[0].ask(json!({"do": "counters"}))?["leaders"].clone();
        let killed = Instant::now();
        nodes[0].child.kill()?;
        nodes[0].child.wait()?;
        let deadline = killed + Duration::from_secs(60);
        let failover = loop {
            let mut orphans = 0;
            for node in nodes.iter_mut().skip(1) {
                orphans += node.ask(json!({"do": "orphans", "dead": 1}))?["orphans"]
                    .as_u64()
                    .unwrap_or(u64::MAX);
            }
            if std::env::var_os("PRISM_BENCH_TRACE").is_some() {
                eprintln!(
                    "{mode} failover: {orphans} orphans at {:?}",
                    killed.elapsed()
                );
            }
            if orphans == 0 {
                break json!({"groups_led_by_the_killed_node": led_by_1, "seconds": killed.elapsed().as_secs_f64()});
            }
            if Instant::now() > deadline {
                bail!("{mode}: {orphans} copies still without a leader 60 s after node 1 died");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        eprintln!("{mode} failover: {failover}");
        for node in nodes.iter_mut().skip(1) {
            let _ = node.send(json!({"do": "quit"}));
        }
        for node in nodes.iter_mut().skip(1) {
            node.child.wait()?;
        }
        rows.push((mode.to_string(), idle.clone(), writes.clone()));
        report[*mode] = json!({"idle": idle, "writes": writes, "failover": failover});
        failovers.push((mode.to_string(), failover));
    }
    print_report(&rows, total_groups);
    println!("\n### Failover: node 1 killed (SIGKILL) after the writes\n");
    println!("| liveness | groups node 1 led | every group led again after |");
    println!("|---|---|---|");
    for (mode, f) in &failovers {
        println!(
            "| {mode} | {} | {:.2} s |",
            f["groups_led_by_the_killed_node"],
            f["seconds"].as_f64().unwrap_or(0.0)
        );
    }
    std::fs::create_dir_all(out)?;
    let path = out.join("raft-groups.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

type Row = (String, Vec<Value>, serde_json::Map<String, Value>);

fn print_report(rows: &[Row], groups: usize) {
    println!("\n### {groups} Raft groups on 3 processes, idle (per node)\n");
    println!("| liveness | node | groups | leaders | CPU % of a core | wake-ups/s | threads | RSS MiB | fsyncs/s | raft msgs/s | raft msgs/s per group | pings/s |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut cpu: BTreeMap<&str, f64> = BTreeMap::new();
    for (mode, idle, _) in rows {
        for n in idle {
            *cpu.entry(mode).or_default() +=
                n["cpu_percent"].as_f64().unwrap_or(0.0) / idle.len() as f64;
            println!(
                "| {mode} | {} | {} | {} | {:.2} | {:.0} | {} | {:.0} | {:.2} | {:.1} | {:.3} | {:.1} |",
                n["node"].as_str().unwrap_or(""),
                n["groups"],
                n["leaders"],
                n["cpu_percent"].as_f64().unwrap_or(0.0),
                n["wakeups_per_s"].as_f64().unwrap_or(0.0),
                n["threads"],
                n["rss_mib"].as_f64().unwrap_or(0.0),
                n["fsyncs_per_s"].as_f64().unwrap_or(0.0),
                n["raft_messages_per_s"].as_f64().unwrap_or(0.0),
                n["raft_messages_per_group_s"].as_f64().unwrap_or(0.0),
                n["pings_per_s"].as_f64().unwrap_or(0.0),
            );
        }
    }
    if let (Some(q), Some(h)) = (cpu.get("quiet"), cpu.get("heartbeats")) {
        println!(
            "\nIdle CPU per node, quiet against heartbeats: {q:.2}% against {h:.2}% ({:.2}x)",
            q / h.max(1e-9)
        );
    }
    println!(
        "\n### Writes of one collection (3 shards, leaders spread), one document per proposal\n"
    );
    println!("| liveness | replication | writes/s | p50 ms | p99 ms | log fsyncs per write, all nodes | failures |");
    println!("|---|---|---|---|---|---|---|");
    for (mode, _, writes) in rows {
        for (collection, rf) in [("w1", "RF 1"), ("w3", "RF 3")] {
            let w = &writes[collection];
            println!(
                "| {mode} | {rf} | {:.0} | {:.2} | {:.2} | {:.3} | {} |",
                w["writes_per_s"].as_f64().unwrap_or(0.0),
                w["p50_ms"].as_f64().unwrap_or(0.0),
                w["p99_ms"].as_f64().unwrap_or(0.0),
                w["log_fsyncs_per_write"].as_f64().unwrap_or(0.0),
                w["failures"],
            );
        }
        let rate = |c: &str| writes[c]["writes_per_s"].as_f64().unwrap_or(0.0);
        println!(
            "| {mode} | RF 3 / RF 1 | {:.2}x | | | | |",
            rate("w3") / rate("w1").max(1e-9)
        );
    }
}
