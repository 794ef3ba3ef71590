//! The support-staff commands (`crbroker cr | sessions | kick | reload`): a client of the `/v1`
//! API of a running broker. Each command makes one or a few HTTP calls (reqwest, plain HTTP: the
//! ops listener has no TLS) on a current-thread runtime and prints what a person reads, or the
//! API's JSON with `--json`. Exit status: 0 done, 1 the answer is "no" (the CPE did not accept,
//! is offline, nothing was closed, the reload was refused), 2 usage, connection or API errors.
//! The token is sent as a sensitive header and never printed. `db.rs`: the `crbroker db`
//! commands (PostgreSQL store), which talk to the database, not to a broker.

mod answers;
pub mod db;

use answers::{print_sessions, Closed, CrAnswer, Page, Presence, Reloaded};
use clap::{Args, Subcommand};
use crbroker::config::{Config, DEFAULT_CONFIG};
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Environment variable with the bearer token (preferred to `--token`: a command line is
/// visible to every user of the machine in `ps`).
const TOKEN_ENV: &str = "CRBROKER_API_TOKEN";
/// The ops listener's address when there is no configuration file to read it from.
const DEFAULT_API: &str = "http://127.0.0.1:5280";
/// Time to connect to the ops listener: it is local or on a management network.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for a whole call other than a connection request.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Beyond the longest wait the API allows for a connection request (60 s), room for the HTTP.
const CR_CALL_TIMEOUT: Duration = Duration::from_secs(70);

/// The commands that talk to a running broker.
#[derive(Subcommand)]
pub enum ApiCommand {
    /// Send a connection request to a CPE through the broker's API; exit 0 when the CPE accepts.
    Cr {
        /// The CPE's JID (bare: any of its sessions; full: that resource).
        jid: String,
        /// Connection-request username (the CPE's ConnectionRequestUsername).
        #[arg(long)]
        username: String,
        /// Connection-request password (the CPE's ConnectionRequestPassword).
        #[arg(long)]
        password: String,
        /// How long to wait for the CPE's answer (1..=60000; default: the broker's
        /// requests.timeout_ms).
        #[arg(long, value_name = "N")]
        timeout_ms: Option<u64>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// With a JID: whether it is online, and its sessions (exit 1 when offline). Without: the
    /// counts and a page of sessions.
    Sessions {
        jid: Option<String>,
        /// Sessions per page (1..=1000; default 100).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Start after this bare JID (the `next page` hint of the previous page).
        #[arg(long, conflicts_with = "jid")]
        cursor: Option<String>,
        /// Follow the pages to the end (with --json: one JSON answer per line).
        #[arg(long, conflicts_with = "jid")]
        all: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Close the sessions of a JID (stream error <policy-violation/>); exit 1 when none was open.
    Kick {
        jid: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Reload the running broker's configuration (as SIGHUP does); exit 1 when refused.
    Reload {
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Args)]
pub struct ApiArgs {
    /// The broker's ops listener. Default: http://<[ops] address> of the configuration file
    /// (--config, else ./config.toml), else http://127.0.0.1:5280.
    #[arg(long, value_name = "URL")]
    api: Option<String>,
    /// Bearer token of the API. Default: the environment variable CRBROKER_API_TOKEN (better:
    /// a command line shows in `ps`).
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Print the API's JSON answer instead of text.
    #[arg(long)]
    json: bool,
}

/// Why a command could not do its work (exit status 2). Never carries the token.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the broker's API at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the API answered {status}: {message}")]
    Api { status: StatusCode, message: String },
}

/// Run one API command; errors go to stderr with exit status 2.
pub fn run(command: ApiCommand, config: Option<PathBuf>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("crbroker: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(dispatch(command, config)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("crbroker: {e}");
            ExitCode::from(2)
        }
    }
}

async fn dispatch(command: ApiCommand, config: Option<PathBuf>) -> Result<ExitCode, CliError> {
    match command {
        ApiCommand::Cr {
            jid,
            username,
            password,
            timeout_ms,
            api,
        } => {
            let body = serde_json::json!({
                "to": jid, "username": username, "password": password, "timeout_ms": timeout_ms,
            });
            Client::new(api, config)?.cr(&jid, &body).await
        }
        ApiCommand::Sessions {
            jid: Some(jid),
            api,
            ..
        } => Client::new(api, config)?.show(&jid).await,
        ApiCommand::Sessions {
            jid: None,
            limit,
            cursor,
            all,
            api,
        } => Client::new(api, config)?.list(limit, cursor, all).await,
        ApiCommand::Kick { jid, api } => Client::new(api, config)?.kick(&jid).await,
        ApiCommand::Reload { api } => Client::new(api, config)?.reload().await,
    }
}

/// The base URL: `--api`, else the `[ops] address` of the configuration the broker would read.
fn base_url(api: Option<String>, config: Option<PathBuf>) -> Result<Url, CliError> {
    let text = match api {
        Some(url) if url.contains("://") => url,
        Some(address) => format!("http://{address}"),
        None => match ops_address(config)? {
            Some(address) => format!("http://{address}"),
            None => DEFAULT_API.to_string(),
        },
    };
    let url = Url::parse(&text).map_err(|e| CliError::Usage(format!("--api {text:?}: {e}")))?;
    if url.cannot_be_a_base() || !matches!(url.scheme(), "http" | "https") {
        return Err(CliError::Usage(format!(
            "--api {text:?}: not an http:// URL"
        )));
    }
    Ok(url)
}

/// The ops listener's address from the configuration file, as `run` would pick it; an
/// unspecified address (0.0.0.0, ::) is reached on loopback.
fn ops_address(config: Option<PathBuf>) -> Result<Option<std::net::SocketAddr>, CliError> {
    let path = match config {
        Some(path) => path,
        None if Path::new("config.toml").exists() => PathBuf::from("config.toml"),
        None => {
            let embedded = Config::parse(DEFAULT_CONFIG, "<embedded>", PathBuf::from("."))
                .map_err(|e| CliError::Usage(e.to_string()))?;
            return Ok(Some(embedded.ops.address));
        }
    };
    let config = Config::load(&path)
        .map_err(|e| CliError::Usage(format!("{e} (or give the API's address with --api)")))?;
    if !config.ops.enabled {
        return Err(CliError::Usage(format!(
            "{}: [ops] enabled = false: the broker has no API to talk to",
            path.display()
        )));
    }
    let mut address = config.ops.address;
    if address.ip().is_unspecified() {
        address.set_ip(match address {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(Some(address))
}

/// What the API answered: its status and body, the body kept as text for `--json`.
struct Answer {
    status: StatusCode,
    text: String,
    body: Value,
}

impl Answer {
    /// The `{"error": {"message"}}` of an error answer.
    fn error_message(&self) -> Option<&str> {
        self.body.get("error")?.get("message")?.as_str()
    }

    fn into_error(self) -> CliError {
        let message = match self.error_message() {
            Some(message) if self.status == StatusCode::UNAUTHORIZED => {
                format!("{message}; check --token or {TOKEN_ENV}")
            }
            Some(message) => message.to_string(),
            None => format!(
                "unexpected answer: {}",
                self.text.chars().take(200).collect::<String>()
            ),
        };
        CliError::Api {
            status: self.status,
            message,
        }
    }

    fn decode<T: for<'de> Deserialize<'de>>(&self) -> Result<T, CliError> {
        T::deserialize(&self.body).map_err(|e| CliError::Api {
            status: self.status,
            message: format!("unexpected answer ({e}): {}", self.text),
        })
    }
}

struct Client {
    http: reqwest::Client,
    base: Url,
    authorization: HeaderValue,
    json: bool,
}

impl Client {
    fn new(args: ApiArgs, config: Option<PathBuf>) -> Result<Client, CliError> {
        let token = match args.token {
            Some(token) => token,
            None => std::env::var(TOKEN_ENV).map_err(|_| {
                CliError::Usage(format!("no API token: set {TOKEN_ENV} or pass --token"))
            })?,
        };
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                CliError::Usage("the token has characters a header cannot carry".into())
            })?;
        authorization.set_sensitive(true);
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| CliError::Usage(format!("cannot make an HTTP client: {e}")))?;
        Ok(Client {
            http,
            base: base_url(args.api, config)?,
            authorization,
            json: args.json,
        })
    }

    /// `base` + the path segments (each percent-encoded: a full JID's `/` stays in its segment).
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked in base_url")
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Answer, CliError> {
        let timeout = if body.is_some() {
            CR_CALL_TIMEOUT
        } else {
            CALL_TIMEOUT
        };
        let mut request = self
            .http
            .request(method, url.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            .timeout(timeout);
        if let Some(body) = body {
            request = request.json(body);
        }
        let connect_error = |e: reqwest::Error| CliError::Connect {
            url: self.base.to_string(),
            reason: error_chain(&e),
        };
        let response = request.send().await.map_err(connect_error)?;
        let status = response.status();
        let text = response.text().await.map_err(connect_error)?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        let answer = Answer { status, text, body };
        if self.json {
            println!("{}", answer.text);
        }
        Ok(answer)
    }

    /// `POST /v1/connection-requests`. Every outcome comes as a `CrAnswer` body, whatever the
    /// status; a body with `error` is a refused request (bad JID, token, ...).
    async fn cr(&self, jid: &str, body: &Value) -> Result<ExitCode, CliError> {
        let url = self.url(&["v1", "connection-requests"], &[]);
        let answer = self.call(Method::POST, url, Some(body)).await?;
        if answer.error_message().is_some() || answer.body.get("outcome").is_none() {
            return Err(answer.into_error());
        }
        let cr: CrAnswer = answer.decode()?;
        if !self.json {
            println!("{}", cr.line(jid));
        }
        Ok(exit(cr.outcome == "result"))
    }

    /// `GET /v1/sessions/{jid}`.
    async fn show(&self, jid: &str) -> Result<ExitCode, CliError> {
        let answer = self
            .call(Method::GET, self.url(&["v1", "sessions", jid], &[]), None)
            .await?;
        if !answer.status.is_success() {
            return Err(answer.into_error());
        }
        let presence: Presence = answer.decode()?;
        if !self.json {
            match presence.sessions.len() {
                0 => println!("{}: offline", presence.jid),
                1 => println!("{}: online, 1 session", presence.jid),
                n => println!("{}: online, {n} sessions", presence.jid),
            }
            print_sessions(&presence.sessions);
        }
        Ok(exit(presence.online))
    }

    /// `GET /v1/sessions`, page after page with `all`.
    async fn list(
        &self,
        limit: Option<usize>,
        mut cursor: Option<String>,
        all: bool,
    ) -> Result<ExitCode, CliError> {
        let mut first = true;
        loop {
            let mut query = Vec::new();
            if let Some(limit) = limit {
                query.push(("limit", limit.to_string()));
            }
            if let Some(cursor) = &cursor {
                query.push(("cursor", cursor.clone()));
            }
            let answer = self
                .call(Method::GET, self.url(&["v1", "sessions"], &query), None)
                .await?;
            if !answer.status.is_success() {
                return Err(answer.into_error());
            }
            let page: Page = answer.decode()?;
            if !self.json {
                if first {
                    let c = &page.counts;
                    println!(
                        "online: {} CPE, {} ACS account, {} component sessions",
                        c.cpe, c.acs_account, c.component
                    );
                }
                print_sessions(&page.sessions);
            }
            first = false;
            match page.next_cursor {
                Some(next) if all => cursor = Some(next),
                Some(next) => {
                    if !self.json {
                        println!("next page: --cursor '{next}' (or --all)");
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                None => return Ok(ExitCode::SUCCESS),
            }
        }
    }

    /// `DELETE /v1/sessions/{jid}`.
    async fn kick(&self, jid: &str) -> Result<ExitCode, CliError> {
        let url = self.url(&["v1", "sessions", jid], &[]);
        let answer = self.call(Method::DELETE, url, None).await?;
        if !answer.status.is_success() {
            return Err(answer.into_error());
        }
        let closed: Closed = answer.decode()?;
        if !self.json {
            match closed.closed {
                0 => println!("{}: no session open, nothing closed", closed.jid),
                1 => println!("{}: closed 1 session", closed.jid),
                n => println!("{}: closed {n} sessions", closed.jid),
            }
        }
        Ok(exit(closed.closed > 0))
    }

    /// `POST /v1/reload`: 422 (refused) and 503 (still starting) say why nothing changed.
    async fn reload(&self) -> Result<ExitCode, CliError> {
        let url = self.url(&["v1", "reload"], &[]);
        let answer = self.call(Method::POST, url, None).await?;
        let refused = matches!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY | StatusCode::SERVICE_UNAVAILABLE
        );
        if refused && answer.error_message().is_some() {
            if !self.json {
                println!(
                    "reload refused: {}",
                    answer.error_message().unwrap_or_default()
                );
            }
            return Ok(ExitCode::FAILURE);
        }
        if !answer.status.is_success() {
            return Err(answer.into_error());
        }
        let reloaded: Reloaded = answer.decode()?;
        if !self.json {
            println!("reloaded {}: {}", reloaded.source, reloaded.changes);
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn exit(yes: bool) -> ExitCode {
    if yes {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// reqwest's error and its causes ("error sending request: ... Connection refused").
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_jid_stays_one_path_segment() {
        let client = Client {
            http: reqwest::Client::new(),
            base: base_url(Some("127.0.0.1:5280".into()), None).unwrap(),
            authorization: HeaderValue::from_static("Bearer x"),
            json: false,
        };
        let url = client.url(&["v1", "sessions", "cpe-1@example.net/cw mp"], &[]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:5280/v1/sessions/cpe-1@example.net%2Fcw%20mp"
        );
    }
}
