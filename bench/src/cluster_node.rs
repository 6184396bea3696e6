//! What the multi-process cluster benchmarks share: certificates naming each node, a node's
//! mutual-TLS QUIC endpoint answering for its Raft groups, and JSON lines on stdout.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use prism_cluster::network::HandlerService;
use prism_cluster::raft::network::RaftHost;
use prism_cluster::tls::PemMaterial;
use prism_cluster::transport::{Transport, TransportConfig, PROTOCOL_VERSION};
use serde_json::Value;

pub fn name(id: u64) -> String {
    format!("n{id}")
}

/// A CA and a certificate naming each of nodes `1..=nodes`, in `dir`.
pub fn generate_certs(dir: &Path, nodes: u64) -> Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/generate-certs.sh");
    for id in 1..=nodes {
        let status = Command::new(&script)
            .args(["--node", &name(id)])
            .env("TLS_DIR", dir)
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("scripts/generate-certs.sh --node {} failed", name(id));
        }
    }
    Ok(())
}

/// Node `id`'s host of Raft groups, answering on `address` over QUIC with its certificate
/// from `certs`; the transport is the network its groups call peers with.
pub fn start(id: u64, certs: &Path, address: &str) -> Result<(Arc<RaftHost>, Arc<Transport>)> {
    let read = |file: String| std::fs::read(certs.join(&file)).with_context(|| file);
    let tls = prism_cluster::tls::build(
        &PemMaterial {
            cert_chain: read(format!("{}-cert.pem", name(id)))?,
            key: read(format!("{}-key.pem", name(id)))?,
            ca: Some(read("ca-cert.pem".into())?),
        },
        false,
    )?;
    let host = Arc::new(RaftHost::new(
        name(id),
        prism_cluster::rpc::process_incarnation(),
    ));
    let transport = Transport::start(
        TransportConfig {
            node_id: name(id),
            bind_addr: address.parse()?,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(60),
            max_connections: 64,
            protocol_version: PROTOCOL_VERSION,
            fault_delay: Duration::ZERO,
        },
        &tls,
        Arc::new(HandlerService(host.clone())),
    )?;
    Ok((host, transport))
}

/// One JSON line on stdout, for the driving process.
pub fn say(value: Value) {
    println!("{value}");
    let _ = std::io::stdout().flush();
}

/// A node process driven by JSON lines over its stdin and stdout; its stderr goes to a file,
/// quoted when the node exits early.
pub struct NodeProcess {
    pub child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub stderr: PathBuf,
}

impl NodeProcess {
    /// Spawns `command` with its stderr appended to `stderr`.
    pub fn spawn(mut command: Command, stderr: PathBuf) -> Result<NodeProcess> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr)?;
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        Ok(NodeProcess {
            child,
            stdin,
            stdout,
            stderr,
        })
    }

    /// The node's next line.
    pub fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!(
                "node {} exited: {}",
                self.child.id(),
                std::fs::read_to_string(&self.stderr).unwrap_or_default()
            );
        }
        Ok(serde_json::from_str(&line)?)
    }

    pub fn send(&mut self, command: Value) -> Result<()> {
        writeln!(self.stdin, "{command}")?;
        Ok(())
    }

    pub fn ask(&mut self, command: Value) -> Result<Value> {
        self.send(command)?;
        self.read()
    }
}
