//! The checks of single sections that need more than their types: the cluster's NATS settings,
//! a listener's client-certificate files, `[accounts.derived]`, and files that must exist. Called
//! from `Config::validate` in the parent module; every error names the file, line and key.

use std::path::PathBuf;

use toml::Spanned;

use super::sections::*;
use super::{line_of, Config, ConfigError};

impl Config {
    pub(super) fn validate_cluster(
        &self,
        cluster: &ClusterConfig,
        text: &str,
    ) -> Result<(), ConfigError> {
        let find_line = |needle: &str| text.find(needle).map(|o| line_of(text, o)).unwrap_or(0);
        let err = |key: &str, message: String| ConfigError {
            file: self.origin.clone(),
            line: find_line(key.rsplit('.').next().unwrap_or(key)),
            key: key.into(),
            message,
        };
        if cluster.servers.get_ref().is_empty() {
            return Err(self.error_at(
                text,
                Some(&cluster.servers),
                "cluster.servers",
                "names no NATS server".into(),
            ));
        }
        if let Some(node) = &cluster.node {
            if !crate::cluster::subjects::is_valid_node_name(node.get_ref()) {
                return Err(self.error_at(
                    text,
                    Some(node),
                    "cluster.node",
                    format!("{:?}: use 1-64 letters, digits, '-' or '_'", node.get_ref()),
                ));
            }
        }
        if cluster.user.is_some() != cluster.password.is_some() {
            return Err(err("cluster.user", "user and password go together".into()));
        }
        if cluster.tls_cert.is_some() != cluster.tls_key.is_some() {
            return Err(err(
                "cluster.tls_cert",
                "tls_cert and tls_key go together".into(),
            ));
        }
        for (key, path) in [
            ("cluster.credentials_file", &cluster.credentials_file),
            ("cluster.tls_ca", &cluster.tls_ca),
            ("cluster.tls_cert", &cluster.tls_cert),
            ("cluster.tls_key", &cluster.tls_key),
        ] {
            if let Some(path) = path {
                self.require_file(text, path, key)?;
            }
        }
        if cluster.heartbeat_ms == 0 || cluster.ack_timeout_ms == 0 {
            return Err(err(
                "cluster.heartbeat_ms",
                "heartbeat_ms and ack_timeout_ms must be greater than 0".into(),
            ));
        }
        if cluster.node_timeout_ms < 2 * cluster.heartbeat_ms {
            return Err(err(
                "cluster.node_timeout_ms",
                "must be at least twice heartbeat_ms (one lost heartbeat is no node loss)".into(),
            ));
        }
        Ok(())
    }

    /// A listener's client certificate settings: a CA file when certificates are asked for
    /// (and only then), and CA and CRL files that exist.
    pub(super) fn validate_client_auth(
        &self,
        text: &str,
        index: usize,
        listener: &ListenerConfig,
    ) -> Result<(), ConfigError> {
        let key = |leaf: &str| format!("listener[{index}].{leaf}");
        match (&listener.client_ca_file, listener.client_auth) {
            (None, ClientAuth::None) => {
                if let Some(crl) = listener.crl_files.first() {
                    return Err(self.error_at(
                        text,
                        Some(crl),
                        &key("crl_files"),
                        "crl_files without client_auth: no client certificate is asked for".into(),
                    ));
                }
                return Ok(());
            }
            (None, _) => {
                let line = text
                    .find("client_auth")
                    .map(|o| line_of(text, o))
                    .unwrap_or(0);
                return Err(ConfigError {
                    file: self.origin.clone(),
                    line,
                    key: key("client_ca_file"),
                    message: "client_auth asks for client certificates: client_ca_file must name \
                              the CA that issues them"
                        .into(),
                });
            }
            (Some(ca), ClientAuth::None) => {
                return Err(self.error_at(
                    text,
                    Some(ca),
                    &key("client_ca_file"),
                    "client_ca_file is set but client_auth is \"none\" (set \"optional\" or \
                     \"required\")"
                        .into(),
                ));
            }
            (Some(_), _) => {}
        }
        let files = listener
            .client_ca_file
            .iter()
            .map(|f| (f, "client_ca_file"))
            .chain(listener.crl_files.iter().map(|f| (f, "crl_files")));
        for (file, leaf) in files {
            let resolved = self.resolve(file.get_ref());
            if !resolved.is_file() {
                return Err(self.error_at(
                    text,
                    Some(file),
                    &key(leaf),
                    format!("file {} not found", resolved.display()),
                ));
            }
        }
        Ok(())
    }

