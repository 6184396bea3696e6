//! Where a test cluster's nodes live: each in its own network namespace with its own address,
//! so that a test can cut any set of nodes off from any other (one way too) and drop packets
//! at random, with iptables inside the namespaces. Without the rights to make namespaces the
//! nodes run on loopback addresses of their own instead, and the harness says so.
//!
//! The layout, for cluster `prismt-PID-N`:
//! - a hub namespace `prismt-PID-N-hub` holding a bridge, linked to this (the test's)
//!   namespace by a veth pair whose near end has `198.A.B.254/24`;
//! - per node `i`, a namespace `prismt-PID-N-i` whose `eth0` (`198.A.B.i`) is a veth into the
//!   bridge.
//!
//! The addresses are from 198.18.0.0/15, reserved for benchmarking (RFC 2544), so the route
//! to them hides no real network.
//!
//! Every link has one end in a namespace, so deleting the namespaces deletes everything. A
//! test that dies without its `Drop` leaves namespaces named after its process id, and the
//! next harness removes them (and kills what runs in them) when that process is gone.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

const PREFIX: &str = "prismt-";

/// How a node's traffic is placed.
#[derive(Debug, Clone)]
pub struct NodePlace {
    /// Its address: `198.A.B.i` in a namespace, `127.0.B.i` on loopback.
    pub ip: Ipv4Addr,
    /// The namespace to start it in, if any.
    pub netns: Option<String>,
}

/// A private network for one test cluster.
pub struct TestNet {
    name: String,
    isolated: bool,
    /// The first three octets of the nodes' addresses.
    prefix: [u8; 3],
    nodes: Vec<NodePlace>,
}

