//! Fuzz the SASL server (`crbroker::proto::sasl`): PLAIN, SCRAM-SHA-1 and SCRAM-SHA-256.
//!
//! Accounts: `alice` and `bob` (`plain:`), `carol` (`scram:`, from `hash_line`). Their passwords
//! are known here, so the target has an exact oracle for PLAIN and, in the cooperative SCRAM mode,
//! for SCRAM.
//!
//! Input layout: byte 0 = flags; bits 0-1 choose the mode.
//!
//! * 0 PLAIN, 1 SCRAM-SHA-1, 2 SCRAM-SHA-256 ("raw" modes): the rest is split on `0xFF 0xFF`
//!   into messages. Flag bit 2: the first message is the initial response (else the exchange
//!   starts with no initial response, or with `Some(empty)` if bit 4 is set); bit 3: messages are
//!   base64 text run through `decode_payload` first; bit 5: `abort()` once the exchange is
//!   waiting (bit 6 clear: right after `start`, set: after the first response).
//!   Checks: no panic; for PLAIN, `Success` exactly when the credentials and authzid are right;
//!   for SCRAM, never `Success` (the proof depends on a random server nonce), server-first
//!   well-formed; sessions stay finished after `Success`/`Failure`.
//! * 3 cooperative SCRAM: the target is a correct SCRAM client (RFC 5802) whose choices (hash,
//!   user, case, GS2 flag, authzid, nonce, extensions, right/wrong password, proof corruption)
//!   come from the input. Checks: `Success` if and only if the account exists, the password is
//!   right, the proof is intact and the authzid allowed; the server signature is right.

#![no_main]

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use crbroker::auth::{hash_line, AccountStore};
use crbroker::proto::sasl::{
    decode_payload, encode_payload, Failure, Mechanism, SaslSession, Step,
};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha1::Sha1;
use sha2::{Digest, Sha256};

const SECRET: [u8; 32] = [0x5a; 32];
/// (username, password); `carol` is stored as `scram:` with few iterations (fast PLAIN checks).
const ACCOUNTS: [(&str, &str); 3] = [
    ("alice", "wonder:land"),
    ("bob", "b0b pass"),
    ("carol", "c4rol=,pw\u{e9}"),
];
const SEPARATOR: &[u8] = b"\xff\xff";
const MAX_MESSAGES: usize = 6;

fn store() -> &'static AccountStore {
    static STORE: OnceLock<AccountStore> = OnceLock::new();
    STORE.get_or_init(|| {
        let line = hash_line("carol", ACCOUNTS[2].1, 4);
        let mut store = AccountStore::parse(&line, "fuzz").expect("scram line parses");
        store.insert_plain("Alice", ACCOUNTS[0].1).expect("alice");
        store.insert_plain("bob", ACCOUNTS[1].1).expect("bob");
        store
    })
}

fn password_of(user: &str) -> Option<&'static str> {
    let lower = user.to_ascii_lowercase();
    ACCOUNTS.iter().find(|(u, _)| *u == lower).map(|(_, p)| *p)
}

/// RFC 6120 / crbroker rule: empty, the authcid, or `authcid@domain` (ASCII case-insensitive).
fn authzid_ok(authzid: &str, authcid: &str) -> bool {
    if authzid.is_empty() || authzid.eq_ignore_ascii_case(authcid) {
        return true;
    }
    match authzid.split_once('@') {
        Some((local, domain)) => {
            local.eq_ignore_ascii_case(authcid)
                && !domain.is_empty()
                && !domain.contains(['@', '/'])
        }
        None => false,
    }
}

/// The exact outcome PLAIN must have for `msg`: `Some(username)` when it must succeed.
fn plain_expected(msg: &[u8]) -> Option<String> {
    if msg.is_empty() || msg.len() > 8 * 1024 {
        return None;
    }
    let parts: Vec<&[u8]> = msg.split(|&b| b == 0).collect();
    let [authzid, authcid, password] = parts.as_slice() else {
        return None;
    };
    let authzid = std::str::from_utf8(authzid).ok()?;
    let authcid = std::str::from_utf8(authcid).ok()?;
    let expected = password_of(authcid)?;
    (!password.is_empty() && *password == expected.as_bytes() && authzid_ok(authzid, authcid))
        .then(|| authcid.to_ascii_lowercase())
}

