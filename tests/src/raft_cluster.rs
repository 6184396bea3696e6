//! Cluster mode (`--cluster`) with real `prism-server` processes, each in a network namespace
//! of its own ([`TestNet`]; loopback addresses where namespaces are unavailable): the first
//! node bootstraps, the others join through it with `--peers`, as spec 002 shows.
//! Certificates are made at run time (one CA, one certificate naming every node address,
//! shared by the nodes).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::cluster::{free_udp_port, write_certs_naming};
use crate::netns::TestNet;
use crate::{free_port, wait_until, Server};

/// The ports every node uses when it has an address of its own.
const HTTP_PORT: u16 = 9200;
const RAFT_PORT: u16 = 7700;

/// A node of a test cluster: its server, name and QUIC address.
pub struct ClusterNode {
    pub server: Server,
    pub name: String,
    pub raft_addr: String,
}

/// A cluster of real processes under one directory.
pub struct TestCluster {
    pub dir: PathBuf,
    pub nodes: Vec<ClusterNode>,
    config: PathBuf,
    /// Declared after the nodes: they stop before their namespaces go.
    pub net: TestNet,
}

/// The `prism.toml` every node shares: mutual TLS and short time-outs.
fn config_text(tls: &Path, request_timeout_ms: u64) -> String {
    format!(
        r#"[cluster]
connect_timeout_ms = 1000
request_timeout_ms = {request_timeout_ms}

[cluster.tls]
enabled = true
cert_path = "{tls}/node-cert.pem"
key_path = "{tls}/node-key.pem"
ca_cert_path = "{tls}/ca-cert.pem"
skip_verify = false

[federation.query]
partial_results_timeout_ms = {request_timeout_ms}
"#,
        tls = tls.display()
    )
}

impl TestCluster {
    /// Starts `n` nodes: node-1 with `--bootstrap`, the others with `--peers` naming it, and
    /// waits until the metadata lists them all.
    pub fn start(dir: &Path, n: usize) -> TestCluster {
        Self::start_with_timeout(dir, n, 3000)
    }

    pub fn start_with_timeout(dir: &Path, n: usize, request_timeout_ms: u64) -> TestCluster {
        Self::start_each(dir, n, request_timeout_ms, &|_| String::new())
    }

    /// Starts `n` nodes as [`TestCluster::start_with_timeout`] does, node `i` (from 0) with
    /// `extra(i)` appended to its configuration file.
    pub fn start_each(
        dir: &Path,
        n: usize,
        request_timeout_ms: u64,
        extra: &dyn Fn(usize) -> String,
    ) -> TestCluster {
        let net = TestNet::new();
        let tls = dir.join("tls");
        std::fs::create_dir_all(&tls).unwrap();
        write_certs_naming(&tls, &net.all_addresses());
        let config = dir.join("prism.toml");
        std::fs::write(&config, config_text(&tls, request_timeout_ms)).unwrap();
        let mut cluster = TestCluster {
            dir: dir.to_path_buf(),
            nodes: Vec::new(),
            config,
            net,
        };
        for i in 0..n {
            cluster.add_node_with(&extra(i));
        }
        cluster.wait_for_members(n);
        cluster
    }

    /// Starts one more node, joining through node-1 (or bootstrapping, if it is the first).
    pub fn add_node(&mut self) -> usize {
        self.add_node_with("")
    }

