//! The JSON API under `/v1`, on the ops listener: connection requests, sessions, reload, the
//! accounts of the PostgreSQL store, and the OpenAPI document that describes them. Every route but the document needs a bearer token from
//! `[ops] api_tokens` / `api_token_file` (compared in constant time, never logged); errors are
//! JSON `{"error": {"status", "message"}}` with the message naming the bad field.

mod accounts;
pub mod entity;
mod openapi;
mod sessions;

use crate::jid::JidRef;
use crate::router::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use entity::{ApiEntity, Outcome};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// Longest wait a caller may ask for (`timeout_ms`).
const MAX_TIMEOUT_MS: u64 = 60_000;
/// Longest connection-request username or password accepted (TR-069 limits them to 256).
const MAX_CREDENTIAL_LEN: usize = 256;

pub struct ApiState {
    pub entity: Arc<ApiEntity>,
    pub router: Arc<Router>,
    tokens: Vec<String>,
    /// The broker's own request deadline: the default wait.
    request_timeout: Duration,
    /// SIGHUP's work; set once the broker runs.
    pub reloader: std::sync::OnceLock<crate::reload::Reloader>,
    /// The PostgreSQL account store, when configured (`/v1/accounts` writes to it).
    pub accounts: std::sync::OnceLock<Arc<crate::auth::postgres::PostgresSource>>,
}

impl ApiState {
    pub fn new(
        entity: Arc<ApiEntity>,
        router: Arc<Router>,
        tokens: Vec<String>,
        request_timeout: Duration,
    ) -> ApiState {
        ApiState {
            entity,
            router,
            tokens,
            request_timeout,
            reloader: std::sync::OnceLock::new(),
            accounts: std::sync::OnceLock::new(),
        }
    }
}

/// The `/v1` routes.
pub fn routes(state: Arc<ApiState>) -> axum::Router {
    let protected = axum::Router::new()
        .route("/v1/connection-requests", post(connection_request))
        .route("/v1/sessions", get(sessions::list))
        .route(
            "/v1/sessions/{jid}",
            get(sessions::show).delete(sessions::close),
        )
        .route("/v1/reload", post(reload))
        .route(
            "/v1/accounts/{username}",
            get(accounts::show)
                .put(accounts::put)
                .delete(accounts::delete),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    axum::Router::new()
        .route("/v1/openapi.json", get(openapi::document))
        .merge(protected)
        .with_state(state)
}

/// A JSON error answer.
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "status": self.status.as_u16(), "message": self.message }
        });
        (self.status, Json(body)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        // serde's text names the field: "missing field `to`", "invalid type: ... at line 1".
        ApiError::new(rejection.status(), rejection.body_text())
    }
}

async fn authorize(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let offered = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let known = offered.is_some_and(|offered| {
        state.tokens.iter().fold(false, |found, token| {
            found
                | bool::from(subtle::ConstantTimeEq::ct_eq(
                    token.as_bytes(),
                    offered.as_bytes(),
                ))
        })
    });
    if !known {
        let message = if state.tokens.is_empty() {
            "the API is off: no token configured ([ops] api_tokens or api_token_file)"
        } else {
            "missing or unknown bearer token (Authorization: Bearer <token>)"
        };
        let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, "Bearer".parse().unwrap());
        return response;
    }
    next.run(request).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CrBody {
    to: String,
    username: String,
    password: String,
    timeout_ms: Option<u64>,
}

/// `POST /v1/connection-requests`: send one connection request and wait for its one answer.
async fn connection_request(
    State(state): State<Arc<ApiState>>,
    body: Result<Json<CrBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let to = JidRef::parse(&body.to)
        .map_err(|_| ApiError::bad_request("to: not a JID (local@domain/resource)"))?;
    if to.local.is_none() || !to.domain.eq_ignore_ascii_case(state.router.domain()) {
        return Err(ApiError::bad_request(format!(
            "to: must be a CPE's JID in the domain {}",
            state.router.domain()
        )));
    }
    for (field, value) in [("username", &body.username), ("password", &body.password)] {
        if value.len() > MAX_CREDENTIAL_LEN {
            return Err(ApiError::bad_request(format!(
                "{field}: longer than {MAX_CREDENTIAL_LEN} bytes"
            )));
        }
    }
    let wait = match body.timeout_ms {
        None => state.request_timeout,
        Some(ms) if (1..=MAX_TIMEOUT_MS).contains(&ms) => Duration::from_millis(ms),
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "timeout_ms: must be 1..={MAX_TIMEOUT_MS}"
            )))
        }
    };
    let answer = state
        .entity
        .connection_request(&to, &body.username, &body.password, wait)
        .await;
    let status = match answer.outcome {
        Outcome::Result => StatusCode::OK,
        Outcome::CpeError => StatusCode::BAD_GATEWAY,
        Outcome::Offline => StatusCode::NOT_FOUND,
        Outcome::Timeout => StatusCode::GATEWAY_TIMEOUT,
        Outcome::Overload => StatusCode::TOO_MANY_REQUESTS,
        Outcome::CpeGone => StatusCode::SERVICE_UNAVAILABLE,
    };
    Ok((status, Json(answer)).into_response())
}

/// `POST /v1/reload`: what SIGHUP does; answers what changed, or why nothing did (422, the old
/// configuration stays whole).
async fn reload(State(state): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    let Some(reloader) = state.reloader.get().cloned() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "reload is not available yet (the broker is starting)",
        ));
    };
    tracing::info!("API: reloading");
    let report = reloader.reload().await;
    report.log();
    match report.outcome {
        Ok(changes) => Ok(Json(serde_json::json!({
            "source": report.source,
            "changes": changes,
        }))
        .into_response()),
        Err(error) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            // The error names the file itself.
            format!("nothing changed: {error}"),
        )),
    }
}
