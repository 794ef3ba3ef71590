//! Accounts named by device certificates (SASL EXTERNAL, XEP-0178): which usernames a verified
//! client certificate names, and whether the CA alone may vouch for one ([`CertificatePolicy`],
//! from `[accounts.certificate]`).
//!
//! rustls has verified the certificate (chain, dates, revocation) before anything here runs;
//! this only reads names out of the end-entity certificate, with x509-parser. Rule order
//! (XEP-0178 section 3): every id-on-xmppAddr subjectAltName whose domain is ours gives its
//! localpart; a certificate with id-on-xmppAddr names gives only those (an xmppAddr for another
//! domain names nobody here). Without any, the configured rule applies: dNSName (whole),
//! rfc822Name at our domain (local part) or the subject's commonName. Names that are not valid
//! usernames ([`super::normalize_username`]) are skipped.

use super::normalize_username;
use crate::config::{CertificateAccountsConfig, CertificateIdentity};
use x509_parser::asn1_rs::{Any, Class, FromDer, Tag};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// DER content of the OID id-on-xmppAddr, 1.3.6.1.5.5.7.8.5 (RFC 6120 section 13.7.1.4).
const ID_ON_XMPP_ADDR: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x05];

/// Why no names could be read from a certificate (it was verified, so this is rare: a
/// certificate rustls accepts but x509-parser does not).
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("the client certificate does not parse: {0}")]
    Parse(String),
}

/// `[accounts.certificate]`, ready for logins.
#[derive(Debug, Clone, Default)]
pub struct CertificatePolicy {
    rule: CertificateIdentity,
    trust_ca: bool,
    username_prefixes: Vec<Box<str>>,
}

impl CertificatePolicy {
    pub fn from_config(config: &CertificateAccountsConfig) -> CertificatePolicy {
        CertificatePolicy {
            rule: config.identity,
            trust_ca: config.trust_ca,
            username_prefixes: config
                .username_prefixes
                .iter()
                .map(|p| p.to_ascii_lowercase().into_boxed_str())
                .collect(),
        }
    }

    /// Whether a verified certificate naming `username` logs in even when no account source
    /// knows it: `trust_ca`, and the name starts with one of `username_prefixes` (if any).
    pub fn vouches_for(&self, username: &str) -> bool {
        self.trust_ca
            && (self.username_prefixes.is_empty()
                || self
                    .username_prefixes
                    .iter()
                    .any(|prefix| username.starts_with(&**prefix)))
    }

    /// The usernames (normalised, without duplicates, in certificate order) that the DER
    /// end-entity certificate `der` names for `domain`.
    pub fn identities(&self, der: &[u8], domain: &str) -> Result<Vec<Box<str>>, CertificateError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| CertificateError::Parse(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| CertificateError::Parse(e.to_string()))?;
        let general_names = san
            .as_ref()
            .map(|ext| ext.value.general_names.as_slice())
            .unwrap_or_default();
        let mut names = Vec::new();
        let mut has_xmpp_addr = false;
        for name in general_names {
            if let GeneralName::OtherName(oid, value) = name {
                if oid.as_bytes() == ID_ON_XMPP_ADDR {
                    has_xmpp_addr = true;
                    if let Some(local) = xmpp_addr(value).and_then(|jid| local_at(jid, domain)) {
                        push_username(&mut names, local);
                    }
                }
            }
        }
        if has_xmpp_addr {
            return Ok(names);
        }
        match self.rule {
            CertificateIdentity::XmppAddr => {}
            CertificateIdentity::SanDns => {
                for name in general_names {
                    if let GeneralName::DNSName(dns) = name {
                        push_username(&mut names, dns);
                    }
                }
            }
            CertificateIdentity::SanEmailLocal => {
                for name in general_names {
                    if let GeneralName::RFC822Name(email) = name {
                        if let Some(local) = local_at(email, domain) {
                            push_username(&mut names, local);
                        }
                    }
                }
            }
            CertificateIdentity::Cn => {
                for cn in cert.subject().iter_common_name() {
                    if let Ok(cn) = cn.as_str() {
                        push_username(&mut names, cn);
                    }
                }
            }
        }
        Ok(names)
    }
}

