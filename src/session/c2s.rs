//! Client-to-server connections (CPEs and ACS accounts): STARTTLS or direct TLS, SASL, resource
//! binding, then the ready loop.
//!
//! The negotiation runs under one deadline (`limits.pre_auth_timeout_secs`) from TCP accept to
//! bind (a PROXY header, when the listener wants one, is read under the same deadline). Before TLS the only feature offered is `<starttls><required/>`; nothing but STARTTLS is
//! accepted there. A SASL attempt waits out its login delay (src/throttle.rs) as soon as its
//! username is known, before the credentials are looked at, and a failed credential check is
//! answered no earlier than `limits.sasl_failure_floor_ms` after it began. Negotiation elements
//! go out one per write (GenieACS reads only the first element of each TCP read while
//! negotiating).

use super::ready::{self, Ending};
use super::{external, login};
use super::{new_stream_id, Conn, ConnError, Role, SessionHandle, SessionInfo, Transport};
use crate::auth::{AccountRole, Accounts, LoginAccount, MAX_USERNAME_LEN};
use crate::caps::ConnectionGuard;
use crate::config::ListenerKind;
use crate::context::{Context, ListenerSettings};
use crate::jid::JidRef;
use crate::ops::metrics::Stats;
use crate::outbox::Outbox;
use crate::proto::sasl::{self, Mechanism, SaslSession, Step};
use crate::throttle::Wait;
use crate::tls::TlsStream;
use crate::xml::{ns, writer, Element, Frame, StreamHeader};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// Why negotiation stopped; the stream error (if any) has been sent.
#[derive(Debug)]
pub(super) struct Refused;

pub async fn serve<S: Transport + Send + 'static>(
    tcp: S,
    peer: SocketAddr,
    conn_id: u64,
    listener: Arc<ListenerSettings>,
    ctx: Arc<Context>,
    mut guard: ConnectionGuard,
    accepted: tokio::time::Instant,
) {
    let span =
        tracing::debug_span!("c2s", conn = conn_id, peer = %peer, jid = tracing::field::Empty);
    async move {
        let deadline = accepted + ctx.pre_auth_timeout;
        let mut shutdown = ctx.shutdown.clone();
        // Boxed where it is made: a future built as a local and boxed later would still have
        // its full size reserved in this task for the session's whole life.
        let negotiation = Box::pin(async {
            let tcp = match listener.kind {
                ListenerKind::Starttls => {
                    let mut plain = Conn::new(tcp, ctx.limits, ns::CLIENT, ctx.write_timeout);
                    match tokio::time::timeout_at(deadline, starttls(&mut plain, &ctx)).await {
                        Ok(Ok(())) => plain.stream,
                        Ok(Err(Refused)) => return None,
                        Err(_) => {
                            plain
                                .send_stream_error(&ctx.domain, "connection-timeout", None)
                                .await;
                            return None;
                        }
                    }
                }
                ListenerKind::DirectTls => tcp,
            };
            // The connection lives in a Box from here on, and no named local holds the TLS
            // stream: a moved-from local keeps its full size reserved in this future's layout.
            let tls_started = Instant::now();
            let conn = Box::new(Conn::new(
                match tokio::time::timeout_at(
                    deadline,
                    TlsStream::accept(listener.tls.clone(), tcp, ctx.stats.clone()),
                )
                .await
                {
                    Ok(Ok(tls)) => {
                        ctx.stats.tls_handshake_done(true, tls_started);
                        tls
                    }
                    Ok(Err(e)) => {
                        ctx.stats.tls_handshake_done(false, tls_started);
                        tracing::debug!("TLS handshake failed: {e}");
                        return None;
                    }
                    Err(_) => {
                        ctx.stats.tls_handshake_done(false, tls_started);
                        tracing::debug!("TLS handshake timed out");
                        return None;
                    }
                },
                ctx.limits,
                ns::CLIENT,
                ctx.write_timeout,
            ));
            after_tls(conn, conn_id, peer, deadline, &listener, &ctx).await
        });
        // The negotiation's state (TLS handshake, SASL) is freed once it is done, so the
        // long-lived task holds only what the ready loop needs. The select's result is a
        // temporary, not a local, so the task does not keep a second copy of the connection.
        let Some((mut conn, handle)) = (tokio::select! {
            bound = negotiation => bound,
            _ = crate::context::stopped(&mut shutdown) => None,
        }) else {
            return;
        };
        guard.authenticated();
        tracing::Span::current().record("jid", handle.jid.as_str());
        ctx.stats.session_opened(handle.role);
        let ending = ready::run(&mut conn, &handle, &ctx).await;
        finish(&mut conn, &handle, &ctx, ending).await;
    }
    .instrument(span)
    .await
}