fn verbose() -> bool {
    static VERBOSE: OnceLock<bool> = OnceLock::new();
    *VERBOSE.get_or_init(|| std::env::var_os("CRBROKER_FUZZ_VERBOSE").is_some())
}

fn check_finished(session: &mut SaslSession) {
    assert!(session.is_finished());
    if verbose() {
        eprintln!(
            "finished: {session:?}, attempted {:?}",
            session.attempted_username()
        );
    }
    assert_eq!(
        session.step(b"n,,n=alice,r=abc", store()),
        Step::Failure(Failure::MalformedRequest),
        "a finished session accepted another step"
    );
}

/// `r=<nonce>,s=<salt>,i=<iterations>` → (nonce, salt, iterations).
fn parse_server_first(challenge: &[u8]) -> (String, Vec<u8>, u32) {
    let text = std::str::from_utf8(challenge).expect("server-first is UTF-8");
    let mut parts = text.split(',');
    let nonce = parts.next().and_then(|p| p.strip_prefix("r="));
    let salt = parts.next().and_then(|p| p.strip_prefix("s="));
    let iterations = parts.next().and_then(|p| p.strip_prefix("i="));
    let (Some(nonce), Some(salt), Some(iterations), None) = (nonce, salt, iterations, parts.next())
    else {
        panic!("malformed server-first {text:?}");
    };
    assert!(
        !nonce.is_empty() && !nonce.contains(','),
        "bad server nonce in {text:?}"
    );
    let salt = STANDARD.decode(salt).expect("server-first salt is base64");
    assert!(!salt.is_empty());
    let iterations: u32 = iterations.parse().expect("server-first iterations");
    assert!(iterations >= 1);
    (nonce.to_owned(), salt, iterations)
}

fn run_raw(flags: u8, mech: Mechanism, rest: &[u8]) {
    let mut messages: Vec<Vec<u8>> = Vec::new();
    for segment in split_on(rest, SEPARATOR) {
        if messages.len() == MAX_MESSAGES {
            break;
        }
        let bytes = if flags & 8 != 0 {
            let Ok(text) = std::str::from_utf8(segment) else {
                return;
            };
            match decode_payload(text) {
                Ok(Some(bytes)) => bytes,
                Ok(None) => Vec::new(),
                Err(f) => {
                    assert_eq!(f, Failure::IncorrectEncoding);
                    return;
                }
            }
        } else {
            segment.to_vec()
        };
        // The payload codec round-trips.
        let encoded = encode_payload(&bytes);
        assert_eq!(decode_payload(&encoded), Ok(Some(bytes.clone())));
        messages.push(bytes);
    }
    let mut messages = messages.into_iter();
    let accounts = store();
    let initial = if flags & 4 != 0 {
        messages.next()
    } else if flags & 16 != 0 {
        Some(Vec::new())
    } else {
        None
    };
    let (mut session, mut step) = SaslSession::start(mech, initial.as_deref(), accounts, &SECRET);
    let mut last_message = initial.unwrap_or_default();
    let mut first_scram_message = true;
    let mut steps = 0usize;
    loop {
        if verbose() {
            eprintln!("raw {mech:?} {last_message:?}: {step:?}");
        }
        match &step {
            Step::Success { username, .. } => {
                match mech {
                    Mechanism::Plain => {
                        assert_eq!(
                            plain_expected(&last_message).as_deref(),
                            Some(username.as_str()),
                            "PLAIN succeeded for {last_message:?}"
                        );
                    }
                    _ => panic!("SCRAM succeeded with an uncooperative client: {last_message:?}"),
                }
                check_finished(&mut session);
                return;
            }
            Step::Failure(_) => {
                if mech == Mechanism::Plain {
                    assert_eq!(
                        plain_expected(&last_message),
                        None,
                        "PLAIN refused right credentials {last_message:?}: {step:?}"
                    );
                }
                check_finished(&mut session);
                return;
            }
            Step::Challenge(challenge) => {
                assert!(!session.is_finished());
                if mech != Mechanism::Plain && !challenge.is_empty() {
                    assert!(first_scram_message, "second SCRAM challenge");
                    let (nonce, _, _) = parse_server_first(challenge);
                    let text = String::from_utf8_lossy(&last_message);
                    let client_nonce = text
                        .split(',')
                        .find_map(|a| a.strip_prefix("r="))
                        .expect("accepted client-first has a nonce");
                    assert!(
                        nonce.starts_with(client_nonce),
                        "server nonce does not extend the client's"
                    );
                    first_scram_message = false;
                }
                if mech == Mechanism::Plain {
                    assert!(challenge.is_empty(), "PLAIN sent a non-empty challenge");
                }
            }
        }
        if flags & 32 != 0 && steps == usize::from((flags >> 6) & 1) {
            assert_eq!(session.abort(), Step::Failure(Failure::Aborted));
            check_finished(&mut session);
            return;
        }
        let Some(message) = messages.next() else {
            return;
        };
        step = session.step(&message, accounts);
        last_message = message;
        steps += 1;
    }
}