fn run(what: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{what}: cannot run {}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what}: `{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(what: &str, args: &[&str]) {
    if let Err(e) = run(what, args) {
        panic!("{e}");
    }
}

/// Namespaces left by test processes that are gone, or named `ours` (left by an earlier
/// process with this one's pid): their processes are killed and the namespaces deleted.
fn sweep_stale(ours: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if name.starts_with(&format!("{ours}-")) {
            delete_namespace(name);
            continue;
        }
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        delete_namespace(name);
    }
}

fn delete_namespace(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).status();
}

impl TestNet {
    /// A new private network: namespaces when this process may make them, loopback
    /// addresses otherwise (said on stderr). `PRISM_TEST_LOOPBACK=1` asks for loopback;
    /// `PRISM_TEST_REQUIRE_NETNS=1` (CI) makes the fallback a failure instead.
    pub fn new() -> TestNet {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{pid}-{n}");
        // 198.18.0.0/15: one /24 per (process, cluster).
        let x = pid.wrapping_mul(8).wrapping_add(n) % 512;
        let prefix = [198, 18 + (x / 256) as u8, (x % 256) as u8];
        let mut net = TestNet {
            name,
            isolated: false,
            prefix,
            nodes: Vec::new(),
        };
        if std::env::var_os("PRISM_TEST_LOOPBACK").is_some() {
            eprintln!("PRISM_TEST_LOOPBACK is set: the nodes run on 127.0.0.x loopback addresses; partitions and packet drops are unavailable");
        } else {
            sweep_stale(&net.name);
            match net.make_hub() {
                Ok(()) => net.isolated = true,
                Err(e) => {
                    delete_namespace(&net.hub());
                    let why = format!("network namespaces are unavailable ({e})");
                    assert!(
                        std::env::var_os("PRISM_TEST_REQUIRE_NETNS").is_none(),
                        "{why}, and PRISM_TEST_REQUIRE_NETNS is set"
                    );
                    eprintln!("{why}: the nodes run on 127.0.0.x loopback addresses; partitions and packet drops are unavailable (run as root for them)");
                }
            }
        }
        if !net.isolated {
            net.prefix = [127, 0, (x % 250) as u8 + 1];
        }
        net
    }

    fn hub(&self) -> String {
        format!("{}-hub", self.name)
    }

    /// The hub namespace, its bridge, and the link from the test's namespace.
    fn make_hub(&self) -> Result<(), String> {
        let hub = self.hub();
        run("make the hub namespace", &["ip", "netns", "add", &hub])?;
        run(
            "make the bridge",
            &["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"],
        )?;
        run(
            "bring the bridge up",
            &["ip", "-n", &hub, "link", "set", "br0", "up"],
        )?;
        // The near end's name must be unique here and at most 15 bytes.
        let near = self.near_link();
        run(
            "link the test to the hub",
            &[
                "ip", "link", "add", &near, "type", "veth", "peer", "name", "uplink", "netns", &hub,
            ],
        )?;
        run(
            "attach the uplink",
            &[
                "ip", "-n", &hub, "link", "set", "uplink", "master", "br0", "up",
            ],
        )?;
        let address = format!("{}/24", self.address(254));
        run(
            "address the test's end",
            &["ip", "addr", "add", &address, "dev", &near],
        )?;
        run(
            "bring the test's end up",
            &["ip", "link", "set", &near, "up"],
        )?;
        // Cuts and drops need iptables in the namespaces: found now, not at the first cut.
        run(
            "use iptables in a namespace",
            &["ip", "netns", "exec", &hub, "iptables", "-w", "-L", "INPUT"],
        )
    }

    fn near_link(&self) -> String {
        // Unique per test network (process and /24), and at most 15 bytes.
        let x = u32::from(self.prefix[1] - 18) * 256 + u32::from(self.prefix[2]);
        format!("prt{}-{x:03x}", std::process::id() % 100_000)
    }

    fn address(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], host)
    }

    /// Whether the nodes have namespaces of their own (and can be partitioned).
    pub fn is_isolated(&self) -> bool {
        self.isolated
    }

    /// The addresses certificates must name: every node address this network can hand out.
    pub fn all_addresses(&self) -> Vec<Ipv4Addr> {
        (1..=32).map(|i| self.address(i)).collect()
    }

    /// A place for one more node: its namespace, linked to the hub, or a loopback address.
    pub fn add_node(&mut self) -> NodePlace {
        let i = self.nodes.len() as u8 + 1;
        assert!(i <= 32, "a test network holds up to 32 nodes");
        let ip = self.address(i);
        let netns = self.isolated.then(|| {
            let ns = format!("{}-{i}", self.name);
            let hub = self.hub();
            let port = format!("n{i}");
            must("make a node namespace", &["ip", "netns", "add", &ns]);
            must(
                "link the node to the hub",
                &[
                    "ip", "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ],
            );
            must(
                "attach the node's port",
                &[
                    "ip", "-n", &hub, "link", "set", &port, "master", "br0", "up",
                ],
            );
            let address = format!("{ip}/24");
            must(
                "address the node",
                &["ip", "-n", &ns, "addr", "add", &address, "dev", "eth0"],
            );
            must(
                "bring eth0 up",
                &["ip", "-n", &ns, "link", "set", "eth0", "up"],
            );
            must("bring lo up", &["ip", "-n", &ns, "link", "set", "lo", "up"]);
            ns
        });
        let place = NodePlace { ip, netns };
        self.nodes.push(place.clone());
        place
    }

    fn netns_of(&self, node: usize) -> &str {
        assert!(
            self.isolated,
            "partitions and drops need network namespaces (run as root)"
        );
        self.nodes[node].netns.as_deref().expect("a namespace")
    }

    fn iptables(&self, node: usize, rule: &[&str]) {
        let ns = self.netns_of(node).to_string();
        let mut args = vec!["ip", "netns", "exec", &ns, "iptables", "-w"];
        args.extend_from_slice(rule);
        must("change a node's firewall", &args);
    }

    /// Packets from every node of `from` to every node of `to` are dropped (one way: the
    /// other direction still flows). Nodes are indexes in the order they were added.
    pub fn cut(&self, from: &[usize], to: &[usize]) {
        for &receiver in to {
            for &sender in from {
                let source = self.nodes[sender].ip.to_string();
                self.iptables(receiver, &["-A", "INPUT", "-s", &source, "-j", "DROP"]);
            }
        }
    }

    /// `a` and `b` can no longer reach each other, either way.
    pub fn partition(&self, a: &[usize], b: &[usize]) {
        self.cut(a, b);
        self.cut(b, a);
    }

    /// Node `node` drops each UDP packet it receives (the nodes' QUIC traffic) with
    /// `probability`.
    pub fn drop_at_random(&self, node: usize, probability: f64) {
        let p = format!("{probability}");
        self.iptables(
            node,
            &[
                "-A",
                "INPUT",
                "-p",
                "udp",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p,
                "-j",
                "DROP",
            ],
        );
    }

    /// Every cut and drop is lifted.
    pub fn heal(&self) {
        for node in 0..self.nodes.len() {
            self.iptables(node, &["-F", "INPUT"]);
        }
    }
}

impl Default for TestNet {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        if !self.isolated {
            return;
        }
        for place in &self.nodes {
            if let Some(ns) = &place.netns {
                delete_namespace(ns);
            }
        }
        delete_namespace(&self.hub());
    }
}