pub(super) type TlsConn<S> = Conn<TlsStream<S>>;

/// TLS is up: SASL and bind under the same deadline.
async fn after_tls<S: Transport>(
    mut conn: Box<TlsConn<S>>,
    conn_id: u64,
    peer: SocketAddr,
    deadline: tokio::time::Instant,
    listener: &ListenerSettings,
    ctx: &Context,
) -> Option<(Box<TlsConn<S>>, Arc<SessionHandle>)> {
    match tokio::time::timeout_at(
        deadline,
        authenticate_and_bind(&mut conn, conn_id, peer, listener, ctx),
    )
    .await
    {
        Ok(Ok(handle)) => Some((conn, handle)),
        Ok(Err(Refused)) => None,
        Err(_) => {
            conn.send_stream_error(&ctx.domain, "connection-timeout", None)
                .await;
            None
        }
    }
}

async fn finish<S: Transport>(
    conn: &mut TlsConn<S>,
    handle: &Arc<SessionHandle>,
    ctx: &Context,
    ending: Ending,
) {
    handle.seal(&ctx.stats);
    // The bare JID is the full one up to its resource: not kept twice for the session's life.
    let bare = handle.jid.split('/').next().unwrap_or_default();
    ctx.router.unbind_client(bare, handle.conn_id);
    if handle.role == Role::Cpe {
        ctx.router.cpe_gone(handle.conn_id);
    }
    ctx.stats.session_closed(handle.role);
    ready::close(conn, &ctx.domain, &ctx.stats, ending).await;
}

/// Read the peer's stream header and answer with ours, or a stream error.
async fn open_stream<S: Transport>(
    conn: &mut Conn<S>,
    ctx: &Context,
) -> Result<StreamHeader, Refused> {
    let header = match conn.next_frame().await {
        Ok(Frame::StreamOpen(header)) => header,
        Ok(_) => {
            conn.send_stream_error(&ctx.domain, "not-well-formed", None)
                .await;
            return Err(Refused);
        }
        Err(e) => {
            refuse_on_error(conn, &ctx.domain, e).await;
            return Err(Refused);
        }
    };
    let problem = header_problem(&header, ns::CLIENT, |to| {
        to.eq_ignore_ascii_case(&ctx.domain)
    });
    if let Some(condition) = problem {
        conn.send_stream_error(&ctx.domain, condition, None).await;
        Stats::bump(&ctx.stats.stream_errors_sent);
        return Err(Refused);
    }
    let id = new_stream_id();
    if conn
        .send_header(&ctx.domain, header.from.as_deref(), &id)
        .await
        .is_err()
    {
        return Err(Refused);
    }
    Ok(header)
}

/// The stream error a header deserves, if any (RFC 6120 section 4.9.3).
pub(super) fn header_problem(
    header: &StreamHeader,
    content_ns: &str,
    to_ok: impl Fn(&str) -> bool,
) -> Option<&'static str> {
    if header.content_ns.as_deref() != Some(content_ns) {
        return Some("invalid-namespace");
    }
    match header.version.as_deref() {
        Some(v) if v.split('.').next() == Some("1") => {}
        _ => return Some("unsupported-version"),
    }
    match header.to.as_deref() {
        Some(to) if to_ok(to) => None,
        Some(_) => Some("host-unknown"),
        None => Some("host-unknown"),
    }
}

/// Send the stream error a read failure deserves (nothing for a vanished peer).
pub(super) async fn refuse_on_error<S: Transport>(
    conn: &mut Conn<S>,
    domain: &str,
    error: ConnError,
) {
    match error {
        ConnError::Frame(e) => {
            tracing::debug!("stream refused: {e}");
            conn.send_stream_error(domain, e.condition(), None).await;
        }
        ConnError::Eof => {
            // A clean close (TLS close_notify) is answered in kind.
            tracing::debug!("peer closed the connection during negotiation");
            conn.shutdown_transport().await;
        }
        other => tracing::debug!("connection ended during negotiation: {other}"),
    }
}

pub(super) async fn send_str<S: Transport>(conn: &mut Conn<S>, text: &str) -> Result<(), Refused> {
    conn.send_raw(text.as_bytes()).await.map_err(|_| Refused)
}

