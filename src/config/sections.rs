//! The sections of the configuration file, one type each, with their defaults. Every struct
//! rejects unknown keys; [`super::Config`] holds them and validates across sections.

use super::Secret;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The XMPP domain the CPEs log in to (the domain part of their JIDs).
    pub domain: Spanned<String>,
    /// Seconds the broker waits for sessions to close on shutdown before it exits anyway.
    #[serde(default = "defaults::shutdown_timeout_secs")]
    pub shutdown_timeout_secs: u64,
    /// Runtime worker threads; 0 = one per CPU core.
    #[serde(default)]
    pub worker_threads: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: Spanned<PathBuf>,
    pub key: Spanned<PathBuf>,
    /// Create a self-signed development certificate when `cert` and `key` are missing.
    #[serde(default)]
    pub auto_create_dev_cert: bool,
    /// TLS 1.3 session tickets issued per login (0 = no resumption).
    #[serde(default)]
    pub session_tickets: usize,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ListenerKind {
    /// Plain TCP with mandatory STARTTLS (RFC 6120), usually port 5222.
    Starttls,
    /// TLS from the first byte (XEP-0368), usually port 5223.
    DirectTls,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum SaslMechanismName {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-1")]
    ScramSha1,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
}

/// Whether a listener asks TLS clients for a certificate (SASL EXTERNAL, XEP-0178).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// No certificate is asked for; EXTERNAL is never offered.
    #[default]
    None,
    /// A certificate is asked for; clients without one use the password mechanisms, clients
    /// with one that `client_ca_file` does not verify (or a CRL revokes) fail the handshake.
    Optional,
    /// Every client must present a certificate the CA verifies, or the handshake fails.
    Required,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    pub kind: ListenerKind,
    #[serde(default = "defaults::sasl_mechanisms")]
    pub sasl_mechanisms: Vec<SaslMechanismName>,
    #[serde(default = "defaults::tls_versions")]
    pub tls_versions: Vec<TlsVersion>,
    /// Client (device) certificates: none, optional or required. Not `none`: EXTERNAL is offered
    /// to every client whose certificate was verified, ahead of `sasl_mechanisms`.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// PEM file of the CA certificates that issue device certificates (needed unless
    /// `client_auth` is `none`); re-read by a reload.
    #[serde(default)]
    pub client_ca_file: Option<Spanned<PathBuf>>,
    /// PEM (or DER) CRL files of those CAs; re-read by a reload, which is how a revocation takes
    /// effect without a restart.
    #[serde(default)]
    pub crl_files: Vec<Spanned<PathBuf>>,
    /// SO_REUSEPORT: several broker processes (each with it on) share this address and the
    /// kernel spreads new connections over them.
    #[serde(default)]
    pub reuse_port: bool,
    /// Every connection starts with a PROXY protocol v1 or v2 header (a load balancer in front);
    /// its source address stands for the peer (caps, login throttle, logs, sessions API).
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Networks allowed to send PROXY headers (required when `proxy_protocol` is on); other
    /// peers are closed at accept, before a byte is read.
    #[serde(default)]
    pub proxy_from: Vec<Spanned<ipnet::IpNet>>,
}

impl ListenerConfig {
    /// The networks whose connections must start with a PROXY header (None: no PROXY protocol).
    pub fn proxy_sources(&self) -> Option<Vec<ipnet::IpNet>> {
        self.proxy_protocol.then(|| self.proxy_networks())
    }

    /// `proxy_from` without its positions in the file.
    pub fn proxy_networks(&self) -> Vec<ipnet::IpNet> {
        self.proxy_from.iter().map(|n| *n.get_ref()).collect()
    }
}

/// `[accounts.certificate]`: which name in a verified device certificate is its username, and
/// whether the CA alone may vouch for it (see README "Device certificates (SASL EXTERNAL)").
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CertificateAccountsConfig {
    /// Where the username comes from when the certificate has no XEP-0178 id-on-xmppAddr for
    /// this domain (an xmppAddr always comes first).
    #[serde(default)]
    pub identity: CertificateIdentity,
    /// True: a verified identity logs in even when no account source knows it (the CA alone
    /// vouches for it; revocation is then the only way to lock a device out).
    #[serde(default)]
    pub trust_ca: bool,
    /// With `trust_ca`: only usernames starting with one of these may log in on the CA's word
    /// alone (empty: any username).
    #[serde(default)]
    pub username_prefixes: Vec<String>,
}

