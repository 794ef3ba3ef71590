//! TLS client configuration for the load generator.
//!
//! BENCH ONLY: the verifier below accepts ANY server certificate and does not check the
//! handshake signature. The brokers measured here run on this machine with self-signed
//! certificates; skipping the checks keeps the tool's own CPU per login low so that the box's
//! two cores go to the server being measured. Never reuse this in a real client.
//!
//! Session resumption is disabled: every login is a full handshake, as in a reconnect storm of
//! devices that rebooted (and so that the three servers compared do the same work).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::client::WantsClientCert;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::ConfigBuilder;
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;

#[derive(Debug)]
struct AcceptAnyCertificate {
    schemes: Vec<SignatureScheme>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
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
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// A client configuration that accepts any certificate (see the module documentation).
pub fn insecure_client_config() -> Arc<rustls::ClientConfig> {
    finish(insecure_builder().with_no_client_auth())
}

/// The same, presenting `chain` (a device certificate, for SASL EXTERNAL) signed with `key`.
pub fn insecure_client_config_presenting(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let config = insecure_builder()
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("client certificate: {e}"))?;
    Ok(finish(config))
}

fn insecure_builder() -> ConfigBuilder<rustls::ClientConfig, WantsClientCert> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let schemes = provider
        .signature_verification_algorithms
        .supported_schemes();
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { schemes }))
}

fn finish(mut config: rustls::ClientConfig) -> Arc<rustls::ClientConfig> {
    config.resumption = Resumption::disabled();
    Arc::new(config)
}
