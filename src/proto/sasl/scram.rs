//! SCRAM-SHA-1 / SCRAM-SHA-256 (RFC 5802, RFC 7677), server side, without
//! channel binding (GS2 flags `n` and `y` accepted, `p=` rejected).
//!
//! Unknown users get a server-first message with fake but stable parameters
//! (the store's typical iteration count and salt length, a salt derived with
//! HMAC from a per-process secret and the username: exactly what a `plain:`
//! account shows) and fail at the proof check with `not-authorized`. No
//! account kind runs PBKDF2 before the challenge: a `plain:` account's keys are
//! derived when its proof is checked.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use subtle::{Choice, ConstantTimeEq};

use super::{authzid_allowed, Failure, Step, B64};
use crate::auth::crypto::{self, ScramHash};
use crate::auth::{Credentials, KeyPair, ScramParams, MAX_USERNAME_LEN};

/// Longest client-first / client-final message accepted.
const MAX_MESSAGE_LEN: usize = 4096;
/// Random bytes in the server part of the nonce.
const SERVER_NONCE_BYTES: usize = 24;

/// Server state between server-first and client-final.
pub(super) struct ServerState<H: ScramHash> {
    gs2_header: Box<str>,
    client_first_bare: Box<str>,
    server_first: Box<str>,
    nonce: Box<str>,
    username: Box<str>,
    /// What the server-first message showed; a `plain:` account's keys are derived from it.
    params: ScramParams,
    known: bool,
    /// Keys the fake credentials of unknown users (see [`fake_keys`]).
    server_secret: [u8; 32],
    _hash: std::marker::PhantomData<H>,
}

impl<H: ScramHash> ServerState<H> {
    /// Normalised username the client asked for (may not exist).
    pub(super) fn username(&self) -> &str {
        &self.username
    }
}

/// Unescape a SCRAM `saslname` (`=2C` → `,`, `=3D` → `=`); any other `=`
/// or an empty name is an error.
fn unescape_saslname(s: &str) -> Option<String> {
    if s.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some((before, after)) = rest.split_once('=') {
        out.push_str(before);
        if let Some(r) = after.strip_prefix("2C") {
            out.push(',');
            rest = r;
        } else if let Some(r) = after.strip_prefix("3D") {
            out.push('=');
            rest = r;
        } else {
            return None;
        }
    }
    out.push_str(rest);
    Some(out)
}

/// `printable = %x21-2B / %x2D-7E` (no comma), at least one.
fn valid_nonce(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// `attr-val = ALPHA "=" value`.
fn valid_extension(s: &str) -> bool {
    let b = s.as_bytes();
    matches!(b, [a, b'=', ..] if a.is_ascii_alphabetic())
}

fn malformed<T>(why: &'static str) -> Result<T, Failure> {
    tracing::debug!(reason = why, "malformed SCRAM message");
    Err(Failure::MalformedRequest)
}

/// The fields of a client-first-message the server uses.
struct ClientFirst<'a> {
    flag: &'a str,
    authz: &'a str,
    bare: &'a str,
    authzid: Option<String>,
    authcid: String,
    client_nonce: &'a str,
}

/// Parse a client-first-message without looking at the store.
fn parse_client_first(msg: &[u8]) -> Result<ClientFirst<'_>, Failure> {
    if msg.len() > MAX_MESSAGE_LEN {
        return malformed("client-first too long");
    }
    let Ok(text) = std::str::from_utf8(msg) else {
        return malformed("client-first not UTF-8");
    };

    // gs2-header = gs2-cbind-flag "," [ authzid ] ","
    let Some((flag, rest)) = text.split_once(',') else {
        return malformed("missing GS2 header");
    };
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => return malformed("channel binding requested"),
        _ => return malformed("bad GS2 channel-binding flag"),
    }
    let Some((authz, bare)) = rest.split_once(',') else {
        return malformed("incomplete GS2 header");
    };
    let authzid = if authz.is_empty() {
        None
    } else {
        match authz.strip_prefix("a=").and_then(unescape_saslname) {
            Some(a) => Some(a),
            None => return malformed("bad authzid"),
        }
    };

    // client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
    let mut attrs = bare.split(',');
    let Some(first) = attrs.next() else {
        return malformed("empty client-first-message-bare");
    };
    if first.starts_with("m=") {
        return malformed("mandatory extension");
    }
    let Some(authcid) = first.strip_prefix("n=").and_then(unescape_saslname) else {
        return malformed("bad or missing username");
    };
    let Some(client_nonce) = attrs.next().and_then(|a| a.strip_prefix("r=")) else {
        return malformed("missing nonce");
    };
    if !valid_nonce(client_nonce) {
        return malformed("bad nonce");
    }
    if !attrs.all(valid_extension) {
        return malformed("bad extension");
    }
    Ok(ClientFirst {
        flag,
        authz,
        bare,
        authzid,
        authcid,
        client_nonce,
    })
}

