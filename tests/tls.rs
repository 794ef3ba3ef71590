//! TLS behaviour of the c2s listeners against real TLS peers (issue 8, item 2): KeyUpdate in both
//! flavours keeps a session working, a fatal alert is an error and not a clean close, close_notify
//! is a clean close answered in kind, and the record limits (empty-record runs, oversized records,
//! TLS 1.2 renegotiation) end or refuse with what rustls sends (record_overflow; no_renegotiation;
//! for a 33rd empty record rustls 0.23.46 sends no alert at all). Peers: `openssl s_client`
//! (tests/common/openssl.rs), an ordinary rustls client, and a test-side record layer on keys a
//! rustls client hands over (tests/common/tls_peer.rs).

mod common;

use common::openssl::OpensslPeer;
use common::tls_peer::*;
use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const CPE: &str = "cpe-0001";
const PING: &str = "<iq type='get' id='ping1'><ping xmlns='urn:xmpp:ping'/></iq>";

/// The ACS's answer to request `id` is the CPE's result.
async fn expect_result(acs: &mut RawPeer, id: &str, jid: &str) {
    let answer = acs.element().await;
    assert_eq!(
        (answer.attr("id"), answer.attr("type"), answer.attr("from")),
        (Some(id), Some("result"), Some(jid)),
        "{}",
        acs.transcript
    );
}

fn request(id: &str, jid: &str) -> String {
    connection_request(id, jid, Some(COMPONENT_DOMAIN), "user", "secret")
}

/// A connection request goes from the ACS to the CPE, the CPE answers, the ACS gets the answer.
async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    acs: &mut RawPeer,
    cpe: &mut TextPeer<S>,
    jid: &str,
    id: &str,
) {
    acs.send(&request(id, jid)).await;
    cpe.answer_request().await;
    expect_result(acs, id, jid).await;
}

/// The same round trip with the CPE on the test's own record layer.
async fn record_round_trip(acs: &mut RawPeer, cpe: &mut RecordPeer, jid: &str, id: &str) {
    acs.send(&request(id, jid)).await;
    let text = cpe.expect_text("</iq>").await;
    let wire_id = attr_value(&text[text.rfind("<iq ").unwrap()..], "id");
    cpe.send_text(&format!(
        "<iq type='result' id='{wire_id}' to='{COMPONENT_DOMAIN}'/>"
    ))
    .await;
    expect_result(acs, id, jid).await;
}

/// `n` empty application-data records, sealed one after the other.
fn empty_records(cpe: &mut RecordPeer, n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|_| cpe.seal(CONTENT_APPLICATION_DATA, b"", 0))
        .collect()
}

/// Wait until `tls_errors` reaches `n`; none of those ends counted as a clean close.
async fn counted_as_tls_errors(broker: &TestBroker, n: u64) {
    eventually(&format!("tls_errors = {n}"), || {
        broker.stat("tls_errors") == n
    })
    .await;
    assert_eq!(broker.stat("tls_close_notify"), 0, "tls_close_notify");
}

fn no_tls_errors(broker: &TestBroker) {
    assert_eq!(broker.stat("tls_errors"), 0, "tls_errors");
}

/// A broker, its ACS component, and a CPE logged in through `openssl s_client` with `version`
/// (`-tls1_3`, `-tls1_2`) on `listener`.
async fn openssl_cpe(
    listener: usize,
    starttls: bool,
    version: &str,
) -> (TestBroker, RawPeer, OpensslPeer, String) {
    let broker = TestBroker::start().await;
    let acs = broker.raw_acs().await;
    let mut cpe = OpensslPeer::connect(broker.addr(listener), starttls, &[version]).await;
    let jid = cpe.xmpp.login(CPE).await;
    (broker, acs, cpe, jid)
}