async fn starttls<S: Transport>(conn: &mut Conn<S>, ctx: &Context) -> Result<(), Refused> {
    open_stream(conn, ctx).await?;
    send_str(
        conn,
        "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>",
    )
    .await?;
    loop {
        let element = next_element(conn, ctx).await?;
        if element.is("starttls", ns::TLS) {
            return send_str(conn, "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>").await;
        }
        if element.is("auth", ns::SASL) {
            // Credentials must never travel in the clear: refuse, and keep the door to STARTTLS open.
            send_str(
                conn,
                "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><encryption-required/></failure>",
            )
            .await?;
            continue;
        }
        conn.send_stream_error(&ctx.domain, "not-authorized", None)
            .await;
        return Err(Refused);
    }
}

/// The next top-level element during negotiation; a closed stream or bad XML ends negotiation.
pub(super) async fn next_element<S: Transport>(
    conn: &mut Conn<S>,
    ctx: &Context,
) -> Result<Element, Refused> {
    match conn.next_frame().await {
        Ok(Frame::Stanza(element)) => Ok(element),
        Ok(Frame::StreamClose) => {
            conn.close().await;
            Err(Refused)
        }
        Ok(Frame::StreamOpen(_)) => {
            conn.send_stream_error(&ctx.domain, "not-well-formed", None)
                .await;
            Err(Refused)
        }
        Err(e) => {
            refuse_on_error(conn, &ctx.domain, e).await;
            Err(Refused)
        }
    }
}

async fn authenticate_and_bind<S: Transport>(
    conn: &mut TlsConn<S>,
    conn_id: u64,
    peer: SocketAddr,
    listener: &ListenerSettings,
    ctx: &Context,
) -> Result<Arc<SessionHandle>, Refused> {
    open_stream(conn, ctx).await?;
    // EXTERNAL is offered, first, only to a client with a verified certificate (XEP-0178).
    let certificate_names = external::certificate_names(&conn.stream, ctx);
    let mut features =
        String::from("<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>");
    let external = certificate_names.is_some().then_some(&Mechanism::External);
    for mechanism in external.into_iter().chain(&listener.mechanisms) {
        features.push_str("<mechanism>");
        features.push_str(mechanism.name());
        features.push_str("</mechanism>");
    }
    features.push_str("</mechanisms></stream:features>");
    send_str(conn, &features).await?;
    let names = certificate_names.as_deref();
    let (username, mechanism, role) = sasl_exchange(conn, peer.ip(), listener, names, ctx).await?;

    conn.restart_stream();
    open_stream(conn, ctx).await?;
    send_str(
        conn,
        "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/><session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session></stream:features>",
    )
    .await?;
    let info = SessionInfo {
        mechanism: Some(mechanism),
        ..SessionInfo::new(Some(peer)).with_tls(&conn.stream)
    };
    bind(conn, conn_id, &username, role, info, ctx).await
}

async fn sasl_exchange<S: Transport>(
    conn: &mut TlsConn<S>,
    ip: IpAddr,
    listener: &ListenerSettings,
    certificate_names: Option<&[Box<str>]>,
    ctx: &Context,
) -> Result<(String, Mechanism, Option<AccountRole>), Refused> {
    let mut failures = 0;
    loop {
        let element = next_element(conn, ctx).await?;
        if !element.is("auth", ns::SASL) {
            conn.send_stream_error(&ctx.domain, "not-authorized", None)
                .await;
            return Err(Refused);
        }
        let mechanism = element
            .attr("mechanism")
            .and_then(Mechanism::from_name)
            .filter(|m| match m {
                Mechanism::External => certificate_names.is_some(),
                m => listener.mechanisms.contains(m),
            });
        let (step, role) = match mechanism {
            None => (Step::Failure(sasl::Failure::InvalidMechanism), None),
            Some(mechanism) => match sasl::decode_payload(&element.text()) {
                Err(failure) => (Step::Failure(failure), None),
                Ok(initial) if mechanism == Mechanism::External => {
                    let names = certificate_names.unwrap_or_default();
                    external::attempt(conn, initial, names, ip, ctx).await?
                }
                Ok(initial) => sasl_attempt(conn, mechanism, initial, ip, ctx).await?,
            },
        };
        match step {
            Step::Success {
                username,
                additional_data,
            } => {
                let text = match additional_data {
                    Some(data) => format!(
                        "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</success>",
                        sasl::encode_payload(&data)
                    ),
                    None => "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>".to_string(),
                };
                send_str(conn, &text).await?;
                Stats::bump(&ctx.stats.logins_ok);
                // A success comes only from an attempt with a mechanism.
                let Some(mechanism) = mechanism else {
                    return Err(Refused);
                };
                return Ok((username, mechanism, role));
            }
            Step::Failure(failure) => {
                Stats::bump(&ctx.stats.logins_failed);
                failures += 1;
                let text = format!(
                    "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><{}/></failure>",
                    failure.condition()
                );
                send_str(conn, &text).await?;
                if failures >= ctx.auth_attempts_per_connection {
                    conn.send_stream_error(
                        &ctx.domain,
                        "policy-violation",
                        Some("too many failed authentication attempts"),
                    )
                    .await;
                    return Err(Refused);
                }
            }
            Step::Challenge(_) => unreachable!("challenges are handled in sasl_attempt"),
        }
    }
}