/// The username a client-first-message names (unescaped, not case folded), if it is
/// well-formed.
pub(super) fn username(msg: &[u8]) -> Option<String> {
    parse_client_first(msg).ok().map(|first| first.authcid)
}

/// Handle client-first-message; on success returns the state and the
/// server-first-message to send as a challenge. A username longer than
/// [`MAX_USERNAME_LEN`] is refused before any lookup.
pub(super) fn client_first<H: ScramHash>(
    msg: &[u8],
    accounts: &dyn Credentials,
    server_secret: &[u8; 32],
    nonce_override: Option<&str>,
) -> Result<(ServerState<H>, Vec<u8>), Failure> {
    let ClientFirst {
        flag,
        authz,
        bare,
        authzid,
        authcid,
        client_nonce,
    } = parse_client_first(msg)?;
    if authcid.len() > MAX_USERNAME_LEN {
        return Err(Failure::NotAuthorized);
    }
    if let Some(authzid) = &authzid {
        if !authzid_allowed(authzid, &authcid) {
            return Err(Failure::InvalidAuthzid);
        }
    }

    // Parameters only (no PBKDF2 here, for any kind of account): real ones, or fake but stable
    // ones for unknown users.
    let (username, account) = match accounts.lookup(&authcid) {
        Some((name, account)) => (name.to_owned(), Some(account)),
        None => (authcid.to_ascii_lowercase(), None),
    };
    let Some(params) = accounts.scram_params(&username, account) else {
        return Err(Failure::TemporaryAuthFailure);
    };

    let server_nonce = match nonce_override {
        Some(n) => n.to_owned(),
        None => {
            let mut random = [0u8; SERVER_NONCE_BYTES];
            if crypto::random_bytes(&mut random).is_err() {
                tracing::warn!("OS random source unavailable; cannot create SCRAM nonce");
                return Err(Failure::TemporaryAuthFailure);
            }
            STANDARD.encode(random)
        }
    };
    let nonce = format!("{client_nonce}{server_nonce}");
    let server_first = format!(
        "r={nonce},s={},i={}",
        STANDARD.encode(&params.salt),
        params.iterations
    );
    let challenge = server_first.clone().into_bytes();
    let gs2_header = format!("{flag},{authz},");
    Ok((
        ServerState {
            gs2_header: gs2_header.into(),
            client_first_bare: bare.into(),
            server_first: server_first.into(),
            nonce: nonce.into(),
            username: username.into(),
            params,
            known: account.is_some(),
            server_secret: *server_secret,
            _hash: std::marker::PhantomData,
        },
        challenge,
    ))
}

/// Stable fake keys of an unknown user (never match: `known` is false too).
fn fake_keys<H: ScramHash>(server_secret: &[u8; 32], name: &str) -> KeyPair<H::Key> {
    KeyPair {
        stored: H::hmac(
            server_secret,
            &[b"scram fake stored key\0", name.as_bytes()],
        ),
        server: H::hmac(
            server_secret,
            &[b"scram fake server key\0", name.as_bytes()],
        ),
    }
}

/// Whether `proof` proves knowledge of the ClientKey behind `keys.stored` (RFC 5802 §3:
/// `ClientKey = proof XOR HMAC(StoredKey, AuthMessage)`, `H(ClientKey) == StoredKey`), compared
/// in constant time.
fn proof_matches<H: ScramHash>(
    proof: &H::Key,
    keys: &KeyPair<H::Key>,
    auth_message: &[&[u8]],
) -> Choice {
    let client_signature = H::hmac(keys.stored.as_ref(), auth_message);
    let mut client_key = *proof;
    for (k, s) in client_key
        .as_mut()
        .iter_mut()
        .zip(client_signature.as_ref())
    {
        *k ^= s;
    }
    H::hash(client_key.as_ref())
        .as_ref()
        .ct_eq(keys.stored.as_ref())
}

