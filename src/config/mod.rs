//! Typed configuration: loading, validation across sections, and errors that name the file, line
//! and key; the sections themselves and their defaults are in [`sections`].
//!
//! Every error names the file, the line and the key, so an operator can fix it from one log line.
//! Secrets live in [`Secret`], whose `Debug` prints `***`.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use toml::Spanned;

mod section_checks;
pub mod sections;
pub use sections::*;

/// The embedded default configuration (the repository's `config.toml`).
pub const DEFAULT_CONFIG: &str = include_str!("../../config.toml");

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
    /// Cluster mode; None: single node.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
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
            if listener.sasl_mechanisms.is_empty() && listener.client_auth != ClientAuth::Required {
                return Err(bad(
                    "sasl_mechanisms is empty: no client could log in \
                     (only a listener with client_auth = \"required\" may offer EXTERNAL alone)",
                ));
            }
            if listener.tls_versions.is_empty() {
                return Err(bad("tls_versions is empty"));
            }
            self.validate_client_auth(text, i, listener)?;
            if listener.proxy_protocol && listener.proxy_from.is_empty() {
                return Err(ConfigError {
                    key: format!("listener[{i}].proxy_from"),
                    ..bad("proxy_protocol is on but proxy_from is empty: name the load balancers' networks")
                });
            }
            if !listener.proxy_protocol && !listener.proxy_from.is_empty() {
                return Err(self.error_at(
                    text,
                    listener.proxy_from.first(),
                    &format!("listener[{i}].proxy_from"),
                    "proxy_from is set but proxy_protocol is off".into(),
                ));
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
        for prefix in &self.accounts.certificate.username_prefixes {
            if crate::auth::normalize_username(prefix).is_err() {
                return Err(ConfigError {
                    file: self.origin.clone(),
                    line: find_line("username_prefixes"),
                    key: "accounts.certificate.username_prefixes".into(),
                    message: format!("{prefix:?} is not the start of a username"),
                });
            }
        }
        if let Some(derived) = &self.accounts.derived {
            self.validate_derived(text, derived)?;
        }
        if let Some(postgres) = &self.accounts.postgres {
            let key = |leaf: &str| format!("accounts.postgres.{leaf}");
            let problem = match (&postgres.url, &postgres.url_file) {
                (None, None) => Some(("url", "give url or url_file")),
                (Some(_), Some(_)) => Some(("url_file", "give url or url_file, not both")),
                _ if postgres.pool_size == 0 => Some(("pool_size", "must be greater than 0")),
                _ if postgres.cache_entries == 0 => {
                    Some(("cache_entries", "must be greater than 0"))
                }
                _ if postgres.poll_interval_secs == 0 => {
                    Some(("poll_interval_secs", "must be greater than 0"))
                }
                _ if postgres.query_timeout_ms == 0 => {
                    Some(("query_timeout_ms", "must be greater than 0"))
                }
                _ => None,
            };
            if let Some((leaf, message)) = problem {
                return Err(ConfigError {
                    file: self.origin.clone(),
                    line: find_line(leaf),
                    key: key(leaf),
                    message: message.into(),
                });
            }
            if let Some(url) = &postgres.url {
                if let Err(e) = url.expose().parse::<tokio_postgres::Config>() {
                    // The parser's message never repeats the URL (it may hold a password).
                    return Err(ConfigError {
                        file: self.origin.clone(),
                        line: find_line("url"),
                        key: key("url"),
                        message: format!("not a PostgreSQL connection URL: {e}"),
                    });
                }
            }
        }
        if let Some(file) = &self.accounts.file {
            self.require_file(text, file, "accounts.file")?;
        }
        match &self.cluster {
            Some(cluster) => self.validate_cluster(cluster, text),
            None => Ok(()),
        }
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
    fn postgres_section_errors_name_the_key_and_never_the_url() {
        let base = "[server]\ndomain = \"example.net\"\n[tls]\ncert = \"a\"\nkey = \"b\"\nauto_create_dev_cert = true\n[accounts.postgres]\n";
        let err = parse(&format!("{base}pool_size = 4\n")).unwrap_err();
        assert_eq!(err.key, "accounts.postgres.url", "{err}");
        let err = parse(&format!(
            "{base}url = \"postgresql://u:hunter2@h:notaport/db\"\n"
        ))
        .unwrap_err();
        assert_eq!(
            (err.key.as_str(), err.line),
            ("accounts.postgres.url", 8),
            "{err}"
        );
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = parse(&format!(
            "{base}url = \"postgresql://h/db\"\ncache_entries = 0\n"
        ))
        .unwrap_err();
        assert_eq!(err.key, "accounts.postgres.cache_entries", "{err}");
        let config = parse(&format!("{base}url = \"postgresql://h/db\"\n")).unwrap();
        let postgres = config.accounts.postgres.unwrap();
        assert_eq!((postgres.pool_size, postgres.stale_ttl_secs), (8, 3600));
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

    const BASE: &str = "[server]\ndomain = \"example.net\"\n[tls]\ncert = \"a\"\nkey = \"b\"\nauto_create_dev_cert = true\n[[listener]]\naddress = \"127.0.0.1:5222\"\nkind = \"starttls\"\n";

    #[test]
    fn proxy_protocol_needs_proxy_from() {
        let err = parse(&format!("{BASE}proxy_protocol = true\n")).unwrap_err();
        assert_eq!(err.key, "listener[0].proxy_from", "{err}");
        assert_eq!(err.line, 8, "{err}");
        let err = parse(&format!("{BASE}proxy_from = [\"10.0.0.0/8\"]\n")).unwrap_err();
        assert_eq!(err.key, "listener[0].proxy_from", "{err}");
        assert_eq!(err.line, 10, "{err}");
        let config = parse(&format!(
            "{BASE}proxy_protocol = true\nproxy_from = [\"10.0.0.0/8\", \"2001:db8::/32\"]\nreuse_port = true\n"
        ))
        .unwrap();
        assert_eq!(config.listeners[0].proxy_sources().unwrap().len(), 2);
        assert!(config.listeners[0].reuse_port);
    }

    #[test]
    fn bad_proxy_network_names_line_and_key() {
        let err = parse(&format!(
            "{BASE}proxy_protocol = true\nproxy_from = [\"10.0.0.0/33\"]\n"
        ))
        .unwrap_err();
        assert_eq!(err.line, 11, "{err}");
        assert_eq!(err.key, "proxy_from", "{err}");
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "***");
    }
}