/// One SASL exchange, `<auth>` to success or failure (never a challenge). The login delay
/// (src/throttle.rs) runs as soon as the username is known, before the credentials are looked
/// at; the outcome is counted against the username and the address. Returns the step and the
/// role the account's source stores, if any.
async fn sasl_attempt<S: Transport>(
    conn: &mut TlsConn<S>,
    mechanism: Mechanism,
    initial: Option<Vec<u8>>,
    ip: IpAddr,
    ctx: &Context,
) -> Result<(Step, Option<AccountRole>), Refused> {
    // Timed from <auth> to the verdict, login delay and failure floor included.
    let login_started = Instant::now();
    // One chain of account sources for the whole exchange, even if a reload swaps it meanwhile,
    // and the account resolved once: the SCRAM parameters shown in the challenge and the proof's
    // check must come from the same account.
    let accounts = ctx.accounts.load();
    // Started without the initial response, so that the delay can run before it is checked.
    let (session, _) = SaslSession::start(
        mechanism,
        None,
        accounts.file().as_ref(),
        &ctx.server_secret,
    );
    let mut attempt = Attempt {
        session,
        accounts,
        login: None,
        wait: None,
    };
    let mut step = match initial.filter(|data| !data.is_empty()) {
        Some(data) => attempt.step(&data, ip, ctx).await,
        None => Step::Challenge(Vec::new()),
    };
    while let Step::Challenge(challenge) = &step {
        let text = format!(
            "<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</challenge>",
            sasl::encode_payload(challenge)
        );
        send_str(conn, &text).await?;
        let reply = next_element(conn, ctx).await?;
        step = if reply.is("response", ns::SASL) {
            match sasl::decode_payload(&reply.text()) {
                Ok(data) => attempt.step(&data.unwrap_or_default(), ip, ctx).await,
                Err(failure) => Step::Failure(failure),
            }
        } else if reply.is("abort", ns::SASL) {
            attempt.session.abort()
        } else {
            conn.send_stream_error(&ctx.domain, "not-authorized", None)
                .await;
            return Err(Refused);
        };
    }
    // A failure counts against the username only when the client got as far as naming one.
    let counted = attempt.wait.as_ref().filter(|_| {
        matches!(step, Step::Success { .. }) || attempt.session.attempted_username().is_some()
    });
    login::record_outcome(&step, counted, mechanism, login_started, ctx);
    let role = attempt.login.as_ref().and_then(LoginAccount::role);
    Ok((step, role))
}

/// The state of one SASL exchange that a step reads and updates.
struct Attempt {
    session: SaslSession,
    /// The account sources as they were when the exchange began.
    accounts: Arc<Accounts>,
    /// The account the exchange resolved, once the client named its username.
    login: Option<LoginAccount>,
    /// The login delay applied, to count the outcome against.
    wait: Option<Wait>,
}

impl Attempt {
    /// Feed `data` to the session. If it names a username, first wait out the login delay, then
    /// ask the account sources for it (no source is asked before the delay). A failure is
    /// returned no earlier than `sasl_failure_floor` after the check began (a timer), so how long
    /// the check took (PBKDF2 for one kind of account, a hash for another) does not show.
    async fn step(&mut self, data: &[u8], ip: IpAddr, ctx: &Context) -> Step {
        if let Some(username) = self.session.username_in(data) {
            if username.len() > MAX_USERNAME_LEN {
                // The step refuses it without a lookup; no throttle work for it either.
                Stats::bump(&ctx.stats.logins_username_too_long);
            } else {
                self.wait = Some(login::login_delay(&username, ip, ctx).await);
                let normalized = username.to_ascii_lowercase();
                let login = self.accounts.resolve(&normalized).await;
                if login.unavailable() {
                    // No source could say whether the account exists: not the client's fault,
                    // and not a failure to count against the username.
                    self.wait = None;
                    self.session.abort();
                    return Step::Failure(sasl::Failure::TemporaryAuthFailure);
                }
                self.login = Some(login);
            }
        }
        let began = tokio::time::Instant::now();
        let step = match self.login.as_ref() {
            Some(login) => self.session.step(data, login),
            None => self.session.step(data, self.accounts.file().as_ref()),
        };
        let answer_at = began + ctx.sasl_failure_floor;
        // Only when still ahead: a timer whose deadline has passed still waits for the next tick.
        if matches!(step, Step::Failure(_)) && tokio::time::Instant::now() < answer_at {
            tokio::time::sleep_until(answer_at).await;
        }
        step
    }
}

