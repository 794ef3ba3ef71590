//! Write the seed corpus of the `unauth` target, `corpus-seeds/unauth/` (layout: the top of
//! `fuzz_targets/unauth.rs`). Run from `fuzz/`: `cargo +nightly run --example gen_unauth_seeds`.
//!
//! The ClientHellos are captured from a real rustls client (random and key share differ on every
//! run, so the output is not byte-for-byte reproducible; the committed files are one capture).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use std::path::Path;
use std::sync::Arc;

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' to='broker.example' version='1.0'>";
const STARTTLS: &str = "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";
const BIND: &str = "<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
    <resource>cwmp</resource></bind></iq>";
const SESSION: &str =
    "<iq type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>";
const CLOSE: &str = "</stream:stream>";

fn client_hello(tls12_only: bool) -> Vec<u8> {
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
    let name = ServerName::try_from("broker.example").expect("name");
    let mut conn = ClientConnection::new(Arc::new(config), name).expect("client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write_tls");
    }
    out
}

fn auth(mechanism: &str, payload: &[u8]) -> String {
    format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mechanism}'>{}</auth>",
        STANDARD.encode(payload)
    )
}

fn plain_login(user: &str, password: &str) -> String {
    let credentials = format!("\0{user}\0{password}");
    format!(
        "{HEADER}{}{HEADER}{SESSION}{BIND}",
        auth("PLAIN", credentials.as_bytes())
    )
}

fn seed(flags: u8, chunks: &[u8], payload: &[u8]) -> Vec<u8> {
    assert!(chunks.len() < 16);
    let mut out = vec![flags | (chunks.len() as u8) << 4];
    out.extend_from_slice(chunks);
    out.extend_from_slice(payload);
    out
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus-seeds/unauth");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("seed dir");
    let hello13 = client_hello(false);
    let hello12 = client_hello(true);
    let starttls_then = |hello: &[u8]| {
        let mut p = format!("{HEADER}{STARTTLS}").into_bytes();
        p.push(0xFF);
        p.extend_from_slice(hello);
        p
    };
    let cpe = plain_login("cpe1", "secret");
    // An ACS account sends a connection request to the (offline) CPE: the router answers.
    let acs = format!(
        "{}<iq type='get' id='cr1' to='cpe1@broker.example/cwmp'>\
         <connectionRequest xmlns='urn:broadband-forum-org:cwmp:xmppConnReq-1-0'>\
         <username>u</username><password>p</password></connectionRequest></iq>{CLOSE}",
        plain_login("acs", "acs-secret")
    );
    let scram = format!(
        "{HEADER}{}<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>{}",
        auth("SCRAM-SHA-256", b"n,,n=carol,r=fyko+d2lbbFgONRv9qkxdawL"),
        auth("SCRAM-SHA-1", b"n,,n=carol,r=abcdefghijklmnop"),
    );
    let wrong = format!(
        "{HEADER}{}{}{}",
        auth("PLAIN", b"\0cpe1\0wrong"),
        auth("PLAIN", b"\0carol\0not-carol-pw"),
        auth("PLAIN", b"\0nobody\0x"),
    );
    // A raw TLS alert record injected after the login (0xFF, length, bytes).
    let mut injected = cpe.clone().into_bytes();
    injected.extend_from_slice(&[0xFF, 7, 0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]);
    injected.extend_from_slice(b"<presence/>");
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("mode0-clienthello-tls13", seed(0, &[], &hello13)),
        (
            "mode0-clienthello-tls12-chunked",
            seed(0, &[4, 60], &hello12),
        ),
        (
            "mode1-starttls-clienthello",
            seed(1, &[], &starttls_then(&hello13)),
        ),
        (
            "mode1-starttls-opening",
            seed(1, &[], format!("{HEADER}{STARTTLS}").as_bytes()),
        ),
        (
            "mode1-auth-before-starttls",
            seed(
                1,
                &[],
                format!("{HEADER}{}{STARTTLS}", auth("PLAIN", b"\0cpe1\0secret")).as_bytes(),
            ),
        ),
        (
            "mode2-plain-login",
            seed(0x02, &[], format!("{cpe}<presence/>{CLOSE}").as_bytes()),
        ),
        (
            "mode2-plain-login-chunked-tls12",
            seed(0x06, &[0, 17, 200], cpe.as_bytes()),
        ),
        ("mode2-acs-request", seed(0x02, &[], acs.as_bytes())),
        ("mode2-scram-start", seed(0x0A, &[], scram.as_bytes())),
        ("mode2-wrong-passwords", seed(0x02, &[], wrong.as_bytes())),
        ("mode2-injected-alert", seed(0x02, &[], &injected)),
        (
            "mode3-starttls-plain-login",
            seed(0x0B, &[], cpe.as_bytes()),
        ),
    ];
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).expect("write seed");
    }
    println!("wrote {}", dir.display());
}
