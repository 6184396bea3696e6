//! A shard's snapshot streamed between real processes over mutual-TLS QUIC: a leader holding
//! 100,000 documents with 384-d vectors, and learners that join after its log was purged, so
//! that only the snapshot can bring them up. It measures a clean transfer (time, peak RSS of
//! both processes), then checks that a transfer cut halfway (the receiving process killed and
//! started again) restarts and completes, and that a damaged file is refused, naming it, until
//! it is repaired.
//!
//!   cargo run --release -p prism-bench --bin prism-snapshot-transfer -- run
//!   cargo run --release -p prism-bench --bin prism-snapshot-transfer -- run --docs 20000
//!
//! Each process is this binary as `node`, driven over stdin/stdout; RSS comes from /proc.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use prism_cluster::raft::groups::{GroupNode, Liveness};
use prism_cluster::raft::proposal::Proposed;
use prism_cluster::raft::quiescence::Timing;
use prism_cluster::rpc::GroupId;
use prism_core::schema::CollectionSchema;
use prism_core::shard::{Op, ShardConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

#[path = "../cluster_node.rs"]
mod cluster_node;

use cluster_node::{name, say, NodeProcess};

const BASE_PORT: u16 = 17_500;

#[derive(Debug, Parser)]
#[command(
    name = "prism-snapshot-transfer",
    about = "A shard snapshot streamed between processes"
)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    Run {
        #[arg(long, default_value_t = 100_000)]
        docs: usize,
        #[arg(long, default_value_t = 384)]
        dimension: usize,
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    #[command(hide = true)]
    Node {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        certs: PathBuf,
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        dimension: usize,
    },
}

fn main() -> Result<()> {
    match Args::parse().command {
        Cmd::Run {
            docs,
            dimension,
            out,
        } => run(docs, dimension, &out),
        Cmd::Node {
            id,
            certs,
            data,
            dimension,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .init();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(node(id, &certs, &data, dimension))
        }
    }
}

fn group() -> GroupId {
    GroupId::shard("big", 0, 1)
}

fn address(id: u64) -> String {
    format!("127.0.0.1:{}", BASE_PORT + id as u16)
}

fn schema(dimension: usize) -> Arc<CollectionSchema> {
    let json = json!({"name": "big", "fields": {
        "title": {"type": "text"},
        "emb": {"type": "vector", "dimension": dimension, "distance": "cosine"},
    }});
    Arc::new(CollectionSchema::from_json(json.to_string().as_bytes()).expect("a valid schema"))
}

