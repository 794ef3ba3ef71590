//! TLS: the rustls server configuration (ECDSA certificates, stateless session tickets, TLS
//! 1.2/1.3 only), the self-signed development certificate created on first start, and the
//! session's TLS stream ([`stream`]): rustls's unbuffered connection, whose buffers the broker
//! owns and releases while a session idles. All of TLS is rustls's; no code here touches records.

pub mod client;
pub mod stream;

pub use client::ClientTrust;
pub use stream::TlsStream;

use crate::config::{Config, TlsVersion};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("creating the development certificate: {0}")]
    DevCert(String),
    #[error("client certificates: {0}")]
    ClientTrust(String),
}

/// The certificate chain and key, loaded once and shared by every listener.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Load the configured certificate, creating a development one first when allowed and missing.
    pub fn load_or_create(config: &Config) -> Result<Identity, TlsError> {
        let cert_path = config.resolve(config.tls.cert.get_ref());
        let key_path = config.resolve(config.tls.key.get_ref());
        if config.tls.auto_create_dev_cert && !cert_path.exists() && !key_path.exists() {
            create_dev_certificate(config.domain(), &cert_path, &key_path)?;
            tracing::warn!(
                cert = %cert_path.display(),
                "!!! created a SELF-SIGNED DEVELOPMENT certificate for {}: CPEs will not trust it. \
                 Use a real certificate and set tls.auto_create_dev_cert = false in production !!!",
                config.domain()
            );
        }
        Identity::load(&cert_path, &key_path)
    }

    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Identity, TlsError> {
        let file_error = |path: &Path, message: String| TlsError::File {
            path: path.to_path_buf(),
            message,
        };
        let cert_pem =
            std::fs::read(cert_path).map_err(|e| file_error(cert_path, e.to_string()))?;
        let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| file_error(cert_path, format!("bad PEM: {e}")))?;
        if chain.is_empty() {
            return Err(file_error(cert_path, "no certificate in file".into()));
        }
        let key_pem = std::fs::read(key_path).map_err(|e| file_error(key_path, e.to_string()))?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|e| file_error(key_path, format!("bad PEM: {e}")))?
            .ok_or_else(|| file_error(key_path, "no private key in file".into()))?;
        Ok(Identity { chain, key })
    }

    /// Whether `other` is the same certificate chain and key (a reload compares the files it
    /// read with what is in use).
    pub fn same_as(&self, other: &Identity) -> bool {
        self.chain == other.chain && self.key.secret_der() == other.key.secret_der()
    }

    /// A rustls server configuration accepting exactly `versions`, asking for client
    /// certificates when `client` is given.
    pub fn server_config(
        &self,
        versions: &[TlsVersion],
        session_tickets: usize,
        client: Option<&ClientTrust>,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let mut protocol_versions = Vec::new();
        if versions.contains(&TlsVersion::Tls13) {
            protocol_versions.push(&rustls::version::TLS13);
        }
        if versions.contains(&TlsVersion::Tls12) {
            protocol_versions.push(&rustls::version::TLS12);
        }
        let provider = Arc::new(provider_preferring_cheap_suites());
        let builder = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&protocol_versions)?;
        let builder = match client {
            None => builder.with_no_client_auth(),
            Some(trust) => {
                builder.with_client_cert_verifier(trust.verifier().map_err(TlsError::ClientTrust)?)
            }
        };
        let mut server_config =
            builder.with_single_cert(self.chain.clone(), self.key.clone_key())?;
        // Our order, not the client's: see `provider_preferring_cheap_suites`.
        server_config.ignore_client_order = true;
        // Stateless tickets when enabled: resumption costs no per-session memory on the broker.
        // Off by default: CPE stacks do not keep TLS sessions across reconnects, and issuing
        // tickets costs CPU at every login (measured: about 5% of a login).
        server_config.send_tls13_tickets = session_tickets;
        if session_tickets > 0 {
            server_config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        }
        server_config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(Arc::new(server_config))
    }
}

/// ring's suites, AES-128-GCM first: its SHA-256 key schedule uses the CPU's SHA extensions,
/// while the AES-256 suite's SHA-384 does not on most x86 CPUs (measured: SHA-512 blocks were 7%
/// of a login's CPU when clients picked AES-256). Every suite stays available.
fn provider_preferring_cheap_suites() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::ring::cipher_suite as suite;
    let mut provider = rustls::crypto::ring::default_provider();
    let preferred = [
        suite::TLS13_AES_128_GCM_SHA256,
        suite::TLS13_CHACHA20_POLY1305_SHA256,
        suite::TLS13_AES_256_GCM_SHA384,
        suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ];
    provider.cipher_suites.sort_by_key(|s| {
        preferred
            .iter()
            .position(|p| p.suite() == s.suite())
            .unwrap_or(usize::MAX)
    });
    provider
}

/// Write a self-signed ECDSA P-256 certificate for `domain` (key file readable by owner only).
pub fn create_dev_certificate(
    domain: &str,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), TlsError> {
    let certified = rcgen::generate_simple_self_signed(vec![domain.to_string()])
        .map_err(|e| TlsError::DevCert(e.to_string()))?;
    for path in [cert_path, key_path] {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| TlsError::File {
                path: dir.to_path_buf(),
                message: e.to_string(),
            })?;
        }
    }
    write_private(key_path, certified.key_pair.serialize_pem().as_bytes())?;
    std::fs::write(cert_path, certified.cert.pem()).map_err(|e| TlsError::File {
        path: cert_path.to_path_buf(),
        message: e.to_string(),
    })
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .and_then(|mut f| f.write_all(contents))
        .map_err(|e| TlsError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}
