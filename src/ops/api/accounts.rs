//! `PUT / GET / DELETE /v1/accounts/{username}`: accounts of the PostgreSQL store, written to
//! the database (every broker on it sees the change through its change feed). With only the
//! accounts file there is nothing to write to: 409 and a message saying so.

use super::{ApiError, ApiState};
use crate::auth::postgres::{AccountInfo, PgError, PostgresSource};
use crate::auth::{hash_line, normalize_username, AccountRole, PLAIN_SCRAM_ITERATIONS};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use std::sync::Arc;

/// Longest password accepted (the broker checks SCRAM proofs, not lengths; this bounds the
/// PBKDF2 input an operator can hand us).
const MAX_PASSWORD_LEN: usize = 1024;

const READ_ONLY: &str = "the account store is read-only: accounts come from the accounts file; \
    configure [accounts.postgres] to manage accounts through the API";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutBody {
    /// Stored as a SCRAM credential (PBKDF2, 4096 iterations, random salt), never in clear.
    password: Option<String>,
    /// A credential in the accounts file's syntax (`scram:…` or `plain:…`).
    credential: Option<String>,
    role: Option<AccountRole>,
    enabled: Option<bool>,
}

fn store(state: &ApiState) -> Result<&Arc<PostgresSource>, ApiError> {
    state
        .accounts
        .get()
        .ok_or_else(|| ApiError::new(StatusCode::CONFLICT, READ_ONLY))
}

fn checked_username(username: &str) -> Result<Box<str>, ApiError> {
    normalize_username(username)
        .map_err(|problem| ApiError::bad_request(format!("username: {problem}")))
}

fn database_error(error: PgError) -> ApiError {
    if error.is_unavailable() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the account database is unavailable: {error}"),
        )
    } else {
        tracing::error!("account database: {error}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("account database: {error}"),
        )
    }
}

/// `PUT /v1/accounts/{username}`: create (201) or update (200) an account.
pub async fn put(
    State(state): State<Arc<ApiState>>,
    Path(username): Path<String>,
    body: Result<Json<PutBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let store = store(&state)?;
    let username = checked_username(&username)?;
    let Json(body) = body?;
    let credential = match (body.password, body.credential) {
        (Some(password), None) => {
            if password.is_empty() || password.len() > MAX_PASSWORD_LEN {
                return Err(ApiError::bad_request(format!(
                    "password: must be 1..={MAX_PASSWORD_LEN} bytes"
                )));
            }
            let line = hash_line(&username, &password, PLAIN_SCRAM_ITERATIONS);
            line.split_once(' ')
                .map(|(_, c)| c.to_string())
                .unwrap_or(line)
        }
        (None, Some(credential)) => {
            crate::auth::check_credential(&credential)
                .map_err(|problem| ApiError::bad_request(format!("credential: {problem}")))?;
            credential
        }
        _ => {
            return Err(ApiError::bad_request(
                "password, credential: give exactly one of them",
            ))
        }
    };
    let created = store
        .put(&username, &credential, body.role, body.enabled)
        .await
        .map_err(database_error)?;
    let info = store.get(&username).await.map_err(database_error)?;
    tracing::info!(%username, created, "account written by the API");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info)).into_response())
}

/// `GET /v1/accounts/{username}`: the account without its secret, or 404.
pub async fn show(
    State(state): State<Arc<ApiState>>,
    Path(username): Path<String>,
) -> Result<Json<AccountInfo>, ApiError> {
    let store = store(&state)?;
    let username = checked_username(&username)?;
    match store.get(&username).await.map_err(database_error)? {
        Some(info) => Ok(Json(info)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no account {username:?}"),
        )),
    }
}

/// `DELETE /v1/accounts/{username}`: 204, or 404 when there was none. Its sessions on every
/// broker are closed by their change feeds.
pub async fn delete(
    State(state): State<Arc<ApiState>>,
    Path(username): Path<String>,
) -> Result<StatusCode, ApiError> {
    let store = store(&state)?;
    let username = checked_username(&username)?;
    if store.delete(&username).await.map_err(database_error)? {
        tracing::info!(%username, "account deleted by the API");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no account {username:?}"),
        ))
    }
}
