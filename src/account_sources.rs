//! The account sources besides the accounts file that the configuration asks for: built at
//! start, rebuilt or carried over by a reload, and listed in the order a login asks them.
//!
//! Each source is kept typed here (not only as `dyn AccountSource` in the chain), so that a
//! reload can tell which one changed: a source whose settings are the same is carried over
//! with its cache; one whose settings changed is built anew, so nothing of the old settings
//! (a removed secret's passwords) survives.

use std::sync::Arc;

use crate::auth::postgres::PostgresSource;
use crate::auth::{AccountSource, AuthError, DerivedAccounts, DerivedSecret};
use crate::config::Config;

/// The sources after the accounts file.
#[derive(Debug, Clone, Default)]
pub struct OtherSources {
    /// `[accounts.derived]`.
    pub derived: Option<Arc<DerivedAccounts>>,
    /// `[accounts.postgres]`: started by `Broker::start` (it needs the router and the shutdown
    /// signal) and carried over by every reload (its keys need a restart).
    pub postgres: Option<Arc<PostgresSource>>,
}

impl OtherSources {
    /// The sources `config` names, built now (secret files read).
    ///
    /// # Errors
    /// A secret file that cannot be read or is too short.
    pub fn load(config: &Config) -> Result<OtherSources, AuthError> {
        Ok(OtherSources {
            derived: load_derived(config)?.map(Arc::new),
            postgres: None,
        })
    }

    /// The sources of `config` for a reload, keeping the running ones whose settings did not
    /// change. `file_scram_changed`: the accounts file's typical SCRAM parameters changed, so
    /// the SCRAM keys the derived source cached (derived with them) are no longer the ones a
    /// login shows; it is rebuilt.
    ///
    /// # Errors
    /// As [`OtherSources::load`]; nothing is swapped then.
    pub fn reloaded(
        &self,
        config: &Config,
        file_scram_changed: bool,
    ) -> Result<OtherSources, AuthError> {
        let derived = match (load_derived(config)?, &self.derived) {
            (Some(new), Some(running)) if !file_scram_changed && running.same_settings(&new) => {
                Some(running.clone())
            }
            (new, _) => new.map(Arc::new),
        };
        Ok(OtherSources {
            derived,
            postgres: self.postgres.clone(),
        })
    }

    /// Whether the derived source differs from `other`'s (built anew, added or removed).
    pub fn derived_differs(&self, other: &OtherSources) -> bool {
        match (&self.derived, &other.derived) {
            (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
            (None, None) => false,
            _ => true,
        }
    }

    /// The sources in the order a login asks them (after the accounts file):
    /// 1. derived credentials: answered from memory, so a username with one of their prefixes
    ///    never costs a round-trip to a later source;
    /// 2. PostgreSQL.
    pub fn chain(&self) -> Vec<Arc<dyn AccountSource>> {
        let mut chain: Vec<Arc<dyn AccountSource>> = Vec::new();
        if let Some(derived) = &self.derived {
            chain.push(derived.clone());
        }
        if let Some(postgres) = &self.postgres {
            chain.push(postgres.clone());
        }
        chain
    }
}

/// The derived-credentials source `config` names (`[accounts.derived]`), its secret files read
/// (paths relative to the configuration file), or `None` when it names none.
///
/// # Errors
/// A secret file that cannot be read or is too short (the error names the secret and the file).
pub fn load_derived(config: &Config) -> Result<Option<DerivedAccounts>, AuthError> {
    let Some(derived) = &config.accounts.derived else {
        return Ok(None);
    };
    let secrets = derived
        .secrets
        .get_ref()
        .iter()
        .map(|s| DerivedSecret::load(&s.id, &config.resolve(s.file.get_ref())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(DerivedAccounts::new(
        secrets,
        derived
            .username_prefixes
            .get_ref()
            .iter()
            .map(String::as_str),
        derived.cache_entries,
    )))
}
