//! SASL EXTERNAL with device certificates (RFC 6120 6.4, XEP-0178), against the real broker
//! over real TLS: an rcgen-made device CA with its CRL, device certificates carrying
//! id-on-xmppAddr subjectAltNames, a revoked one, one from another CA, and raw XMPP clients
//! presenting them through tokio-rustls (tokio-xmpp does not do EXTERNAL).

mod common;

use common::*;
use crbroker::xml::ns;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
};
use tokio_rustls::rustls::{self, AlertDescription};

/// Listener indexes after the four of the common test config.
const OPTIONAL_DIRECT: usize = 4;
const REQUIRED_STARTTLS: usize = 5;

/// id-on-xmppAddr, 1.3.6.1.5.5.7.8.5 (RFC 6120 13.7.1.4).
const XMPP_ADDR: [u64; 9] = [1, 3, 6, 1, 5, 5, 7, 8, 5];

struct Device {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name.push(DnType::CommonName, name);
        Ca {
            cert: params.self_signed(&key).unwrap(),
            key,
        }
    }

    /// A device certificate with these id-on-xmppAddr names and serial number.
    fn device(&self, jids: &[&str], serial: u64) -> Device {
        self.device_named(jids, &format!("device {serial}"), serial)
    }

    /// A device certificate with these id-on-xmppAddr names, subject CN and serial number.
    fn device_named(&self, jids: &[&str], cn: &str, serial: u64) -> Device {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = jids
            .iter()
            .map(|jid| SanType::OtherName((XMPP_ADDR.to_vec(), (*jid).into())))
            .collect();
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Device {
            chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        }
    }

    /// A CRL (PEM) revoking `serials`.
    fn crl(&self, number: u64, serials: &[u64]) -> String {
        let params = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2100, 1, 1),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from(*serial),
                    revocation_time: rcgen::date_time_ymd(2024, 6, 1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.cert, &self.key)
            .unwrap()
            .pem()
            .unwrap()
    }
}

/// The device PKI, made once per test process.
struct Devices {
    dir: PathBuf,
    ca: Ca,
    ca_path: PathBuf,
    /// CRL revoking `revoked` only.
    crl_path: PathBuf,
    /// cpe-0001, an account of the test config.
    cpe1: Device,
    /// cpe-0002 and cpe-0003 in one certificate.
    two_names: Device,
    /// stranger-1: no account.
    stranger: Device,
    /// cpe-0004, revoked by the CRL.
    revoked: Device,
    /// cpe-0005, revoked later by a reloaded CRL.
    cpe5: Device,
    /// cpe-0006 from a CA the broker does not trust.
    foreign: Device,
    /// No id-on-xmppAddr; subject CN cpe-0007.
    cn_only: Device,
}

const REVOKED_SERIAL: u64 = 4004;
const CPE5_SERIAL: u64 = 5005;

fn devices() -> &'static Devices {
    static DEVICES: OnceLock<Devices> = OnceLock::new();
    DEVICES.get_or_init(|| {
        let dir = pki().dir.join("devices");
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Ca::new("crbroker test device CA");
        let ca_path = dir.join("device-ca.pem");
        let crl_path = dir.join("device-ca.crl.pem");
        std::fs::write(&ca_path, ca.cert.pem()).unwrap();
        std::fs::write(&crl_path, ca.crl(1, &[REVOKED_SERIAL])).unwrap();
        let foreign_ca = Ca::new("some other CA");
        Devices {
            cpe1: ca.device(&[&format!("cpe-0001@{DOMAIN}")], 1001),
            two_names: ca.device(
                &[&format!("cpe-0002@{DOMAIN}"), &format!("cpe-0003@{DOMAIN}")],
                2002,
            ),
            stranger: ca.device(&[&format!("stranger-1@{DOMAIN}")], 3003),
            revoked: ca.device(&[&format!("cpe-0004@{DOMAIN}")], REVOKED_SERIAL),
            cpe5: ca.device(&[&format!("cpe-0005@{DOMAIN}")], CPE5_SERIAL),
            foreign: foreign_ca.device(&[&format!("cpe-0006@{DOMAIN}")], 6006),
            cn_only: ca.device_named(&[], "cpe-0007", 7007),
            dir,
            ca,
            ca_path,
            crl_path,
        }
    })
}