/// The certificate field a username is taken from (after any id-on-xmppAddr).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CertificateIdentity {
    /// Only XEP-0178 id-on-xmppAddr subjectAltNames (`user@<server.domain>`).
    #[default]
    XmppAddr,
    /// A dNSName subjectAltName, whole (e.g. `cpe-000001.devices.example.net`).
    SanDns,
    /// The local part of an rfc822Name subjectAltName at `<server.domain>`.
    SanEmailLocal,
    /// The subject's commonName.
    Cn,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentListenerConfig {
    pub address: SocketAddr,
    /// SO_REUSEPORT, as for a c2s listener.
    #[serde(default)]
    pub reuse_port: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentConfig {
    /// The component's domain, e.g. `acs.example.net`.
    pub domain: String,
    pub secret: Secret,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountsConfig {
    /// An accounts file (see README: one `username credential` per line).
    #[serde(default)]
    pub file: Option<Spanned<PathBuf>>,
    /// Accounts given inline: username = password. Meant for development.
    #[serde(default)]
    pub plain: std::collections::BTreeMap<String, Secret>,
    /// Usernames that belong to ACSs: they may address CPEs (GenieACS logs in like this).
    #[serde(default)]
    pub acs: Vec<String>,
    /// SASL EXTERNAL: how device certificates name their accounts.
    #[serde(default)]
    pub certificate: CertificateAccountsConfig,
    /// Derived credentials: a CPE's password is computed from a secret and its username.
    #[serde(default)]
    pub derived: Option<DerivedConfig>,
    /// A PostgreSQL account store asked after the accounts file (README "PostgreSQL store").
    #[serde(default)]
    pub postgres: Option<PostgresConfig>,
}

/// `[accounts.derived]` (see src/auth/derived.rs for the function).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DerivedConfig {
    /// The secrets, the current one first (`crbroker derive-password` uses it); a login is
    /// accepted with the password of any of them (rotation).
    pub secrets: Spanned<Vec<DerivedSecretConfig>>,
    /// A username is a derived account when it starts with one of these (required, non-empty,
    /// so that ACS accounts are never covered by accident).
    pub username_prefixes: Spanned<Vec<String>>,
    /// Most accounts kept in memory with their derived SCRAM keys.
    #[serde(default = "defaults::derived_cache_entries")]
    pub cache_entries: usize,
}

/// One secret of `[accounts.derived]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DerivedSecretConfig {
    /// Names the secret in logs, errors and `derive-password --secret-id`.
    pub id: String,
    /// The file holding the secret (trailing newlines removed, at least 32 bytes).
    pub file: Spanned<PathBuf>,
}

