//! `openssl s_client` as a TLS peer: a child process driven through its stdin/stdout, for its
//! interactive KeyUpdate (`k`, `K`) and renegotiation (`R`) commands, with its protocol-message
//! log (`-msg -msgfile`) to read what crossed the wire.

use super::tls_peer::TextPeer;
use super::*;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

type ChildIo = tokio::io::Join<ChildStdout, ChildStdin>;

/// `openssl s_client` driven through its stdin/stdout. Its stderr (command echoes such as
/// KEYUPDATE, errors) is collected in the background; `-msg` goes to a file.
pub struct OpensslPeer {
    pub xmpp: TextPeer<ChildIo>,
    child: Child,
    stderr: Arc<Mutex<String>>,
    msg_log: PathBuf,
}

impl OpensslPeer {
    /// Connect to `addr` (with `-starttls xmpp` when `starttls`), verifying the broker's
    /// certificate against the test CA; `extra` adds options such as `-tls1_3`.
    pub async fn connect(addr: std::net::SocketAddr, starttls: bool, extra: &[&str]) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let msg_log = pki().dir.join(format!(
            "s_client-{}.msg",
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let ca = pki().dir.join("ca.pem");
        let mut command = Command::new("openssl");
        command
            .arg("s_client")
            .args(["-connect", &addr.to_string(), "-servername", DOMAIN])
            .args(["-verify_hostname", DOMAIN, "-verify_return_error"])
            .arg("-CAfile")
            .arg(&ca)
            .arg("-msg")
            .arg("-msgfile")
            .arg(&msg_log)
            .args(extra);
        if starttls {
            command.args(["-starttls", "xmpp", "-xmpphost", DOMAIN]);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("openssl s_client starts (Debian package openssl, /usr/bin/openssl)");
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut errors = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        tokio::spawn(async move {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = errors.read(&mut chunk).await {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        OpensslPeer {
            xmpp: TextPeer::new(tokio::io::join(stdout, stdin)),
            child,
            stderr,
            msg_log,
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The TLS messages of the `-msg` log, one a line (`>>>` sent, `<<<` received), without
    /// record headers and hex dumps.
    pub fn msg_log(&self) -> String {
        let log = std::fs::read_to_string(&self.msg_log).unwrap_or_default();
        log.lines()
            .filter(|l| {
                (l.starts_with(">>>") || l.starts_with("<<<")) && !l.contains("RecordHeader")
            })
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// Messages of the `-msg` log in direction `dir` (">>>" or "<<<") that contain `what`.
    pub fn msg_lines(&self, dir: &str, what: &str) -> usize {
        self.msg_log()
            .lines()
            .filter(|l| l.starts_with(dir) && l.contains(what))
            .count()
    }

    /// Type an interactive command (`k`, `K`, `R`) on a line of its own and wait until s_client
    /// has read it (it echoes `echo` on stderr), so that no later input shares its read.
    pub async fn command(&mut self, letter: char, echo: &str) {
        let before = self.stderr().matches(echo).count();
        self.xmpp.send(&format!("{letter}\n")).await;
        let stderr = self.stderr.clone();
        eventually(&format!("s_client echoes {echo}"), || {
            stderr.lock().unwrap().matches(echo).count() > before
        })
        .await;
    }

    /// True when s_client exits within the timeout.
    pub async fn exits(&mut self) -> bool {
        tokio::time::timeout(IO_TIMEOUT, self.child.wait())
            .await
            .is_ok()
    }
}
