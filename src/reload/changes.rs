//! What differs between the running configuration and the one a reload read: the reloadable
//! keys a reload reports as applied ([`changed_limits`]) and the keys only a restart can apply
//! ([`restart_only_changes`]; the module doc of [`super`] says why each).

use crate::config::Config;

/// Push `prefix.field` for each named field that differs between `$old` and `$new`.
macro_rules! push_differing {
    ($out:ident, $prefix:literal, $old:expr, $new:expr, [$($field:ident),* $(,)?]) => {
        $(
            if $old.$field != $new.$field {
                $out.push(concat!($prefix, stringify!($field)).to_string());
            }
        )*
    };
}

/// The reloadable keys whose value differs: `[limits]` read when a connection starts, and the
/// shutdown bound.
pub(super) fn changed_limits(old: &Config, new: &Config) -> Vec<String> {
    let mut changed = Vec::new();
    push_differing!(
        changed,
        "limits.",
        old.limits,
        new.limits,
        [
            max_stanza_bytes,
            max_depth,
            max_attributes,
            max_elements,
            max_header_bytes,
            pre_auth_timeout_secs,
            outbox_stanzas,
            outbox_bytes,
            acs_outbox_answer_bytes,
            cpe_to_acs_burst,
            cpe_to_acs_per_minute,
            stuck_session_grace_secs,
            sasl_failure_floor_ms,
            auth_attempts_per_connection,
        ]
    );
    push_differing!(
        changed,
        "server.",
        old.server,
        new.server,
        [shutdown_timeout_secs]
    );
    // Read by logins through the context, like the limits.
    if old.accounts.certificate != new.accounts.certificate {
        changed.push("accounts.certificate".into());
    }
    changed
}