async fn bind<S: Transport>(
    conn: &mut TlsConn<S>,
    conn_id: u64,
    username: &str,
    stored_role: Option<AccountRole>,
    info: SessionInfo,
    ctx: &Context,
) -> Result<Arc<SessionHandle>, Refused> {
    loop {
        let element = next_element(conn, ctx).await?;
        let is_iq_set = element.is("iq", "") && element.attr("type") == Some("set");
        let id = element.attr("id").unwrap_or_default().to_string();
        if is_iq_set && element.child("session", ns::SESSION).is_some() {
            // Legacy RFC 3921 session establishment: a no-op, but libstrophe asks for it.
            let reply = Element::stanza("iq")
                .with_attr("type", "result")
                .with_attr("id", id);
            conn.send_element(&reply).await.map_err(|_| Refused)?;
            continue;
        }
        let Some(bind) = element.child("bind", ns::BIND).filter(|_| is_iq_set) else {
            conn.send_stream_error(&ctx.domain, "not-authorized", None)
                .await;
            return Err(Refused);
        };
        let requested = bind
            .child("resource", ns::BIND)
            .map(|r| r.text().trim().to_string())
            .filter(|r| !r.is_empty());
        // Without a requested resource, derive one from the username so the JID an ACS learned
        // (ConnReqJabberID) stays the same at every reconnect.
        let resource = requested.unwrap_or_else(|| username.to_string());
        let candidate = format!("{username}@{}/{resource}", ctx.domain);
        let Ok(jid) = JidRef::parse(&candidate) else {
            let reply = crate::proto::stanza::error_reply(
                &element,
                None,
                "bad-request",
                crate::proto::stanza::ErrorType::Modify,
            );
            conn.send_element(&reply).await.map_err(|_| Refused)?;
            continue;
        };
        let full = jid.normalized();
        let bare = jid.bare().into_owned();
        // A device the CA alone vouches for (SASL EXTERNAL with trust_ca) has no account.
        let vouched =
            info.mechanism == Some(Mechanism::External) && ctx.certificates.vouches_for(username);
        // The role the account's source stores wins; without one, the configuration's
        // `accounts.acs` list decides.
        let role = match stored_role {
            Some(AccountRole::Acs) => Role::AcsAccount,
            Some(AccountRole::Cpe) => Role::Cpe,
            None if ctx.router.is_acs_account(&bare) => Role::AcsAccount,
            None => Role::Cpe,
        };
        let handle = Arc::new(SessionHandle {
            conn_id,
            jid: full.clone(),
            role,
            outbox: Outbox::new(match role {
                Role::Cpe => ctx.outbox_limits,
                _ => ctx.acs_outbox_limits,
            }),
            info,
        });
        let mut reply = Element::stanza("iq")
            .with_attr("type", "result")
            .with_attr("id", id);
        reply.push_child(
            Element::new(ns::BIND, "bind")
                .with_child(Element::new(ns::BIND, "jid").with_text(full.clone())),
        );
        let mut bytes = Vec::with_capacity(256);
        writer::write_element(&mut bytes, &reply, ns::CLIENT);
        conn.send_raw(&bytes).await.map_err(|_| Refused)?;
        if let Some(old) = ctx.router.bind_client(&bare, handle.clone()) {
            // Same full JID logged in again: the new stream wins, the old one gets <conflict/>.
            Stats::bump(&ctx.stats.sessions_replaced);
            old.outbox.close("conflict");
            ctx.router.cpe_gone(old.conn_id);
        }
        // A reload may have removed the account after its login began. The reload closes the
        // sessions of removed accounts that are bound when it swaps the store; a session bound
        // after that swap sees the new store here and closes itself the same way.
        if !vouched && !ctx.accounts.load().may_exist(username) {
            handle.outbox.close(crate::reload::ACCOUNT_REMOVED);
        }
        tracing::debug!(conn = conn_id, jid = %full, role = ?role, "session bound");
        return Ok(handle);
    }
}