    /// [`TestCluster::add_node`], with `extra` appended to the node's configuration file.
    pub fn add_node_with(&mut self, extra: &str) -> usize {
        let i = self.nodes.len() + 1;
        let name = format!("node-{i}");
        let place = self.net.add_node();
        let (http_port, raft_port) = if self.net.is_isolated() {
            (HTTP_PORT, RAFT_PORT)
        } else {
            (free_port(), free_udp_port())
        };
        let raft_addr = format!("{}:{raft_port}", place.ip);
        let mut args = vec![
            "--cluster".to_string(),
            "--raft-addr".into(),
            raft_addr.clone(),
            "--node-id".into(),
            name.clone(),
        ];
        match self.nodes.first() {
            None => args.push("--bootstrap".into()),
            Some(first) => {
                args.push("--peers".into());
                args.push(first.raft_addr.clone());
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let config = if extra.is_empty() {
            self.config.clone()
        } else {
            let own = self.dir.join(format!("prism-{name}.toml"));
            let base = std::fs::read_to_string(&self.config).unwrap();
            std::fs::write(&own, format!("{base}\n{extra}\n")).unwrap();
            own
        };
        let config = config.to_string_lossy().to_string();
        let server = Server::start_placed(
            &self.dir.join(&name),
            &[("PRISM_CONFIG", &config)],
            &args,
            &place,
            http_port,
        );
        self.nodes.push(ClusterNode {
            server,
            name,
            raft_addr,
        });
        i - 1
    }

    pub fn node(&self, name: &str) -> &ClusterNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .expect("a node of this name")
    }

    pub fn index_of(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .expect("a node of this name")
    }

    /// `/cluster/status` from the first running node that answers.
    pub fn status(&self) -> Value {
        wait_until(
            Duration::from_secs(30),
            "a node to answer /cluster/status",
            || {
                self.nodes.iter().find_map(|n| {
                    let (code, body) = n.server.get("/cluster/status");
                    (code == 200).then_some(body)
                })
            },
        )
    }

    /// Waits until some node's `/cluster/status` lists `n` nodes with a leader, and every
    /// node's state is settled (no candidate, suspect or dead).
    pub fn wait_for_members(&self, n: usize) -> Value {
        wait_until(
            Duration::from_secs(60),
            &format!("{n} members with a leader"),
            || {
                let status = self.status();
                let nodes = status["nodes"].as_array()?;
                let settled = nodes.iter().all(|node| {
                    matches!(
                        node["state"].as_str(),
                        Some("leader" | "follower" | "learner")
                    )
                });
                // Voters: every node up to 3, 3 of 4, 5 of more.
                let voters = match n {
                    0..=3 => n,
                    4 => 3,
                    _ => 5,
                };
                let learners = nodes
                    .iter()
                    .filter(|node| node["state"] == "learner")
                    .count();
                (nodes.len() == n
                    && !status["leader"].is_null()
                    && settled
                    && learners == n - voters)
                    .then_some(status)
            },
        )
    }

    /// Creates `name` with `shards` shards (replication by default) through node `via`.
    pub fn create_collection(&self, via: usize, name: &str, shards: u32) -> Value {
        let schema = json!({
            "fields": {"title": {"type": "text"}, "n": {"type": "i64"}},
            "shards": shards,
        });
        let (code, body) = self.nodes[via]
            .server
            .put_json(&format!("/collections/{name}"), &schema);
        assert_eq!(code, 201, "{body}");
        body
    }

    /// Waits until every shard of `collection` has a leader.
    pub fn wait_for_leaders(&self, collection: &str, shards: u32) {
        wait_until(
            Duration::from_secs(30),
            "every shard to have a leader",
            || {
                let report = self.shards_report()?;
                let led = (0..shards).all(|s| {
                    report["copies"].as_array().is_some_and(|copies| {
                        copies.iter().any(|c| {
                            c["collection"] == collection
                                && c["shard"] == s
                                && c["role"] == "leader"
                        })
                    })
                });
                led.then_some(())
            },
        );
    }

    /// `/cluster/shards` from the first running node that answers.
    pub fn shards_report(&self) -> Option<Value> {
        self.nodes.iter().find_map(|n| {
            let (code, body) = n.server.get("/cluster/shards");
            (code == 200).then_some(body)
        })
    }

    /// The node that leads the metadata group and the most shard groups.
    pub fn busiest_leader(&self) -> String {
        let status = self.status();
        let report = self.shards_report().expect("a shards report");
        let meta_leader = status["leader"].as_str().unwrap_or_default().to_string();
        let led = |name: &str| report["leaders_per_node"][name].as_u64().unwrap_or(0);
        self.nodes
            .iter()
            .map(|n| n.name.clone())
            .max_by_key(|name| {
                (
                    led(name) + u64::from(*name == meta_leader) * 1000,
                    name.clone(),
                )
            })
            .expect("nodes")
    }

    /// Writes documents `ids` through node `via` (one request); the status and answer.
    pub fn write(&self, via: usize, collection: &str, ids: &[String], value: i64) -> (u16, Value) {
        let documents: Vec<Value> = ids
            .iter()
            .map(|id| json!({"id": id, "fields": {"title": format!("doc {id}"), "n": value}}))
            .collect();
        self.nodes[via].server.post_json(
            &format!("/collections/{collection}/documents"),
            &json!({ "documents": documents }),
        )
    }

    /// Per copy: (node, num_docs, checksum) of each shard of `collection`, after a refresh.
    pub fn copies_in_sync(&self, collection: &str, via: usize) -> Option<Vec<Value>> {
        let (code, _) = self.nodes[via]
            .server
            .post_json(&format!("/collections/{collection}/refresh"), &json!({}));
        if code != 200 {
            return None;
        }
        let report = self.nodes[via].server.get("/cluster/shards").1;
        let copies: Vec<Value> = report["copies"]
            .as_array()?
            .iter()
            .filter(|c| c["collection"] == collection)
            .cloned()
            .collect();
        Some(copies)
    }

    /// Waits until every copy of every shard of `collection` holds the same content
    /// (count and checksum) with `copies_per_shard` copies; returns the total document
    /// count.
    pub fn wait_in_sync(
        &self,
        collection: &str,
        via: usize,
        shards: u32,
        copies_per_shard: usize,
    ) -> u64 {
        let last = std::cell::RefCell::new(Vec::new());
        let done = std::cell::Cell::new(false);
        let _report = Reported(&last, &done);
        let total = wait_until(
            Duration::from_secs(60),
            "every copy to hold the same content",
            || {
                let copies = self.copies_in_sync(collection, via)?;
                *last.borrow_mut() = copies.clone();
                let mut total = 0;
                for shard in 0..shards {
                    let of: Vec<&Value> = copies.iter().filter(|c| c["shard"] == shard).collect();
                    if of.len() != copies_per_shard {
                        return None;
                    }
                    let first = (&of[0]["num_docs"], &of[0]["content_checksum"]);
                    if of
                        .iter()
                        .any(|c| (&c["num_docs"], &c["content_checksum"]) != first)
                    {
                        return None;
                    }
                    if of.iter().any(|c| c["lag"] != 0) {
                        return None;
                    }
                    total += of[0]["num_docs"].as_u64()?;
                }
                Some(total)
            },
        );
        done.set(true);
        total
    }
}

/// Prints the copies last seen when a wait for them fails.
struct Reported<'a>(
    &'a std::cell::RefCell<Vec<Value>>,
    &'a std::cell::Cell<bool>,
);

