//! SASL server side (RFC 6120 §6), sans-I/O: mechanism names, the PLAIN
//! (RFC 4616) and SCRAM-SHA-1 / SCRAM-SHA-256 (RFC 5802 / RFC 7677)
//! exchanges, EXTERNAL's authzid decision ([`external`], XEP-0178), and the
//! base64 helpers for `<auth>`/`<response>` payloads.
//!
//! The caller parses the XML, decodes the element text with
//! [`decode_payload`], feeds the bytes to a [`SaslSession`] and turns the
//! returned [`Step`] into `<challenge/>`, `<success/>` or `<failure/>`.
//! Nothing here performs I/O or logs passwords or SASL payloads.

pub mod external;
mod plain;
mod scram;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;

use crate::auth::crypto::{Sha1Scram, Sha256Scram};
use crate::auth::Credentials;

/// Base64 used for SASL payloads: standard alphabet, padding optional.
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A SASL mechanism this server implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// PLAIN (RFC 4616).
    Plain,
    /// SCRAM-SHA-1 (RFC 5802), without channel binding.
    ScramSha1,
    /// SCRAM-SHA-256 (RFC 7677), without channel binding.
    ScramSha256,
    /// EXTERNAL (RFC 4422 appendix A) with the TLS client certificate (XEP-0178); not run by
    /// [`SaslSession`]: see [`external`].
    External,
}

impl Mechanism {
    /// All mechanisms, strongest first (the order to advertise them in).
    pub const ALL: [Mechanism; 4] = [
        Mechanism::External,
        Mechanism::ScramSha256,
        Mechanism::ScramSha1,
        Mechanism::Plain,
    ];

    /// The IANA mechanism name, as used in `<mechanism>` and `<auth mechanism=…>`.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::External => "EXTERNAL",
        }
    }

    /// Parse a mechanism name (exact, case-sensitive as registered).
    pub fn from_name(s: &str) -> Option<Self> {
        Mechanism::ALL.into_iter().find(|m| m.name() == s)
    }
}

/// What to send to the client next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send `<challenge>` containing [`encode_payload`] of these bytes.
    Challenge(Vec<u8>),
    /// Authentication succeeded: send `<success>`, containing
    /// [`encode_payload`] of `additional_data` when present (SCRAM's
    /// server-final message `v=…`), else empty.
    Success {
        /// The authenticated, normalised (ASCII-lowercase) username.
        username: String,
        /// Additional data with success (SCRAM server-final message).
        additional_data: Option<Vec<u8>>,
    },
    /// Authentication failed: send `<failure><CONDITION/></failure>`.
    Failure(Failure),
}

/// SASL failure conditions (RFC 6120 §6.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Failure {
    /// Wrong credentials or unknown user.
    #[error("not-authorized")]
    NotAuthorized,
    /// The client's message does not follow the mechanism's syntax.
    #[error("malformed-request")]
    MalformedRequest,
    /// The authorization identity is not allowed for this user.
    #[error("invalid-authzid")]
    InvalidAuthzid,
    /// The mechanism is not supported / not offered.
    #[error("invalid-mechanism")]
    InvalidMechanism,
    /// The mechanism needs TLS first.
    #[error("encryption-required")]
    EncryptionRequired,
    /// The client aborted the exchange.
    #[error("aborted")]
    Aborted,
    /// The payload is not valid base64.
    #[error("incorrect-encoding")]
    IncorrectEncoding,
    /// Server-side problem (e.g. no randomness available); retry later.
    #[error("temporary-auth-failure")]
    TemporaryAuthFailure,
}

impl Failure {
    /// The XML element name of the condition, e.g. `"not-authorized"`.
    pub fn condition(&self) -> &'static str {
        match self {
            Failure::NotAuthorized => "not-authorized",
            Failure::MalformedRequest => "malformed-request",
            Failure::InvalidAuthzid => "invalid-authzid",
            Failure::InvalidMechanism => "invalid-mechanism",
            Failure::EncryptionRequired => "encryption-required",
            Failure::Aborted => "aborted",
            Failure::IncorrectEncoding => "incorrect-encoding",
            Failure::TemporaryAuthFailure => "temporary-auth-failure",
        }
    }
}

/// Decode the text of an `<auth>` or `<response>` element (RFC 6120 §6.4.2):
/// `""` (no text) → `None`; `"="` → `Some(empty)`; otherwise base64, with
/// whitespace ignored and padding optional.
///
/// # Errors
/// Invalid base64 → [`Failure::IncorrectEncoding`].
pub fn decode_payload(text: &str) -> Result<Option<Vec<u8>>, Failure> {
    let compact: std::borrow::Cow<'_, str> = if text.bytes().any(|b| b.is_ascii_whitespace()) {
        text.chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect::<String>()
            .into()
    } else {
        text.into()
    };
    match compact.as_ref() {
        "" => Ok(None),
        "=" => Ok(Some(Vec::new())),
        s => B64
            .decode(s)
            .map(Some)
            .map_err(|_| Failure::IncorrectEncoding),
    }
}