/// The common test config plus an optional direct-TLS listener and a required STARTTLS
/// listener that ask for device certificates, checked against `crl`, and `extra` at the end.
fn config_with(crl: &Path, extra: &str) -> String {
    let ca = devices().ca_path.display();
    let crl = crl.display();
    format!(
        r#"{common}
[[listener]]
address = "127.0.0.1:0"
kind = "direct_tls"
client_auth = "optional"
client_ca_file = "{ca}"
crl_files = ["{crl}"]

[[listener]]
address = "127.0.0.1:0"
kind = "starttls"
client_auth = "required"
client_ca_file = "{ca}"
crl_files = ["{crl}"]
sasl_mechanisms = []
{extra}
"#,
        common = config_text(&TestOptions::default()),
    )
}

async fn start(extra: &str) -> TestBroker {
    let text = config_with(&devices().crl_path, extra);
    let config = crbroker::config::Config::parse(&text, "external-test.toml", pki().dir.clone())
        .expect("test config");
    TestBroker::start_config(config).await
}

/// A TLS client trusting the test CA, presenting `device`'s certificate when given.
fn connector(device: Option<&Device>) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(tls_peer::test_roots());
    let config = match device {
        Some(device) => builder
            .with_client_auth_cert(device.chain.clone(), device.key.clone_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A raw client on the direct-TLS listener at `addr`.
async fn direct(addr: std::net::SocketAddr, device: Option<&Device>) -> RawPeer {
    let tcp = connect_resetting(addr).await;
    let name = ServerName::try_from(DOMAIN).unwrap();
    let tls = connector(device).connect(name, tcp).await.unwrap();
    RawPeer::new(Box::new(tls), ns::CLIENT)
}

/// Open the stream after TLS; returns the offered SASL mechanisms, in order.
async fn mechanisms(peer: &mut RawPeer) -> Vec<String> {
    peer.send(CLIENT_HEADER).await;
    peer.header().await;
    let features = peer.element().await;
    let mechanisms = features
        .child("mechanisms", ns::SASL)
        .unwrap_or_else(|| panic!("no <mechanisms/>: {}", peer.transcript));
    mechanisms.child_elements().map(|m| m.text()).collect()
}

/// Send `<auth mechanism='EXTERNAL'>` with `payload` (its text as is); the answer's element name
/// and, for a failure, its condition.
async fn auth_external(peer: &mut RawPeer, payload: &str) -> (String, Option<String>) {
    peer.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{payload}</auth>"
    ))
    .await;
    let answer = peer.element().await;
    assert_eq!(answer.ns, ns::SASL, "{}", peer.transcript);
    let condition = answer.first_child().map(|c| c.name.clone());
    (answer.name, condition)
}

/// A device logged in with EXTERNAL (empty authzid) on the direct-TLS listener at `addr`.
async fn external_login(addr: std::net::SocketAddr, device: &Device) -> RawPeer {
    let mut cpe = direct(addr, Some(device)).await;
    let offered = mechanisms(&mut cpe).await;
    assert_eq!(
        offered.first().map(String::as_str),
        Some("EXTERNAL"),
        "{offered:?}"
    );
    assert_eq!(auth_external(&mut cpe, "=").await.0, "success");
    cpe
}

/// The TLS alert the broker ends the handshake with, read by a client presenting `device`.
/// With TLS 1.3 the client finishes its side first: the alert comes on its first read.
async fn handshake_alert(
    addr: std::net::SocketAddr,
    starttls: bool,
    device: Option<&Device>,
) -> AlertDescription {
    let mut tcp = connect_resetting(addr).await;
    if starttls {
        tcp.write_all(CLIENT_HEADER.as_bytes()).await.unwrap();
        tcp.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await
            .unwrap();
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("<proceed") {
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(IO_TIMEOUT, tcp.read(&mut chunk))
                .await
                .expect("proceed in time")
                .unwrap();
            assert!(n > 0, "closed before <proceed/>");
            seen.extend_from_slice(&chunk[..n]);
        }
    }
    let name = ServerName::try_from(DOMAIN).unwrap();
    let error = match connector(device).connect(name, tcp).await {
        Err(error) => error,
        Ok(mut tls) => {
            let _ = tls.write_all(CLIENT_HEADER.as_bytes()).await;
            let mut buf = [0u8; 4096];
            match tokio::time::timeout(IO_TIMEOUT, tls.read(&mut buf))
                .await
                .expect("the broker answers in time")
            {
                Err(error) => error,
                Ok(n) => panic!(
                    "the handshake succeeded ({n} bytes: {})",
                    String::from_utf8_lossy(&buf[..n])
                ),
            }
        }
    };
    match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::AlertReceived(alert)) => *alert,
        other => panic!("expected a TLS alert from the broker, got {error} ({other:?})"),
    }
}

