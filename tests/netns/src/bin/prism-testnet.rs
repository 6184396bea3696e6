//! The test network for programs that are not Rust tests (the cluster benchmark in
//! `bench/cluster/`): `prism-testnet N` makes a private network of N node places and prints
//! it as one JSON line, `{"isolated": bool, "nodes": [{"ip": .., "netns": ..}, ..]}`. Then it
//! reads commands, one a line, and answers each `ok` or `error: ...`:
//!
//! - `cut A,B C`: packets from nodes A and B to node C are dropped (one way);
//! - `partition A B,C`: both ways;
//! - `drop A P`: node A drops each UDP packet it receives with probability P;
//! - `heal`: every cut and drop is lifted.
//!
//! Nodes are numbered from 0. At the end of its input (its parent exited, even by SIGKILL)
//! it deletes the network and what still runs in it.

use std::io::{BufRead, Write};

use prism_testnet::TestNet;

fn nodes(list: &str, count: usize) -> Result<Vec<usize>, String> {
    list.split(',')
        .map(|n| {
            let n: usize = n
                .parse()
                .map_err(|_| format!("{n:?} is not a node number"))?;
            if n < count {
                Ok(n)
            } else {
                Err(format!("node {n} does not exist; there are {count}"))
            }
        })
        .collect()
}

fn apply(net: &TestNet, count: usize, line: &str) -> Result<(), String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    if !net.is_isolated() && !matches!(words.as_slice(), ["heal"] | []) {
        return Err(
            "the nodes share loopback (no network namespaces): faults are unavailable".into(),
        );
    }
    match words.as_slice() {
        [] => Ok(()),
        ["cut", from, to] => {
            net.cut(&nodes(from, count)?, &nodes(to, count)?);
            Ok(())
        }
        ["partition", a, b] => {
            net.partition(&nodes(a, count)?, &nodes(b, count)?);
            Ok(())
        }
        ["drop", node, p] => {
            let p: f64 = p
                .parse()
                .ok()
                .filter(|p| (0.0..=1.0).contains(p))
                .ok_or_else(|| format!("{p:?} is not a probability"))?;
            for n in nodes(node, count)? {
                net.drop_at_random(n, p);
            }
            Ok(())
        }
        ["heal"] => {
            if net.is_isolated() {
                net.heal();
            }
            Ok(())
        }
        _ => Err(format!(
            "unknown command {line:?}: cut A,B C | partition A B,C | drop A P | heal"
        )),
    }
}

fn main() {
    let count: usize = match std::env::args().nth(1).map(|n| n.parse()) {
        Some(Ok(n)) if (1..=32).contains(&n) => n,
        _ => {
            eprintln!("usage: prism-testnet NODES (1 to 32), then commands on stdin");
            std::process::exit(2);
        }
    };
    let mut net = TestNet::new();
    let places: Vec<serde_json::Value> = (0..count)
        .map(|_| {
            let place = net.add_node();
            serde_json::json!({"ip": place.ip.to_string(), "netns": place.netns})
        })
        .collect();
    let mut out = std::io::stdout().lock();
    let layout = serde_json::json!({"isolated": net.is_isolated(), "nodes": places});
    let _ = writeln!(out, "{layout}");
    let _ = out.flush();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        // A cut that fails (iptables) panics in the library: answer it, do not die with the
        // network still up.
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| apply(&net, count, &line)))
                .unwrap_or_else(|_| Err("the command failed; see stderr".into()));
        let answer = match outcome {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("error: {e}"),
        };
        if writeln!(out, "{answer}").and_then(|_| out.flush()).is_err() {
            break;
        }
    }
}