/// `[accounts.postgres]`: accounts in a PostgreSQL table, shared by every broker using it.
/// All keys need a restart (the pool and the change feed are built once).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection URL (`postgresql://user:password@host:port/db`, or `host=/run/postgresql ...`).
    #[serde(default)]
    pub url: Option<Secret>,
    /// A file holding the URL on its first line (for URLs with a password). Relative to the config.
    #[serde(default)]
    pub url_file: Option<Spanned<PathBuf>>,
    /// Most pooled connections for logins and the API (the change feed has one more of its own).
    #[serde(default = "defaults::pg_pool_size")]
    pub pool_size: usize,
    /// Most accounts (and unknown usernames) kept in memory.
    #[serde(default = "defaults::pg_cache_entries")]
    pub cache_entries: u64,
    /// Seconds cached accounts keep logging in after the last contact with the database.
    #[serde(default = "defaults::pg_stale_ttl_secs")]
    pub stale_ttl_secs: u64,
    /// Seconds between reads of the change table when no notification arrives (safety net).
    #[serde(default = "defaults::pg_poll_interval_secs")]
    pub poll_interval_secs: u64,
    /// Milliseconds a login or API call waits for the database before giving up.
    #[serde(default = "defaults::pg_query_timeout_ms")]
    pub query_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest stanza (top-level element) in bytes; over it the stream gets `<policy-violation/>`.
    #[serde(default = "defaults::max_stanza_bytes")]
    pub max_stanza_bytes: usize,
    /// Deepest element nesting inside a stanza.
    #[serde(default = "defaults::max_depth")]
    pub max_depth: usize,
    /// Most attributes on one element.
    #[serde(default = "defaults::max_attributes")]
    pub max_attributes: usize,
    /// Most elements and text nodes in one stanza (a connection request has 4).
    #[serde(default = "defaults::max_elements")]
    pub max_elements: usize,
    /// Largest stream header in bytes.
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: usize,
    /// Seconds from TCP accept until the session is bound (TLS, SASL, bind); then the connection is closed.
    #[serde(default = "defaults::pre_auth_timeout_secs")]
    pub pre_auth_timeout_secs: u64,
    /// Most stanzas queued toward one session; see README "Backpressure".
    #[serde(default = "defaults::outbox_stanzas")]
    pub outbox_stanzas: usize,
    /// Most estimated bytes of those stanzas (answers to pending requests not included).
    #[serde(default = "defaults::outbox_bytes")]
    pub outbox_bytes: usize,
    /// Estimated bytes of answers to pending requests one ACS connection may have queued; more
    /// means it stopped reading, and it is closed (`<resource-constraint/>`).
    #[serde(default = "defaults::acs_outbox_answer_bytes")]
    pub acs_outbox_answer_bytes: usize,
    /// Unsolicited stanzas (not answers) one CPE session may send to ACS entities at once...
    #[serde(default = "defaults::cpe_to_acs_burst")]
    pub cpe_to_acs_burst: u32,
    /// ...and then per minute. More are cut: an IQ request gets `<policy-violation/>`.
    #[serde(default = "defaults::cpe_to_acs_per_minute")]
    pub cpe_to_acs_per_minute: u32,
    /// Seconds a session may keep a full outbox (its peer not reading) before it is closed.
    #[serde(default = "defaults::stuck_session_grace_secs")]
    pub stuck_session_grace_secs: u64,
    /// Login delays (see src/throttle.rs and the README): before its credentials are checked, an
    /// attempt waits `login_delay_base_ms * 2^(failures - free)`, capped, where `failures` are the
    /// recent failures of its username (`login_delay_account_*`) or of its source address
    /// (`login_delay_address_*`), whichever gives the longer wait. No lockout.
    #[serde(default = "defaults::login_delay_base_ms")]
    pub login_delay_base_ms: u64,
    /// Recent failures of one username that cost no delay.
    #[serde(default = "defaults::login_delay_account_free")]
    pub login_delay_account_free: u32,
    /// Longest delay due to one username's failures, in milliseconds.
    #[serde(default = "defaults::login_delay_account_max_ms")]
    pub login_delay_account_max_ms: u64,
    /// Recent failures from one source address (IPv6: one /64) that cost no delay.
    #[serde(default = "defaults::login_delay_address_free")]
    pub login_delay_address_free: u32,
    /// Longest delay due to one address's failures, in milliseconds.
    #[serde(default = "defaults::login_delay_address_max_ms")]
    pub login_delay_address_max_ms: u64,
    /// Seconds without a failure after which a username's or an address's failures are forgotten.
    #[serde(default = "defaults::login_failure_window_secs")]
    pub login_failure_window_secs: u64,
    /// Milliseconds: a SASL failure that came from checking a client message (the only ones
    /// whose cost depends on the kind of account) is answered no earlier than this after the
    /// check began, so unknown users, plaintext and hashed accounts fail in the same time.
    #[serde(default = "defaults::sasl_failure_floor_ms")]
    pub sasl_failure_floor_ms: u64,
    /// Failed SASL attempts allowed on one connection before it is closed (`<policy-violation/>`).
    #[serde(default = "defaults::auth_attempts_per_connection")]
    pub auth_attempts_per_connection: u32,
    /// Most unauthenticated connections from one IP address at once (0 = no cap).
    #[serde(default = "defaults::max_pre_auth_per_ip")]
    pub max_pre_auth_per_ip: usize,
    /// Most unauthenticated connections in all (0 = no cap).
    #[serde(default = "defaults::max_pre_auth_total")]
    pub max_pre_auth_total: usize,
    /// Most connections (sessions) in all (0 = no cap).
    #[serde(default)]
    pub max_sessions: usize,
    /// Seconds a connection may be silent before the kernel probes it with TCP keepalives
    /// (0 = off). A CPE that lost power sends no FIN; this finds it.
    #[serde(default = "defaults::tcp_keepalive_secs")]
    pub tcp_keepalive_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestsConfig {
    /// Milliseconds the broker waits for a CPE's answer before answering the ACS itself.
    #[serde(default = "defaults::cr_timeout_ms")]
    pub timeout_ms: u64,
    /// Most requests pending for one CPE; more are answered `resource-constraint` at once.
    #[serde(default = "defaults::max_pending_per_cpe")]
    pub max_pending_per_cpe: usize,
    /// Most requests pending from one ACS connection.
    #[serde(default = "defaults::max_pending_per_acs")]
    pub max_pending_per_acs: usize,
}

