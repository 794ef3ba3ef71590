//! The ops HTTP listener (axum on hyper): `/metrics`, `/healthz`, `/readyz`.
//!
//! [`router`] builds the whole `axum::Router` from one shared [`OpsState`]; more routes (the `/v1`
//! API) are added there, on the same state. The listener is plain HTTP without authentication:
//! it binds loopback unless configured otherwise.

use crate::ops::exposition::{self, Sources};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Where the broker is in its life, for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Accounts loading, TLS material loading, listeners binding.
    Starting = 0,
    Ready = 1,
    ShuttingDown = 2,
}

/// What every ops handler shares.
pub struct OpsState {
    pub sources: Sources,
    registry: Registry,
    phase: AtomicU8,
}

impl OpsState {
    pub fn new(sources: Sources) -> OpsState {
        OpsState {
            registry: exposition::registry(sources.clone()),
            sources,
            phase: AtomicU8::new(Phase::Starting as u8),
        }
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            _ => Phase::ShuttingDown,
        }
    }
}

/// The ops routes on `state`.
pub fn router(state: Arc<OpsState>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serve `router` on `listener` until `stop` turns true or its sender is dropped (the broker
/// failed to start, or it stopped). In-flight requests finish first.
pub fn spawn(listener: TcpListener, router: axum::Router, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { crate::context::stopped(&mut stop).await })
            .await;
        if let Err(e) = served {
            tracing::warn!("ops listener stopped: {e}");
        }
    });
}

pub async fn bind(address: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}

async fn metrics(State(state): State<Arc<OpsState>>) -> Response {
    match exposition::encode(&state.registry) {
        Ok(body) => ([(header::CONTENT_TYPE, exposition::CONTENT_TYPE)], body).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Alive: the process runs and its runtime answers.
async fn healthz() -> &'static str {
    "ok\n"
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

async fn readyz(State(state): State<Arc<OpsState>>) -> (StatusCode, axum::Json<Readiness>) {
    let reason = match state.phase() {
        Phase::Ready => None,
        Phase::Starting => Some("starting: accounts or listeners not ready yet"),
        Phase::ShuttingDown => Some("shutting down"),
    };
    let status = match reason {
        None => StatusCode::OK,
        Some(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    (
        status,
        axum::Json(Readiness {
            ready: reason.is_none(),
            reason,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::ConnectionCaps;
    use crate::ops::metrics::Stats;
    use crate::pending::PendingTable;
    use crate::router::Router;
    use std::time::Duration;

    /// /readyz over real HTTP through each phase (the broker passes "starting" too quickly for
    /// an integration test to catch it).
    #[tokio::test]
    async fn readyz_follows_the_phase() {
        let stats = Arc::new(Stats::default());
        let pending = PendingTable::new(Duration::from_secs(1), 1, 1);
        let sources = Sources {
            router: Arc::new(Router::new("example.net", &[], [], pending, stats.clone())),
            stats,
            caps: Arc::new(ConnectionCaps::new(0, 0, 0)),
            postgres: Default::default(),
        };
        let state = Arc::new(OpsState::new(sources));
        let (listener, address) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let (stop, stop_rx) = watch::channel(false);
        spawn(listener, router(state.clone()), stop_rx);
        let readyz = || async {
            let response = reqwest::get(format!("http://{address}/readyz"))
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        };
        let (status, body) = readyz().await;
        assert_eq!(status, 503);
        assert!(body.contains("\"reason\":\"starting"), "{body}");
        state.set_phase(Phase::Ready);
        assert_eq!(readyz().await, (200, "{\"ready\":true}".to_string()));
        state.set_phase(Phase::ShuttingDown);
        let (status, body) = readyz().await;
        assert_eq!(status, 503);
        assert!(body.contains("shutting down"), "{body}");
        let _ = stop.send(true);
    }
}