fn split_on<'a>(data: &'a [u8], sep: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.windows(sep.len()).position(|w| w == sep) {
            Some(i) => {
                rest = Some(&current[i + sep.len()..]);
                Some(&current[..i])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Cooperative SCRAM client.

fn hmac(sha256: bool, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    if sha256 {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
        parts.iter().for_each(|p| mac.update(p));
        mac.finalize().into_bytes().to_vec()
    } else {
        let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("any key length");
        parts.iter().for_each(|p| mac.update(p));
        mac.finalize().into_bytes().to_vec()
    }
}

fn hash(sha256: bool, data: &[u8]) -> Vec<u8> {
    if sha256 {
        Sha256::digest(data).to_vec()
    } else {
        Sha1::digest(data).to_vec()
    }
}

/// SaltedPassword for a right password, cached: plain accounts use 4096 iterations.
fn salted_password(sha256: bool, password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
    type Key = (bool, String, Vec<u8>, u32);
    thread_local! {
        static CACHE: RefCell<HashMap<Key, Vec<u8>>> = RefCell::new(HashMap::new());
    }
    let key = (sha256, password.to_owned(), salt.to_vec(), iterations);
    CACHE.with(|cache| {
        cache
            .borrow_mut()
            .entry(key)
            .or_insert_with(|| {
                let mut out = vec![0u8; if sha256 { 32 } else { 20 }];
                if sha256 {
                    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut out);
                } else {
                    pbkdf2::pbkdf2_hmac::<Sha1>(password.as_bytes(), salt, iterations, &mut out);
                }
                out
            })
            .clone()
    })
}

fn saslname(s: &str) -> String {
    s.replace('=', "=3D").replace(',', "=2C")
}

fn run_cooperative(rest: &[u8]) {
    let [choice, user_choice, case_mask, corrupt, rest @ ..] = rest else {
        return;
    };
    let sha256 = choice & 1 != 0;
    let initial_response = choice & 2 != 0;
    let gs2_flag = if choice & 4 != 0 { "y" } else { "n" };
    let authzid_mode = (choice >> 3) & 3;
    let wrong_password = choice & 32 != 0;
    let first_extension = choice & 64 != 0;
    let final_extension = choice & 128 != 0;

    let mut fields = split_on(rest, SEPARATOR);
    let nonce: String = fields
        .next()
        .unwrap_or_default()
        .iter()
        .map(|&b| match 0x21 + b % 94 {
            b',' => '-',
            c => char::from(c),
        })
        .collect();
    let nonce = if nonce.is_empty() {
        "fuzzNONCE".to_owned()
    } else {
        nonce
    };
    let fuzz_name = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    let fuzz_authzid = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    let wrong_seed = fields.next().unwrap_or_default();

    // The user, with some letters upper-cased.
    let base = match user_choice % 5 {
        0..=2 => ACCOUNTS[usize::from(user_choice % 5)].0.to_owned(),
        3 => "dave".to_owned(),
        _ => fuzz_name,
    };
    let user: String = base
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if case_mask >> (i % 8) & 1 != 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    let authzid = match authzid_mode {
        0 => String::new(),
        1 => user.clone(),
        2 => format!("{user}@acs.example"),
        _ => fuzz_authzid,
    };
    let mech = if sha256 {
        Mechanism::ScramSha256
    } else {
        Mechanism::ScramSha1
    };
    let gs2_header = if authzid.is_empty() {
        format!("{gs2_flag},,")
    } else {
        format!("{gs2_flag},a={},", saslname(&authzid))
    };
    let mut client_first_bare = format!("n={},r={nonce}", saslname(&user));
    if first_extension {
        client_first_bare.push_str(",x=ext");
    }
    let client_first = format!("{gs2_header}{client_first_bare}");

    let accounts = store();
    let (mut session, step) = if initial_response {
        SaslSession::start(mech, Some(client_first.as_bytes()), accounts, &SECRET)
    } else {
        let (mut session, step) = SaslSession::start(mech, None, accounts, &SECRET);
        assert_eq!(step, Step::Challenge(Vec::new()));
        let step = session.step(client_first.as_bytes(), accounts);
        (session, step)
    };

    // What client-first must give.
    if user.is_empty() || client_first.len() > 4096 {
        assert_eq!(
            step,
            Step::Failure(Failure::MalformedRequest),
            "{client_first:?}"
        );
        check_finished(&mut session);
        return;
    }
    // Over-long usernames are refused before any lookup (and before the authzid check).
    if user.len() > crbroker::auth::MAX_USERNAME_LEN {
        assert_eq!(
            step,
            Step::Failure(Failure::NotAuthorized),
            "{client_first:?}"
        );
        check_finished(&mut session);
        return;
    }
    if !authzid_ok(&authzid, &user) {
        assert_eq!(
            step,
            Step::Failure(Failure::InvalidAuthzid),
            "{client_first:?}"
        );
        check_finished(&mut session);
        return;
    }
    let Step::Challenge(server_first) = step else {
        panic!("client-first {client_first:?} refused: {step:?}");
    };
    assert_eq!(
        session.attempted_username(),
        Some(user.to_ascii_lowercase().as_str())
    );
    let (full_nonce, salt, iterations) = parse_server_first(&server_first);
    assert!(full_nonce.starts_with(&nonce) && full_nonce.len() > nonce.len());
    let server_first = String::from_utf8(server_first).expect("checked");

    let right_password = password_of(&user).filter(|_| !wrong_password);
    let salted = match right_password {
        Some(password) => salted_password(sha256, password, &salt, iterations),
        // Any other password: a SaltedPassword nobody can tell from a wrong password's.
        None => {
            let mut s = hash(sha256, wrong_seed);
            s[0] ^= 0x80;
            s
        }
    };
    let client_key = hmac(sha256, &salted, &[b"Client Key"]);
    let stored_key = hash(sha256, &client_key);
    let server_key = hmac(sha256, &salted, &[b"Server Key"]);
    let mut without_proof = format!(
        "c={},r={full_nonce}",
        STANDARD.encode(gs2_header.as_bytes())
    );
    if final_extension {
        without_proof.push_str(",y=z");
    }
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let signature = hmac(sha256, &stored_key, &[auth_message.as_bytes()]);
    let mut proof: Vec<u8> = client_key
        .iter()
        .zip(&signature)
        .map(|(a, b)| a ^ b)
        .collect();
    let corrupted = *corrupt != 0;
    if corrupted {
        let len = proof.len();
        proof[usize::from(*corrupt) % len] ^= corrupt;
    }
    let client_final = format!("{without_proof},p={}", STANDARD.encode(&proof));
    let step = session.step(client_final.as_bytes(), accounts);
    if client_final.len() > 4096 {
        assert_eq!(
            step,
            Step::Failure(Failure::MalformedRequest),
            "{client_final:?}"
        );
        check_finished(&mut session);
        return;
    }

    let must_succeed = right_password.is_some() && !corrupted;
    if verbose() {
        eprintln!("cooperative {mech:?} user {user:?} authzid {authzid:?}: {step:?}");
    }
    match &step {
        Step::Success {
            username,
            additional_data,
        } => {
            assert!(
                must_succeed,
                "SCRAM succeeded for {user:?} with a wrong proof: {client_final:?}"
            );
            assert_eq!(username, &user.to_ascii_lowercase());
            let server_signature = hmac(sha256, &server_key, &[auth_message.as_bytes()]);
            let expected = format!("v={}", STANDARD.encode(server_signature));
            assert_eq!(
                additional_data.as_deref(),
                Some(expected.as_bytes()),
                "wrong server signature"
            );
        }
        Step::Failure(f) => {
            assert!(
                !must_succeed,
                "SCRAM refused right credentials for {user:?}: {f:?}"
            );
            assert_eq!(*f, Failure::NotAuthorized);
        }
        Step::Challenge(c) => panic!("challenge after client-final: {c:?}"),
    }
    check_finished(&mut session);
}

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    match flags & 3 {
        0 => run_raw(flags, Mechanism::Plain, rest),
        1 => run_raw(flags, Mechanism::ScramSha1, rest),
        2 => run_raw(flags, Mechanism::ScramSha256, rest),
        _ => run_cooperative(rest),
    }
});
