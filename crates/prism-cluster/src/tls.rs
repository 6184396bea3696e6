//! Mutual TLS for the QUIC transport: every node presents a certificate signed by the cluster
//! CA and verifies its peer's against the same CA. `skip_verify` turns verification off for
//! local development, and says so loudly.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::TlsConfig;
use crate::error::{ClusterError, Result};

/// ALPN protocol id of Prism's cluster traffic.
pub const ALPN: &[u8] = b"prism-cluster";

/// How a certificate names the node it was issued to: a subjectAltName URI
/// `prism-node:<name>` (`scripts/generate-certs.sh --node NAME` writes one).
pub const NODE_URI_PREFIX: &str = "prism-node:";

/// The node names certificate `der` carries.
pub fn node_names(der: &[u8]) -> Result<Vec<String>> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| tls_err("peer certificate", e))?;
    let mut names = Vec::new();
    if let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| tls_err("peer certificate's subjectAltName", e))?
    {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                if let Some(node) = uri.strip_prefix(NODE_URI_PREFIX) {
                    names.push(node.to_string());
                }
            }
        }
    }
    Ok(names)
}

/// Whether a peer that presented `certificates` (its chain, leaf first; none when nothing was
/// verified) may call itself `claimed`. A certificate that names nodes binds its holder to
/// those names; one that names none binds nothing (shared certificates of federation and
/// local development).
pub fn check_claim(
    certificates: Option<&[CertificateDer<'static>]>,
    claimed: &str,
) -> std::result::Result<(), String> {
    let Some(leaf) = certificates.and_then(|c| c.first()) else {
        return Ok(());
    };
    let names = node_names(leaf).map_err(|e| e.to_string())?;
    if names.is_empty() || names.iter().any(|n| n == claimed) {
        Ok(())
    } else {
        Err(format!(
            "the peer claims to be node {claimed:?}, but its certificate was issued to {names:?}"
        ))
    }
}

/// The server and client TLS configurations of one node.
#[derive(Clone)]
pub struct TlsMaterial {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
    /// The key of QUIC's stateless resets, derived from the node's private key: the same
    /// across restarts, so that a restarted node resets its peers' connections to its
    /// previous incarnation at their first packet, instead of leaving them to time out.
    pub reset_secret: [u8; 32],
}

fn tls_err(what: &str, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Tls(format!("{what}: {e}"))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// PEM-encoded certificate chain, key and CA of a node.
pub struct PemMaterial {
    pub cert_chain: Vec<u8>,
    pub key: Vec<u8>,
    pub ca: Option<Vec<u8>>,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        ClusterError::Tls(format!(
            "cannot read {what} {}: {e}; generate certificates with scripts/generate-certs.sh",
            path.display()
        ))
    })
}

/// Loads the files named in `[cluster.tls]`.
pub fn load(config: &TlsConfig) -> Result<TlsMaterial> {
    if !config.enabled {
        return Err(ClusterError::Config(
            "QUIC requires TLS: cluster.tls.enabled = false is not supported; for local development keep it on and set skip_verify = true".into(),
        ));
    }
    let pem = PemMaterial {
        cert_chain: read(&config.cert_path, "cluster.tls.cert_path")?,
        key: read(&config.key_path, "cluster.tls.key_path")?,
        ca: match &config.ca_cert_path {
            Some(p) => Some(read(p, "cluster.tls.ca_cert_path")?),
            None => None,
        },
    };
    build(&pem, config.skip_verify)
}

/// Builds both sides' configurations from PEM.
pub fn build(pem: &PemMaterial, skip_verify: bool) -> Result<TlsMaterial> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem.cert_chain)
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err("node certificate", e))?;
    if certs.is_empty() {
        return Err(ClusterError::Tls(
            "the node certificate file holds no certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&pem.key).map_err(|e| tls_err("node key", e))?;
    let versions = [&rustls::version::TLS13];

    if skip_verify {
        tracing::warn!("cluster.tls.skip_verify = true: peer certificates are NOT verified; any host can join this cluster. Use only for local development");
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&versions)
            .map_err(|e| tls_err("protocol versions", e))?
            .with_no_client_auth()
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| tls_err("node certificate", e))?;
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&versions)
            .map_err(|e| tls_err("protocol versions", e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider())))
            .with_client_auth_cert(certs, key)
            .map_err(|e| tls_err("node certificate", e))?;
        return Ok(finish(server, client, &pem.key));
    }

    let ca = pem.ca.as_ref().ok_or_else(|| {
        ClusterError::Config("cluster.tls.ca_cert_path is required to verify peers".into())
    })?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        roots
            .add(cert.map_err(|e| tls_err("CA certificate", e))?)
            .map_err(|e| tls_err("CA certificate", e))?;
    }
    if roots.is_empty() {
        return Err(ClusterError::Tls("the CA file holds no certificate".into()));
    }
    let roots = Arc::new(roots);
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| tls_err("client verifier", e))?;
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions)
        .map_err(|e| tls_err("protocol versions", e))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(|e| tls_err("node certificate", e))?;
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions)
        .map_err(|e| tls_err("protocol versions", e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| tls_err("node certificate", e))?;
    Ok(finish(server, client, &pem.key))
}

fn finish(
    mut server: rustls::ServerConfig,
    mut client: rustls::ClientConfig,
    key_pem: &[u8],
) -> TlsMaterial {
    server.alpn_protocols = vec![ALPN.to_vec()];
    client.alpn_protocols = vec![ALPN.to_vec()];
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(b"prism quic stateless reset\0");
    context.update(key_pem);
    let mut reset_secret = [0u8; 32];
    reset_secret.copy_from_slice(context.finish().as_ref());
    TlsMaterial {
        server: Arc::new(server),
        client: Arc::new(client),
        reset_secret,
    }
}

/// The `skip_verify` verifier: checks signatures are well-formed, trusts any certificate.
#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
