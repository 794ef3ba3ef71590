//! Operations: what an operator (and the tests) can read about the running broker. `metrics`
//! holds the atomics the hot path bumps; `exposition` turns them into the Prometheus text format
//! at scrape time; `process` reads /proc/self; `http` is the ops listener (`/metrics`,
//! `/healthz`, `/readyz`) that serves them; `api` is the JSON API under `/v1` (connection
//! requests, sessions, reload) on the same listener.

pub mod api;
pub mod exposition;
pub mod http;
pub mod metrics;
pub mod process;
