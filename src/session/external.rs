//! SASL EXTERNAL on a c2s connection (RFC 6120 section 6.4, XEP-0178): the TLS client
//! certificate rustls verified is the credential. The authzid the client sends picks one of the
//! usernames the certificate names ([`crate::proto::sasl::external`]); after the login delay that
//! username must be an account in the account sources, or `[accounts.certificate] trust_ca`
//! must vouch for it. Offered only to a connection with a verified certificate (c2s.rs).

use super::c2s::{next_element, send_str, Refused, TlsConn};
use super::{login, Transport};
use crate::auth::AccountRole;
use crate::context::Context;
use crate::proto::sasl::{self, external, Failure, Mechanism, Step};
use crate::throttle::Wait;
use crate::tls::TlsStream;
use crate::xml::ns;
use std::net::IpAddr;
use std::time::Instant;

/// The usernames the client certificate rustls verified names (read once, during negotiation);
/// `None` without a verified certificate (the listener asked for none, or the client sent none).
pub(super) fn certificate_names<S: Transport>(
    tls: &TlsStream<S>,
    ctx: &Context,
) -> Option<Vec<Box<str>>> {
    let leaf = tls.peer_certificates()?.first()?;
    Some(
        ctx.certificates
            .identities(leaf, &ctx.domain)
            .unwrap_or_else(|error| {
                tracing::debug!("{error}");
                Vec::new()
            }),
    )
}

/// One EXTERNAL exchange, `<auth>` to success or failure. `initial` is the decoded initial
/// response (the authzid); `names` the usernames the certificate names.
pub(super) async fn attempt<S: Transport>(
    conn: &mut TlsConn<S>,
    initial: Option<Vec<u8>>,
    names: &[Box<str>],
    ip: IpAddr,
    ctx: &Context,
) -> Result<(Step, Option<AccountRole>), Refused> {
    let started = Instant::now();
    let authzid = match initial {
        Some(authzid) => Ok(authzid),
        None => {
            // No initial response (RFC 6120 6.4.2): an empty challenge asks for the authzid.
            send_str(
                conn,
                "<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>=</challenge>",
            )
            .await?;
            let reply = next_element(conn, ctx).await?;
            if reply.is("response", ns::SASL) {
                sasl::decode_payload(&reply.text()).map(Option::unwrap_or_default)
            } else if reply.is("abort", ns::SASL) {
                Err(Failure::Aborted)
            } else {
                conn.send_stream_error(&ctx.domain, "not-authorized", None)
                    .await;
                return Err(Refused);
            }
        }
    };
    let chosen = authzid
        .and_then(|authzid| Ok(external::choose_identity(&authzid, names, &ctx.domain)?.into()));
    let (step, wait, role) = match chosen {
        Ok(username) => check_account(username, ip, ctx).await,
        Err(failure) => (Step::Failure(failure), None, None),
    };
    if let Step::Failure(failure) = &step {
        tracing::debug!(condition = failure.condition(), "SASL EXTERNAL failed");
    }
    login::record_outcome(&step, wait.as_ref(), Mechanism::External, started, ctx);
    Ok((step, role))
}

/// After the login delay: is `username` an account (or vouched for by the CA alone)? Returns
/// the step, the wait to count it against, and the role to bind with.
async fn check_account(
    username: Box<str>,
    ip: IpAddr,
    ctx: &Context,
) -> (Step, Option<Wait>, Option<AccountRole>) {
    let wait = login::login_delay(&username, ip, ctx).await;
    let login = ctx.accounts.load().resolve(&username).await;
    let success = |role| {
        let step = Step::Success {
            username: username.to_string(),
            additional_data: None,
        };
        (step, Some(wait), role)
    };
    if login.found() {
        success(login.role())
    } else if ctx.certificates.vouches_for(&username) {
        // On the CA's word alone: always a device, never an ACS (`accounts.acs` names accounts).
        success(Some(AccountRole::Cpe))
    } else if login.unavailable() {
        // No source could tell: not the client's fault, not counted against the name.
        (Step::Failure(Failure::TemporaryAuthFailure), None, None)
    } else {
        (Step::Failure(Failure::NotAuthorized), Some(wait), None)
    }
}
