//! Device certificates for SASL EXTERNAL runs: `gen-config` writes a device CA (the broker's
//! external listener trusts it); `run --device-ca-key` issues every emulated CPE its own
//! certificate signed by that CA (id-on-xmppAddr `cpe-NNNNNN@domain`, XEP-0178) when it logs in,
//! and the CPE logs in with EXTERNAL instead of PLAIN.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::PrivatePkcs8KeyDer;
use std::path::Path;
use tokio_rustls::TlsConnector;

/// id-on-xmppAddr, 1.3.6.1.5.5.7.8.5 (RFC 6120 13.7.1.4).
const XMPP_ADDR: [u64; 9] = [1, 3, 6, 1, 5, 5, 7, 8, 5];

/// The device CA: its certificate (as rcgen needs it to sign) and key.
pub struct DeviceCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// The CA's fixed name and extensions: the certificate `load` rebuilds from the key has the same
/// subject and key as the one `gen-config` wrote, which is all a chain to it needs.
fn ca_params() -> Result<CertificateParams, String> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| format!("device CA: {e}"))?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
        .distinguished_name
        .push(DnType::CommonName, "crbroker-bench device CA");
    Ok(params)
}

/// A new device CA: (certificate PEM, key PEM).
pub fn generate() -> Result<(String, String), String> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("device CA key: {e}"))?;
    let cert = ca_params()?
        .self_signed(&key)
        .map_err(|e| format!("device CA: {e}"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl DeviceCa {
    /// The CA whose key `gen-config` wrote to `key_path`.
    pub fn load(key_path: &Path) -> Result<DeviceCa, String> {
        let pem = std::fs::read_to_string(key_path)
            .map_err(|e| format!("{}: {e}", key_path.display()))?;
        let key = KeyPair::from_pem(&pem).map_err(|e| format!("{}: {e}", key_path.display()))?;
        let cert = ca_params()?
            .self_signed(&key)
            .map_err(|e| format!("device CA: {e}"))?;
        Ok(DeviceCa { cert, key })
    }

    /// A TLS client presenting a new ECDSA P-256 certificate for `user@domain`.
    pub fn connector(&self, user: &str, domain: &str) -> Result<TlsConnector, String> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| format!("device key: {e}"))?;
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| format!("device: {e}"))?;
        params.subject_alt_names = vec![SanType::OtherName((
            XMPP_ADDR.to_vec(),
            format!("{user}@{domain}").into(),
        ))];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(|e| format!("device certificate: {e}"))?;
        let config = crate::tls::insecure_client_config_presenting(
            vec![cert.der().clone()],
            PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )?;
        Ok(TlsConnector::from(config))
    }
}