/// The operations HTTP listener: `/metrics`, `/healthz`, `/readyz`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    #[serde(default = "defaults::ops_enabled")]
    pub enabled: bool,
    /// Loopback by default: /metrics, /healthz and /readyz carry no authentication.
    #[serde(default = "defaults::ops_address")]
    pub address: SocketAddr,
    /// Bearer tokens for the `/v1` API (none: the API answers 401 to everything).
    #[serde(default)]
    pub api_tokens: Vec<Secret>,
    /// A file with more tokens, one per line (`#` comments), relative to the config file.
    #[serde(default)]
    pub api_token_file: Option<Spanned<PathBuf>>,
    /// The API's own JID as an ACS entity (default `api.<server.domain>`): CPEs see it as the
    /// sender of connection requests made through the API (add it to ConnReqAllowedJabberIDs).
    #[serde(default)]
    pub api_domain: Option<String>,
}

impl OpsConfig {
    /// The API's domain: configured, or `api.<domain>`.
    pub fn api_domain(&self, domain: &str) -> String {
        self.api_domain
            .clone()
            .unwrap_or_else(|| format!("api.{domain}"))
            .to_ascii_lowercase()
    }
}

/// Cluster mode over NATS (src/cluster/). Absent: the broker runs alone and needs no NATS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://host:4222`, `tls://host:4222`); the client tries them in turn.
    pub servers: Spanned<Vec<String>>,
    /// This node's name, unique in the cluster (letters, digits, `-`, `_`); default
    /// `<host name>-<process id>`, unique per process and so per incarnation.
    #[serde(default)]
    pub node: Option<Spanned<String>>,
    /// NATS user and password (both or neither).
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// NATS authentication token.
    #[serde(default)]
    pub token: Option<Secret>,
    /// A NATS `.creds` file (JWT and NKey seed), relative to the config file.
    #[serde(default)]
    pub credentials_file: Option<Spanned<PathBuf>>,
    /// Refuse NATS connections without TLS.
    #[serde(default)]
    pub tls_required: bool,
    /// CA certificate(s) (PEM) that sign the NATS servers' certificates.
    #[serde(default)]
    pub tls_ca: Option<Spanned<PathBuf>>,
    /// Client certificate and key (PEM) for NATS servers that verify clients (both or neither).
    #[serde(default)]
    pub tls_cert: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub tls_key: Option<Spanned<PathBuf>>,
    /// How often this node announces that it lives.
    #[serde(default = "defaults::heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A node silent this long is lost: requests it held are answered `service-unavailable`.
    #[serde(default = "defaults::node_timeout_ms")]
    pub node_timeout_ms: u64,
    /// How long a node waits for the node holding a CPE to take a request before answering it
    /// `service-unavailable` itself (no node holds that session any more).
    #[serde(default = "defaults::ack_timeout_ms")]
    pub ack_timeout_ms: u64,
}