/// The ServerKey of the first of the account's key pairs the proof matches (a `plain:`
/// account's keys derived now on its first SCRAM login, then cached; a derived account's
/// candidates tried in order, each in constant time), or `None`. An unknown user's proof is
/// checked against fake keys, the same work, and never matches.
fn matching_server_key<H: ScramHash>(
    st: &ServerState<H>,
    accounts: &dyn Credentials,
    proof: &H::Key,
    auth_message: &[&[u8]],
) -> Option<H::Key> {
    match accounts.lookup(&st.username).filter(|_| st.known) {
        Some((_, account)) => account
            .scram_key_candidates::<H>(&st.params)
            .find(|keys| bool::from(proof_matches::<H>(proof, keys, auth_message)))
            .map(|keys| keys.server),
        None => {
            let keys = fake_keys::<H>(&st.server_secret, &st.username);
            let _ = std::hint::black_box(proof_matches::<H>(proof, &keys, auth_message));
            None
        }
    }
}

/// Handle client-final-message: check channel binding and nonce, verify the
/// proof in constant time, and answer with the server signature.
pub(super) fn client_final<H: ScramHash>(
    st: &ServerState<H>,
    msg: &[u8],
    accounts: &dyn Credentials,
) -> Step {
    match verify_final(st, msg, accounts) {
        Ok(step) => step,
        Err(f) => Step::Failure(f),
    }
}

