//! Typed configuration: the TOML schema (unknown keys rejected), defaults, and validation.
//!
//! Every error names the file, the line and the key, so an operator can fix it from one log line.
//! Secrets live in [`Secret`], whose `Debug` prints `***`.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// The embedded default configuration (the repository's `config.toml`).
pub const DEFAULT_CONFIG: &str = include_str!("../config.toml");

/// A configuration problem: `file:line: key: message` (just `file: message` when it concerns
/// the whole file, e.g. it cannot be read).
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when the problem is not on one line.
    pub line: usize,
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}: {}: {}",
                self.file, self.line, self.key, self.message
            )
        }
    }
}

/// A secret string (component secret, password) that never shows up in logs.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub tls: TlsConfig,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub component_listener: Option<ComponentListenerConfig>,
    #[serde(default, rename = "component")]
    pub components: Vec<ComponentConfig>,
    #[serde(default)]
    pub accounts: AccountsConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub requests: RequestsConfig,
    #[serde(default)]
    pub ops: OpsConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// Directory that relative paths (certificates, accounts file) are resolved against.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// Where this configuration came from, for error messages.
    #[serde(skip)]
    pub origin: String,
    /// The file it was read from ([`Config::load`]); a reload reads it again.
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    pub kind: ListenerKind,
    #[serde(default = "defaults::sasl_mechanisms")]
    pub sasl_mechanisms: Vec<SaslMechanismName>,
    #[serde(default = "defaults::tls_versions")]
    pub tls_versions: Vec<TlsVersion>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentListenerConfig {
    pub address: SocketAddr,
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

impl Config {
    /// Load and validate a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: origin.clone(),
            line: 0,
            key: "-".into(),
            message: format!("cannot read: {e}"),
        })?;
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let mut config = Config::parse(&text, &origin, base_dir)?;
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parse and validate configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str, base_dir: PathBuf) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
            let key = e
                .span()
                .map(|s| key_at(text, s.start))
                .unwrap_or_else(|| "-".into());
            ConfigError {
                file: origin.into(),
                line,
                key,
                message: e.message().trim().replace('\n', " "),
            }
        })?;
        config.base_dir = base_dir;
        config.origin = origin.into();
        config.validate(text)?;
        Ok(config)
    }

    fn error_at<T>(
        &self,
        text: &str,
        span: Option<&Spanned<T>>,
        key: &str,
        message: String,
    ) -> ConfigError {
        ConfigError {
            file: self.origin.clone(),
            line: span.map(|s| line_of(text, s.span().start)).unwrap_or(0),
            key: key.into(),
            message,
        }
    }

    fn validate(&self, text: &str) -> Result<(), ConfigError> {
        let domain = self.server.domain.get_ref();
        if !is_valid_domain(domain) {
            return Err(self.error_at(
                text,
                Some(&self.server.domain),
                "server.domain",
                format!("{domain:?} is not a valid domain name"),
            ));
        }
        // Checked here so that `check-config` catches it, not only the start of the binary.
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(self.log.level.get_ref()) {
            return Err(self.error_at(
                text,
                Some(&self.log.level),
                "log.level",
                format!("not a log filter directive: {e}"),
            ));
        }
        let find_line = |needle: &str| text.find(needle).map(|o| line_of(text, o)).unwrap_or(0);
        for (i, listener) in self.listeners.iter().enumerate() {
            let key = format!("listener[{i}]");
            let bad = |message: &str| ConfigError {
                file: self.origin.clone(),
                line: find_line(&listener.address.to_string()),
                key: key.clone(),
                message: message.into(),
            };
            if listener.sasl_mechanisms.is_empty() {
                return Err(bad("sasl_mechanisms is empty: no client could log in"));
            }
            if listener.tls_versions.is_empty() {
                return Err(bad("tls_versions is empty"));
            }
        }
        for (i, component) in self.components.iter().enumerate() {
            let err = |message: String| ConfigError {
                file: self.origin.clone(),
                line: find_line(&component.domain),
                key: format!("component[{i}]"),
                message,
            };
            if !is_valid_domain(&component.domain) {
                return Err(err(format!(
                    "domain {:?} is not a valid domain name",
                    component.domain
                )));
            }
            if component.domain.eq_ignore_ascii_case(domain) {
                return Err(err(
                    "a component domain must differ from server.domain".into()
                ));
            }
            if component.secret.expose().is_empty() {
                return Err(err("secret is empty".into()));
            }
            if self.components[..i]
                .iter()
                .any(|c| c.domain.eq_ignore_ascii_case(&component.domain))
            {
                return Err(err(format!(
                    "domain {:?} is configured twice",
                    component.domain
                )));
            }
        }
        if !self.components.is_empty() && self.component_listener.is_none() {
            return Err(ConfigError {
                file: self.origin.clone(),
                line: find_line("[[component]]"),
                key: "component_listener".into(),
                message: "components are configured but there is no [component_listener]".into(),
            });
        }
        let limits = &self.limits;
        let positive = [
            ("limits.max_stanza_bytes", limits.max_stanza_bytes as u64),
            ("limits.max_depth", limits.max_depth as u64),
            ("limits.max_attributes", limits.max_attributes as u64),
            ("limits.max_elements", limits.max_elements as u64),
            ("limits.max_header_bytes", limits.max_header_bytes as u64),
            ("limits.pre_auth_timeout_secs", limits.pre_auth_timeout_secs),
            ("limits.outbox_stanzas", limits.outbox_stanzas as u64),
            ("limits.outbox_bytes", limits.outbox_bytes as u64),
            (
                "limits.acs_outbox_answer_bytes",
                limits.acs_outbox_answer_bytes as u64,
            ),
            ("limits.cpe_to_acs_burst", limits.cpe_to_acs_burst as u64),
            (
                "limits.cpe_to_acs_per_minute",
                limits.cpe_to_acs_per_minute as u64,
            ),
            (
                "limits.login_failure_window_secs",
                limits.login_failure_window_secs,
            ),
            (
                "limits.auth_attempts_per_connection",
                limits.auth_attempts_per_connection as u64,
            ),
            ("requests.timeout_ms", self.requests.timeout_ms),
            (
                "requests.max_pending_per_cpe",
                self.requests.max_pending_per_cpe as u64,
            ),
            (
                "requests.max_pending_per_acs",
                self.requests.max_pending_per_acs as u64,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                let leaf = key.rsplit('.').next().unwrap_or(key);
                return Err(ConfigError {
                    file: self.origin.clone(),
                    line: find_line(leaf),
                    key: key.into(),
                    message: "must be greater than 0".into(),
                });
            }
        }
        if limits.max_stanza_bytes > 16 * 1024 * 1024 {
            return Err(ConfigError {
                file: self.origin.clone(),
                line: find_line("max_stanza_bytes"),
                key: "limits.max_stanza_bytes".into(),
                message: "must be at most 16 MiB".into(),
            });
        }
        for user in &self.accounts.acs {
            if user.is_empty() || user.contains(['@', '/']) {
                return Err(ConfigError {
                    file: self.origin.clone(),
                    line: find_line(user),
                    key: "accounts.acs".into(),
                    message: format!("{user:?} is not a username (no @ or /)"),
                });
            }
        }
        if !self.tls.auto_create_dev_cert {
            for (key, path) in [("tls.cert", &self.tls.cert), ("tls.key", &self.tls.key)] {
                let resolved = self.resolve(path.get_ref());
                if !resolved.exists() {
                    return Err(self.error_at(
                        text,
                        Some(path),
                        key,
                        format!(
                            "file {} not found (and tls.auto_create_dev_cert is false)",
                            resolved.display()
                        ),
                    ));
                }
            }
        }
        if let Some(file) = &self.accounts.file {
            let resolved = self.resolve(file.get_ref());
            if !resolved.exists() {
                return Err(self.error_at(
                    text,
                    Some(file),
                    "accounts.file",
                    format!("file {} not found", resolved.display()),
                ));
            }
        }
        Ok(())
    }

    /// Resolve a path from the config against the config file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    pub fn domain(&self) -> &str {
        self.server.domain.get_ref()
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The key written at the start of the line holding `offset`, or "-".
fn key_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text[start..].lines().next().unwrap_or("");
    match line.split_once('=') {
        Some((key, _)) if !key.trim().is_empty() => key.trim().to_string(),
        _ => line.trim().trim_matches(['[', ']']).to_string(),
    }
}