impl ClusterConfig {
    /// Whether two cluster sections configure the same thing (positions in the file ignored).
    pub fn same_as(&self, other: &ClusterConfig) -> bool {
        let path = |p: &Option<Spanned<PathBuf>>| p.as_ref().map(|p| p.get_ref().clone());
        let secret = |s: &Option<Secret>| s.as_ref().map(|s| s.expose().to_string());
        let key = |c: &ClusterConfig| {
            (
                c.servers.get_ref().clone(),
                c.node.as_ref().map(|n| n.get_ref().clone()),
                (c.user.clone(), secret(&c.password), secret(&c.token)),
                (
                    path(&c.credentials_file),
                    path(&c.tls_ca),
                    path(&c.tls_cert),
                ),
                (path(&c.tls_key), c.tls_required),
                (c.heartbeat_ms, c.node_timeout_ms, c.ack_timeout_ms),
            )
        };
        key(self) == key(other)
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// Logging; `RUST_LOG`, when set, overrides `level`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default = "defaults::log_format")]
    pub format: LogFormat,
    /// An `EnvFilter` directive, e.g. `info` or `info,crbroker::requests=debug`.
    #[serde(default = "defaults::log_level")]
    pub level: Spanned<String>,
}

mod defaults {
    use super::{LogFormat, SaslMechanismName, TlsVersion};
    pub fn pg_pool_size() -> usize {
        8
    }
    pub fn pg_cache_entries() -> u64 {
        1_000_000
    }
    pub fn pg_stale_ttl_secs() -> u64 {
        3600
    }
    pub fn pg_poll_interval_secs() -> u64 {
        5
    }
    pub fn pg_query_timeout_ms() -> u64 {
        2000
    }
    pub fn heartbeat_ms() -> u64 {
        1000
    }
    pub fn node_timeout_ms() -> u64 {
        3000
    }
    pub fn ack_timeout_ms() -> u64 {
        1000
    }
    pub fn ops_enabled() -> bool {
        true
    }
    pub fn ops_address() -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], 5280))
    }
    pub fn log_format() -> LogFormat {
        LogFormat::Text
    }
    pub fn log_level() -> toml::Spanned<String> {
        toml::Spanned::new(0..0, "info,crbroker::requests=warn".into())
    }
    pub fn derived_cache_entries() -> usize {
        crate::auth::derived::DEFAULT_CACHE_ENTRIES
    }
    pub fn shutdown_timeout_secs() -> u64 {
        5
    }
    pub fn sasl_mechanisms() -> Vec<SaslMechanismName> {
        vec![
            SaslMechanismName::ScramSha256,
            SaslMechanismName::ScramSha1,
            SaslMechanismName::Plain,
        ]
    }
    pub fn tls_versions() -> Vec<TlsVersion> {
        vec![TlsVersion::Tls12, TlsVersion::Tls13]
    }
    pub fn tcp_keepalive_secs() -> u64 {
        120
    }
    /// See config.toml for how these two were chosen.
    pub fn max_pre_auth_per_ip() -> usize {
        256
    }
    pub fn max_pre_auth_total() -> usize {
        20_000
    }
    pub fn max_stanza_bytes() -> usize {
        16 * 1024
    }
    pub fn max_depth() -> usize {
        16
    }
    pub fn max_attributes() -> usize {
        32
    }
    pub fn max_elements() -> usize {
        256
    }
    pub fn max_header_bytes() -> usize {
        2048
    }
    pub fn pre_auth_timeout_secs() -> u64 {
        20
    }
    pub fn outbox_stanzas() -> usize {
        64
    }
    pub fn outbox_bytes() -> usize {
        128 * 1024
    }
    pub fn acs_outbox_answer_bytes() -> usize {
        64 * 1024 * 1024
    }
    pub fn cpe_to_acs_burst() -> u32 {
        10
    }
    pub fn cpe_to_acs_per_minute() -> u32 {
        1
    }
    pub fn stuck_session_grace_secs() -> u64 {
        30
    }
    pub fn login_delay_base_ms() -> u64 {
        250
    }
    pub fn login_delay_account_free() -> u32 {
        3
    }
    pub fn login_delay_account_max_ms() -> u64 {
        2000
    }
    pub fn login_delay_address_free() -> u32 {
        20
    }
    pub fn login_delay_address_max_ms() -> u64 {
        8000
    }
    pub fn login_failure_window_secs() -> u64 {
        300
    }
    pub fn sasl_failure_floor_ms() -> u64 {
        200
    }
    pub fn auth_attempts_per_connection() -> u32 {
        3
    }
    pub fn cr_timeout_ms() -> u64 {
        10_000
    }
    pub fn max_pending_per_cpe() -> usize {
        4
    }
    pub fn max_pending_per_acs() -> usize {
        100_000
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        toml::from_str("").expect("limits defaults")
    }
}

impl Default for RequestsConfig {
    fn default() -> Self {
        toml::from_str("").expect("requests defaults")
    }
}

impl Default for OpsConfig {
    fn default() -> Self {
        toml::from_str("").expect("ops defaults")
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        toml::from_str("").expect("log defaults")
    }
}
