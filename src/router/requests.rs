//! The life of a connection request on this node, after routing chose it: tracked in the
//! [`PendingTable`], its id rewritten toward the CPE, delivered; then exactly one answer back to
//! the ACS connection that asked: the CPE's own (id and address restored), or the broker's on the
//! CPE's behalf (timeout, CPE gone, overload, shutdown). Every outcome is counted and logged under
//! the `crbroker::requests` target.

use super::Router;
use crate::jid::JidRef;
use crate::ops::metrics::{CrOutcome, Stats};
use crate::outbox::{AnswerError, PushError};
use crate::pending::{PendingRequest, Refusal, WireId};
use crate::proto::stanza::{self, ErrorType};
use crate::session::SessionHandle;
use crate::xml::Element;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

const REQUEST_LOG: &str = "crbroker::requests";

/// What an answer given at once (the request never reached a CPE) needs of the request.
pub(super) struct Asked<'a> {
    pub acs_jid: &'a str,
    pub acs_id: &'a str,
    pub cpe_jid: &'a str,
    pub started: Instant,
}

impl Router {
    /// Answer a request that never reached a CPE: count `outcome`, log `why`, and return the
    /// error for the asking connection.
    pub(super) fn refuse(
        &self,
        asked: &Asked<'_>,
        outcome: CrOutcome,
        why: &str,
        condition: &str,
        error_type: ErrorType,
    ) -> Element {
        self.stats.request_done(outcome, asked.started);
        log_outcome(
            asked.acs_jid,
            asked.cpe_jid,
            asked.acs_id,
            why,
            None,
            asked.started,
        );
        stanza::iq_error(
            asked.acs_id,
            asked.cpe_jid,
            asked.acs_jid,
            condition,
            error_type,
            &self.domain,
        )
    }

    /// ACS -> CPE request: track it, rewrite the id, deliver, or answer at once.
    pub(super) fn relay_request(
        &self,
        acs: &Arc<SessionHandle>,
        mut request: Element,
        to: &JidRef,
    ) -> Option<Element> {
        let acs_jid = request.attr("from").unwrap_or_default().to_string();
        let acs_id = request.attr("id").unwrap_or_default().to_string();
        let to_attr = request.attr("to").unwrap_or_default().to_string();
        let started = Instant::now();
        let remote = self.remote_for(acs);
        if let Some(remote) =
            remote.filter(|r| to.resource.is_none() && r.newer_elsewhere(&to.bare()))
        {
            return self.relay_remote(remote, acs, request, to, started);
        }
        let Some(cpe) = self.find_client(to) else {
            if let Some(remote) = remote {
                return self.relay_remote(remote, acs, request, to, started);
            }
            let asked = Asked {
                acs_jid: &acs_jid,
                acs_id: &acs_id,
                cpe_jid: &to_attr,
                started,
            };
            return Some(self.refuse(
                &asked,
                CrOutcome::Offline,
                "offline",
                "service-unavailable",
                ErrorType::Cancel,
            ));
        };
        let entry = PendingRequest {
            acs: acs.clone(),
            acs_jid: acs_jid.clone(),
            acs_id: acs_id.clone(),
            wire: WireId::Acs,
            cpe_conn: cpe.conn_id,
            cpe_jid: cpe.jid.clone(),
            started,
        };
        let id = match self.pending.begin(entry) {
            Ok((id, WireId::Acs)) => id,
            Ok((id, WireId::Broker(n))) => {
                request.set_attr("id", self.pending.broker_id(n));
                id
            }
            Err(refusal) => {
                let why = match refusal {
                    Refusal::CpeBusy => "overload (cpe)",
                    Refusal::AcsBusy => "overload (acs)",
                };
                let asked = Asked {
                    acs_jid: &acs_jid,
                    acs_id: &acs_id,
                    cpe_jid: &cpe.jid,
                    started,
                };
                return Some(self.refuse(
                    &asked,
                    CrOutcome::Overload,
                    why,
                    "resource-constraint",
                    ErrorType::Wait,
                ));
            }
        };
        // The CPE sees its own full JID even when the ACS used the bare one.
        request.set_attr("to", cpe.jid.as_str());
        match cpe.outbox.push(request) {
            Ok(()) => {
                Stats::bump(&self.stats.requests_relayed);
                None
            }
            Err((error, _)) => {
                let entry = self.pending.cancel(id)?;
                let (outcome, why, condition, error_type) = match error {
                    PushError::Full => (
                        CrOutcome::Overload,
                        "overload (outbox full)",
                        "resource-constraint",
                        ErrorType::Wait,
                    ),
                    PushError::Closed => (
                        CrOutcome::Offline,
                        "offline",
                        "service-unavailable",
                        ErrorType::Cancel,
                    ),
                };
                let asked = Asked {
                    acs_jid: &acs_jid,
                    acs_id: &acs_id,
                    cpe_jid: &entry.cpe_jid,
                    started,
                };
                Some(self.refuse(&asked, outcome, why, condition, error_type))
            }
        }
    }

