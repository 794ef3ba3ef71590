//! SASL PLAIN (RFC 4616), server side: `[authzid] NUL authcid NUL passwd`.

use super::{authzid_allowed, Failure, Step};
use crate::auth::{verify_plain, Credentials, MAX_USERNAME_LEN};

/// Longest PLAIN message accepted (authzid + authcid + password + 2 NULs).
const MAX_MESSAGE_LEN: usize = 8 * 1024;

/// The parts of a PLAIN message: authzid, authcid, password.
type Parts<'a> = (&'a str, &'a str, &'a [u8]);

/// Split a PLAIN message without checking anything against the store.
fn parse(msg: &[u8]) -> Result<Parts<'_>, Failure> {
    if msg.is_empty() || msg.len() > MAX_MESSAGE_LEN {
        return Err(Failure::MalformedRequest);
    }
    let mut parts = msg.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Failure::MalformedRequest);
    };
    let (Ok(authzid), Ok(authcid)) = (std::str::from_utf8(authzid), std::str::from_utf8(authcid))
    else {
        return Err(Failure::MalformedRequest);
    };
    if authcid.is_empty() || password.is_empty() {
        return Err(Failure::MalformedRequest);
    }
    Ok((authzid, authcid, password))
}

/// The username a PLAIN message names (as sent, not case folded), if it is well-formed.
pub(super) fn username(msg: &[u8]) -> Option<&str> {
    parse(msg).ok().map(|(_, authcid, _)| authcid)
}

/// Verify one PLAIN message. Returns the attempted (lowercased) username
/// when the message was well-formed enough to contain one, and the step.
/// A username longer than [`MAX_USERNAME_LEN`] is refused before any lookup.
pub(super) fn authenticate(msg: &[u8], accounts: &dyn Credentials) -> (Option<Box<str>>, Step) {
    let (authzid, authcid, password) = match parse(msg) {
        Ok(parts) => parts,
        Err(f) => return (None, Step::Failure(f)),
    };
    if authcid.len() > MAX_USERNAME_LEN {
        return (None, Step::Failure(Failure::NotAuthorized));
    }
    if !authzid_allowed(authzid, authcid) {
        return (None, Step::Failure(Failure::InvalidAuthzid));
    }
    let attempted = Some(authcid.to_ascii_lowercase().into_boxed_str());
    let step = match accounts.lookup(authcid) {
        Some((username, account)) => {
            if verify_plain(account, password) {
                Step::Success {
                    username: username.to_owned(),
                    additional_data: None,
                }
            } else {
                Step::Failure(Failure::NotAuthorized)
            }
        }
        None => {
            // Same kind of work as for a real account, then fail.
            let _ = accounts.dummy_verify(password);
            Step::Failure(Failure::NotAuthorized)
        }
    };
    (attempted, step)
}

#[cfg(test)]
mod tests {
    use super::super::{Mechanism, SaslSession};
    use super::*;
    use crate::auth::{hash_line, AccountStore};

    const SECRET: [u8; 32] = [3u8; 32];

    fn store() -> AccountStore {
        let mut text = String::from("Alice plain:wonder:land\n");
        text.push_str(&hash_line("bob", "b0b pass", 16));
        AccountStore::parse(&text, "t").unwrap()
    }

    fn run(initial: Option<&[u8]>, response: Option<&[u8]>) -> Step {
        let store = store();
        let (mut s, step) = SaslSession::start(Mechanism::Plain, initial, &store, &SECRET);
        match response {
            Some(r) => {
                assert_eq!(step, Step::Challenge(Vec::new()));
                s.step(r, &store)
            }
            None => step,
        }
    }

    fn ok(user: &str) -> Step {
        Step::Success {
            username: user.into(),
            additional_data: None,
        }
    }

    #[test]
    fn plain_success() {
        assert_eq!(run(Some(b"\0alice\0wonder:land"), None), ok("alice"));
        assert_eq!(run(Some(b"\0ALICE\0wonder:land"), None), ok("alice"));
        // scram-form account verified with PBKDF2.
        assert_eq!(run(Some(b"\0bob\0b0b pass"), None), ok("bob"));
    }

    #[test]
    fn plain_without_initial_response() {
        assert_eq!(run(None, Some(b"\0alice\0wonder:land")), ok("alice"));
        assert_eq!(run(Some(b""), Some(b"\0alice\0wonder:land")), ok("alice"));
        assert_eq!(
            run(None, Some(b"")),
            Step::Failure(Failure::MalformedRequest)
        );
    }

    #[test]
    fn plain_wrong_password_and_unknown_user() {
        let na = Step::Failure(Failure::NotAuthorized);
        assert_eq!(run(Some(b"\0alice\0wonder:lanD"), None), na);
        assert_eq!(run(Some(b"\0bob\0b0b pas"), None), na);
        assert_eq!(run(Some(b"\0carol\0wonder:land"), None), na);
        assert_eq!(run(Some(b"\0al@ice\0wonder:land"), None), na);
        assert_eq!(run(None, Some(b"\0nobody\0x")), na);
    }

    #[test]
    fn plain_authzid() {
        assert_eq!(run(Some(b"alice\0alice\0wonder:land"), None), ok("alice"));
        assert_eq!(
            run(Some(b"alice@acs.example\0alice\0wonder:land"), None),
            ok("alice")
        );
        let bad = Step::Failure(Failure::InvalidAuthzid);
        assert_eq!(run(Some(b"bob\0alice\0wonder:land"), None), bad);
        assert_eq!(run(Some(b"bob@acs.example\0alice\0wonder:land"), None), bad);
        assert_eq!(
            run(Some(b"alice@acs.example/r\0alice\0wonder:land"), None),
            bad
        );
    }

    #[test]
    fn plain_malformed() {
        let m = Step::Failure(Failure::MalformedRequest);
        for msg in [
            &b"alice"[..],
            b"\0alice",
            b"\0alice\0",
            b"\0\0pw",
            b"\0alice\0pw\0",
            b"\0alice\0pw\0extra",
            b"\0al\xffice\0pw",
            b"\xff\0alice\0pw",
            b"\0\0",
        ] {
            assert_eq!(run(Some(msg), None), m, "{msg:?}");
        }
        let huge = [b"\0alice\0".as_slice(), &vec![b'x'; MAX_MESSAGE_LEN]].concat();
        assert_eq!(run(Some(&huge), None), m);
    }

    #[test]
    fn over_long_username_is_refused_before_lookup() {
        let name = "u".repeat(MAX_USERNAME_LEN + 1);
        let msg = format!("\0{name}\0pw");
        let store = AccountStore::parse(&format!("{} plain:pw", &name[1..]), "t").unwrap();
        let (attempted, step) = authenticate(msg.as_bytes(), &store);
        assert_eq!(
            (attempted, step),
            (None, Step::Failure(Failure::NotAuthorized))
        );
        // The longest allowed name still works.
        let ok_msg = format!("\0{}\0pw", &name[1..]);
        assert!(matches!(
            authenticate(ok_msg.as_bytes(), &store).1,
            Step::Success { .. }
        ));
        assert_eq!(username(msg.as_bytes()), Some(name.as_str()));
        assert_eq!(username(b"\0\0pw"), None);
    }

    #[test]
    fn plain_reports_attempted_username() {
        let store = store();
        let (s, _) = SaslSession::start(Mechanism::Plain, Some(b"\0Carol\0x"), &store, &SECRET);
        assert_eq!(s.attempted_username(), Some("carol"));
    }
}
