//! A real PostgreSQL for the tests: a throwaway cluster (initdb into a temporary directory, a
//! free loopback port, its unix socket inside that directory) that the test can stop and start
//! again, killed when dropped. `CRBROKER_TEST_PG=<url>` uses an existing server instead (a new
//! schema per test); the outage test always starts its own cluster. No PostgreSQL: the test
//! fails saying what to install.

use super::binary::free_ports;
use super::{config_text, pki, RawPeer, TestBroker, TestOptions, API_TOKEN, IO_TIMEOUT, STARTTLS};
use crbroker::config::Config;
use reqwest::StatusCode;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const BIN_DIRS: &[&str] = &["/usr/local/bin", "/usr/lib/postgresql/15/bin", "/usr/bin"];
const MISSING: &str =
    "PostgreSQL server binaries not found (initdb, postgres): apt-get install postgresql \
    (or set CRBROKER_TEST_PG to the URL of a server the tests may create databases on)";

static NEXT: AtomicUsize = AtomicUsize::new(0);

pub struct TestPg {
    url: String,
    cluster: Option<Cluster>,
}

/// A cluster this test started.
struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    server: Option<Child>,
}

impl TestPg {
    /// `CRBROKER_TEST_PG`'s server (a fresh database on it), or a cluster of our own.
    pub async fn start() -> TestPg {
        match std::env::var("CRBROKER_TEST_PG") {
            Ok(url) if !url.is_empty() => TestPg::on_server(&url).await,
            _ => TestPg::own().await,
        }
    }

    /// Always a cluster of our own (tests that stop and start the database).
    pub async fn own() -> TestPg {
        let bin = BIN_DIRS
            .iter()
            .map(PathBuf::from)
            .find(|dir| dir.join("initdb").exists() && dir.join("postgres").exists())
            .unwrap_or_else(|| panic!("{MISSING}"));
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("crbroker-pg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // initdb and postgres refuse to run as root: run them as the postgres user then.
        let as_postgres = is_root();
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(status.success(), "chown {} to postgres", dir.display());
        }
        let mut initdb = command(&bin.join("initdb"), as_postgres);
        initdb
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-A", "trust", "-U", "crbroker", "--no-sync", "-E", "UTF8"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let output = initdb.output().unwrap_or_else(|e| panic!("{MISSING}: {e}"));
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let port = free_ports(1)[0];
        let mut cluster = Cluster {
            dir,
            bin,
            port,
            as_postgres,
            server: None,
        };
        cluster.start();
        let url = format!("postgresql://crbroker@127.0.0.1:{port}/postgres");
        wait_ready(&url).await;
        TestPg {
            url,
            cluster: Some(cluster),
        }
    }

    /// A fresh schema on the server (first on the search path of every connection to the URL
    /// handed out): needs only the CREATE privilege on the database, not CREATEDB.
    async fn on_server(url: &str) -> TestPg {
        let schema = format!(
            "crbroker_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let client = connect(url)
            .await
            .unwrap_or_else(|e| panic!("CRBROKER_TEST_PG={url}: cannot connect: {e}"));
        client
            .batch_execute(&format!(
                "drop schema if exists {schema} cascade; create schema {schema}"
            ))
            .await
            .expect("create the test schema");
        let separator = if url.contains('?') { '&' } else { '?' };
        TestPg {
            url: format!("{url}{separator}options=-csearch_path%3D{schema}"),
            cluster: None,
        }
    }

    /// The URL of the test's database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A connection to the test's database, for statements the test runs itself.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url)
            .await
            .expect("connect to the test database")
    }

    /// Run one SQL statement on the test's database; how many rows it touched.
    pub async fn sql(&self, statement: &str) -> u64 {
        self.client()
            .await
            .execute(statement, &[])
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"))
    }

    /// `crbroker db migrate` as a library call.
    pub async fn migrate(&self) -> Vec<i32> {
        let mut client = self.client().await;
        crbroker::auth::postgres::migrate(&mut client)
            .await
            .expect("migrate")
    }

    /// Stop the server (immediate shutdown: like a crash, connections are cut).
    pub fn stop(&mut self) {
        self.cluster
            .as_mut()
            .expect("stop() needs a cluster of the test's own (TestPg::own)")
            .stop();
    }