#[tokio::test]
async fn device_logs_in_with_its_certificate_and_its_request_is_answered_once() {
    let broker = start("").await;
    let mut cpe = direct(broker.addr(OPTIONAL_DIRECT), Some(&devices().cpe1)).await;
    let offered = mechanisms(&mut cpe).await;
    assert_eq!(
        offered.first().map(String::as_str),
        Some("EXTERNAL"),
        "{offered:?}"
    );
    assert!(offered.iter().any(|m| m == "PLAIN"), "{offered:?}");
    assert_eq!(auth_external(&mut cpe, "=").await.0, "success");
    let jid = cpe.bind(Some("cwmp")).await;
    assert_eq!(jid, format!("cpe-0001@{DOMAIN}/cwmp"));
    assert_eq!(broker.stat("auth_external"), 1);

    let mut acs = broker.raw_acs().await;
    let answer = request_answered(&mut acs, &mut cpe, "cr1", &jid).await;
    assert_eq!(
        (answer.attr("id"), answer.attr("type")),
        (Some("cr1"), Some("result")),
        "{}",
        acs.transcript
    );
    // Exactly one answer: the next thing the ACS gets is the answer to its ping.
    acs.send(&format!("<iq type='get' id='ping1' from='{COMPONENT_DOMAIN}' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")).await;
    let pong = acs.element().await;
    assert_eq!(pong.attr("id"), Some("ping1"), "{}", acs.transcript);
    broker.shutdown().await;
}

#[tokio::test]
async fn required_listener_offers_external_alone_and_asks_for_the_authzid_by_challenge() {
    let broker = start("").await;
    let tcp = RawPeer::tcp(broker.addr(REQUIRED_STARTTLS)).await;
    let mut cpe = tcp
        .starttls_with(connector(Some(&devices().cpe1)))
        .await
        .unwrap();
    assert_eq!(mechanisms(&mut cpe).await, vec!["EXTERNAL".to_string()]);
    // No initial response: an empty challenge, then the (empty) authzid in a response.
    cpe.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'/>")
        .await;
    let challenge = cpe.element().await;
    assert!(challenge.is("challenge", ns::SASL), "{}", cpe.transcript);
    assert_eq!(challenge.text(), "=");
    cpe.send("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>=</response>")
        .await;
    assert!(cpe.element().await.is("success", ns::SASL));
    assert_eq!(cpe.bind(None).await, format!("cpe-0001@{DOMAIN}/cpe-0001"));
    broker.shutdown().await;
}