/// The keys whose change only a restart can apply (see the module doc for why each).
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let lower_sorted = |names: &mut dyn Iterator<Item = &String>| {
        let mut v: Vec<String> = names.map(|n| n.to_ascii_lowercase()).collect();
        v.sort();
        v
    };
    let mut keys = Vec::new();
    if !old.domain().eq_ignore_ascii_case(new.domain()) {
        keys.push("server.domain".to_string());
    }
    push_differing!(keys, "server.", old.server, new.server, [worker_threads]);
    if old.listeners.len() != new.listeners.len() {
        keys.push("listener (count)".into());
    }
    for (i, (was, now)) in old.listeners.iter().zip(&new.listeners).enumerate() {
        if was.address != now.address {
            keys.push(format!("listener[{i}].address"));
        }
        if was.kind != now.kind {
            keys.push(format!("listener[{i}].kind"));
        }
        if was.reuse_port != now.reuse_port {
            keys.push(format!("listener[{i}].reuse_port"));
        }
        if was.proxy_protocol != now.proxy_protocol {
            keys.push(format!("listener[{i}].proxy_protocol"));
        }
        if was.proxy_networks() != now.proxy_networks() {
            keys.push(format!("listener[{i}].proxy_from"));
        }
    }
    let component = |config: &Config| {
        let listener = config.component_listener.as_ref();
        (listener.map(|c| c.address), listener.map(|c| c.reuse_port))
    };
    let (old_component, new_component) = (component(old), component(new));
    if old_component.0 != new_component.0 {
        keys.push("component_listener.address".into());
    }
    if old_component.1 != new_component.1 {
        keys.push("component_listener.reuse_port".into());
    }
    if lower_sorted(&mut old.components.iter().map(|c| &c.domain))
        != lower_sorted(&mut new.components.iter().map(|c| &c.domain))
    {
        keys.push("component (domains)".into());
    }
    if lower_sorted(&mut old.accounts.acs.iter()) != lower_sorted(&mut new.accounts.acs.iter()) {
        keys.push("accounts.acs".into());
    }
    if old.accounts.postgres != new.accounts.postgres {
        keys.push("accounts.postgres".into());
    }
    let same_cluster = match (&old.cluster, &new.cluster) {
        (None, None) => true,
        (Some(was), Some(now)) => was.same_as(now),
        _ => false,
    };
    if !same_cluster {
        keys.push("cluster".into());
    }
    push_differing!(
        keys,
        "limits.",
        old.limits,
        new.limits,
        [
            login_delay_base_ms,
            login_delay_account_free,
            login_delay_account_max_ms,
            login_delay_address_free,
            login_delay_address_max_ms,
            login_failure_window_secs,
            max_pre_auth_per_ip,
            max_pre_auth_total,
            max_sessions,
        ]
    );
    push_differing!(
        keys,
        "requests.",
        old.requests,
        new.requests,
        [timeout_ms, max_pending_per_cpe, max_pending_per_acs]
    );
    // The ops listener, the API's tokens and identity, and logging are set up once at start.
    push_differing!(
        keys,
        "ops.",
        old.ops,
        new.ops,
        [enabled, address, api_domain]
    );
    let tokens = |c: &Config| -> Vec<String> {
        c.ops
            .api_tokens
            .iter()
            .map(|t| t.expose().to_string())
            .collect()
    };
    if tokens(old) != tokens(new) {
        keys.push("ops.api_tokens".into());
    }
    if old.ops.api_token_file.as_ref().map(|f| f.get_ref())
        != new.ops.api_token_file.as_ref().map(|f| f.get_ref())
    {
        keys.push("ops.api_token_file".into());
    }
    if old.log.format != new.log.format {
        keys.push("log.format".into());
    }
    if old.log.level != new.log.level {
        keys.push("log.level".into());
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn parse(extra: &str) -> Config {
        parse_with("127.0.0.1:5222", "starttls", extra)
    }

    fn parse_with(address: &str, kind: &str, extra: &str) -> Config {
        let text = format!(
            "[server]\ndomain = \"example.net\"\n[tls]\ncert = \"a\"\nkey = \"b\"\nauto_create_dev_cert = true\n\
             [[listener]]\naddress = \"{address}\"\nkind = \"{kind}\"\n{extra}"
        );
        Config::parse(&text, "test.toml", PathBuf::from(".")).expect("config")
    }

    #[test]
    fn restart_only_keys_are_named() {
        let old = parse("[limits]\nmax_sessions = 0\n[requests]\ntimeout_ms = 10000\n");
        let new = parse("[limits]\nmax_sessions = 5\n[requests]\ntimeout_ms = 5000\n");
        assert_eq!(
            restart_only_changes(&old, &new),
            vec!["limits.max_sessions", "requests.timeout_ms"]
        );
        assert!(changed_limits(&old, &new).is_empty());
    }

    #[test]
    fn reloadable_limits_are_not_restart_only() {
        let old = parse("");
        let new = parse("[limits]\nmax_stanza_bytes = 4096\nsasl_failure_floor_ms = 50\n");
        assert!(restart_only_changes(&old, &new).is_empty());
        assert_eq!(
            changed_limits(&old, &new),
            vec!["limits.max_stanza_bytes", "limits.sasl_failure_floor_ms"]
        );
    }

    #[test]
    fn the_postgres_section_needs_a_restart() {
        let old = parse("[accounts.postgres]\nurl = \"postgresql://h/db\"\n");
        let new = parse("[accounts.postgres]\nurl = \"postgresql://h/db\"\npool_size = 2\n");
        assert_eq!(restart_only_changes(&old, &new), vec!["accounts.postgres"]);
        assert!(restart_only_changes(&old, &old).is_empty());
    }

    #[test]
    fn a_moved_listener_needs_a_restart() {
        let old = parse("");
        let new = parse_with("127.0.0.1:5223", "direct_tls", "");
        assert_eq!(
            restart_only_changes(&old, &new),
            vec!["listener[0].address", "listener[0].kind"]
        );
    }

    #[test]
    fn reuse_port_and_proxy_protocol_need_a_restart() {
        let old = parse("");
        let new = parse(
            "reuse_port = true
proxy_protocol = true
proxy_from = [\"10.0.0.0/8\"]
",
        );
        assert_eq!(
            restart_only_changes(&old, &new),
            vec![
                "listener[0].reuse_port",
                "listener[0].proxy_protocol",
                "listener[0].proxy_from"
            ]
        );
        let wider = parse(
            "reuse_port = true
proxy_protocol = true
proxy_from = [\"10.0.0.0/7\"]
",
        );
        assert_eq!(
            restart_only_changes(&new, &wider),
            vec!["listener[0].proxy_from"]
        );
    }

    #[test]
    fn the_cluster_section_needs_a_restart_but_its_place_in_the_file_does_not() {
        let cluster = "[cluster]\nservers = [\"nats://127.0.0.1:4222\"]\nnode = \"n1\"\n";
        let old = parse(cluster);
        assert!(restart_only_changes(&old, &parse(&format!("\n\n{cluster}"))).is_empty());
        let renamed = cluster.replace("n1", "n2");
        assert_eq!(
            restart_only_changes(&old, &parse(&renamed)),
            vec!["cluster"]
        );
        assert_eq!(restart_only_changes(&old, &parse("")), vec!["cluster"]);
    }
}