/// The UTF8String inside an otherName's `[0] EXPLICIT` value.
fn xmpp_addr(value: &[u8]) -> Option<&str> {
    let (_, explicit) = Any::from_der(value).ok()?;
    if explicit.class() != Class::ContextSpecific || explicit.tag() != Tag(0) {
        return None;
    }
    let (_, inner) = Any::from_der(explicit.data).ok()?;
    if inner.tag() != Tag::Utf8String {
        return None;
    }
    std::str::from_utf8(inner.data).ok()
}

/// The localpart of `local@domain` when the domain is ours (no resource allowed).
fn local_at<'a>(address: &'a str, domain: &str) -> Option<&'a str> {
    let (local, at) = address.rsplit_once('@')?;
    at.eq_ignore_ascii_case(domain).then_some(local)
}

fn push_username(names: &mut Vec<Box<str>>, candidate: &str) {
    if let Ok(username) = normalize_username(candidate) {
        if !names.contains(&username) {
            names.push(username);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(sans: Vec<SanType>, cn: Option<&str>) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn xmpp(jid: &str) -> SanType {
        SanType::OtherName((vec![1, 3, 6, 1, 5, 5, 7, 8, 5], jid.into()))
    }

    fn policy(rule: CertificateIdentity) -> CertificatePolicy {
        CertificatePolicy {
            rule,
            ..CertificatePolicy::default()
        }
    }

    #[test]
    fn xmpp_addr_of_our_domain_wins_over_every_rule() {
        let der = cert(
            vec![
                xmpp("CPE-000001@Example.NET"),
                xmpp("other@elsewhere.org"),
                SanType::DnsName("dns-name".try_into().unwrap()),
            ],
            Some("common"),
        );
        for rule in [
            CertificateIdentity::XmppAddr,
            CertificateIdentity::SanDns,
            CertificateIdentity::Cn,
        ] {
            let names = policy(rule).identities(&der, "example.net").unwrap();
            assert_eq!(names, vec!["cpe-000001".into()], "{rule:?}");
        }
    }

    #[test]
    fn an_xmpp_addr_for_another_domain_names_nobody() {
        let der = cert(vec![xmpp("cpe@elsewhere.org")], Some("cpe"));
        let names = policy(CertificateIdentity::Cn).identities(&der, "example.net");
        assert!(names.unwrap().is_empty());
    }

    #[test]
    fn configured_rules_without_xmpp_addr() {
        let der = cert(
            vec![
                SanType::DnsName("Dev-1.devices.example.net".try_into().unwrap()),
                SanType::Rfc822Name("mail-1@example.net".try_into().unwrap()),
                SanType::Rfc822Name("mail-2@elsewhere.org".try_into().unwrap()),
            ],
            Some("Cn-Name"),
        );
        let of = |rule| policy(rule).identities(&der, "example.net").unwrap();
        assert!(of(CertificateIdentity::XmppAddr).is_empty());
        assert_eq!(
            of(CertificateIdentity::SanDns),
            vec!["dev-1.devices.example.net".into()]
        );
        assert_eq!(
            of(CertificateIdentity::SanEmailLocal),
            vec!["mail-1".into()]
        );
        assert_eq!(of(CertificateIdentity::Cn), vec!["cn-name".into()]);
    }

    #[test]
    fn names_that_are_not_usernames_are_skipped() {
        let der = cert(vec![], Some("has space"));
        let names = policy(CertificateIdentity::Cn).identities(&der, "example.net");
        assert!(names.unwrap().is_empty());
        assert!(policy(CertificateIdentity::Cn)
            .identities(b"not DER", "example.net")
            .is_err());
    }

    #[test]
    fn trust_ca_vouches_only_within_its_prefixes() {
        let config = |trust_ca, prefixes: &[&str]| {
            CertificatePolicy::from_config(&CertificateAccountsConfig {
                identity: CertificateIdentity::XmppAddr,
                trust_ca,
                username_prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            })
        };
        assert!(!config(false, &[]).vouches_for("cpe-1"));
        assert!(config(true, &[]).vouches_for("anything"));
        let restricted = config(true, &["CPE-", "gw-"]);
        assert!(restricted.vouches_for("cpe-1"));
        assert!(restricted.vouches_for("gw-9"));
        assert!(!restricted.vouches_for("acs"));
    }
}