impl Drop for Reported<'_> {
    fn drop(&mut self) {
        if !self.1.get() {
            eprintln!(
                "copies last seen: {}",
                Value::Array(self.0.borrow().clone())
            );
        }
    }
}

/// What became of each document a test wrote.
#[derive(Default)]
pub struct Ledger {
    pub acknowledged: Vec<String>,
    pub refused: Vec<String>,
    pub unknown: Vec<String>,
}

impl Ledger {
    /// Files each id of a write's answer under what the answer says of it.
    pub fn record(&mut self, ids: &[String], code: u16, answer: &Value) {
        let refused: Vec<&str> = answer["errors"]
            .as_array()
            .map(|e| e.iter().filter_map(|e| e["id"].as_str()).collect())
            .unwrap_or_default();
        let error = answer["error"]["code"].as_str().unwrap_or_default();
        if code == 201 {
            assert_eq!(
                answer["successful_docs"].as_u64(),
                Some((ids.len() - refused.len()) as u64),
                "the refusals listed do not add up: {answer}"
            );
        }
        for id in ids {
            match (code, error) {
                (201, _) if !refused.contains(&id.as_str()) => self.acknowledged.push(id.clone()),
                // A per-document refusal in a 201 names no code; spec 000 lists them as
                // not written.
                (201, _) | (503, "no_quorum") => self.refused.push(id.clone()),
                _ => self.unknown.push(id.clone()),
            }
        }
    }

    /// Every acknowledged id is on node `via`, and no refused one.
    pub fn check(&self, cluster: &TestCluster, via: usize) {
        let server = &cluster.nodes[via].server;
        for id in &self.acknowledged {
            let (code, doc) = server.get(&format!("/collections/docs/documents/{id}"));
            assert_eq!(
                code, 200,
                "acknowledged {id} is missing on node {via}: {doc}"
            );
        }
        for id in &self.refused {
            let (code, doc) = server.get(&format!("/collections/docs/documents/{id}"));
            assert_eq!(code, 404, "refused {id} was applied: {doc}");
        }
    }
}
