//! `GET /v1/sessions`, `GET /v1/sessions/{jid}`, `DELETE /v1/sessions/{jid}`: who is online, and
//! closing a session. A closed session gets the stream error `<policy-violation/>` (RFC 6120
//! 4.9.3.14: the entity is disconnected by a local policy, here an operator's decision); its
//! pending connection requests are answered `service-unavailable` as for any session that ends.

use super::{ApiError, ApiState};
use crate::jid::JidRef;
use crate::session::{Role, SessionHandle};
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Most sessions on one page of `GET /v1/sessions`.
const MAX_LIMIT: usize = 1000;

#[derive(Serialize)]
pub struct SessionView {
    jid: String,
    role: &'static str,
    /// Seconds since the Unix epoch.
    since: u64,
    peer: Option<String>,
    tls_version: Option<String>,
    cipher_suite: Option<String>,
    sasl_mechanism: Option<&'static str>,
    requests_pending: usize,
}

fn view(state: &ApiState, session: &SessionHandle) -> SessionView {
    let info = &session.info;
    SessionView {
        jid: session.jid.clone(),
        role: match session.role {
            Role::Cpe => "cpe",
            Role::AcsAccount => "acs_account",
            Role::Component => "component",
            Role::Node => "node",
        },
        since: info.since_unix,
        peer: info.peer.map(|p| p.to_string()),
        tls_version: info.tls_version_name(),
        cipher_suite: info.cipher_suite_name(),
        sasl_mechanism: info.mechanism.map(|m| m.name()),
        requests_pending: state.router.pending.count_for_cpe(session.conn_id),
    }
}

fn parse_jid(jid: &str) -> Result<JidRef<'_>, ApiError> {
    JidRef::parse(jid)
        .ok()
        .filter(|j| j.local.is_some())
        .ok_or_else(|| ApiError::bad_request("jid: not a client JID (local@domain[/resource])"))
}

#[derive(Serialize)]
pub struct Presence {
    jid: String,
    online: bool,
    sessions: Vec<SessionView>,
}

pub async fn show(
    State(state): State<Arc<ApiState>>,
    Path(jid): Path<String>,
) -> Result<Json<Presence>, ApiError> {
    let parsed = parse_jid(&jid)?;
    let sessions: Vec<SessionView> = state
        .router
        .sessions_of(&parsed)
        .iter()
        .map(|s| view(&state, s))
        .collect();
    Ok(Json(Presence {
        jid: parsed.normalized(),
        online: !sessions.is_empty(),
        sessions,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

#[derive(Serialize)]
pub struct Counts {
    cpe: u64,
    acs_account: u64,
    component: u64,
}

#[derive(Serialize)]
pub struct Page {
    sessions: Vec<SessionView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
    counts: Counts,
}

pub async fn list(
    State(state): State<Arc<ApiState>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: must be 1..={MAX_LIMIT}"
        )));
    }
    let (sessions, next_cursor) = state.router.list_sessions(query.cursor.as_deref(), limit);
    let by_role = &state.router.stats.sessions_by_role;
    let count = |role: Role| {
        crate::ops::metrics::Stats::get(&by_role[crate::ops::metrics::role_index(role)])
    };
    Ok(Json(Page {
        sessions: sessions.iter().map(|s| view(&state, s)).collect(),
        next_cursor,
        counts: Counts {
            cpe: count(Role::Cpe),
            acs_account: count(Role::AcsAccount),
            // The API's own entity is not a connection.
            component: count(Role::Component),
        },
    }))
}

#[derive(Serialize)]
pub struct Closed {
    jid: String,
    closed: usize,
}

pub async fn close(
    State(state): State<Arc<ApiState>>,
    Path(jid): Path<String>,
) -> Result<Json<Closed>, ApiError> {
    let parsed = parse_jid(&jid)?;
    let sessions = state.router.sessions_of(&parsed);
    let closed = sessions
        .iter()
        .filter(|s| s.outbox.close("policy-violation"))
        .count();
    if closed > 0 {
        tracing::info!(jid = %parsed.normalized(), closed, "sessions closed by the API");
    }
    Ok(Json(Closed {
        jid: parsed.normalized(),
        closed,
    }))
}
