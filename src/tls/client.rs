//! Client (device) certificates of a listener: the CA certificates and CRLs read from the files
//! its configuration names, and the rustls verifier built from them. rustls (webpki) does all of
//! the checking: chain, validity dates, key usage, revocation; a certificate it refuses ends the
//! handshake with the alert it chose (`unknown_ca`, `certificate_revoked`, ...).

use super::TlsError;
use crate::config::{ClientAuth, Config, ListenerConfig};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use std::path::Path;
use std::sync::Arc;

/// What one listener trusts for client certificates, as read from its files. Compared by a
/// reload with what is in use: a new CRL or CA file makes a new TLS configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTrust {
    required: bool,
    roots: Vec<CertificateDer<'static>>,
    crls: Vec<CertificateRevocationListDer<'static>>,
}

impl ClientTrust {
    /// Read the CA and CRL files of `listener`; `None` when it asks for no client certificate.
    pub fn load(
        config: &Config,
        listener: &ListenerConfig,
    ) -> Result<Option<ClientTrust>, TlsError> {
        let required = match listener.client_auth {
            ClientAuth::None => return Ok(None),
            ClientAuth::Optional => false,
            ClientAuth::Required => true,
        };
        let Some(ca_file) = &listener.client_ca_file else {
            // Config validation refuses this; a config built in code may still try.
            return Err(TlsError::File {
                path: "client_ca_file".into(),
                message: "client_auth needs a client_ca_file".into(),
            });
        };
        let ca_path = config.resolve(ca_file.get_ref());
        let pem = read(&ca_path)?;
        let roots: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| file_error(&ca_path, format!("bad PEM: {e}")))?;
        if roots.is_empty() {
            return Err(file_error(&ca_path, "no CA certificate in file".into()));
        }
        let mut trust = ClientTrust {
            required,
            roots,
            crls: Vec::new(),
        };
        // Built here, first with the CAs alone, then with each CRL file, so that a bad file is
        // reported by name (at start and at reload) rather than at the first handshake.
        trust
            .verifier()
            .map_err(|e| file_error(&ca_path, format!("refused: {e}")))?;
        for crl_file in &listener.crl_files {
            let path = config.resolve(crl_file.get_ref());
            let checked = ClientTrust {
                crls: read_crls(&path)?,
                ..trust.clone()
            };
            checked
                .verifier()
                .map_err(|e| file_error(&path, format!("refused: {e}")))?;
            trust.crls.extend(checked.crls);
        }
        Ok(Some(trust))
    }

    /// The rustls verifier: the whole chain checked against the CRLs (a certificate whose
    /// status no CRL gives is refused, once any CRL is configured), an expired CRL still used
    /// (rustls's default: a late CRL refresh must not lock every device out).
    pub fn verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, String> {
        let mut store = RootCertStore::empty();
        for root in &self.roots {
            store
                .add(root.clone())
                .map_err(|e| format!("CA certificate: {e}"))?;
        }
        let provider = Arc::new(super::provider_preferring_cheap_suites());
        let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
            .with_crls(self.crls.iter().cloned());
        let builder = if self.required {
            builder
        } else {
            builder.allow_unauthenticated()
        };
        builder.build().map_err(|e| e.to_string())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| file_error(path, e.to_string()))
}

/// The CRLs of one file: PEM (`X509 CRL` blocks) or one DER CRL.
fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes = read(path)?;
    if !bytes.starts_with(b"-----") && !bytes.iter().all(u8::is_ascii) {
        return Ok(vec![CertificateRevocationListDer::from(bytes)]);
    }
    let crls: Vec<_> = rustls_pemfile::crls(&mut bytes.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(path, format!("bad PEM: {e}")))?;
    if crls.is_empty() {
        return Err(file_error(path, "no CRL in file".into()));
    }
    Ok(crls)
}

fn file_error(path: &Path, message: String) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        message,
    }
}
