//! The QUIC transport between real endpoints on loopback: calls succeed between nodes of one
//! CA; a node of another CA, a node without a certificate, a node of another protocol
//! version, and a node that claims a name its certificate was not issued to are refused.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use prism_cluster::tls::{self, PemMaterial, TlsMaterial};
use prism_cluster::transport::{Service, Transport, TransportConfig, PROTOCOL_VERSION};
use prism_cluster::ClusterError;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    Ca { params, key, pem }
}

/// A node certificate for localhost and 127.0.0.1, signed by `ca`.
fn node_pem(ca: &Ca) -> PemMaterial {
    named_node_pem(ca, None)
}

/// The same, issued to node `name` (a `prism-node:<name>` URI) when given.
fn named_node_pem(ca: &Ca, name: Option<&str>) -> PemMaterial {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into().unwrap()),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ];
    if let Some(name) = name {
        let uri = format!("{}{name}", tls::NODE_URI_PREFIX);
        params
            .subject_alt_names
            .push(SanType::URI(uri.as_str().try_into().unwrap()));
    }
    let key = KeyPair::generate().unwrap();
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    PemMaterial {
        cert_chain: cert.pem().into_bytes(),
        key: key.serialize_pem().into_bytes(),
        ca: Some(ca.pem.clone().into_bytes()),
    }
}

/// Answers a `Vec<u8>` request with the same bytes reversed.
struct Reverse;

impl Service for Reverse {
    fn handle(
        &self,
        _peer: String,
        request: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<u8>> + Send>> {
        let mut values: Vec<u8> = postcard::from_bytes(&request).unwrap_or_default();
        values.reverse();
        Box::pin(async move { postcard::to_stdvec(&values).unwrap() })
    }
}

fn config(node_id: &str, version: u32) -> TransportConfig {
    TransportConfig {
        node_id: node_id.into(),
        bind_addr: "127.0.0.1:0".parse().unwrap(),
        connect_timeout: Duration::from_secs(3),
        request_timeout: Duration::from_secs(3),
        max_connections: 10,
        protocol_version: version,
        fault_delay: Duration::ZERO,
    }
}

fn start(node_id: &str, tls: &TlsMaterial, version: u32) -> Arc<Transport> {
    Transport::start(config(node_id, version), tls, Arc::new(Reverse)).unwrap()
}

#[tokio::test]
async fn nodes_of_one_ca_call_each_other() {
    let ca = ca("cluster");
    let a = start(
        "a",
        &tls::build(&node_pem(&ca), false).unwrap(),
        PROTOCOL_VERSION,
    );
    let b = start(
        "b",
        &tls::build(&node_pem(&ca), false).unwrap(),
        PROTOCOL_VERSION,
    );
    let to_b = format!("localhost:{}", b.local_addr().unwrap().port());
    let reply: Vec<u8> = a.call(&to_b, &vec![1u8, 2, 3]).await.unwrap();
    assert_eq!(reply, vec![3, 2, 1]);
    assert_eq!(a.peer_node_id(&to_b).await.unwrap(), "b");
    // Many calls share one pooled connection, each on its own stream.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..20u8 {
        let (a, to_b) = (a.clone(), to_b.clone());
        calls.spawn(async move { (i, a.call::<Vec<u8>, Vec<u8>>(&to_b, &vec![i, 0]).await) });
    }
    while let Some(done) = calls.join_next().await {
        let (i, reply) = done.unwrap();
        assert_eq!(reply.unwrap(), vec![0, i]);
    }
    assert_eq!(b.accepted_connections(), 1, "one pooled connection from a");
    // Concurrent first calls from a new node share one handshake.
    let c = start(
        "c",
        &tls::build(&node_pem(&ca), false).unwrap(),
        PROTOCOL_VERSION,
    );
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..10u8 {
        let (c, to_b) = (c.clone(), to_b.clone());
        calls.spawn(async move { c.call::<Vec<u8>, Vec<u8>>(&to_b, &vec![i]).await });
    }
    while let Some(done) = calls.join_next().await {
        done.unwrap().unwrap();
    }
    assert_eq!(b.accepted_connections(), 2, "one more connection, from c");
}

