//! The JSON API under /v1 over real HTTP (reqwest) against the real broker, with real XMPP peers:
//! connection requests through the API's ACS entity, sessions, kick, reload, tokens, errors, and
//! the OpenAPI document checked against the routes.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

fn url(broker: &TestBroker, path: &str) -> String {
    format!("http://{}{path}", broker.ops)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn post_cr(broker: &TestBroker, body: Value) -> (StatusCode, Value) {
    let response = client()
        .post(url(broker, "/v1/connection-requests"))
        .bearer_auth(API_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

async fn get(broker: &TestBroker, path: &str) -> (StatusCode, Value) {
    let response = client()
        .get(url(broker, path))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn every_route_but_the_document_needs_a_known_token() {
    let broker = TestBroker::start().await;
    for token in [None, Some("wrong-token")] {
        let mut request = client().get(url(&broker, "/v1/sessions"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers().get("www-authenticate").unwrap(),
            "Bearer"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["status"], 401);
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bearer token"));
    }
    let response = client()
        .post(url(&broker, "/v1/connection-requests"))
        .json(&json!({"to": "cpe-0001@example.net", "username": "u", "password": "p"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = client()
        .get(url(&broker, "/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// A request through the API reaches the CPE from `api.example.net` with the credentials, and
/// the CPE's answer comes back: result, then the CPE's own error; offline and timeout are the
/// broker's answers, told apart by `by` on the error.
#[tokio::test]
async fn connection_requests_through_the_api_get_exactly_their_answer() {
    let broker = TestBroker::start_with(TestOptions {
        request_timeout_ms: 1500,
        ..TestOptions::default()
    })
    .await;
    let (mut cpe, jid) = broker.cpe("cpe-0001").await;
    let bare = "cpe-0001@example.net";

    // result
    let (api, seen) = tokio::join!(
        post_cr(
            &broker,
            json!({"to": bare, "username": "acs-user", "password": "acs-pw"})
        ),
        async {
            let request = cpe.element().await;
            let id = request.attr("id").unwrap().to_string();
            answer_result(&mut cpe, &id).await;
            request
        }
    );
    assert_eq!(seen.attr("from"), Some("api.example.net"));
    let conn_req = seen
        .child("connectionRequest", crbroker::xml::ns::CONN_REQ)
        .expect("a connectionRequest");
    assert_eq!(
        conn_req
            .child("username", crbroker::xml::ns::CONN_REQ)
            .unwrap()
            .text(),
        "acs-user"
    );
    assert_eq!(api.0, StatusCode::OK, "{}", api.1);
    assert_eq!(api.1["outcome"], "result");
    assert_eq!(api.1["jid"], jid.as_str());
    assert!(api.1["latency_ms"].as_f64().unwrap() >= 0.0);

    // the CPE's own error
    let (api, ()) = tokio::join!(
        post_cr(
            &broker,
            json!({"to": jid, "username": "u", "password": "bad"})
        ),
        async {
            let request = cpe.element().await;
            let id = request.attr("id").unwrap();
            cpe.send(&format!("<iq type='error' id='{id}' to='api.example.net'><error type='cancel'><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")).await;
        }
    );
    assert_eq!(api.0, StatusCode::BAD_GATEWAY, "{}", api.1);
    assert_eq!(api.1["outcome"], "cpe_error");
    assert_eq!(api.1["condition"], "not-authorized");

    // offline: the broker answers at once
    let (status, body) = post_cr(
        &broker,
        json!({"to": "cpe-0002@example.net/cwmp", "username": "u", "password": "p"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["outcome"], "offline");
    assert_eq!(body["condition"], "service-unavailable");

    // the CPE stays silent: the broker's deadline answers (remote-server-timeout)
    let (status, body) = post_cr(
        &broker,
        json!({"to": bare, "username": "u", "password": "p"}),
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["outcome"], "timeout");
    let _ignored = cpe.element().await;

    // the caller's own shorter wait
    let (status, body) = post_cr(
        &broker,
        json!({"to": bare, "username": "u", "password": "p", "timeout_ms": 100}),
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(body["latency_ms"].as_f64().unwrap() < 1000.0, "{body}");
    let _ignored = cpe.element().await;

    assert_eq!(broker.stat("requests_answered_result"), 1);
    assert_eq!(broker.stat("requests_answered_error"), 1);
    assert_eq!(broker.stat("requests_offline"), 1);
}

#[tokio::test]
async fn bad_input_gets_a_json_error_naming_the_field() {
    let broker = TestBroker::start().await;
    let cases = [
        (json!({"username": "u", "password": "p"}), "to"),
        (
            json!({"to": "cpe-0001@example.net", "password": "p"}),
            "username",
        ),
        (
            json!({"to": "not a jid@@", "username": "u", "password": "p"}),
            "to",
        ),
        (
            json!({"to": "cpe-0001@elsewhere.org", "username": "u", "password": "p"}),
            "to",
        ),
        (
            json!({"to": "cpe-0001@example.net", "username": "u", "password": "p", "timeout_ms": 0}),
            "timeout_ms",
        ),
        (
            json!({"to": "cpe-0001@example.net", "username": "u".repeat(300), "password": "p"}),
            "username",
        ),
        (
            json!({"to": "cpe-0001@example.net", "username": "u", "password": "p", "extra": 1}),
            "extra",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = post_cr(&broker, body.clone()).await;
        assert!(status.is_client_error(), "{body} -> {status} {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{body} -> {message}");
    }
    let (status, answer) = get(&broker, "/v1/sessions?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("limit"));
    let (status, answer) = get(&broker, "/v1/sessions/no-at-sign").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
}

/// Who is online, page by page; one CPE's sessions with their TLS and SASL facts; closing a
/// session answers its pending request exactly once.
#[tokio::test]
async fn sessions_are_listed_shown_and_closed() {
    let broker = TestBroker::start().await;
    let (_a, _) = broker.cpe("cpe-0001").await;
    let (mut b, b_jid) = broker.cpe("cpe-0002").await;
    let (_c, _) = broker.cpe("cpe-0003").await;

    let (status, one) = get(&broker, "/v1/sessions/cpe-0002@example.net").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["online"], true);
    let session = &one["sessions"][0];
    assert_eq!(session["jid"], b_jid.as_str());
    assert_eq!(session["role"], "cpe");
    assert_eq!(session["sasl_mechanism"], "PLAIN");
    assert_eq!(session["tls_version"], "TLSv1_3");
    assert!(session["cipher_suite"]
        .as_str()
        .unwrap()
        .starts_with("TLS13_"));
    assert!(session["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let (_, nobody) = get(&broker, "/v1/sessions/cpe-0009@example.net").await;
    assert_eq!(nobody["online"], false);

    // Pages of one account each, in order, until no cursor.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/sessions?limit=1&cursor={c}"),
            None => "/v1/sessions?limit=1".to_string(),
        };
        let (status, page) = get(&broker, &path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["counts"]["cpe"], 3);
        for s in page["sessions"].as_array().unwrap() {
            seen.push(s["jid"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        ["cpe-0001", "cpe-0002", "cpe-0003"].map(|u| format!("{u}@example.net/cwmp"))
    );

    // A request pending on B, then the operator closes B.
    let mut acs = broker.raw_acs().await;
    acs.send(&connection_request(
        "k1",
        &b_jid,
        Some(COMPONENT_DOMAIN),
        "u",
        "p",
    ))
    .await;
    let _request = b.element().await;
    let response = client()
        .delete(url(&broker, "/v1/sessions/cpe-0002@example.net"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let closed: Value = response.json().await.unwrap();
    assert_eq!(closed["closed"], 1);
    b.expect_stream_error("policy-violation").await;
    let answer = acs.element().await;
    assert_eq!(answer.attr("id"), Some("k1"));
    assert_eq!(
        error_condition(&answer).as_deref(),
        Some("service-unavailable")
    );
    eventually("session gone", || broker.stat("sessions_online") == 3).await;
    let (_, after) = get(&broker, "/v1/sessions/cpe-0002@example.net").await;
    assert_eq!(after["online"], false);
}

/// The document lists exactly the routes, and each listed path and method is served (not 404 or
/// 405) with the documented statuses.
#[tokio::test]
async fn openapi_document_matches_the_routes() {
    let broker = TestBroker::start().await;
    let doc: Value = client()
        .get(url(&broker, "/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    let mut listed: Vec<String> = Vec::new();
    for (path, methods) in paths {
        for (method, operation) in methods.as_object().unwrap() {
            listed.push(format!("{} {path}", method.to_uppercase()));
            let concrete = path
                .replace("{jid}", "nobody@example.net")
                .replace("{username}", "nobody");
            let request = client()
                .request(
                    method.to_uppercase().parse().unwrap(),
                    url(&broker, &concrete),
                )
                .bearer_auth(API_TOKEN);
            let request = if method == "post" && path.ends_with("connection-requests") {
                request.json(&json!({"to": "nobody@example.net", "username": "u", "password": "p"}))
            } else {
                request
            };
            let status = request.send().await.unwrap().status();
            let documented = operation["responses"]
                .as_object()
                .unwrap()
                .contains_key(status.as_str());
            assert!(
                documented,
                "{method} {path} answered {status}, not among its documented responses"
            );
        }
    }
    listed.sort();
    assert_eq!(
        listed,
        [
            "DELETE /v1/accounts/{username}",
            "DELETE /v1/sessions/{jid}",
            "GET /v1/accounts/{username}",
            "GET /v1/sessions",
            "GET /v1/sessions/{jid}",
            "POST /v1/connection-requests",
            "POST /v1/reload",
            "PUT /v1/accounts/{username}",
        ]
    );
    // And nothing undocumented answers under /v1.
    let response = client()
        .get(url(&broker, "/v1/nothing-here"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

/// `POST /v1/reload` runs the same reloader as SIGHUP: on an unchanged file it reports what it
/// compared; a broken file is refused with 422 and the old configuration stays.
#[tokio::test]
async fn reload_through_the_api() {
    let dir = pki().dir.join("api-reload");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("crbroker.toml");
    let text = config_text(&TestOptions::default());
    std::fs::write(&path, &text).unwrap();
    let broker = TestBroker::start_file(&path).await;
    let post = || {
        client()
            .post(url(&broker, "/v1/reload"))
            .bearer_auth(API_TOKEN)
            .send()
    };
    let response = post().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let report: Value = response.json().await.unwrap();
    assert!(report["changes"].is_object(), "{report}");
    std::fs::write(&path, format!("{text}\nfrobnicate = 1\n")).unwrap();
    let response = post().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let error: Value = response.json().await.unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("frobnicate"), "{message}");
    // Still serving.
    let (_cpe, _) = broker.cpe("cpe-0001").await;
}

/// Without `[accounts.postgres]` the accounts come from the file: the account routes answer 409
/// and say how to make them writable; nothing else changes.
#[tokio::test]
async fn accounts_api_with_the_file_store_is_read_only() {
    let broker = TestBroker::start().await;
    for method in ["GET", "PUT", "DELETE"] {
        let response = client()
            .request(
                method.parse().unwrap(),
                url(&broker, "/v1/accounts/cpe-0001"),
            )
            .bearer_auth(API_TOKEN)
            .json(&json!({"password": "new-password"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CONFLICT, "{method}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["error"]["message"],
            "the account store is read-only: accounts come from the accounts file; \
             configure [accounts.postgres] to manage accounts through the API",
            "{method}"
        );
    }
    // The file account is untouched.
    let (_cpe, jid) = broker.cpe("cpe-0001").await;
    assert_eq!(jid, "cpe-0001@example.net/cwmp");
}
