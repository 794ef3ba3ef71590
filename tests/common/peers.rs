//! Real XMPP peers: tokio-xmpp's client as a CPE or ACS account, tokio-xmpp's component as an ACS.

use super::*;
use futures::StreamExt;
use tokio_xmpp::connect::DnsConfig;
use tokio_xmpp::jid::{FullJid, Jid};
use tokio_xmpp::parsers::iq::Iq;
use tokio_xmpp::parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};
use tokio_xmpp::xmlstream::Timeouts;
use tokio_xmpp::{Client, Event, Stanza};

/// How a tokio-xmpp client reaches the broker.
#[derive(Clone, Copy)]
pub enum Transport {
    StartTls,
    DirectTls,
}

/// Log in with tokio-xmpp's client; `jid` may be bare (`user@example.net`) or full.
pub async fn client(
    addr: std::net::SocketAddr,
    jid: &str,
    password: &str,
    transport: Transport,
) -> (Client, FullJid) {
    pki();
    let jid: Jid = jid.parse().unwrap();
    let dns = DnsConfig::addr(&addr.to_string());
    let mut client = match transport {
        Transport::StartTls => Client::new_starttls(jid, password, dns, Timeouts::tight()),
        Transport::DirectTls => {
            Client::new_direct_tls_with_config(jid, password, dns, Timeouts::tight())
        }
    };
    let bound = tokio::time::timeout(IO_TIMEOUT, async {
        loop {
            match client.next().await {
                Some(Event::Online { bound_jid, .. }) => return bound_jid,
                Some(Event::Disconnected(e)) => panic!("client disconnected while logging in: {e}"),
                Some(_) => continue,
                None => panic!("client stream ended while logging in"),
            }
        }
    })
    .await
    .expect("login within the timeout");
    let full = bound.try_into_full().expect("bound JID is full");
    (client, full)
}

/// Try to log in with tokio-xmpp's client and wait until the broker has refused it (`failed()`
/// turns true) without the client ever getting online. tokio-xmpp retries refused logins silently,
/// so the broker's counters are what tell the refusal.
pub async fn client_login_refused(
    addr: std::net::SocketAddr,
    jid: &str,
    password: &str,
    failed: impl Fn() -> bool,
) {
    pki();
    let jid: Jid = jid.parse().unwrap();
    let mut client = Client::new_starttls(
        jid,
        password,
        DnsConfig::addr(&addr.to_string()),
        Timeouts::tight(),
    );
    let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
    while !failed() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broker did not refuse the login"
        );
        tokio::select! {
            event = client.next() => {
                if let Some(Event::Online { .. }) = event {
                    panic!("login unexpectedly succeeded");
                }
            }
            _ = tokio::time::sleep(std::time::Duration::from_millis(5)) => {}
        }
    }
}

/// The next stanza a client receives.
pub async fn next_stanza(client: &mut Client) -> Stanza {
    tokio::time::timeout(IO_TIMEOUT, async {
        loop {
            match client.next().await {
                Some(Event::Stanza(stanza)) => return stanza,
                Some(Event::Disconnected(e)) => panic!("client disconnected: {e}"),
                Some(Event::Online { .. }) => continue,
                None => panic!("client stream ended"),
            }
        }
    })
    .await
    .expect("a stanza within the timeout")
}

/// Run an emulated CPE: answer every connectionRequest (result for the right credentials,
/// not-authorized with the request echoed otherwise). Returns how many it answered when dropped.
pub fn spawn_emulated_cpe(
    mut client: Client,
    username: &'static str,
    password: &'static str,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut answered = 0;
        while let Some(event) = client.next().await {
            let Event::Stanza(Stanza::Iq(Iq::Get {
                from, id, payload, ..
            })) = event
            else {
                continue;
            };
            if !payload.is("connectionRequest", ns::CONN_REQ) {
                continue;
            }
            let user = payload
                .get_child("username", ns::CONN_REQ)
                .map(|e| e.text())
                .unwrap_or_default();
            let pass = payload
                .get_child("password", ns::CONN_REQ)
                .map(|e| e.text())
                .unwrap_or_default();
            let reply = if user == username && pass == password {
                Iq::Result {
                    from: None,
                    to: from,
                    id,
                    payload: None,
                }
            } else {
                Iq::Error {
                    from: None,
                    to: from,
                    id,
                    error: StanzaError::new(
                        ErrorType::Cancel,
                        DefinedCondition::NotAuthorized,
                        "en",
                        "bad credentials",
                    ),
                    payload: Some(payload),
                }
            };
            if client.send_stanza(reply.into()).await.is_err() {
                break;
            }
            answered += 1;
        }
        answered
    })
}

pub mod component {
    use super::super::*;
    use futures::{SinkExt, StreamExt};
    use tokio_xmpp_component::connect::DnsConfig;
    use tokio_xmpp_component::connect::TcpServerConnector;
    use tokio_xmpp_component::parsers::iq::Iq;
    use tokio_xmpp_component::parsers::minidom::Element as DomElement;
    use tokio_xmpp_component::xmlstream::Timeouts;
    use tokio_xmpp_component::{Component, Stanza};

    pub type Acs = Component<TcpServerConnector>;

    pub async fn connect(
        addr: std::net::SocketAddr,
        domain: &str,
        secret: &str,
    ) -> Result<Acs, tokio_xmpp_component::Error> {
        Component::new_plaintext(
            domain,
            secret,
            DnsConfig::addr(&addr.to_string()),
            Timeouts::tight(),
        )
        .await
    }

    pub fn connection_request_payload(user: &str, password: &str) -> DomElement {
        format!("<connectionRequest xmlns='urn:broadband-forum-org:cwmp:xmppConnReq-1-0'><username>{user}</username><password>{password}</password></connectionRequest>")
            .parse()
            .unwrap()
    }

    /// Send a connectionRequest from the component.
    pub async fn send_request(acs: &mut Acs, id: &str, to: &str, user: &str, password: &str) {
        let iq = Iq::Get {
            from: Some(COMPONENT_DOMAIN.parse().unwrap()),
            to: Some(to.parse().unwrap()),
            id: id.to_string(),
            payload: connection_request_payload(user, password),
        };
        acs.send(Stanza::Iq(iq)).await.unwrap();
    }

    pub async fn next_iq(acs: &mut Acs) -> Iq {
        loop {
            let stanza = tokio::time::timeout(IO_TIMEOUT, acs.next())
                .await
                .expect("a stanza within the timeout")
                .expect("component stream open");
            if let Stanza::Iq(iq) = stanza {
                return iq;
            }
        }
    }

    pub fn iq_id(iq: &Iq) -> &str {
        match iq {
            Iq::Get { id, .. }
            | Iq::Set { id, .. }
            | Iq::Result { id, .. }
            | Iq::Error { id, .. } => id,
        }
    }
}