    /// A CPE's IQ result/error for one of its pending requests: deliver it to the connection that
    /// asked, with the ACS's id and address restored. Hands the stanza back when it answers nothing.
    pub(super) fn take_pending_answer(
        &self,
        cpe: &Arc<SessionHandle>,
        answer: Element,
    ) -> Result<(), Element> {
        let request = answer
            .attr("id")
            .and_then(|id| self.pending.complete(cpe.conn_id, id));
        let Some(request) = request else {
            return Err(answer);
        };
        self.answer_with(request, answer);
        Ok(())
    }

    /// Deliver the CPE's `answer` to `request` (taken from the table): count, log, restore the
    /// ACS's id and address.
    pub(super) fn answer_with(&self, request: PendingRequest, mut answer: Element) {
        let is_error = answer.attr("type") == Some("error");
        self.stats.request_done(
            match is_error {
                true => CrOutcome::CpeError,
                false => CrOutcome::CpeResult,
            },
            request.started,
        );
        log_outcome(
            &request.acs_jid,
            &request.cpe_jid,
            &request.acs_id,
            if is_error { "cpe error" } else { "cpe result" },
            stanza::error_condition(&answer),
            request.started,
        );
        answer.set_attr("id", request.acs_id.as_str());
        answer.set_attr("to", request.acs_jid.as_str());
        self.deliver_to_acs(&request.acs, answer);
    }

    /// A CPE's IQ result/error to an ACS entity that answers nothing pending: late (after the
    /// broker answered) or unknown. Dropped and counted, never delivered.
    pub(super) fn drop_unmatched_answer(&self, cpe: &SessionHandle, answer: &Element) {
        Stats::bump(&self.stats.answers_late_or_unknown);
        tracing::debug!(target: REQUEST_LOG, cpe = %cpe.jid, id = ?answer.attr("id"), "late or unknown answer dropped");
    }

    /// The one answer to a pending request, into the room the ACS connection keeps for answers.
    pub(super) fn deliver_to_acs(&self, acs: &SessionHandle, stanza: Element) {
        match acs.outbox.push_answer(stanza) {
            Ok(()) => {}
            Err(AnswerError::Overflow { lost }) => {
                // The ACS stopped reading; the outbox dropped what it held and is closing the
                // connection. These answers are lost with the connection, like any to a gone ACS.
                self.stats
                    .answers_acs_gone
                    .fetch_add(lost as u64 + 1, Ordering::Relaxed);
                Stats::bump(&self.stats.acs_closed_answer_room_full);
                tracing::warn!(acs = %acs.jid, conn = acs.conn_id, lost = lost + 1, "ACS connection stopped reading (answer room full): closing it");
            }
            Err(_) => Stats::bump(&self.stats.answers_acs_gone),
        }
    }

    /// Answer `request` on the broker's behalf (timeout, CPE gone, shutdown).
    pub fn answer_for_cpe(
        &self,
        request: PendingRequest,
        condition: &str,
        error_type: ErrorType,
        outcome: &str,
    ) {
        log_outcome(
            &request.acs_jid,
            &request.cpe_jid,
            &request.acs_id,
            outcome,
            Some(condition),
            request.started,
        );
        let reply = stanza::iq_error(
            &request.acs_id,
            &request.cpe_jid,
            &request.acs_jid,
            condition,
            error_type,
            &self.domain,
        );
        self.deliver_to_acs(&request.acs, reply);
    }

    /// Answer requests whose deadline passed.
    pub fn expire_requests(&self, now: Instant) {
        for request in self.pending.expired(now) {
            self.stats.request_done(CrOutcome::Timeout, request.started);
            self.answer_for_cpe(request, "remote-server-timeout", ErrorType::Wait, "timeout");
        }
    }

    /// A CPE connection ended: answer everything pending for it at once.
    pub fn cpe_gone(&self, cpe_conn: u64) {
        for request in self.pending.for_cpe_gone(cpe_conn) {
            self.stats.request_done(CrOutcome::CpeGone, request.started);
            self.answer_for_cpe(
                request,
                "service-unavailable",
                ErrorType::Cancel,
                "cpe gone",
            );
        }
    }
}

pub(super) fn log_outcome(
    acs: &str,
    cpe: &str,
    id: &str,
    outcome: &str,
    condition: Option<&str>,
    started: Instant,
) {
    tracing::info!(
        target: REQUEST_LOG,
        acs,
        cpe,
        id,
        outcome,
        condition = condition.unwrap_or("-"),
        latency_us = started.elapsed().as_micros() as u64,
        "connection request"
    );
}