fn verify_final<H: ScramHash>(
    st: &ServerState<H>,
    msg: &[u8],
    accounts: &dyn Credentials,
) -> Result<Step, Failure> {
    if msg.len() > MAX_MESSAGE_LEN {
        return malformed("client-final too long");
    }
    let Ok(text) = std::str::from_utf8(msg) else {
        return malformed("client-final not UTF-8");
    };
    // client-final-message = client-final-message-without-proof "," proof
    let Some((without_proof, proof_b64)) = text.rsplit_once(",p=") else {
        return malformed("missing proof");
    };
    if proof_b64.contains(',') {
        return malformed("proof is not the last attribute");
    }
    let mut attrs = without_proof.split(',');
    let Some(cbind) = attrs.next().and_then(|a| a.strip_prefix("c=")) else {
        return malformed("missing channel binding");
    };
    match B64.decode(cbind) {
        Ok(cb) if cb == st.gs2_header.as_bytes() => {}
        _ => return malformed("channel binding mismatch"),
    }
    let Some(nonce) = attrs.next().and_then(|a| a.strip_prefix("r=")) else {
        return malformed("missing nonce");
    };
    if nonce != &*st.nonce {
        return malformed("nonce mismatch");
    }
    if !attrs.all(valid_extension) {
        return malformed("bad extension");
    }
    let mut proof = H::Key::default();
    match B64.decode(proof_b64) {
        Ok(p) if p.len() == proof.as_ref().len() => proof.as_mut().copy_from_slice(&p),
        _ => return malformed("bad proof"),
    }

    // AuthMessage = client-first-message-bare "," server-first-message ","
    //               client-final-message-without-proof
    let auth_message: [&[u8]; 5] = [
        st.client_first_bare.as_bytes(),
        b",",
        st.server_first.as_bytes(),
        b",",
        without_proof.as_bytes(),
    ];
    if let Some(server_key) = matching_server_key(st, accounts, &proof, &auth_message) {
        let server_signature = H::hmac(server_key.as_ref(), &auth_message);
        let mut server_final = b"v=".to_vec();
        server_final.extend_from_slice(STANDARD.encode(server_signature).as_bytes());
        Ok(Step::Success {
            username: st.username.to_string(),
            additional_data: Some(server_final),
        })
    } else {
        Ok(Step::Failure(Failure::NotAuthorized))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::XorShift;
    use super::super::{Mechanism, SaslSession};
    use super::*;
    use crate::auth::crypto::{Sha1Scram, Sha256Scram};
    use crate::auth::AccountStore;
    use crate::auth::{hash_line, scram_credential};

    const SECRET: [u8; 32] = [42u8; 32];

    /// Minimal SCRAM client (RFC 5802 §3) for driving the server.
    struct Client<H: ScramHash> {
        password: Vec<u8>,
        gs2_header: String,
        client_first_bare: String,
        _h: std::marker::PhantomData<H>,
    }

    impl<H: ScramHash> Client<H> {
        fn new(gs2_header: &str, username: &str, password: &str, cnonce: &str) -> Self {
            let user = username.replace('=', "=3D").replace(',', "=2C");
            Client {
                password: password.as_bytes().to_vec(),
                gs2_header: gs2_header.to_owned(),
                client_first_bare: format!("n={user},r={cnonce}"),
                _h: std::marker::PhantomData,
            }
        }

        fn first(&self) -> Vec<u8> {
            format!("{}{}", self.gs2_header, self.client_first_bare).into_bytes()
        }

        /// Returns (client-final, expected server-final).
        fn last(&self, server_first: &[u8]) -> (Vec<u8>, Vec<u8>) {
            let sf = std::str::from_utf8(server_first).unwrap();
            let mut nonce = None;
            let mut salt = None;
            let mut iterations = None;
            for attr in sf.split(',') {
                if let Some(v) = attr.strip_prefix("r=") {
                    nonce = Some(v.to_owned());
                } else if let Some(v) = attr.strip_prefix("s=") {
                    salt = Some(STANDARD.decode(v).unwrap());
                } else if let Some(v) = attr.strip_prefix("i=") {
                    iterations = Some(v.parse::<u32>().unwrap());
                }
            }
            let nonce = nonce.unwrap();
            let salted = H::salted_password(&self.password, &salt.unwrap(), iterations.unwrap());
            let client_key = H::hmac(salted.as_ref(), &[b"Client Key"]);
            let stored_key = H::hash(client_key.as_ref());
            let server_key = H::hmac(salted.as_ref(), &[b"Server Key"]);
            let without_proof = format!(
                "c={},r={}",
                STANDARD.encode(self.gs2_header.as_bytes()),
                nonce
            );
            let auth_message = format!("{},{},{}", self.client_first_bare, sf, without_proof);
            let signature = H::hmac(stored_key.as_ref(), &[auth_message.as_bytes()]);
            let proof: Vec<u8> = client_key
                .as_ref()
                .iter()
                .zip(signature.as_ref())
                .map(|(a, b)| a ^ b)
                .collect();
            let server_sig = H::hmac(server_key.as_ref(), &[auth_message.as_bytes()]);
            (
                format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes(),
                format!("v={}", STANDARD.encode(server_sig)).into_bytes(),
            )
        }
    }

    fn mech_of<H: ScramHash>() -> Mechanism {
        if std::any::TypeId::of::<H>() == std::any::TypeId::of::<Sha1Scram>() {
            Mechanism::ScramSha1
        } else {
            Mechanism::ScramSha256
        }
    }

    /// Full exchange; returns the final step.
    fn exchange<H: ScramHash>(
        store: &dyn Credentials,
        gs2: &str,
        user: &str,
        password: &str,
        initial_response: bool,
    ) -> Step {
        let client = Client::<H>::new(gs2, user, password, "clientNONCE123");
        let mech = mech_of::<H>();
        let (mut session, step) = if initial_response {
            SaslSession::start(mech, Some(&client.first()), store, &SECRET)
        } else {
            let (mut s, step) = SaslSession::start(mech, None, store, &SECRET);
            assert_eq!(step, Step::Challenge(Vec::new()));
            let step = s.step(&client.first(), store);
            (s, step)
        };
        let Step::Challenge(server_first) = step else {
            return step;
        };
        let (final_msg, expected_server_final) = client.last(&server_first);
        let step = session.step(&final_msg, store);
        if let Step::Success {
            additional_data, ..
        } = &step
        {
            assert_eq!(additional_data.as_deref(), Some(&expected_server_final[..]));
        }
        assert!(session.is_finished());
        step
    }

    fn success(user: &str) -> impl Fn(&Step) -> bool + '_ {
        move |s| matches!(s, Step::Success { username, .. } if username == user)
    }

    #[test]
    fn rfc5802_sha1_vector() {
        let salt = STANDARD.decode("QSXCR+Q6sek8bf92").unwrap();
        let line = format!("user {}", scram_credential(b"pencil", 4096, &salt));
        let store = AccountStore::parse(&line, "t").unwrap();
        let (mut s, step) = SaslSession::start_inner(
            Mechanism::ScramSha1,
            Some(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL"),
            &store,
            &SECRET,
            Some("3rfcNHYJY1ZVvWVs7j"),
        );
        assert_eq!(
            step,
            Step::Challenge(
                b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096".to_vec()
            )
        );
        let step = s.step(
            b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            &store,
        );
        assert_eq!(
            step,
            Step::Success {
                username: "user".into(),
                additional_data: Some(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=".to_vec()),
            }
        );
    }

    #[test]
    fn rfc7677_sha256_vector() {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let line = format!("user {}", scram_credential(b"pencil", 4096, &salt));
        let store = AccountStore::parse(&line, "t").unwrap();
        let (mut s, step) = SaslSession::start_inner(
            Mechanism::ScramSha256,
            Some(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"),
            &store,
            &SECRET,
            Some("%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"),
        );
        assert_eq!(
            step,
            Step::Challenge(
                b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
                    .to_vec()
            )
        );
        let step = s.step(
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            &store,
        );
        assert_eq!(
            step,
            Step::Success {
                username: "user".into(),
                additional_data: Some(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec()),
            }
        );
    }

    #[test]
    fn over_long_username_is_refused_before_lookup() {
        let name = "u".repeat(MAX_USERNAME_LEN + 1);
        let store = AccountStore::parse(&format!("{} plain:pw", &name[1..]), "t").unwrap();
        for mech in [Mechanism::ScramSha1, Mechanism::ScramSha256] {
            let first = format!("n,,n={name},r=abc");
            let (s, step) = SaslSession::start(mech, Some(first.as_bytes()), &store, &SECRET);
            assert_eq!(step, Step::Failure(Failure::NotAuthorized));
            assert_eq!(s.attempted_username(), None);
            assert_eq!(username(first.as_bytes()).as_deref(), Some(name.as_str()));
            let first = format!("n,,n={},r=abc", &name[1..]);
            let (_, step) = SaslSession::start(mech, Some(first.as_bytes()), &store, &SECRET);
            assert!(matches!(step, Step::Challenge(_)), "{mech:?}");
        }
        assert_eq!(username(b"n,,n=,r=abc"), None);
        assert_eq!(username(b"n,,n=A=2Cb,r=abc").as_deref(), Some("A,b"));
    }

    #[test]
    fn no_pbkdf2_before_the_proof_and_unknown_users_look_like_plain_accounts() {
        let store = mixed_store();
        let server_first = |user: &str| {
            let text = challenge_for(&store, user);
            let salt = text
                .split(",s=")
                .nth(1)
                .unwrap()
                .split(',')
                .next()
                .unwrap()
                .to_owned();
            let iterations = text.rsplit(",i=").next().unwrap().to_owned();
            (STANDARD.decode(salt).unwrap().len(), iterations)
        };
        let alice = server_first("alice");
        assert!(!store.get("alice").unwrap().scram_keys_derived());
        assert_eq!(server_first("nobody"), alice);
        assert_eq!(alice, (16, "4096".to_string()));
        // The keys come with the proof check.
        assert!(success("alice")(&exchange::<Sha256Scram>(
            &store,
            "n,,",
            "alice",
            "wonder:land",
            true
        )));
        assert!(store.get("alice").unwrap().scram_keys_derived());
    }

    /// The SCRAM-SHA-256 server-first message `user`'s client-first (nonce `abc`) gets.
    fn challenge_for(store: &AccountStore, user: &str) -> String {
        let first = format!("n,,n={user},r=abc");
        let (_, step) = SaslSession::start(
            Mechanism::ScramSha256,
            Some(first.as_bytes()),
            store,
            &SECRET,
        );
        let Step::Challenge(c) = step else {
            panic!("{step:?}")
        };
        String::from_utf8(c).unwrap()
    }

    fn mixed_store() -> AccountStore {
        let text = format!(
            "alice plain:wonder:land\n{}\nweird,na=me plain:pw\n",
            hash_line("Bob", "b0b pass", 32)
        );
        AccountStore::parse(&text, "t").unwrap()
    }

    fn both_hashes(f: impl Fn(&dyn Fn(&AccountStore, &str, &str, &str, bool) -> Step)) {
        f(&|s, g, u, p, i| exchange::<Sha1Scram>(s, g, u, p, i));
        f(&|s, g, u, p, i| exchange::<Sha256Scram>(s, g, u, p, i));
    }

    #[test]
    fn a_derived_account_logs_in_with_any_candidate_and_derives_only_the_keys_it_reaches() {
        use crate::auth::{Accounts, DerivedAccounts, DerivedSecret};
        use std::sync::Arc;
        let (new, old) = (
            DerivedSecret::new("new", &[2; 32]).unwrap(),
            DerivedSecret::new("old", &[1; 32]).unwrap(),
        );
        let (pw_new, pw_old) = (new.password("cpe-1"), old.password("cpe-1"));
        let derived = Arc::new(DerivedAccounts::new(vec![new, old], ["cpe-"], 16));
        let chain = Arc::new(Accounts::new(
            Arc::new(AccountStore::new()),
            vec![derived.clone()],
        ));
        let login = |user: &str| futures::executor::block_on(chain.resolve(user));
        let keys_derived = || derived.account("cpe-1").unwrap().candidates_derived();
        let cpe = login("cpe-1");
        let ok = exchange::<Sha256Scram>(&cpe, "n,,", "cpe-1", &pw_new, true);
        assert!(success("cpe-1")(&ok), "{ok:?}");
        assert_eq!(
            keys_derived(),
            1,
            "the first candidate matched: no PBKDF2 for the other"
        );
        let ok = exchange::<Sha256Scram>(&cpe, "n,,", "CPE-1", &pw_old, false);
        assert!(success("cpe-1")(&ok), "{ok:?}");
        assert_eq!(keys_derived(), 2);
        for password in ["wrong", &pw_new[..42]] {
            assert_eq!(
                exchange::<Sha1Scram>(&cpe, "n,,", "cpe-1", password, true),
                Step::Failure(Failure::NotAuthorized)
            );
        }
        // Another CPE's password, and a username that does not qualify.
        assert_eq!(
            exchange::<Sha256Scram>(&login("cpe-2"), "n,,", "cpe-2", &pw_new, true),
            Step::Failure(Failure::NotAuthorized)
        );
        assert_eq!(
            exchange::<Sha256Scram>(&login("acs"), "n,,", "acs", &pw_new, true),
            Step::Failure(Failure::NotAuthorized)
        );
    }

    #[test]
    fn client_round_trips() {
        let store = mixed_store();
        both_hashes(|ex| {
            for initial in [true, false] {
                // plain-form account (lazily derived keys), twice to hit the cache.
                assert!(success("alice")(&ex(
                    &store,
                    "n,,",
                    "alice",
                    "wonder:land",
                    initial
                )));
                assert!(success("alice")(&ex(
                    &store,
                    "n,,",
                    "ALICE",
                    "wonder:land",
                    initial
                )));
                // scram-form account from hash_line.
                assert!(success("bob")(&ex(
                    &store, "n,,", "bob", "b0b pass", initial
                )));
                // y flag, authzid, escaped username.
                assert!(success("bob")(&ex(
                    &store, "y,,", "bob", "b0b pass", initial
                )));
                assert!(success("bob")(&ex(
                    &store,
                    "n,a=bob@acs.example,",
                    "bob",
                    "b0b pass",
                    initial
                )));
                assert!(success("bob")(&ex(
                    &store, "n,a=bob,", "bob", "b0b pass", initial
                )));
                assert!(success("weird,na=me")(&ex(
                    &store,
                    "n,,",
                    "weird,na=me",
                    "pw",
                    initial
                )));
            }
        });
    }

    #[test]
    fn wrong_password_and_unknown_user() {
        let store = mixed_store();
        let na = Step::Failure(Failure::NotAuthorized);
        both_hashes(|ex| {
            assert_eq!(ex(&store, "n,,", "alice", "wonder:lanD", true), na);
            assert_eq!(ex(&store, "n,,", "bob", "b0b", true), na);
            assert_eq!(ex(&store, "n,,", "mallory", "anything", true), na);
            assert_eq!(ex(&store, "n,,", "mal@lory", "anything", false), na);
        });
    }

    #[test]
    fn unknown_user_gets_stable_plausible_parameters() {
        let store = mixed_store();
        let first = |user: &str| {
            let c = challenge_for(&store, user);
            let mut parts = c.split(',');
            let r = parts.next().unwrap().to_owned();
            (r, parts.collect::<Vec<_>>().join(","))
        };
        let (r1, params1) = first("mallory");
        let (r2, params2) = first("mallory");
        let (_, params3) = first("trudy");
        assert_eq!(params1, params2, "same salt for the same unknown user");
        assert_ne!(params1, params3);
        assert!(params1.ends_with(",i=4096"));
        assert_ne!(r1, r2, "fresh server nonce each time");
        // r=abc + base64 of 24 bytes
        assert_eq!(r1.len(), "r=abc".len() + 32);
        // Known plain account: also 16-byte salt, i=4096, stable.
        let (_, pa) = first("alice");
        let (_, pb) = first("alice");
        assert_eq!(pa, pb);
        assert!(pa.ends_with(",i=4096"));
        assert_eq!(pa.len(), params1.len());
    }

    fn first_step(mech: Mechanism, msg: &[u8]) -> Step {
        let store = mixed_store();
        SaslSession::start(mech, Some(msg), &store, &SECRET).1
    }

    #[test]
    fn malformed_client_first() {
        let m = Step::Failure(Failure::MalformedRequest);
        for msg in [
            &b"p=tls-exporter,,n=alice,r=abc"[..],
            b"p=tls-server-end-point,,n=alice,r=abc",
            b"x,,n=alice,r=abc",
            b",,n=alice,r=abc",
            b"n",
            b"n,",
            b"n,,",
            b"n,,n=alice",
            b"n,,n=alice,",
            b"n,,n=alice,r=",
            b"n,,n=,r=abc",
            b"n,,r=abc,n=alice",
            b"n,,m=ext,n=alice,r=abc",
            b"n,,n=al=2Dice,r=abc",
            b"n,,n=alice=,r=abc",
            b"n,,n=alice,r=ab c",
            b"n,,n=alice,r=abc,1=x",
            b"n,,n=alice,r=abc,xx",
            b"n,b=alice,n=alice,r=abc",
            b"n,a=,n=alice,r=abc",
            b"n,a=x=4,n=alice,r=abc",
            b"n,,n=al\xffice,r=abc",
            b"\0\0\0",
            b"n,,n=alice,r=abc\x01",
        ] {
            for mech in [Mechanism::ScramSha1, Mechanism::ScramSha256] {
                assert_eq!(
                    first_step(mech, msg),
                    m,
                    "{:?}",
                    String::from_utf8_lossy(msg)
                );
            }
        }
        let huge = [b"n,,n=alice,r=".as_slice(), &vec![b'a'; MAX_MESSAGE_LEN]].concat();
        assert_eq!(first_step(Mechanism::ScramSha1, &huge), m);
        // Extensions after the nonce are ignored.
        assert!(matches!(
            first_step(Mechanism::ScramSha1, b"n,,n=alice,r=abc,x=1,y=2"),
            Step::Challenge(_)
        ));
        // authzid for someone else.
        assert_eq!(
            first_step(Mechanism::ScramSha256, b"n,a=bob,n=alice,r=abc"),
            Step::Failure(Failure::InvalidAuthzid)
        );
    }

    #[test]
    fn malformed_client_final() {
        let store = mixed_store();
        let client = Client::<Sha256Scram>::new("n,,", "alice", "wonder:land", "cn");
        let start = || {
            // Fixed server nonce so that one client-final fits every session.
            let (s, step) = SaslSession::start_inner(
                Mechanism::ScramSha256,
                Some(&client.first()),
                &store,
                &SECRET,
                Some("fixedServerNonce"),
            );
            let Step::Challenge(sf) = step else { panic!() };
            (s, sf)
        };
        let (_, sf) = start();
        let (good, _) = client.last(&sf);
        let good = String::from_utf8(good).unwrap();
        let nonce = std::str::from_utf8(&sf)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .to_owned();
        let proof = good.rsplit_once(",p=").unwrap().1.to_owned();
        let m = Step::Failure(Failure::MalformedRequest);
        let cases = vec![
            String::new(),
            "garbage".into(),
            format!("c=biws,{nonce}"),
            format!("{nonce},c=biws,p={proof}"),
            format!("c=eSws,{nonce},p={proof}"), // y,, instead of n,,
            format!("c=!!!,{nonce},p={proof}"),
            format!("c=biws,r=other,p={proof}"),
            format!("c=biws,{nonce}x,p={proof}"),
            format!("c=biws,p={proof}"),
            format!("c=biws,{nonce},p=!!!"),
            format!("c=biws,{nonce},p=AAAA"),
            format!("c=biws,{nonce},p={proof},x=1"),
            format!("c=biws,{nonce},1=2,p={proof}"),
            format!("c=biws,{nonce},p="),
        ];
        for case in cases {
            let (mut s, _) = start();
            assert_eq!(s.step(case.as_bytes(), &store), m, "{case}");
            assert!(s.is_finished());
        }
        let (mut s, _) = start();
        assert_eq!(s.step(b"c=biws,r=\xff,p=x", &store), m);
        // Extensions before the proof are accepted; the proof then fails
        // because the AuthMessage changed.
        let (mut s, _) = start();
        let with_ext = good.replace(",p=", ",x=1,p=");
        assert_eq!(
            s.step(with_ext.as_bytes(), &store),
            Step::Failure(Failure::NotAuthorized)
        );
        // A wrong proof of the right length.
        let (mut s, _) = start();
        let flipped = good.replacen(
            &proof[..4],
            if &proof[..4] == "AAAA" {
                "BBBB"
            } else {
                "AAAA"
            },
            1,
        );
        assert_eq!(
            s.step(flipped.as_bytes(), &store),
            Step::Failure(Failure::NotAuthorized)
        );
        // Finally the genuine one succeeds on a fresh session.
        let (mut s, _) = start();
        assert!(success("alice")(&s.step(good.as_bytes(), &store)));
    }

    #[test]
    fn empty_response_after_empty_challenge_is_malformed() {
        let store = mixed_store();
        let (mut s, step) = SaslSession::start(Mechanism::ScramSha1, Some(b""), &store, &SECRET);
        assert_eq!(step, Step::Challenge(Vec::new()));
        assert_eq!(
            s.step(b"", &store),
            Step::Failure(Failure::MalformedRequest)
        );
    }

    #[test]
    fn hash_line_account_works_with_scram() {
        let store = AccountStore::parse(&hash_line("dev", "pw:1", 100), "t").unwrap();
        assert!(success("dev")(&exchange::<Sha1Scram>(
            &store, "n,,", "dev", "pw:1", true
        )));
        assert!(success("dev")(&exchange::<Sha256Scram>(
            &store, "n,,", "dev", "pw:1", true
        )));
    }

    #[test]
    fn mutated_valid_messages_never_panic_or_succeed() {
        let store = mixed_store();
        let client = Client::<Sha1Scram>::new("n,,", "alice", "wonder:land", "cn0");
        let mut rng = XorShift(0xdead_beef_cafe_f00d);
        for _ in 0..400 {
            let mut first = client.first();
            mutate(&mut rng, &mut first);
            let (mut s, step) =
                SaslSession::start(Mechanism::ScramSha1, Some(&first), &store, &SECRET);
            let Step::Challenge(sf) = step else {
                assert!(matches!(step, Step::Failure(_)));
                continue;
            };
            let (mut fin, _) = client.last_lenient(&sf);
            let original = fin.clone();
            let mutated = mutate(&mut rng, &mut fin) || first != client.first();
            let step = s.step(&fin, &store);
            // Dropping base64 padding from the proof is harmless (padding is optional).
            let only_padding = fin.strip_suffix(b"=") == original.strip_suffix(b"==")
                || original.strip_suffix(b"=") == Some(&fin[..]);
            if mutated && !only_padding {
                assert!(
                    !matches!(step, Step::Success { .. }),
                    "{:?}",
                    String::from_utf8_lossy(&fin)
                );
            }
        }
    }

    fn mutate(rng: &mut XorShift, msg: &mut Vec<u8>) -> bool {
        if msg.is_empty() || rng.next().is_multiple_of(4) {
            return false;
        }
        let pos = (rng.next() as usize) % msg.len();
        match rng.next() % 3 {
            0 => {
                msg.remove(pos);
            }
            1 => msg.insert(pos, (rng.next() & 0xff) as u8),
            _ => {
                if let Some(b) = msg.get_mut(pos) {
                    *b ^= 1 << (rng.next() % 8);
                }
            }
        }
        true
    }

    impl<H: ScramHash> Client<H> {
        /// Like `last`, but tolerant of whatever the server sent.
        fn last_lenient(&self, server_first: &[u8]) -> (Vec<u8>, Vec<u8>) {
            let ok = std::str::from_utf8(server_first)
                .map(|s| s.starts_with("r=") && s.contains(",s=") && s.contains(",i="))
                .unwrap_or(false);
            if ok {
                self.last(server_first)
            } else {
                (b"c=biws,r=x,p=AAAA".to_vec(), Vec::new())
            }
        }
    }

    #[test]
    fn saslname_unescaping() {
        assert_eq!(unescape_saslname("a=2Cb=3Dc").as_deref(), Some("a,b=c"));
        assert_eq!(unescape_saslname("=2C").as_deref(), Some(","));
        assert_eq!(unescape_saslname("plain").as_deref(), Some("plain"));
        assert_eq!(unescape_saslname(""), None);
        assert_eq!(unescape_saslname("a=2"), None);
        assert_eq!(unescape_saslname("a=2c"), None);
        assert_eq!(unescape_saslname("a="), None);
        assert_eq!(unescape_saslname("é=3D"), Some("é=".into()));
    }
}