    /// `[accounts.derived]`: 1..=MAX_SECRETS secrets with distinct ids and existing files,
    /// non-empty prefixes that no ACS account starts with, a cache of at least 2 entries.
    pub(super) fn validate_derived(
        &self,
        text: &str,
        derived: &DerivedConfig,
    ) -> Result<(), ConfigError> {
        use crate::auth::derived::MAX_SECRETS;
        let secrets = derived.secrets.get_ref();
        let secrets_error = |message: String| {
            self.error_at(
                text,
                Some(&derived.secrets),
                "accounts.derived.secrets",
                message,
            )
        };
        if secrets.is_empty() || secrets.len() > MAX_SECRETS {
            return Err(secrets_error(format!(
                "give 1 to {MAX_SECRETS} secrets (the current one first), found {}",
                secrets.len()
            )));
        }
        for (i, secret) in secrets.iter().enumerate() {
            let valid_id = !secret.id.is_empty()
                && secret
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            let secret_error = |message: String| {
                self.error_at(
                    text,
                    Some(&secret.file),
                    &format!("accounts.derived.secrets[{i}]"),
                    message,
                )
            };
            if !valid_id {
                return Err(secret_error(format!(
                    "id {:?} must be non-empty letters, digits, `-`, `_` or `.`",
                    secret.id
                )));
            }
            if secrets[..i].iter().any(|s| s.id == secret.id) {
                return Err(secret_error(format!("id {:?} is given twice", secret.id)));
            }
            let resolved = self.resolve(secret.file.get_ref());
            if !resolved.exists() {
                return Err(secret_error(format!(
                    "secret {:?}: file {} not found",
                    secret.id,
                    resolved.display()
                )));
            }
        }
        let prefixes = derived.username_prefixes.get_ref();
        let prefixes_error = |message: String| {
            self.error_at(
                text,
                Some(&derived.username_prefixes),
                "accounts.derived.username_prefixes",
                message,
            )
        };
        if prefixes.is_empty() {
            return Err(prefixes_error(
                "give at least one prefix: only usernames starting with one are derived accounts"
                    .into(),
            ));
        }
        for prefix in prefixes {
            if let Err(problem) = crate::auth::check_username(prefix) {
                return Err(prefixes_error(format!("prefix {prefix:?}: {problem}")));
            }
            let lower = prefix.to_ascii_lowercase();
            if let Some(acs) = self
                .accounts
                .acs
                .iter()
                .find(|acs| acs.to_ascii_lowercase().starts_with(&lower))
            {
                return Err(prefixes_error(format!(
                    "prefix {prefix:?} covers the ACS account {acs:?} (accounts.acs): ACS \
                     accounts must never be derived"
                )));
            }
        }
        if derived.cache_entries < 2 {
            return Err(ConfigError {
                file: self.origin.clone(),
                line: text
                    .find("cache_entries")
                    .map(|o| line_of(text, o))
                    .unwrap_or(0),
                key: "accounts.derived.cache_entries".into(),
                message: "must be at least 2".into(),
            });
        }
        Ok(())
    }

    /// A file the configuration names must exist (resolved against the config's directory).
    pub(super) fn require_file(
        &self,
        text: &str,
        path: &Spanned<PathBuf>,
        key: &str,
    ) -> Result<(), ConfigError> {
        let resolved = self.resolve(path.get_ref());
        match resolved.exists() {
            true => Ok(()),
            false => Err(self.error_at(
                text,
                Some(path),
                key,
                format!("file {} not found", resolved.display()),
            )),
        }
    }
}
