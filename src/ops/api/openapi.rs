//! `GET /v1/openapi.json`: the OpenAPI 3.0 description of the `/v1` routes (no token needed).
//! A test (tests/api.rs) reads it and calls every path and method it lists.

use axum::Json;

pub async fn document() -> Json<serde_json::Value> {
    Json(spec())
}

fn error_response(description: &str) -> serde_json::Value {
    serde_json::json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

pub fn spec() -> serde_json::Value {
    let jid_param = serde_json::json!({
        "name": "jid", "in": "path", "required": true,
        "description": "A CPE's JID: bare (every session of the account) or full (one session).",
        "schema": {"type": "string"}
    });
    let username_param = serde_json::json!({
        "name": "username", "in": "path", "required": true,
        "description": "The account's username (the local part of its JID; ASCII case-insensitive).",
        "schema": {"type": "string", "maxLength": 1023}
    });
    serde_json::json!({
        "openapi": "3.0.3",
        "info": {
            "title": "crbroker API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Connection requests, sessions, reload and accounts (PostgreSQL store) of a running crbroker. \
                Bearer token from [ops] api_tokens / api_token_file."
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/connection-requests": {
                "post": {
                    "summary": "Send one connection request to a CPE and wait for its one answer",
                    "requestBody": {"required": true, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/ConnectionRequest"}}}},
                    "responses": {
                        "200": {"description": "The CPE answered result", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Answer"}}}},
                        "502": {"description": "The CPE answered with an error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Answer"}}}},
                        "404": {"description": "No session for that JID (offline)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Answer"}}}},
                        "504": {"description": "The CPE did not answer in time", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Answer"}}}},
                        "429": {"description": "Too many requests pending (overload)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Answer"}}}},
                        "503": {"description": "The CPE's session ended while the request was pending", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Answer"}}}},
                        "400": error_response("A field is missing or invalid (the message names it)"),
                        "401": error_response("Missing or unknown token")
                    }
                }
            },
            "/v1/sessions": {
                "get": {
                    "summary": "List client sessions, a page at a time, with counts by role",
                    "parameters": [
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}, "description": "next_cursor of the previous page"}
                    ],
                    "responses": {
                        "200": {"description": "One page", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Page"}}}},
                        "400": error_response("Bad limit or cursor"),
                        "401": error_response("Missing or unknown token")
                    }
                }
            },
            "/v1/sessions/{jid}": {
                "get": {
                    "summary": "Is this CPE online? Its sessions",
                    "parameters": [jid_param.clone()],
                    "responses": {
                        "200": {"description": "Online or not", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Presence"}}}},
                        "400": error_response("Not a client JID"),
                        "401": error_response("Missing or unknown token")
                    }
                },
                "delete": {
                    "summary": "Close the session(s) with <policy-violation/>; pending requests are answered",
                    "parameters": [jid_param],
                    "responses": {
                        "200": {"description": "How many sessions were closed", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Closed"}}}},
                        "400": error_response("Not a client JID"),
                        "401": error_response("Missing or unknown token")
                    }
                }
            },
            "/v1/accounts/{username}": {
                "get": {
                    "summary": "An account of the PostgreSQL store (never its secret)",
                    "parameters": [username_param.clone()],
                    "responses": {
                        "200": {"description": "The account", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Account"}}}},
                        "404": error_response("No such account"),
                        "409": error_response("No [accounts.postgres]: the accounts file is read-only"),
                        "503": error_response("The account database is unavailable"),
                        "400": error_response("Not a valid username"),
                        "401": error_response("Missing or unknown token")
                    }
                },
                "put": {
                    "summary": "Create or update an account; every broker on the database applies it (change feed)",
                    "parameters": [username_param.clone()],
                    "requestBody": {"required": true, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/AccountWrite"}}}},
                    "responses": {
                        "201": {"description": "Created", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Account"}}}},
                        "200": {"description": "Updated", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Account"}}}},
                        "409": error_response("No [accounts.postgres]: the accounts file is read-only"),
                        "503": error_response("The account database is unavailable"),
                        "400": error_response("A field is missing or invalid (the message names it)"),
                        "401": error_response("Missing or unknown token")
                    }
                },
                "delete": {
                    "summary": "Delete an account; its sessions on every broker are closed (<not-authorized/>), pending requests answered",
                    "parameters": [username_param],
                    "responses": {
                        "204": {"description": "Deleted"},
                        "404": error_response("No such account"),
                        "409": error_response("No [accounts.postgres]: the accounts file is read-only"),
                        "503": error_response("The account database is unavailable"),
                        "400": error_response("Not a valid username"),
                        "401": error_response("Missing or unknown token")
                    }
                }
            },
            "/v1/reload": {
                "post": {
                    "summary": "Reload the configuration (what SIGHUP does); says what changed",
                    "responses": {
                        "200": {"description": "What changed", "content": {"application/json": {"schema": {"type": "object"}}}},
                        "422": error_response("The new configuration is invalid; the old one stays whole"),
                        "401": error_response("Missing or unknown token")
                    }
                }
            }
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "properties": {"status": {"type": "integer"}, "message": {"type": "string"}}}}},
                "ConnectionRequest": {"type": "object", "required": ["to", "username", "password"], "properties": {
                    "to": {"type": "string", "description": "The CPE's JID, bare or full"},
                    "username": {"type": "string", "maxLength": 256},
                    "password": {"type": "string", "maxLength": 256},
                    "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 60000}}},
                "Answer": {"type": "object", "required": ["outcome", "latency_ms"], "properties": {
                    "outcome": {"type": "string", "enum": ["result", "cpe_error", "offline", "timeout", "overload", "cpe_gone"]},
                    "jid": {"type": "string", "nullable": true},
                    "condition": {"type": "string", "nullable": true},
                    "text": {"type": "string", "nullable": true},
                    "latency_ms": {"type": "number"}}},
                "Session": {"type": "object", "properties": {
                    "jid": {"type": "string"}, "role": {"type": "string", "enum": ["cpe", "acs_account", "component"]},
                    "since": {"type": "integer", "description": "Unix seconds"},
                    "peer": {"type": "string", "nullable": true},
                    "tls_version": {"type": "string", "nullable": true},
                    "cipher_suite": {"type": "string", "nullable": true},
                    "sasl_mechanism": {"type": "string", "nullable": true},
                    "requests_pending": {"type": "integer"}}},
                "Presence": {"type": "object", "properties": {
                    "jid": {"type": "string"}, "online": {"type": "boolean"},
                    "sessions": {"type": "array", "items": {"$ref": "#/components/schemas/Session"}}}},
                "Page": {"type": "object", "properties": {
                    "sessions": {"type": "array", "items": {"$ref": "#/components/schemas/Session"}},
                    "next_cursor": {"type": "string"},
                    "counts": {"type": "object", "properties": {"cpe": {"type": "integer"}, "acs_account": {"type": "integer"}, "component": {"type": "integer"}}}}},
    "Account": {"type": "object", "required": ["username", "role", "enabled", "kind", "updated_at"], "properties": {
                    "username": {"type": "string"},
                    "role": {"type": "string", "enum": ["cpe", "acs"]},
                    "enabled": {"type": "boolean"},
                    "kind": {"type": "string", "enum": ["plain", "scram"], "description": "How the credential is stored"},
                    "updated_at": {"type": "string", "format": "date-time"}}},
                "AccountWrite": {"type": "object", "description": "Exactly one of password and credential. role and enabled keep their stored values (new accounts: cpe, true) when absent.", "properties": {
                    "password": {"type": "string", "maxLength": 1024, "description": "Stored as SCRAM (PBKDF2, 4096 iterations)"},
                    "credential": {"type": "string", "description": "plain:PASSWORD or scram:... as in the accounts file (crbroker hash-password)"},
                    "role": {"type": "string", "enum": ["cpe", "acs"]},
                    "enabled": {"type": "boolean"}}},
                                "Closed": {"type": "object", "properties": {"jid": {"type": "string"}, "closed": {"type": "integer"}}}
            }
        }
    })
}