/// Encode bytes for a `<challenge>`, `<success>` or `<response>`:
/// empty → `"="`, otherwise standard padded base64.
pub fn encode_payload(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        "=".to_owned()
    } else {
        STANDARD.encode(bytes)
    }
}

/// Whether `authzid` (requested authorization identity) is acceptable for
/// the authenticated `authcid`: empty, the username itself, or the bare JID
/// `username@domain` (ASCII case-insensitive on the username).
pub(crate) fn authzid_allowed(authzid: &str, authcid: &str) -> bool {
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

enum State {
    /// PLAIN without initial response: waiting for the message.
    AwaitPlain,
    /// SCRAM without initial response: waiting for client-first.
    AwaitScramFirst {
        server_secret: [u8; 32],
        nonce_override: Option<Box<str>>,
    },
    /// SCRAM-SHA-1 server-first sent: waiting for client-final.
    ScramSha1(Box<scram::ServerState<Sha1Scram>>),
    /// SCRAM-SHA-256 server-first sent: waiting for client-final.
    ScramSha256(Box<scram::ServerState<Sha256Scram>>),
    /// Success or failure has been returned.
    Done,
}

/// One authentication attempt (one `<auth>` … `<success>/<failure>` exchange).
pub struct SaslSession {
    mechanism: Mechanism,
    state: State,
    authcid: Option<Box<str>>,
}

impl std::fmt::Debug for SaslSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::AwaitPlain => "await-plain",
            State::AwaitScramFirst { .. } => "await-client-first",
            State::ScramSha1(_) | State::ScramSha256(_) => "await-client-final",
            State::Done => "done",
        };
        f.debug_struct("SaslSession")
            .field("mechanism", &self.mechanism)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl SaslSession {
    /// Start an exchange for `<auth mechanism=…>`. `initial` is the decoded
    /// initial response: `None` when the element had no text, `Some(empty)`
    /// for `=`; both of these lead to an empty challenge asking the client
    /// for its first message. `server_secret` keys the fake SCRAM parameters
    /// of unknown users (keep it stable for the process lifetime).
    pub fn start(
        mech: Mechanism,
        initial: Option<&[u8]>,
        accounts: &dyn Credentials,
        server_secret: &[u8; 32],
    ) -> (SaslSession, Step) {
        Self::start_inner(mech, initial, accounts, server_secret, None)
    }

    /// [`start`](Self::start) with an optional fixed server nonce part (tests).
    fn start_inner(
        mech: Mechanism,
        initial: Option<&[u8]>,
        accounts: &dyn Credentials,
        server_secret: &[u8; 32],
        nonce_override: Option<&str>,
    ) -> (SaslSession, Step) {
        let state = match mech {
            // The certificate is the credential: nothing to exchange here (see `external`).
            Mechanism::External => State::Done,
            Mechanism::Plain => State::AwaitPlain,
            Mechanism::ScramSha1 | Mechanism::ScramSha256 => State::AwaitScramFirst {
                server_secret: *server_secret,
                nonce_override: nonce_override.map(Into::into),
            },
        };
        let mut session = SaslSession {
            mechanism: mech,
            state,
            authcid: None,
        };
        let step = match initial {
            Some(bytes) if !bytes.is_empty() => session.step(bytes, accounts),
            _ => Step::Challenge(Vec::new()),
        };
        (session, step)
    }

    /// Process the decoded bytes of a `<response>` element.
    /// After a `Success` or `Failure` further calls return
    /// `Failure(MalformedRequest)`.
    pub fn step(&mut self, response: &[u8], accounts: &dyn Credentials) -> Step {
        let state = std::mem::replace(&mut self.state, State::Done);
        let step = match state {
            State::AwaitPlain => {
                let (authcid, step) = plain::authenticate(response, accounts);
                self.authcid = authcid;
                step
            }
            State::AwaitScramFirst {
                server_secret,
                nonce_override,
            } => self.scram_first(
                response,
                accounts,
                &server_secret,
                nonce_override.as_deref(),
            ),
            State::ScramSha1(st) => scram::client_final(&st, response, accounts),
            State::ScramSha256(st) => scram::client_final(&st, response, accounts),
            State::Done => Step::Failure(Failure::MalformedRequest),
        };
        if let Step::Failure(f) = &step {
            tracing::debug!(
                mechanism = self.mechanism.name(),
                condition = f.condition(),
                "SASL authentication failed"
            );
        }
        step
    }

    fn scram_first(
        &mut self,
        msg: &[u8],
        accounts: &dyn Credentials,
        server_secret: &[u8; 32],
        nonce_override: Option<&str>,
    ) -> Step {
        match self.mechanism {
            Mechanism::ScramSha1 => {
                match scram::client_first::<Sha1Scram>(msg, accounts, server_secret, nonce_override)
                {
                    Ok((st, challenge)) => {
                        self.authcid = Some(st.username().into());
                        self.state = State::ScramSha1(Box::new(st));
                        Step::Challenge(challenge)
                    }
                    Err(f) => Step::Failure(f),
                }
            }
            Mechanism::ScramSha256 => {
                match scram::client_first::<Sha256Scram>(
                    msg,
                    accounts,
                    server_secret,
                    nonce_override,
                ) {
                    Ok((st, challenge)) => {
                        self.authcid = Some(st.username().into());
                        self.state = State::ScramSha256(Box::new(st));
                        Step::Challenge(challenge)
                    }
                    Err(f) => Step::Failure(f),
                }
            }
            Mechanism::Plain | Mechanism::External => Step::Failure(Failure::MalformedRequest),
        }
    }

    /// The username `response` names, if feeding it to [`step`](Self::step) would look
    /// credentials up: PLAIN's message, or SCRAM's client-first-message. Not case folded and
    /// not length checked (the step refuses names over [`crate::auth::MAX_USERNAME_LEN`]).
    /// The caller applies its login delay with it before calling `step`.
    pub fn username_in<'m>(&self, response: &'m [u8]) -> Option<std::borrow::Cow<'m, str>> {
        match self.state {
            State::AwaitPlain => plain::username(response).map(std::borrow::Cow::Borrowed),
            State::AwaitScramFirst { .. } => scram::username(response).map(std::borrow::Cow::Owned),
            _ => None,
        }
    }

    /// The client sent `<abort/>`: end the exchange.
    pub fn abort(&mut self) -> Step {
        self.state = State::Done;
        Step::Failure(Failure::Aborted)
    }

    /// The mechanism of this exchange.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// True once `Success` or `Failure` has been returned.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The (ASCII-lowercased) username the client is trying to authenticate
    /// as, once known — whether or not the account exists. For logging and
    /// rate limiting; not proof of anything.
    pub fn attempted_username(&self) -> Option<&str> {
        self.authcid.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AccountStore;

    #[test]
    fn mechanism_names_round_trip() {
        for m in Mechanism::ALL {
            assert_eq!(Mechanism::from_name(m.name()), Some(m));
        }
        assert_eq!(Mechanism::from_name("scram-sha-1"), None);
        assert_eq!(Mechanism::from_name("SCRAM-SHA-1-PLUS"), None);
        assert_eq!(Mechanism::from_name("DIGEST-MD5"), None);
        assert_eq!(Mechanism::ScramSha256.name(), "SCRAM-SHA-256");
    }

    #[test]
    fn failure_conditions() {
        assert_eq!(Failure::NotAuthorized.condition(), "not-authorized");
        assert_eq!(Failure::MalformedRequest.condition(), "malformed-request");
        assert_eq!(Failure::InvalidAuthzid.condition(), "invalid-authzid");
        assert_eq!(Failure::InvalidMechanism.condition(), "invalid-mechanism");
        assert_eq!(
            Failure::EncryptionRequired.condition(),
            "encryption-required"
        );
        assert_eq!(Failure::Aborted.condition(), "aborted");
        assert_eq!(Failure::IncorrectEncoding.condition(), "incorrect-encoding");
        assert_eq!(
            Failure::TemporaryAuthFailure.condition(),
            "temporary-auth-failure"
        );
        assert_eq!(Failure::Aborted.to_string(), "aborted");
    }

    #[test]
    fn session_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SaslSession>();
        assert_send_sync::<Step>();
        assert_send_sync::<Failure>();
    }

    #[test]
    fn payload_codec() {
        assert_eq!(decode_payload(""), Ok(None));
        assert_eq!(decode_payload("  \n\t"), Ok(None));
        assert_eq!(decode_payload("="), Ok(Some(Vec::new())));
        assert_eq!(decode_payload(" = "), Ok(Some(Vec::new())));
        assert_eq!(
            decode_payload("AGFsaWNlAHB3"),
            Ok(Some(b"\0alice\0pw".to_vec()))
        );
        assert_eq!(
            decode_payload("AGFs\r\n aWNl\tAHB3"),
            Ok(Some(b"\0alice\0pw".to_vec()))
        );
        assert_eq!(decode_payload("YQ=="), Ok(Some(b"a".to_vec())));
        assert_eq!(decode_payload("YQ"), Ok(Some(b"a".to_vec())));
        assert_eq!(decode_payload("!!!!"), Err(Failure::IncorrectEncoding));
        assert_eq!(decode_payload("Y"), Err(Failure::IncorrectEncoding));
        assert_eq!(decode_payload("=="), Err(Failure::IncorrectEncoding));
        assert_eq!(decode_payload("é"), Err(Failure::IncorrectEncoding));
        assert_eq!(encode_payload(b""), "=");
        assert_eq!(encode_payload(b"a"), "YQ==");
        for data in [&b"x"[..], b"\0\0", b"n,,n=user,r=abc"] {
            assert_eq!(
                decode_payload(&encode_payload(data)),
                Ok(Some(data.to_vec()))
            );
        }
    }

    #[test]
    fn authzid_rules() {
        assert!(authzid_allowed("", "alice"));
        assert!(authzid_allowed("alice", "alice"));
        assert!(authzid_allowed("Alice", "alice"));
        assert!(authzid_allowed("alice@example.com", "alice"));
        assert!(authzid_allowed("ALICE@Example.COM", "alice"));
        assert!(!authzid_allowed("bob", "alice"));
        assert!(!authzid_allowed("bob@example.com", "alice"));
        assert!(!authzid_allowed("alice@", "alice"));
        assert!(!authzid_allowed("alice@example.com/res", "alice"));
        assert!(!authzid_allowed("alice@a@b", "alice"));
        assert!(!authzid_allowed("@example.com", "alice"));
    }

    #[test]
    fn abort_and_done_state() {
        let store = AccountStore::parse("alice plain:pw", "t").unwrap();
        let secret = [1u8; 32];
        let (mut s, step) = SaslSession::start(Mechanism::Plain, None, &store, &secret);
        assert_eq!(step, Step::Challenge(Vec::new()));
        assert!(!s.is_finished());
        assert_eq!(s.abort(), Step::Failure(Failure::Aborted));
        assert!(s.is_finished());
        assert_eq!(
            s.step(b"\0alice\0pw", &store),
            Step::Failure(Failure::MalformedRequest)
        );
        let (mut s, step) =
            SaslSession::start(Mechanism::Plain, Some(b"\0alice\0pw"), &store, &secret);
        assert!(matches!(step, Step::Success { .. }));
        assert!(s.is_finished());
        assert_eq!(s.mechanism(), Mechanism::Plain);
        assert_eq!(
            s.step(b"\0alice\0pw", &store),
            Step::Failure(Failure::MalformedRequest)
        );
        assert!(!format!("{s:?}").contains("pw"));
    }

    /// Tiny deterministic PRNG for the garbage tests.
    pub(super) struct XorShift(pub(super) u64);
    impl XorShift {
        pub(super) fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        pub(super) fn bytes(&mut self, max_len: usize) -> Vec<u8> {
            let len = (self.next() as usize) % (max_len + 1);
            // Bias towards the characters that matter to the parsers.
            const INTERESTING: &[u8] = b"\0,=naprcmvsiy23CD@/ ";
            (0..len)
                .map(|_| {
                    let r = self.next();
                    if r.is_multiple_of(3) {
                        (r >> 8) as u8
                    } else {
                        INTERESTING
                            .get(((r >> 8) as usize) % INTERESTING.len())
                            .copied()
                            .unwrap_or(b'x')
                    }
                })
                .collect()
        }
    }

    #[test]
    fn random_garbage_never_panics() {
        let store = AccountStore::parse("alice plain:pw\nuser plain:pencil", "t").unwrap();
        let secret = [9u8; 32];
        let mut rng = XorShift(0x1234_5678_9abc_def1);
        for round in 0..3000 {
            let mech = Mechanism::ALL[round % Mechanism::ALL.len()];
            let initial = rng.bytes(64);
            let (mut s, step) = SaslSession::start(mech, Some(&initial), &store, &secret);
            match step {
                Step::Success { .. } => panic!("garbage authenticated: {initial:?}"),
                Step::Failure(_) => assert!(s.is_finished()),
                Step::Challenge(_) => {
                    let resp = rng.bytes(96);
                    let step = s.step(&resp, &store);
                    assert!(!matches!(step, Step::Success { .. }));
                    if !s.is_finished() {
                        let resp = rng.bytes(96);
                        assert!(matches!(s.step(&resp, &store), Step::Failure(_)));
                    }
                }
            }
            let text: String = rng.bytes(32).into_iter().map(char::from).collect();
            let _ = decode_payload(&text);
        }
    }
}
