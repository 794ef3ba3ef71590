//! The `/metrics` body: the broker's atomics read at scrape time and written in the Prometheus
//! text format by `prometheus-client` (no hand-formatted text). Label values come from fixed
//! lists (outcome, mechanism, role), never from a JID.

use crate::auth::postgres::PostgresSource;
use crate::caps::ConnectionCaps;
use crate::ops::metrics::{CrOutcome, Histogram, LoginOutcome, Stats, MECHANISM_LABELS, ROLES};
use crate::ops::process;
use crate::router::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::fmt::Error;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

/// Counters in [`Stats`] that go up and down: exposed as gauges (by role for the sessions).
const GAUGES: [&str; 3] = ["connections_open", "sessions_online", "cluster_connected"];

/// Everything `/metrics` reads.
#[derive(Clone)]
pub struct Sources {
    pub stats: Arc<Stats>,
    pub router: Arc<Router>,
    pub caps: Arc<ConnectionCaps>,
    /// The PostgreSQL account source, once started (after the ops listener: empty until then,
    /// and always without `[accounts.postgres]`).
    pub postgres: Arc<OnceLock<Arc<PostgresSource>>>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sources")
    }
}

/// A registry whose one collector reads `sources` at each scrape.
pub fn registry(sources: Sources) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(BrokerCollector(sources)));
    registry.register_collector(Box::new(ProcessCollector));
    registry
}

/// Encode the whole registry (Prometheus text format 0.0.4).
pub fn encode(registry: &Registry) -> Result<String, Error> {
    let mut body = String::with_capacity(32 * 1024);
    prometheus_client::encoding::prometheus_text::encode(&mut body, registry)?;
    Ok(body)
}

/// The PostgreSQL account source's cache and database figures.
fn encode_postgres(
    encoder: &mut DescriptorEncoder,
    postgres: &PostgresSource,
) -> Result<(), Error> {
    let metrics = postgres.metrics();
    for (name, help, value) in [
        (
            "crbroker_accounts_db_cache_answers",
            "Account lookups answered from the PostgreSQL source's cache.",
            metrics.cache_answers,
        ),
        (
            "crbroker_accounts_db_queries",
            "Account lookups that read the database.",
            metrics.queries,
        ),
        (
            "crbroker_accounts_db_unavailable",
            "Account lookups the database could not answer (down or slow): the login got temporary-auth-failure.",
            metrics.unavailable,
        ),
    ] {
        ConstCounter::new(value).encode(encoder.encode_descriptor(
            name,
            help,
            None,
            MetricType::Counter,
        )?)?;
    }
    gauge(
        encoder,
        "crbroker_accounts_db_cached_accounts",
        "Accounts (and recent unknown names) in the PostgreSQL source's cache.",
        metrics.cached_accounts as i64,
    )?;
    ConstGauge::new(metrics.feed_age_secs.unwrap_or(-1.0)).encode(encoder.encode_descriptor(
        "crbroker_accounts_db_feed_age_seconds",
        "Seconds since the account change feed last reached the database (-1: never); cached accounts are trusted while it is under stale_ttl_secs.",
        None,
        MetricType::Gauge,
    )?)
}

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Debug)]
struct BrokerCollector(Sources);

impl Collector for BrokerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), Error> {
        let Sources {
            stats,
            router,
            caps,
            postgres,
        } = &self.0;
        if let Some(postgres) = postgres.get() {
            encode_postgres(&mut encoder, postgres)?;
        }
        let mut name = String::with_capacity(64);
        for (counter, help, value) in stats.described() {
            if GAUGES.contains(&counter) {
                continue;
            }
            name.clear();
            name.push_str("crbroker_");
            name.push_str(counter);
            let help = match help.trim() {
                "" => counter,
                help => help,
            };
            ConstCounter::new(value).encode(encoder.encode_descriptor(
                &name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        gauge(
            &mut encoder,
            "crbroker_connections_open",
            "Connections currently open (any phase).",
            Stats::get(&stats.connections_open) as i64,
        )?;
        if router.is_clustered() {
            gauge(
                &mut encoder,
                "crbroker_cluster_connected",
                "1 while this node is connected to NATS (cluster mode), else 0.",
                Stats::get(&stats.cluster_connected) as i64,
            )?;
        }
        gauge(
            &mut encoder,
            "crbroker_connections_pre_auth",
            "Connections not yet authenticated (accepted, TLS or SASL under way).",
            caps.pre_auth() as i64,
        )?;
        gauge(
            &mut encoder,
            "crbroker_requests_pending",
            "Connection requests relayed to a CPE and not yet answered.",
            router.pending.len() as i64,
        )?;
        let mut family = encoder.encode_descriptor(
            "crbroker_sessions_online",
            "Sessions online by role: bound CPE and ACS-account sessions, handshaken components.",
            None,
            MetricType::Gauge,
        )?;
        for (i, (_, role)) in ROLES.iter().enumerate() {
            let value = stats.sessions_by_role[i].load(Ordering::Relaxed) as i64;
            ConstGauge::new(value).encode(family.encode_family(&[("role", *role)])?)?;
        }

        let mut family = encoder.encode_descriptor(
            "crbroker_request_round_trip_seconds",
            "Connection requests from the ACS's request to the one answer, by outcome.",
            None,
            MetricType::Histogram,
        )?;
        for outcome in CrOutcome::ALL {
            let labels = [("outcome", outcome.label())];
            histogram(
                family.encode_family(&labels)?,
                &stats.request_round_trip[outcome as usize],
            )?;
        }
        let mut family = encoder.encode_descriptor(
            "crbroker_login_duration_seconds",
            "SASL attempts from <auth/> to success or failure, by mechanism and outcome.",
            None,
            MetricType::Histogram,
        )?;
        for (m, mechanism) in MECHANISM_LABELS.iter().enumerate() {
            for outcome in LoginOutcome::ALL {
                let labels = [("mechanism", *mechanism), ("outcome", outcome.label())];
                histogram(
                    family.encode_family(&labels)?,
                    &stats.login_duration[m][outcome as usize],
                )?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "crbroker_tls_handshake_duration_seconds",
            "TLS handshakes of c2s connections, by outcome (failed includes timed out).",
            None,
            MetricType::Histogram,
        )?;
        for (i, outcome) in ["ok", "failed"].iter().enumerate() {
            histogram(
                family.encode_family(&[("outcome", *outcome)])?,
                &stats.tls_handshake[i],
            )?;
        }
        Ok(())
    }
}

/// The process figures under the names Prometheus's own process collectors use.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), Error> {
        if let Some(bytes) = process::resident_bytes() {
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                bytes as i64,
            )?;
        }
        if let Some(fds) = process::open_fds() {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors.",
                fds as i64,
            )?;
        }
        if let Some(seconds) = process::cpu_seconds() {
            ConstCounter::new(seconds).encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                MetricType::Counter,
            )?)?;
        }
        Ok(())
    }
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> Result<(), Error> {
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn histogram(
    mut encoder: prometheus_client::encoding::MetricEncoder,
    histogram: &Histogram,
) -> Result<(), Error> {
    let snapshot = histogram.snapshot();
    encoder.encode_histogram::<NoLabelSet>(
        snapshot.sum_secs,
        snapshot.count,
        &snapshot.buckets,
        None,
    )
}
