//! NATS subject names of the cluster and the escaping of JIDs into one subject token.
//!
//! - `crb.cpe.<bare JID>`: one subscription per bare JID a node holds sessions of (presence);
//!   connection requests and `bound` events for that CPE are sent here.
//! - `crb.acs.<domain or bare JID>`: ACS entities (components, ACS accounts), subscribed in the
//!   queue group [`ACS_QUEUE`], so one live connection on some node gets each unsolicited stanza.
//! - `crb.node.<node>.>`: a node's inbox, one wildcard subscription: `crb.node.<node>.a` takes
//!   answers relayed for requests it keeps pending, `crb.node.<node>.r.<key>` the reply to its
//!   request `key` (the answer, an ack, or NATS's "no responders").
//! - `crb.hb.<node>`: a node's heartbeat; every node subscribes `crb.hb.*`.
//!
//! NATS forbids `.` (token separator), `*` and `>` (wildcards) and whitespace inside a token. A JID
//! may hold `.` (domains always do) and, in its resource, anything: those bytes, every byte
//! below 0x21, DEL and the escape character `%` itself become `%XX` (hex), so two JIDs never map
//! to one subject and the mapping needs no allocation beyond the subject itself.

use std::fmt::Write;

pub const ACS_QUEUE: &str = "crb-acs";
pub const HEARTBEATS: &str = "crb.hb.*";
const HEARTBEAT_PREFIX: &str = "crb.hb.";

pub fn cpe(bare: &str) -> String {
    escaped("crb.cpe.", bare)
}

pub fn acs(address: &str) -> String {
    escaped("crb.acs.", address)
}

/// What a node subscribes for its inbox.
pub fn node_inbox(node: &str) -> String {
    format!("crb.node.{node}.>")
}

/// Where answers relayed to `node` go.
pub fn answers(node: &str) -> String {
    format!("crb.node.{node}.a")
}

/// Where the reply to `node`'s request `key` goes.
pub fn reply(node: &str, key: u64) -> String {
    format!("crb.node.{node}.r.{key}")
}

/// What arrived on `node`'s inbox, by its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxSubject {
    Answers,
    Reply(u64),
}

pub fn inbox_subject(node: &str, subject: &str) -> Option<InboxSubject> {
    let rest = subject.strip_prefix("crb.node.")?.strip_prefix(node)?;
    match rest.strip_prefix('.')? {
        "a" => Some(InboxSubject::Answers),
        other => other
            .strip_prefix("r.")?
            .parse()
            .ok()
            .map(InboxSubject::Reply),
    }
}

pub fn heartbeat(node: &str) -> String {
    format!("{HEARTBEAT_PREFIX}{node}")
}

/// The node a heartbeat subject names.
pub fn heartbeat_node(subject: &str) -> Option<&str> {
    subject.strip_prefix(HEARTBEAT_PREFIX)
}

/// Node names go into subjects unescaped: keep them to a safe, short alphabet.
pub fn is_valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A node name from the host name and the process id (the default of `cluster.node`), with
/// anything outside the node-name alphabet replaced by `-`.
pub fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "crbroker".into());
    let host: String = host
        .chars()
        .take(40)
        .map(
            |c| match c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                true => c,
                false => '-',
            },
        )
        .collect();
    format!("{host}-{}", std::process::id())
}

fn escaped(prefix: &str, token: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + token.len() + 8);
    out.push_str(prefix);
    for c in token.chars() {
        match c {
            '.' | '*' | '>' | '%' | '\u{0}'..='\u{20}' | '\u{7f}' => {
                let _ = write!(out, "%{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jids_become_one_token_without_forbidden_characters() {
        let subject = cpe("cpe-1@example.net");
        assert_eq!(subject, "crb.cpe.cpe-1@example%2Enet");
        let token = subject.strip_prefix("crb.cpe.").unwrap();
        assert!(!token.contains(['.', '*', '>', ' ', '\t']));
        let odd = acs("a*b>c d%e\tf.g");
        assert_eq!(odd, "crb.acs.a%2Ab%3Ec%20d%25e%09f%2Eg");
    }

    #[test]
    fn escaping_is_injective_for_the_escape_character() {
        // "%2E" literally and "." must not collide.
        assert_ne!(cpe("a%2Eb@x"), cpe("a.b@x"));
    }

    #[test]
    fn node_names_and_heartbeats() {
        assert!(is_valid_node_name("broker-1_a"));
        assert!(!is_valid_node_name("a.b"));
        assert!(!is_valid_node_name(""));
        assert!(!is_valid_node_name(&"x".repeat(65)));
        assert!(is_valid_node_name(&default_node_name()));
        assert_eq!(heartbeat_node(&heartbeat("n1")), Some("n1"));
        assert_eq!(heartbeat_node("crb.node.n1"), None);
    }

    #[test]
    fn inbox_subjects_round_trip_and_foreign_ones_are_refused() {
        assert_eq!(
            inbox_subject("n1", &answers("n1")),
            Some(InboxSubject::Answers)
        );
        assert_eq!(
            inbox_subject("n1", &reply("n1", 42)),
            Some(InboxSubject::Reply(42))
        );
        assert_eq!(inbox_subject("n1", &reply("n11", 42)), None);
        assert_eq!(inbox_subject("n1", &answers("n2")), None);
        assert_eq!(inbox_subject("n1", "crb.node.n1.r.x"), None);
        assert_eq!(inbox_subject("n1", "crb.node.n1.b"), None);
        assert_eq!(inbox_subject("n1", "crb.node.n1"), None);
    }
}