#[tokio::test]
async fn key_update_not_requested_keeps_a_starttls_session() {
    let (broker, mut acs, mut cpe, jid) = openssl_cpe(STARTTLS, true, "-tls1_3").await;
    round_trip(&mut acs, &mut cpe.xmpp, &jid, "before").await;
    for round in 1..=2 {
        cpe.command('k', "KEYUPDATE").await;
        round_trip(&mut acs, &mut cpe.xmpp, &jid, &format!("after-{round}")).await;
        assert_eq!(
            cpe.msg_lines(">>>", "KeyUpdate"),
            round,
            "s_client sent its KeyUpdate; log: {}",
            cpe.msg_log()
        );
    }
    // update_not_requested: the broker keeps its own sending keys.
    assert_eq!(cpe.msg_lines("<<<", "KeyUpdate"), 0, "{}", cpe.msg_log());
    no_tls_errors(&broker);
    broker.shutdown().await;
}

#[tokio::test]
async fn key_update_requested_is_answered_and_keeps_a_direct_tls_session() {
    let (broker, mut acs, mut cpe, jid) = openssl_cpe(DIRECT_TLS, false, "-tls1_3").await;
    cpe.command('K', "KEYUPDATE").await;
    round_trip(&mut acs, &mut cpe.xmpp, &jid, "after-1").await;
    // This request reaches the CPE under the broker's new sending keys.
    round_trip(&mut acs, &mut cpe.xmpp, &jid, "after-2").await;
    assert_eq!(cpe.msg_lines(">>>", "KeyUpdate"), 1, "{}", cpe.msg_log());
    assert_eq!(
        cpe.msg_lines("<<<", "KeyUpdate"),
        1,
        "update_requested: the broker answers with its own KeyUpdate; log: {}",
        cpe.msg_log()
    );
    no_tls_errors(&broker);
    broker.shutdown().await;
}

