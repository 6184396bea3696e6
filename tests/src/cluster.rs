//! Three (or more) `prism-server` processes federated over mutual-TLS QUIC on loopback, each
//! with its own `prism.toml`, certificates made at run time with rcgen.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};

use crate::Server;

/// A CA and one node certificate for localhost/127.0.0.1, as scripts/generate-certs.sh makes.
pub fn write_certs(dir: &Path) {
    write_certs_naming(dir, &[]);
}

/// As [`write_certs`], the node certificate naming `addresses` too.
pub fn write_certs_naming(dir: &Path, addresses: &[Ipv4Addr]) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let mut node = CertificateParams::new(Vec::<String>::new()).unwrap();
    node.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into().unwrap()),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ];
    node.subject_alt_names.extend(
        addresses
            .iter()
            .map(|ip| SanType::IpAddress(IpAddr::V4(*ip))),
    );
    let node_key = KeyPair::generate().unwrap();
    let node_cert = node
        .signed_by(&node_key, &Issuer::from_params(&ca, &ca_key))
        .unwrap();
    std::fs::write(dir.join("ca-cert.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("node-cert.pem"), node_cert.pem()).unwrap();
    std::fs::write(dir.join("node-key.pem"), node_key.serialize_pem()).unwrap();
}

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Node `i` of a static federation: every other port is a seed.
pub fn node_config(i: usize, ports: &[u16], tls: &Path) -> String {
    let seeds: Vec<String> = ports
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, p)| format!("127.0.0.1:{p}"))
        .collect();
    node_config_with(i, ports[i], &seeds, tls, "")
}

/// A node's `prism.toml` with short test timings; `extra` is appended (another section, such
/// as `[federation.discovery]`).
pub fn node_config_with(i: usize, port: u16, seeds: &[String], tls: &Path, extra: &str) -> String {
    let seeds: Vec<String> = seeds.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        r#"[cluster]
enabled = true
node_id = "node-{n}"
bind_addr = "127.0.0.1:{port}"
seed_nodes = [{seeds}]
connect_timeout_ms = 1000
request_timeout_ms = 2000

[cluster.tls]
enabled = true
cert_path = "{tls}/node-cert.pem"
key_path = "{tls}/node-key.pem"
ca_cert_path = "{tls}/ca-cert.pem"
skip_verify = false

[cluster.health]
heartbeat_interval_ms = 200
failure_threshold = 3
suspect_timeout_ms = 1500

[federation.query]
allow_partial_results = true
partial_results_timeout_ms = 2000
min_successful_shards = 1

{extra}"#,
        n = i + 1,
        seeds = seeds.join(", "),
        tls = tls.display()
    )
}

/// Starts `n` federated nodes under `dir`, each creating the collection in `schema_yaml`.
pub fn start_federation(dir: &Path, n: usize, schema_yaml: &str) -> Vec<Server> {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    write_certs(&tls);
    let schemas = dir.join("schemas");
    std::fs::create_dir_all(&schemas).unwrap();
    std::fs::write(schemas.join("collection.yaml"), schema_yaml).unwrap();
    let ports: Vec<u16> = (0..n).map(|_| free_udp_port()).collect();
    (0..n)
        .map(|i| {
            let config = dir.join(format!("node{}.toml", i + 1));
            std::fs::write(&config, node_config(i, &ports, &tls)).unwrap();
            let config = config.to_string_lossy().to_string();
            let schemas = schemas.to_string_lossy().to_string();
            Server::start(
                &dir.join(format!("data{}", i + 1)),
                &[("PRISM_CONFIG", &config), ("PRISM_SCHEMAS_DIR", &schemas)],
            )
        })
        .collect()
}