async fn node(id: u64, certs: &Path, data: &Path, dimension: usize) -> Result<()> {
    let (host, transport) = cluster_node::start(id, certs, &address(id))?;
    let node = GroupNode::new(
        id,
        host,
        data,
        transport,
        Liveness::Quiet(Timing::default()),
    )
    .map_err(|e| anyhow!(e))?;
    let schema = schema(dimension);
    node.open_shard(group(), schema.clone(), ShardConfig::default())
        .await
        .map_err(|e| anyhow!(e))?;
    say(json!({"event": "opened"}));

    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
    while let Some(line) = lines.next_line().await? {
        let command: Value = serde_json::from_str(&line)?;
        let answer = match command["do"].as_str() {
            Some("initialize") => {
                node.initialize(&group(), &[(id, address(id))])
                    .await
                    .map_err(|e| anyhow!(e))?;
                let deadline = Instant::now() + Duration::from_secs(30);
                while node.states().get(&group()).and_then(|s| s.leader) != Some(id) {
                    if Instant::now() > deadline {
                        bail!("node {id} did not become the leader of its own group");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                json!({"ok": true})
            }
            Some("load") => {
                let docs = command["docs"].as_u64().unwrap_or(100_000) as usize;
                load(&node, &schema, docs, dimension).await?
            }
            Some("snapshot") => {
                let started = Instant::now();
                let index = node
                    .snapshot_and_purge(&group())
                    .await
                    .map_err(|e| anyhow!(e))?;
                json!({"snapshot_index": index, "seconds": started.elapsed().as_secs_f64()})
            }
            Some("add_learner") => {
                let learner = command["id"].as_u64().context("id")?;
                let started = Instant::now();
                let blocking = command["blocking"].as_bool().unwrap_or(true);
                node.add_learner(&group(), learner, address(learner), blocking)
                    .await
                    .map_err(|e| anyhow!(e))?;
                json!({"seconds": started.elapsed().as_secs_f64()})
            }
            Some("state") => {
                let state = node.states().remove(&group());
                let shard = node.shard(&group());
                json!({
                    "applied": state.as_ref().and_then(|s| s.applied),
                    "docs": shard.map(|s| s.stats().num_docs),
                })
            }
            Some("quit") | None => break,
            Some(other) => json!({"error": format!("unknown command {other}")}),
        };
        say(answer);
    }
    node.shutdown().await;
    Ok(())
}

/// `docs` documents with random unit vectors, 1,000 to a proposal.
async fn load(
    node: &GroupNode,
    schema: &CollectionSchema,
    docs: usize,
    dimension: usize,
) -> Result<Value> {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(7);
    let mut written = 0;
    while written < docs {
        let batch = (docs - written).min(1000);
        let ops = (written..written + batch)
            .map(|n| {
                let v: Vec<f32> = (0..dimension).map(|_| rng.gen_range(-1.0..1.0)).collect();
                let doc = schema.prepare_document(json!({
                    "id": format!("d{n}"),
                    "fields": {"title": format!("document number {n}"), "emb": v},
                }))?;
                Ok(Op::Upsert(Arc::new(doc)))
            })
            .collect::<prism_core::Result<Vec<Op>>>()?;
        match node
            .write(
                &group(),
                ops,
                Duration::from_secs(5),
                Duration::from_secs(120),
            )
            .await
        {
            Proposed::Committed { .. } => written += batch,
            other => bail!("a load batch was not committed: {other:?}"),
        }
    }
    Ok(json!({"docs": written, "seconds": started.elapsed().as_secs_f64()}))
}

impl NodeProcess {
    fn start(id: u64, work: &Path, dimension: usize) -> Result<NodeProcess> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args([
                "node",
                "--id",
                &id.to_string(),
                "--dimension",
                &dimension.to_string(),
            ])
            .arg("--certs")
            .arg(work.join("tls"))
            .arg("--data")
            .arg(work.join(name(id)));
        let mut node = NodeProcess::spawn(command, work.join(format!("{}.stderr", name(id))))?;
        node.read()?; // opened
        Ok(node)
    }

    /// Peak and current RSS in MiB.
    fn rss(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .unwrap_or(0.0)
                / 1024.0
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    fn quit(mut self) -> Result<()> {
        let _ = self.send(json!({"do": "quit"}));
        self.child.wait()?;
        Ok(())
    }

    /// Waits until the node has applied `index`.
    fn wait_applied(&mut self, index: u64, within: Duration) -> Result<Value> {
        let deadline = Instant::now() + within;
        loop {
            let state = self.ask(json!({"do": "state"}))?;
            if state["applied"].as_u64().is_some_and(|a| a >= index) {
                return Ok(state);
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} did not apply {index} within {within:?}: {state}",
                    self.child.id()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Bytes under `dir` in files whose path contains `part`.
fn bytes_under(dir: &Path, part: &str) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(path),
                Ok(m) if path.to_string_lossy().contains(part) => total += m.len(),
                _ => {}
            }
        }
    }
    total
}

/// The largest file of the leader's newest snapshot.
fn largest_snapshot_file(snapshots: &Path) -> Result<PathBuf> {
    let newest = std::fs::read_dir(snapshots)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("snap-"))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .context("the leader has no snapshot")?
        .path();
    let mut files = Vec::new();
    let mut stack = vec![newest];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)?.flatten() {
            let m = entry.metadata()?;
            if m.is_dir() {
                stack.push(entry.path());
            } else {
                files.push((m.len(), entry.path()));
            }
        }
    }
    files.sort();
    Ok(files.pop().context("an empty snapshot")?.1)
}

/// Replaces `file` by a copy with one byte flipped (a new inode: snapshot files are hard
/// links of the leader's live index, which must stay intact), and returns the original.
fn corrupt(file: &Path) -> Result<Vec<u8>> {
    let original = std::fs::read(file)?;
    let mut damaged = original.clone();
    let at = damaged.len() / 2;
    damaged[at] ^= 0x5a;
    let tmp = file.with_extension("damaged");
    std::fs::write(&tmp, &damaged)?;
    std::fs::rename(&tmp, file)?;
    Ok(original)
}

fn restore(file: &Path, original: &[u8]) -> Result<()> {
    let tmp = file.with_extension("restored");
    std::fs::write(&tmp, original)?;
    std::fs::rename(&tmp, file)?;
    Ok(())
}