#[tokio::test]
async fn rustls_client_key_updates_keep_the_session() {
    let broker = TestBroker::start().await;
    let mut acs = broker.raw_acs().await;
    let (mut cpe, jid) = rustls_cpe(broker.addr(DIRECT_TLS), false, rustls_config(), CPE).await;
    for round in 0..3 {
        // rustls sends KeyUpdate(update_requested) with its next flush.
        cpe.io.get_mut().1.refresh_traffic_keys().unwrap();
        cpe.io.flush().await.unwrap();
        round_trip(&mut acs, &mut cpe, &jid, &format!("round-{round}")).await;
    }
    no_tls_errors(&broker);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_key_update_right_behind_the_client_finished_is_answered() {
    let broker = TestBroker::start().await;
    let mut acs = broker.raw_acs().await;
    let name = rustls::pki_types::ServerName::try_from(DOMAIN).unwrap();
    let tcp = CorkedTcp::new(connect_resetting(broker.addr(DIRECT_TLS)).await);
    let mut tls = tokio_rustls::TlsConnector::from(rustls_config())
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    // The client's Finished is held back; KeyUpdate(update_requested) joins it, and both
    // reach the broker in one write, so it meets the KeyUpdate while finishing the handshake.
    tls.get_mut().1.refresh_traffic_keys().unwrap();
    tls.flush().await.unwrap();
    tls.get_mut().0.uncork().await.unwrap();
    // The broker's answering KeyUpdate must reach the client before anything it encrypts
    // under its new keys, or the client cannot read the broker from here on.
    let mut cpe = TextPeer::new(tls);
    let jid = cpe.login(CPE).await;
    round_trip(&mut acs, &mut cpe, &jid, "after").await;
    no_tls_errors(&broker);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_fatal_alert_in_the_handshake_is_an_error() {
    let broker = TestBroker::start().await;
    // This client trusts no CA: it rejects the broker's certificate with a fatal alert.
    let untrusting = rustls_config_with(rustls::RootCertStore::empty());
    let name = rustls::pki_types::ServerName::try_from(DOMAIN).unwrap();
    for (n, (listener, starttls)) in [(DIRECT_TLS, false), (STARTTLS, true)]
        .into_iter()
        .enumerate()
    {
        let tcp = tcp_for_tls(broker.addr(listener), starttls).await;
        let connect = tokio_rustls::TlsConnector::from(untrusting.clone())
            .connect(name.clone(), tcp)
            .into_fallible();
        let Err((error, mut tcp)) = connect.await else {
            panic!("a client that trusts no CA completed the handshake");
        };
        assert!(
            error.to_string().contains("UnknownIssuer"),
            "the client refused the certificate: {error}"
        );
        // The broker ends the connection (the client may not have read all of its flight).
        let mut rest = Vec::new();
        tokio::time::timeout(IO_TIMEOUT, tcp.read_to_end(&mut rest))
            .await
            .expect("the broker closes the connection")
            .ok();
        counted_as_tls_errors(&broker, n as u64 + 1).await;
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn a_fatal_alert_after_the_handshake_is_an_error_not_a_clean_close() {
    let broker = TestBroker::start().await;
    let mut acs = broker.raw_acs().await;
    let (mut cpe, jid) = RecordPeer::login(broker.addr(DIRECT_TLS), false, CPE).await;
    record_round_trip(&mut acs, &mut cpe, &jid, "before").await;
    let alert = cpe.seal(CONTENT_ALERT, &[ALERT_FATAL, ALERT_HANDSHAKE_FAILURE], 0);
    cpe.send_raw(&alert).await.unwrap();
    // RFC 8446 6.2: after a fatal alert both sides close at once; nothing more is sent
    // (a clean-close path would answer `</stream:stream>` and close_notify).
    let alerts = cpe.alerts_until_close().await;
    assert_eq!(
        alerts,
        [],
        "the broker sent alerts after the client's fatal alert"
    );
    counted_as_tls_errors(&broker, 1).await;
    // The CPE's session is gone: a request to it is refused at once.
    acs.send(&request("after", &jid)).await;
    let answer = acs.element().await;
    assert_eq!(answer.attr("type"), Some("error"), "{}", acs.transcript);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_warning_alert_or_a_malformed_alert_gets_decode_error() {
    let broker = TestBroker::start().await;
    // TLS 1.3 has no warnings but close_notify and user_canceled (RFC 8446 6), and an alert is
    // exactly two bytes: rustls answers both of these with a fatal decode_error.
    let bad_alerts: [&[u8]; 2] = [&[ALERT_WARNING, 48], &[ALERT_FATAL; 100]];
    for (n, content) in bad_alerts.into_iter().enumerate() {
        let (mut cpe, _jid) = RecordPeer::login(broker.addr(DIRECT_TLS), false, CPE).await;
        let record = cpe.seal(CONTENT_ALERT, content, 0);
        cpe.send_raw(&record).await.unwrap();
        assert_eq!(
            cpe.expect_fatal_alert_and_close().await,
            ALERT_DECODE_ERROR,
            "answer to alert content {content:?}"
        );
        counted_as_tls_errors(&broker, n as u64 + 1).await;
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn close_notify_is_a_clean_close_answered_in_kind() {
    let broker = TestBroker::start().await;
    let mut acs = broker.raw_acs().await;
    for (n, (listener, starttls)) in [(STARTTLS, true), (DIRECT_TLS, false)]
        .into_iter()
        .enumerate()
    {
        let (mut cpe, jid) =
            rustls_cpe(broker.addr(listener), starttls, rustls_config(), CPE).await;
        round_trip(&mut acs, &mut cpe, &jid, &format!("before-{n}")).await;
        // close_notify alone, the TCP connection left open: the broker must close it.
        cpe.io.get_mut().1.send_close_notify();
        cpe.io.flush().await.unwrap();
        // tokio-rustls reads the broker's close_notify as a clean end (Ok), and a TCP close
        // without one as an error (UnexpectedEof).
        let end = cpe.end().await;
        assert_eq!(broker.stat("tls_close_notify"), n as u64 + 1);
        no_tls_errors(&broker);
        // RFC 8446 6.1: each party sends close_notify before closing its write side.
        assert!(
            end.is_ok(),
            "the broker closed without its own close_notify: {end:?}; received: {}",
            cpe.text
        );
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn a_tcp_fin_without_close_notify_is_not_a_clean_close() {
    let broker = TestBroker::start().await;
    let (mut cpe, _jid) = RecordPeer::login(broker.addr(DIRECT_TLS), false, CPE).await;
    cpe.send_fin().await;
    // Whatever the broker sends on the way out, it closes; by then it has read the FIN.
    while let Received::Record(..) = cpe.next_record().await {}
    assert_eq!(
        broker.stat("tls_close_notify"),
        0,
        "a FIN counted as close_notify"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn thirty_two_empty_records_are_accepted() {
    let broker = TestBroker::start().await;
    let mut acs = broker.raw_acs().await;
    let (mut cpe, jid) = RecordPeer::login(broker.addr(DIRECT_TLS), false, CPE).await;
    for round in 0..2 {
        // rustls allows 32 in a row; a record with content (the answer) restarts the count.
        let run = empty_records(&mut cpe, 32);
        cpe.send_raw(&run).await.unwrap();
        record_round_trip(&mut acs, &mut cpe, &jid, &format!("after-{round}")).await;
    }
    no_tls_errors(&broker);
    broker.shutdown().await;
}

#[tokio::test]
async fn thirty_three_empty_records_end_the_connection() {
    let broker = TestBroker::start().await;
    let (mut cpe, _jid) = RecordPeer::login(broker.addr(DIRECT_TLS), false, CPE).await;
    let mut bytes = empty_records(&mut cpe, 33);
    // A ping right behind the run: a broker that let the run pass answers it.
    bytes.extend(cpe.seal(CONTENT_APPLICATION_DATA, PING.as_bytes(), 0));
    cpe.send_raw(&bytes).await.unwrap();
    // rustls 0.23.46 ends such a connection with PeerMisbehaved::TooManyEmptyFragments and
    // queues no alert for it (the error bypasses its deframe-error alerts); a later rustls may
    // send one fatal alert. Either way: no XMPP answer, then the close.
    let alerts = cpe.alerts_until_close().await;
    assert!(
        matches!(alerts[..], [] | [(ALERT_FATAL, _)]),
        "alerts before the close: {alerts:?}"
    );
    counted_as_tls_errors(&broker, 1).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn an_oversized_record_ends_the_connection_with_record_overflow() {
    let broker = TestBroker::start().await;
    let (mut cpe, _jid) = RecordPeer::login(broker.addr(STARTTLS), true, CPE).await;
    // Correctly sealed, one byte of content, zero-padded to 16,701 bytes of ciphertext: only its
    // size is wrong (over 2^14 + 256, and its inner plaintext over 2^14 + 1).
    let ciphertext = 16_701;
    let padding = ciphertext - 16 - 1 - 1;
    let record = cpe.seal(CONTENT_APPLICATION_DATA, b" ", padding);
    assert_eq!(record.len() - 5, ciphertext);
    assert!(ciphertext > MAX_TLS13_CIPHERTEXT);
    // A ping right behind it: a broker that let the record pass answers it.
    let mut bytes = record;
    bytes.extend(cpe.seal(CONTENT_APPLICATION_DATA, PING.as_bytes(), 0));
    cpe.send_raw(&bytes).await.unwrap();
    assert_eq!(
        cpe.expect_fatal_alert_and_close().await,
        ALERT_RECORD_OVERFLOW
    );
    counted_as_tls_errors(&broker, 1).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn tls12_renegotiation_is_refused_with_no_renegotiation() {
    let (broker, mut acs, mut cpe, jid) = openssl_cpe(DIRECT_TLS, false, "-tls1_2").await;
    round_trip(&mut acs, &mut cpe.xmpp, &jid, "tls12").await;
    // s_client sends the renegotiation ClientHello at once.
    cpe.command('R', "RENEGOTIATING").await;
    // rustls refuses a renegotiation with a warning no_renegotiation alert; s_client treats a
    // refused renegotiation as fatal, answers with its own fatal alert and exits.
    assert!(
        cpe.exits().await,
        "s_client still running: {}",
        cpe.stderr()
    );
    let log = cpe.msg_log();
    assert_eq!(
        cpe.msg_lines(">>>", "ClientHello"),
        2,
        "the renegotiation ClientHello was sent; log: {log}"
    );
    assert_eq!(
        cpe.msg_lines("<<<", "warning no_renegotiation"),
        1,
        "the broker's alert; log: {log}\nstderr: {}",
        cpe.stderr()
    );
    counted_as_tls_errors(&broker, 1).await;
    broker.shutdown().await;
}