#[tokio::test]
async fn without_a_verified_certificate_external_is_not_offered() {
    let broker = start("").await;
    // Optional listener, no certificate: the password mechanisms only, EXTERNAL refused.
    let mut cpe = direct(broker.addr(OPTIONAL_DIRECT), None).await;
    let offered = mechanisms(&mut cpe).await;
    assert!(!offered.iter().any(|m| m == "EXTERNAL"), "{offered:?}");
    let (name, condition) = auth_external(&mut cpe, "=").await;
    assert_eq!(
        (name.as_str(), condition.as_deref()),
        ("failure", Some("invalid-mechanism"))
    );
    let payload = base64_encode(b"\0cpe-0001\0pw-cpe-0001");
    cpe.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"
    ))
    .await;
    assert!(cpe.element().await.is("success", ns::SASL));
    // A listener that asks for no certificate never gets one, so never offers EXTERNAL.
    let mut other = direct(broker.addr(DIRECT_TLS), Some(&devices().cpe1)).await;
    let offered = mechanisms(&mut other).await;
    assert!(!offered.iter().any(|m| m == "EXTERNAL"), "{offered:?}");
    assert_eq!(broker.stat("auth_external"), 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn bad_certificates_fail_the_tls_handshake() {
    let broker = start("").await;
    let devices = devices();
    let optional = broker.addr(OPTIONAL_DIRECT);
    let required = broker.addr(REQUIRED_STARTTLS);
    assert_eq!(
        handshake_alert(required, true, None).await,
        AlertDescription::CertificateRequired
    );
    assert_eq!(
        handshake_alert(optional, false, Some(&devices.revoked)).await,
        AlertDescription::CertificateRevoked
    );
    assert_eq!(
        handshake_alert(required, true, Some(&devices.revoked)).await,
        AlertDescription::CertificateRevoked
    );
    assert_eq!(
        handshake_alert(optional, false, Some(&devices.foreign)).await,
        AlertDescription::UnknownCA
    );
    // The broker is fine: a good device still logs in.
    external_login(optional, &devices.cpe1).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn the_identity_must_be_an_account_unless_the_ca_is_trusted_for_it() {
    let broker = start("").await;
    let mut stranger = direct(broker.addr(OPTIONAL_DIRECT), Some(&devices().stranger)).await;
    mechanisms(&mut stranger).await;
    assert_eq!(
        auth_external(&mut stranger, "=").await,
        ("failure".to_string(), Some("not-authorized".to_string()))
    );
    broker.shutdown().await;

    // trust_ca for names starting with "stranger-": the CA's word is enough, as a CPE.
    let broker =
        start("[accounts.certificate]\ntrust_ca = true\nusername_prefixes = [\"stranger-\"]\n")
            .await;
    let mut stranger = external_login(broker.addr(OPTIONAL_DIRECT), &devices().stranger).await;
    let jid = stranger.bind(Some("cwmp")).await;
    assert_eq!(jid, format!("stranger-1@{DOMAIN}/cwmp"));
    let mut acs = broker.raw_acs().await;
    let answer = request_answered(&mut acs, &mut stranger, "cr-s", &jid).await;
    assert_eq!(answer.attr("type"), Some("result"));
    broker.shutdown().await;
}

#[tokio::test]
async fn the_authzid_picks_one_of_several_names() {
    let broker = start("").await;
    let mut cpe = direct(broker.addr(OPTIONAL_DIRECT), Some(&devices().two_names)).await;
    mechanisms(&mut cpe).await;
    let invalid = ("failure".to_string(), Some("invalid-authzid".to_string()));
    // Two names and no choice; then a name the certificate does not carry.
    assert_eq!(auth_external(&mut cpe, "=").await, invalid);
    assert_eq!(
        auth_external(&mut cpe, &base64_encode(b"cpe-0009")).await,
        invalid
    );
    let authzid = base64_encode(format!("cpe-0003@{DOMAIN}").as_bytes());
    assert_eq!(auth_external(&mut cpe, &authzid).await.0, "success");
    assert_eq!(
        cpe.bind(Some("cwmp")).await,
        format!("cpe-0003@{DOMAIN}/cwmp")
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn a_reloaded_crl_revokes_new_logins() {
    let devices = devices();
    let dir = devices.dir.join("reload");
    std::fs::create_dir_all(&dir).unwrap();
    let crl = dir.join("crl.pem");
    std::fs::write(&crl, devices.ca.crl(1, &[REVOKED_SERIAL])).unwrap();
    let config = dir.join("crbroker.toml");
    std::fs::write(&config, config_with(&crl, "")).unwrap();
    let broker = TestBroker::start_file(&config).await;
    let addr = broker.addr(OPTIONAL_DIRECT);
    let _cpe = external_login(addr, &devices.cpe5).await;

    // CRL files that do not parse (no PEM block; a PEM block that is no CRL): the reload is
    // refused, naming the file, and nothing changes.
    let not_a_crl = "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n";
    for bad in ["not a CRL\n", not_a_crl] {
        std::fs::write(&crl, bad).unwrap();
        let report = broker.broker.as_ref().unwrap().reload().await;
        let refused = report.outcome.expect_err("a bad CRL file is refused");
        assert!(refused.to_string().contains("crl.pem"), "{refused}");
        external_login(addr, &devices.cpe5).await;
    }

    std::fs::write(&crl, devices.ca.crl(2, &[REVOKED_SERIAL, CPE5_SERIAL])).unwrap();
    let report = broker.broker.as_ref().unwrap().reload().await;
    let changes = report.outcome.expect("reload applies");
    assert!(changes.listener_settings, "{changes}");
    assert_eq!(
        handshake_alert(addr, false, Some(&devices.cpe5)).await,
        AlertDescription::CertificateRevoked
    );
    // Other devices are not affected.
    external_login(addr, &devices.cpe1).await;
    broker.shutdown().await;
}

/// A device the CA alone vouches for has no account to lose: a reload that removes accounts
/// closes their sessions, not its.
#[tokio::test]
async fn a_reload_removing_accounts_keeps_sessions_the_ca_vouches_for() {
    let devices = devices();
    let dir = devices.dir.join("trusted-reload");
    std::fs::create_dir_all(&dir).unwrap();
    let trust = "[accounts.certificate]\ntrust_ca = true\nusername_prefixes = [\"stranger-\"]\n";
    let text = config_with(&devices.crl_path, trust);
    let config = dir.join("crbroker.toml");
    std::fs::write(&config, &text).unwrap();
    let broker = TestBroker::start_file(&config).await;
    let addr = broker.addr(OPTIONAL_DIRECT);
    let mut stranger = external_login(addr, &devices.stranger).await;
    let stranger_jid = stranger.bind(Some("cwmp")).await;
    let mut cpe1 = external_login(addr, &devices.cpe1).await;
    cpe1.bind(Some("cwmp")).await;

    let removed = text.replace("cpe-0001 = \"pw-cpe-0001\"\n", "");
    assert_ne!(removed, text);
    std::fs::write(&config, removed).unwrap();
    let report = broker.broker.as_ref().unwrap().reload().await;
    let changes = report.outcome.expect("reload applies");
    assert_eq!(changes.sessions_closed, 1, "{changes}");
    cpe1.expect_stream_error("not-authorized").await;
    let mut acs = broker.raw_acs().await;
    let answer = request_answered(&mut acs, &mut stranger, "cr-kept", &stranger_jid).await;
    assert_eq!(answer.attr("type"), Some("result"));
    broker.shutdown().await;
}

/// Without an id-on-xmppAddr the configured rule names the account: by default nobody, with
/// `identity = "cn"` the subject's commonName.
#[tokio::test]
async fn the_configured_rule_names_the_account_without_an_xmpp_addr() {
    let broker = start("").await;
    let mut cpe = direct(broker.addr(OPTIONAL_DIRECT), Some(&devices().cn_only)).await;
    mechanisms(&mut cpe).await;
    assert_eq!(
        auth_external(&mut cpe, "=").await,
        ("failure".to_string(), Some("not-authorized".to_string()))
    );
    broker.shutdown().await;

    let broker = start("[accounts.certificate]\nidentity = \"cn\"\n").await;
    let mut cpe = external_login(broker.addr(OPTIONAL_DIRECT), &devices().cn_only).await;
    assert_eq!(
        cpe.bind(Some("cwmp")).await,
        format!("cpe-0007@{DOMAIN}/cwmp")
    );
    broker.shutdown().await;
}

/// EXTERNAL failures count toward the login delay of the certificate's username, like password
/// failures: after the free ones, the next attempt waits.
#[tokio::test]
async fn failed_external_logins_are_delayed_like_password_ones() {
    let broker = start("").await;
    let free = TestOptions::default().login_delay_account_free;
    let mut failures = 0;
    while failures <= free {
        let mut stranger = direct(broker.addr(OPTIONAL_DIRECT), Some(&devices().stranger)).await;
        mechanisms(&mut stranger).await;
        for _ in 0..2 {
            let (_, condition) = auth_external(&mut stranger, "=").await;
            assert_eq!(condition.as_deref(), Some("not-authorized"));
            failures += 1;
        }
    }
    assert!(
        broker.stat("logins_delayed") >= 1,
        "no delay after {failures} failures"
    );
    assert_eq!(broker.stat("auth_external"), 0);
    broker.shutdown().await;
}
