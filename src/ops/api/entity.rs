//! The HTTP API as an ACS entity: it has its own JID (`[ops] api_domain`, default
//! `api.<domain>`), attaches to the router like a component connection, and sends connection
//! requests through the same router, pending table and exactly-one-answer rules as an XMPP ACS.
//! Answers arrive in its outbox like any ACS connection's; one task hands each to the HTTP
//! request waiting for it (matched by id).

use crate::jid::JidRef;
use crate::outbox::{Outbox, OutboxLimits, Outgoing};
use crate::router::Router;
use crate::session::{Role, SessionHandle, SessionInfo};
use crate::xml::{ns, Element};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// Connection ids of in-process entities count down from the top, away from real connections.
const API_CONN_ID: u64 = u64::MAX - 1;

/// How a connection request ended, as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The CPE answered `result` (it will open a CWMP session).
    Result,
    /// The CPE answered with an error (e.g. not-authorized: wrong connection-request credentials).
    CpeError,
    /// No session for that JID: unknown, offline, or another resource.
    Offline,
    /// The CPE did not answer in time.
    Timeout,
    /// Too many requests pending (for that CPE or for the API), or the CPE's queue is full.
    Overload,
    /// The CPE's session ended while the request was pending.
    CpeGone,
}

/// The answer to one request.
#[derive(Debug, Clone, Serialize)]
pub struct CrAnswer {
    pub outcome: Outcome,
    /// The CPE's full JID when a session answered (or was addressed).
    pub jid: Option<String>,
    /// Stanza error condition and text, for errors.
    pub condition: Option<String>,
    pub text: Option<String>,
    pub latency_ms: f64,
}

pub struct ApiEntity {
    domain: String,
    broker_domain: String,
    handle: Arc<SessionHandle>,
    router: Arc<Router>,
    waiters: Mutex<HashMap<u64, oneshot::Sender<Element>>>,
    next_id: AtomicU64,
}

impl ApiEntity {
    /// Attach the API's entity to the router and start the task that hands out its answers.
    pub fn start(
        domain: &str,
        router: Arc<Router>,
        limits: OutboxLimits,
        mut stop: watch::Receiver<bool>,
    ) -> Arc<ApiEntity> {
        let domain = domain.to_ascii_lowercase();
        let handle = Arc::new(SessionHandle {
            conn_id: API_CONN_ID,
            jid: domain.clone(),
            role: Role::Component,
            outbox: Outbox::new(limits),
            info: SessionInfo::new(None),
        });
        router.attach_component(&domain, handle.clone());
        let entity = Arc::new(ApiEntity {
            broker_domain: router.domain().to_string(),
            domain,
            handle,
            router,
            waiters: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        });
        let worker = entity.clone();
        tokio::spawn(async move {
            loop {
                worker.hand_out_answers();
                tokio::select! {
                    _ = worker.handle.outbox.notified() => {}
                    _ = crate::context::stopped(&mut stop) => break,
                }
            }
            worker.handle.seal(&worker.router.stats);
            worker.router.detach_component(&worker.domain, API_CONN_ID);
        });
        entity
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Element>>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deliver every queued answer to the request waiting for it. An answer nobody waits for
    /// (the HTTP caller's own timeout passed) is dropped.
    fn hand_out_answers(&self) {
        while let Some(item) = self.handle.outbox.pop() {
            let Outgoing::Stanza(answer) = item else {
                continue;
            };
            let waiter = answer
                .attr("id")
                .and_then(|id| id.strip_prefix("api"))
                .and_then(|n| n.parse::<u64>().ok())
                .and_then(|n| self.waiters().remove(&n));
            if let Some(waiter) = waiter {
                let _ = waiter.send(answer);
            }
        }
    }

    /// Send a connection request to `to` and wait (at most `wait`) for its one answer.
    pub async fn connection_request(
        &self,
        to: &JidRef<'_>,
        username: &str,
        password: &str,
        wait: Duration,
    ) -> CrAnswer {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("api{n}");
        let request = Element::stanza("iq")
            .with_attr("type", "get")
            .with_attr("id", id.as_str())
            .with_attr("from", self.domain.as_str())
            .with_attr("to", to.normalized())
            .with_child(
                Element::new(ns::CONN_REQ, "connectionRequest")
                    .with_child(Element::new(ns::CONN_REQ, "username").with_text(username))
                    .with_child(Element::new(ns::CONN_REQ, "password").with_text(password)),
            );
        let (sender, receiver) = oneshot::channel();
        // Registered before routing: the answer may arrive before `route` returns.
        self.waiters().insert(n, sender);
        let started = Instant::now();
        // Err hands back a stanza for the server itself: impossible for a CPE address.
        let immediate = self
            .router
            .route(&self.handle, request, || true)
            .unwrap_or_default();
        if let Some(reply) = immediate {
            self.waiters().remove(&n);
            // Answered at once by the broker: offline or overload.
            return self.classify(&reply, started, true);
        }
        match tokio::time::timeout(wait, receiver).await {
            Ok(Ok(answer)) => self.classify(&answer, started, false),
            _ => {
                self.waiters().remove(&n);
                CrAnswer {
                    outcome: Outcome::Timeout,
                    jid: None,
                    condition: None,
                    text: None,
                    latency_ms: millis(started),
                }
            }
        }
    }

    /// What an answer means. The broker's own errors carry `by` = its domain (RFC 6120 8.3.2);
    /// any other error came from the CPE.
    fn classify(&self, answer: &Element, started: Instant, at_once: bool) -> CrAnswer {
        let jid = answer.attr("from").map(str::to_string);
        let error = answer.child_elements().find(|e| e.name == "error");
        let condition = error
            .and_then(|e| e.child_elements().find(|c| c.name != "text"))
            .map(|c| c.name.to_string());
        let text = error
            .and_then(|e| e.child("text", ns::STANZAS))
            .map(|t| t.text());
        let by_broker = error.and_then(|e| e.attr("by")) == Some(self.broker_domain.as_str());
        let outcome = match (answer.attr("type"), by_broker, condition.as_deref()) {
            (Some("result"), _, _) => Outcome::Result,
            (_, true, Some("remote-server-timeout")) => Outcome::Timeout,
            (_, true, Some("resource-constraint")) => Outcome::Overload,
            (_, true, Some("service-unavailable")) if at_once => Outcome::Offline,
            (_, true, _) => Outcome::CpeGone,
            _ => Outcome::CpeError,
        };
        CrAnswer {
            outcome,
            jid,
            condition,
            text,
            latency_ms: millis(started),
        }
    }
}

fn millis(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}