fn run(docs: usize, dimension: usize, out: &Path) -> Result<()> {
    let work = tempfile::tempdir()?;
    let work = work.path();
    cluster_node::generate_certs(&work.join("tls"), 4)?;
    let snapshots = work.join(name(1)).join("big-0-1").join("snapshots");

    // The leader loads, snapshots and purges its log, then starts again so that its peak
    // memory below is the transfer's, not the load's.
    let mut leader = NodeProcess::start(1, work, dimension)?;
    leader.ask(json!({"do": "initialize"}))?;
    let loaded = leader.ask(json!({"do": "load", "docs": docs}))?;
    eprintln!("loaded: {loaded}");
    let snapshot = leader.ask(json!({"do": "snapshot"}))?;
    let index = snapshot["snapshot_index"]
        .as_u64()
        .context("snapshot index")?;
    eprintln!("snapshot: {snapshot}");
    leader.quit()?;
    let snapshot_bytes = bytes_under(&snapshots, "snap-");
    let mut leader = NodeProcess::start(1, work, dimension)?;
    leader.wait_applied(index, Duration::from_secs(120))?;
    let (leader_peak_before, _) = leader.rss();

    // 1. A clean transfer to learner 2.
    let mut learner = NodeProcess::start(2, work, dimension)?;
    let started = Instant::now();
    leader.ask(json!({"do": "add_learner", "id": 2, "blocking": false}))?;
    let state = learner.wait_applied(index, Duration::from_secs(600))?;
    let seconds = started.elapsed().as_secs_f64();
    let (leader_peak, leader_rss) = leader.rss();
    let (learner_peak, learner_rss) = learner.rss();
    let clean = json!({
        "docs": docs, "dimension": dimension, "snapshot_mib": snapshot_bytes as f64 / (1 << 20) as f64,
        "seconds": seconds,
        "mib_per_s": snapshot_bytes as f64 / (1 << 20) as f64 / seconds.max(1e-9),
        "leader_peak_rss_mib_before": leader_peak_before,
        "leader_peak_rss_mib": leader_peak, "leader_rss_mib": leader_rss,
        "learner_peak_rss_mib": learner_peak, "learner_rss_mib": learner_rss,
        "learner_docs": state["docs"],
    });
    eprintln!("clean transfer: {clean}");
    if state["docs"].as_u64() != Some(docs as u64) {
        bail!("learner 2 holds {} documents, not {docs}", state["docs"]);
    }
    learner.quit()?;

    // 2. A transfer cut halfway: learner 3 is killed once half the bytes arrived, and started
    // again; the leader sends the snapshot again and it completes.
    let mut learner = NodeProcess::start(3, work, dimension)?;
    leader.send(json!({"do": "add_learner", "id": 3, "blocking": false}))?;
    let receiving = work.join(name(3));
    let deadline = Instant::now() + Duration::from_secs(300);
    while bytes_under(&receiving, "receiving-") < snapshot_bytes / 2 {
        if Instant::now() > deadline {
            bail!("learner 3 never received half the snapshot");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let cut_at = bytes_under(&receiving, "receiving-");
    learner.child.kill()?;
    learner.child.wait()?;
    leader.read()?; // the add_learner answer
    let restarted = Instant::now();
    let mut learner = NodeProcess::start(3, work, dimension)?;
    let state = learner.wait_applied(index, Duration::from_secs(600))?;
    let cut = json!({
        "killed_after_mib": cut_at as f64 / (1 << 20) as f64,
        "completed_seconds_after_restart": restarted.elapsed().as_secs_f64(),
        "learner_docs": state["docs"],
    });
    eprintln!("cut transfer: {cut}");
    if state["docs"].as_u64() != Some(docs as u64) {
        bail!(
            "learner 3 holds {} documents after the cut, not {docs}",
            state["docs"]
        );
    }
    learner.quit()?;

    // 3. A damaged file: learner 4 must refuse it, naming it, and take the snapshot once the
    // file is repaired.
    let damaged = largest_snapshot_file(&snapshots)?;
    let file_name = damaged
        .file_name()
        .context("name")?
        .to_string_lossy()
        .into_owned();
    let original = corrupt(&damaged)?;
    let mut learner = NodeProcess::start(4, work, dimension)?;
    leader.send(json!({"do": "add_learner", "id": 4, "blocking": false}))?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let refusal = loop {
        let log = std::fs::read_to_string(&learner.stderr).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains(&file_name)) {
            break line.to_string();
        }
        if Instant::now() > deadline {
            bail!("learner 4 never refused the damaged {file_name}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("refused: {refusal}");
    let state = learner.ask(json!({"do": "state"}))?;
    if state["applied"].as_u64().is_some_and(|a| a >= index) {
        bail!("learner 4 installed a damaged snapshot");
    }
    restore(&damaged, &original)?;
    leader.read()?; // the add_learner answer
    let state = learner.wait_applied(index, Duration::from_secs(600))?;
    if state["docs"].as_u64() != Some(docs as u64) {
        bail!("learner 4 holds {} documents, not {docs}", state["docs"]);
    }
    let damaged_report =
        json!({"file": file_name, "refusal": refusal, "learner_docs": state["docs"]});
    learner.quit()?;
    leader.quit()?;

    let report = json!({"clean": clean, "cut": cut, "damaged": damaged_report});
    println!("\n### Snapshot transfer over QUIC between processes: {docs} documents, {dimension}-d vectors\n");
    println!("| snapshot | transfer + install | throughput | leader peak RSS (before → during) | learner peak RSS |");
    println!("|---|---|---|---|---|");
    println!(
        "| {:.0} MiB | {:.1} s | {:.0} MiB/s | {:.0} → {:.0} MiB | {:.0} MiB |",
        clean["snapshot_mib"].as_f64().unwrap_or(0.0),
        seconds,
        clean["mib_per_s"].as_f64().unwrap_or(0.0),
        leader_peak_before,
        leader_peak,
        learner_peak,
    );
    println!(
        "\nCut: learner killed after {:.0} MiB, started again, complete {:.1} s later with {} documents.",
        cut["killed_after_mib"].as_f64().unwrap_or(0.0),
        cut["completed_seconds_after_restart"].as_f64().unwrap_or(0.0),
        cut["learner_docs"],
    );
    println!(
        "Damaged {file_name}: refused (\"{}\"), then installed once repaired.",
        report["damaged"]["refusal"].as_str().unwrap_or("")
    );
    std::fs::create_dir_all(out)?;
    let path = out.join("snapshot-transfer.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