/// A DNS name: labels of letters, digits and hyphens (checked loosely: XMPP domains are IDNA,
/// but a broker's own domain is chosen by its operator).
pub fn is_valid_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml", PathBuf::from("."))
    }

    #[test]
    fn embedded_default_config_is_valid() {
        let config = parse(DEFAULT_CONFIG).expect("default config parses");
        assert!(!config.listeners.is_empty());
        assert!(!config.components.is_empty());
        assert!(!config.accounts.acs.is_empty());
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let text = "[server]\ndomain = \"example.net\"\nfrobnicate = 1\n[tls]\ncert = \"a\"\nkey = \"b\"\nauto_create_dev_cert = true\n";
        let err = parse(text).unwrap_err();
        assert_eq!(err.line, 3, "{err}");
        assert_eq!(err.key, "frobnicate", "{err}");
        assert!(err.message.contains("unknown field"), "{err}");
    }

    #[test]
    fn bad_address_is_reported() {
        let text = "[server]\ndomain = \"example.net\"\n[tls]\ncert = \"a\"\nkey = \"b\"\nauto_create_dev_cert = true\n[[listener]]\naddress = \"127.0.0.1:notaport\"\nkind = \"starttls\"\n";
        let err = parse(text).unwrap_err();
        assert_eq!(err.line, 8, "{err}");
        assert_eq!(err.key, "address", "{err}");
    }

    #[test]
    fn missing_certificate_without_auto_creation_is_refused() {
        let text = "[server]\ndomain = \"example.net\"\n[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n";
        let err = parse(text).unwrap_err();
        assert_eq!(err.key, "tls.cert");
        assert_eq!(err.line, 4);
        assert!(
            err.to_string().starts_with("test.toml:4: tls.cert:"),
            "{err}"
        );
    }

    #[test]
    fn missing_file_is_named() {
        let err = Config::load(Path::new("/nonexistent/crbroker.toml")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/crbroker.toml: cannot read:"),
            "{err}"
        );
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "***");
    }
}