    /// Start the stopped server again (same data and port) and wait until it answers.
    pub async fn restart(&mut self) {
        self.cluster
            .as_mut()
            .expect("restart() needs a cluster of the test's own (TestPg::own)")
            .start();
        wait_ready(&self.url).await;
    }
}

impl Cluster {
    fn start(&mut self) {
        let mut postgres = command(&self.bin.join("postgres"), self.as_postgres);
        postgres
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-c", "listen_addresses=127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.dir)
            .args(["-c", "fsync=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=100"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.server = Some(
            postgres
                .spawn()
                .unwrap_or_else(|e| panic!("{MISSING}: {e}")),
        );
    }

    fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            // SIGQUIT: immediate shutdown; the postmaster takes its backends down with it.
            let _ = Command::new("kill")
                .args(["-QUIT", &server.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while server.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `program` run directly, or as the postgres user (setpriv execs it: its pid is the server's).
fn command(program: &std::path::Path, as_postgres: bool) -> Command {
    if as_postgres {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=postgres", "--regid=postgres", "--clear-groups"])
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

pub async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn wait_ready(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match connect(url).await {
            Ok(client) => {
                if client.simple_query("select 1").await.is_ok() {
                    return;
                }
            }
            Err(e) if Instant::now() > deadline => panic!("PostgreSQL did not start: {e}"),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Brokers on the test's database, the account API, logins.

pub fn config(pg: &TestPg, options: &TestOptions, extra: &str) -> Config {
    let text = format!(
        "{}\n[accounts.postgres]\nurl = \"{}\"\n{extra}\n",
        config_text(options),
        pg.url()
    );
    Config::parse(&text, "test-config.toml", pki().dir.clone()).expect("test config")
}

/// A broker on `pg` whose polling safety net is slow (30 s): changes arrive by notification.
pub async fn broker_on(pg: &TestPg) -> TestBroker {
    TestBroker::start_config(config(
        pg,
        &TestOptions::default(),
        "poll_interval_secs = 30",
    ))
    .await
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

pub async fn call(
    broker: &TestBroker,
    method: &str,
    username: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    api(broker, method, &format!("/v1/accounts/{username}"), body).await
}

pub async fn api(
    broker: &TestBroker,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = http()
        .request(
            method.parse().unwrap(),
            format!("http://{}{path}", broker.ops),
        )
        .bearer_auth(API_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The first column of what `query` returns.
pub async fn column<T>(client: &tokio_postgres::Client, query: &str) -> Vec<T>
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    let rows = client.query(query, &[]).await.unwrap();
    rows.iter().map(|row| row.get(0)).collect()
}

/// A migrated database of the test's and a broker on it.
pub async fn migrated() -> (TestPg, TestBroker) {
    let pg = TestPg::start().await;
    pg.migrate().await;
    let broker = broker_on(&pg).await;
    (pg, broker)
}

pub async fn put(broker: &TestBroker, username: &str, body: Value) -> (StatusCode, Value) {
    call(broker, "PUT", username, Some(body)).await
}

/// The SASL failure condition of a PLAIN login, None when it succeeds.
pub async fn refusal(broker: &TestBroker, user: &str, password: &str) -> Option<String> {
    try_login(broker, user, password).await.err()
}

/// A PLAIN login attempt on the STARTTLS listener: the bound JID, or the SASL failure condition.
pub async fn try_login(broker: &TestBroker, user: &str, password: &str) -> Result<RawPeer, String> {
    let mut peer = RawPeer::tcp(broker.addr(STARTTLS)).await.starttls().await;
    peer.auth_plain(user, password).await?;
    peer.bind(Some("cwmp")).await;
    Ok(peer)
}

/// Retry a login until it gives `wanted` (Ok = logged in); returns how long that took.
pub async fn login_until(
    broker: &TestBroker,
    user: &str,
    password: &str,
    wanted: Result<(), &str>,
) -> Duration {
    let started = Instant::now();
    loop {
        let got = try_login(broker, user, password).await.map(drop);
        if got.as_ref().map(|_| ()).map_err(String::as_str) == wanted {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < IO_TIMEOUT,
            "{user}: still {got:?}, waiting for {wanted:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