#[tokio::test]
async fn a_node_of_another_ca_is_refused_both_ways() {
    let cluster = ca("cluster");
    let other = ca("intruder");
    let member = start(
        "member",
        &tls::build(&node_pem(&cluster), false).unwrap(),
        PROTOCOL_VERSION,
    );
    let intruder = start(
        "intruder",
        &tls::build(&node_pem(&other), false).unwrap(),
        PROTOCOL_VERSION,
    );
    let to_member = format!("localhost:{}", member.local_addr().unwrap().port());
    let err = intruder
        .call::<Vec<u8>, Vec<u8>>(&to_member, &vec![1])
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClusterError::Connect { .. } | ClusterError::Rpc { .. }),
        "{err}"
    );
    let to_intruder = format!("localhost:{}", intruder.local_addr().unwrap().port());
    let err = member
        .call::<Vec<u8>, Vec<u8>>(&to_intruder, &vec![1])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("UnknownIssuer") || err.to_string().contains("certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn a_node_without_a_certificate_is_refused() {
    let cluster = ca("cluster");
    let member = start(
        "member",
        &tls::build(&node_pem(&cluster), false).unwrap(),
        PROTOCOL_VERSION,
    );
    // A client that trusts the CA but presents no certificate of its own.
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(cluster.pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    client.alpn_protocols = vec![tls::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let outcome = async {
        let connection = endpoint
            .connect(member.local_addr().unwrap(), "localhost")?
            .await?;
        let (mut send, mut recv) = connection.open_bi().await?;
        send.write_all(&[0, 0, 0, 0]).await?;
        send.finish()?;
        let mut buf = [0u8; 4];
        recv.read_exact(&mut buf).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    let result = tokio::time::timeout(Duration::from_secs(5), outcome)
        .await
        .expect("refusal is prompt");
    assert!(
        result.is_err(),
        "a client without a certificate got an answer"
    );
}

#[tokio::test]
async fn an_incompatible_protocol_version_is_refused_clearly() {
    let cluster = ca("cluster");
    let new = start(
        "new",
        &tls::build(&node_pem(&cluster), false).unwrap(),
        PROTOCOL_VERSION + 1,
    );
    let old = start(
        "old",
        &tls::build(&node_pem(&cluster), false).unwrap(),
        PROTOCOL_VERSION,
    );
    let to_new = format!("localhost:{}", new.local_addr().unwrap().port());
    let err = old
        .call::<Vec<u8>, Vec<u8>>(&to_new, &vec![1])
        .await
        .unwrap_err();
    match err {
        ClusterError::IncompatibleVersion { ours, theirs, .. } => {
            assert_eq!((ours, theirs), (PROTOCOL_VERSION, PROTOCOL_VERSION + 1));
        }
        other => panic!("expected a version refusal, got {other}"),
    }
    assert!(old
        .call::<Vec<u8>, Vec<u8>>(&to_new, &vec![1])
        .await
        .unwrap_err()
        .to_string()
        .contains("upgrade"));
}

#[tokio::test]
async fn skip_verify_accepts_any_certificate() {
    let a = start(
        "a",
        &tls::build(&node_pem(&ca("one")), true).unwrap(),
        PROTOCOL_VERSION,
    );
    let b = start(
        "b",
        &tls::build(&node_pem(&ca("two")), true).unwrap(),
        PROTOCOL_VERSION,
    );
    let to_b = format!("127.0.0.1:{}", b.local_addr().unwrap().port());
    let reply: Vec<u8> = a.call(&to_b, &vec![5u8, 6]).await.unwrap();
    assert_eq!(reply, vec![6, 5]);
}

#[tokio::test]
async fn a_dead_peer_costs_no_more_than_the_connect_timeout() {
    let ca = ca("cluster");
    let a = start(
        "a",
        &tls::build(&node_pem(&ca), false).unwrap(),
        PROTOCOL_VERSION,
    );
    // A UDP port nobody answers on.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let to_silent = format!("localhost:{}", silent.local_addr().unwrap().port());
    let started = std::time::Instant::now();
    let err = a
        .call::<Vec<u8>, Vec<u8>>(&to_silent, &vec![1])
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            err,
            ClusterError::Timeout { .. } | ClusterError::Connect { .. }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_node_certified_as_a_that_claims_to_be_b_is_refused_both_ways() {
    let cluster = ca("cluster");
    let tls_for = |name: &str| tls::build(&named_node_pem(&cluster, Some(name)), false).unwrap();
    let b = start("b", &tls_for("b"), PROTOCOL_VERSION);
    let to_b = format!("localhost:{}", b.local_addr().unwrap().port());
    // Honest: a's certificate names a.
    let a = start("a", &tls_for("a"), PROTOCOL_VERSION);
    let reply: Vec<u8> = a.call(&to_b, &vec![1u8, 2]).await.unwrap();
    assert_eq!(reply, vec![2, 1]);
    assert_eq!(a.peer_node_id(&to_b).await.unwrap(), "b");

    // As a client: certified as a, it says it is c.
    let liar = start("c", &tls_for("a"), PROTOCOL_VERSION);
    let err = liar
        .call::<Vec<u8>, Vec<u8>>(&to_b, &vec![1])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("claims to be node \"c\"") && err.to_string().contains("[\"a\"]"),
        "{err}"
    );

    // As a server: certified as a, it answers as d.
    let impostor = start("d", &tls_for("a"), PROTOCOL_VERSION);
    let to_impostor = format!("localhost:{}", impostor.local_addr().unwrap().port());
    let err = b
        .call::<Vec<u8>, Vec<u8>>(&to_impostor, &vec![1])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("claims to be node \"d\""), "{err}");

    // A certificate that names no node binds nothing (shared certificates of federation).
    let shared = start(
        "e",
        &tls::build(&node_pem(&cluster), false).unwrap(),
        PROTOCOL_VERSION,
    );
    shared
        .call::<Vec<u8>, Vec<u8>>(&to_b, &vec![1])
        .await
        .unwrap();
}
