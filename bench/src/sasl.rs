//! The emulated CPE's SASL step: PLAIN, or a real SCRAM-SHA-256 client (RFC 5802 / RFC 7677,
//! no channel binding: what libstrophe-based CPEs pick), and the CPE's password: the same for
//! every CPE (`--password`), or derived from a secret file as crbroker's `[accounts.derived]`
//! does (`--derived-secret`).

use crate::xml::{self, Framer};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::path::Path;
use tokio::io::{AsyncRead, AsyncWrite};

/// The mechanism the CPEs log in with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mechanism {
    Plain,
    #[value(name = "scram-sha-256")]
    ScramSha256,
    /// With a device certificate (`run --device-ca-key`), never chosen on the command line.
    #[value(skip)]
    External,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::External => "EXTERNAL",
        }
    }
}

/// Where a CPE's password comes from.
#[derive(Clone)]
pub enum Passwords {
    /// Every CPE has this password.
    Same(String),
    /// base64url_nopad(HMAC-SHA-256(secret, username)): crbroker's derived credentials.
    Derived(Vec<u8>),
}

impl Passwords {
    /// Read a secret file as crbroker does: trailing `\n` and `\r` removed.
    pub fn derived_from_file(path: &Path) -> Result<Passwords, String> {
        let mut bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        while matches!(bytes.last(), Some(b'\n' | b'\r')) {
            bytes.pop();
        }
        Ok(Passwords::Derived(bytes))
    }

    pub fn of(&self, username: &str) -> String {
        match self {
            Passwords::Same(password) => password.clone(),
            Passwords::Derived(secret) => {
                URL_SAFE_NO_PAD.encode(hmac(secret, &[username.to_ascii_lowercase().as_bytes()]))
            }
        }
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Authenticate `user` with `password` on a stream whose `<stream:features>` were `features`.
pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    framer: &mut Framer,
    features: &str,
    mechanism: Mechanism,
    user: &str,
    password: &str,
) -> Result<(), String> {
    if !features.contains(&format!(">{}<", mechanism.name())) {
        return Err(format!("{} not offered: {features}", mechanism.name()));
    }
    match mechanism {
        Mechanism::Plain => {
            let token = STANDARD.encode(format!("\0{user}\0{password}"));
            auth(stream, mechanism, &token).await?;
            expect_success(stream, framer).await.map(|_| ())
        }
        Mechanism::ScramSha256 => scram_sha256(stream, framer, user, password).await,
        Mechanism::External => {
            // An empty authzid: the certificate names the account.
            auth(stream, mechanism, "=").await?;
            expect_success(stream, framer).await.map(|_| ())
        }
    }
}

async fn auth<S: AsyncWrite + Unpin>(
    stream: &mut S,
    mechanism: Mechanism,
    payload: &str,
) -> Result<(), String> {
    let text = format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{}'>{payload}</auth>",
        mechanism.name()
    );
    crate::cpe::send(stream, &text).await
}

/// The payload of the next element, which must be `expected`.
async fn payload<S: AsyncRead + Unpin>(
    stream: &mut S,
    framer: &mut Framer,
    expected: &str,
) -> Result<Vec<u8>, String> {
    let element = crate::cpe::next_element(stream, framer, "auth").await?;
    if xml::name(&element) != expected {
        return Err(format!("authentication failed: {element}"));
    }
    let text = element
        .find('>')
        .and_then(|start| Some((start, element.rfind("</")?)))
        .and_then(|(start, end)| element.get(start + 1..end))
        .unwrap_or_default();
    STANDARD
        .decode(text.trim())
        .map_err(|e| format!("{expected}: bad base64: {e}"))
}

async fn expect_success<S: AsyncRead + Unpin>(
    stream: &mut S,
    framer: &mut Framer,
) -> Result<Vec<u8>, String> {
    payload(stream, framer, "success").await
}

async fn scram_sha256<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    framer: &mut Framer,
    user: &str,
    password: &str,
) -> Result<(), String> {
    // Unique per login, unpredictable enough for a benchmark.
    let client_nonce = URL_SAFE_NO_PAD.encode(
        Sha256::new()
            .chain_update(user)
            .chain_update(format!("{:?}", std::time::SystemTime::now()))
            .finalize(),
    );
    let first_bare = format!(
        "n={},r={client_nonce}",
        user.replace('=', "=3D").replace(',', "=2C")
    );
    auth(
        stream,
        Mechanism::ScramSha256,
        &STANDARD.encode(format!("n,,{first_bare}")),
    )
    .await?;
    let server_first = String::from_utf8(payload(stream, framer, "challenge").await?)
        .map_err(|_| "server-first is not UTF-8".to_string())?;
    let (mut nonce, mut salt, mut iterations) = (None, None, None);
    for attr in server_first.split(',') {
        match attr.split_at_checked(2) {
            Some(("r=", v)) => nonce = Some(v),
            Some(("s=", v)) => salt = STANDARD.decode(v).ok(),
            Some(("i=", v)) => iterations = v.parse::<u32>().ok(),
            _ => {}
        }
    }
    let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
        return Err(format!("bad server-first {server_first:?}"));
    };
    if !nonce.starts_with(&client_nonce) {
        return Err("server nonce does not extend ours".into());
    }
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2::<Hmac<Sha256>>(password.as_bytes(), &salt, iterations, &mut salted)
        .map_err(|e| format!("PBKDF2: {e}"))?;
    let client_key = hmac(&salted, &[b"Client Key"]);
    let stored_key: [u8; 32] = Sha256::digest(client_key).into();
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("{first_bare},{server_first},{without_proof}");
    let signature = hmac(&stored_key, &[auth_message.as_bytes()]);
    let proof: Vec<u8> = client_key
        .iter()
        .zip(signature)
        .map(|(k, s)| k ^ s)
        .collect();
    let response = STANDARD.encode(format!("{without_proof},p={}", STANDARD.encode(proof)));
    crate::cpe::send(
        stream,
        &format!("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{response}</response>"),
    )
    .await?;
    let server_final = expect_success(stream, framer).await?;
    let server_key = hmac(&salted, &[b"Server Key"]);
    let expected = format!(
        "v={}",
        STANDARD.encode(hmac(&server_key, &[auth_message.as_bytes()]))
    );
    if server_final != expected.as_bytes() {
        return Err("the server's SCRAM signature does not verify".into());
    }
    Ok(())
}
