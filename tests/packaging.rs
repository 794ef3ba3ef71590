//! Packaging files, checked with the tools this machine has: the systemd unit with
//! `systemd-analyze verify` and its offline security report (the binary it starts is the real one),
//! the container file's shape (no container engine runs here) and its config with
//! `crbroker check-config`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn systemd_analyze(args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .expect("systemd-analyze runs (Debian package systemd)")
}

/// The unit with its paths pointed at this build, in a temporary directory.
fn unit_for_this_build() -> (PathBuf, String) {
    let text = std::fs::read_to_string(repo("contrib/systemd/crbroker.service")).unwrap();
    let text = text
        .replace("/usr/bin/crbroker", env!("CARGO_BIN_EXE_crbroker"))
        .replace(
            "/etc/crbroker/config.toml",
            repo("config.toml").to_str().unwrap(),
        );
    let dir = std::env::temp_dir().join(format!("crbroker-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("crbroker.service");
    std::fs::write(&path, &text).unwrap();
    (path, text)
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let (path, text) = unit_for_this_build();
    let verify = systemd_analyze(&["verify", path.to_str().unwrap()]);
    let report = String::from_utf8_lossy(&verify.stderr).to_string()
        + &String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "systemd-analyze verify: {report}");
    assert!(!report.contains("crbroker.service:"), "{report}");

    let security = systemd_analyze(&["security", "--offline=true", path.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&security.stdout);
    let level: f64 = out
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for crbroker.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {out}"));
    println!("systemd-analyze security: exposure {level}");
    assert!(level <= 2.0, "exposure {level} (want 2.0 or less)\n{out}");

    // What the deployment guide promises.
    let setting = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} not set"))
            .to_string()
    };
    assert!(setting("LimitNOFILE").parse::<u64>().unwrap() >= 1_000_000);
    assert!(setting("ExecReload").contains("-HUP"));
    assert_eq!(setting("NoNewPrivileges"), "yes");
    assert_eq!(setting("ProtectSystem"), "strict");
    assert_ne!(setting("User"), "root");
    // The check-config step the unit runs before starting passes on the shipped config.
    let check = setting("ExecStartPre");
    let mut words = check.split_whitespace();
    let status = Command::new(words.next().unwrap())
        .args(words)
        .status()
        .unwrap();
    assert!(status.success(), "ExecStartPre failed: {check}");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn container_file_is_multi_stage_non_root_with_a_readiness_check() {
    let text = std::fs::read_to_string(repo("contrib/container/Containerfile")).unwrap();
    let instructions: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&&str> = instructions
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    let run_stage = &text[text.rfind("\nFROM ").unwrap()..];
    let user = run_stage
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the run stage sets USER");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "USER {user}"
    );
    assert!(
        run_stage.contains("COPY --from=build"),
        "the run stage copies only the binary"
    );
    assert!(
        !run_stage.contains("cargo "),
        "no toolchain in the run stage"
    );
    let healthcheck = run_stage
        .split("HEALTHCHECK")
        .nth(1)
        .expect("a HEALTHCHECK");
    assert!(healthcheck.contains("/readyz"), "{healthcheck}");
}

#[test]
fn container_config_is_valid() {
    // Laid out as the mounted /etc/crbroker would be: the config, tls/cert.pem, tls/key.pem and
    // accounts.txt beside it.
    let dir = std::env::temp_dir().join(format!("crbroker-container-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    let config = dir.join("config.toml");
    std::fs::copy(repo("contrib/container/config.toml"), &config).unwrap();
    crbroker::tls::create_dev_certificate(
        "xmpp.example.net",
        &dir.join("tls/cert.pem"),
        &dir.join("tls/key.pem"),
    )
    .unwrap();
    std::fs::write(
        dir.join("accounts.txt"),
        "cpe-0001 plain:a-random-password\n",
    )
    .unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_crbroker"))
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        check.status.success(),
        "check-config: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let text = std::fs::read_to_string(repo("contrib/container/config.toml")).unwrap();
    assert!(text.contains("auto_create_dev_cert = false"));
}

/// The container's HEALTHCHECK command, run as written (the port adapted) against the real
/// binary: it fails while nothing is ready and succeeds once the broker is.
#[test]
fn container_health_check_command_reports_readiness() {
    let text = std::fs::read_to_string(repo("contrib/container/Containerfile")).unwrap();
    let command = text
        .split("HEALTHCHECK")
        .nth(1)
        .and_then(|rest| rest.split("CMD ").nth(1))
        .map(|cmd| cmd.lines().next().unwrap().trim().to_string())
        .expect("a HEALTHCHECK CMD");
    assert!(command.contains("127.0.0.1:5280/readyz"), "{command}");
    // Every listener on a free port; the ops listener is the last "127.0.0.1:0" in the config.
    let config = common_config();
    let slots = config.matches("127.0.0.1:0").count();
    let ports: Vec<u16> = (0..slots)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect::<Vec<_>>()
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let mut text = config;
    for port in &ports {
        text = text.replacen("127.0.0.1:0", &format!("127.0.0.1:{port}"), 1);
    }
    let ops_port = *ports.last().unwrap();
    let check = command.replace("127.0.0.1:5280", &format!("127.0.0.1:{ops_port}"));
    let run_check = || {
        Command::new("sh")
            .arg("-c")
            .arg(&check)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("sh runs (curl: Debian package curl)")
            .success()
    };
    assert!(!run_check(), "healthy with no broker running: {check}");
    let dir = std::env::temp_dir().join(format!("crbroker-health-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_crbroker"))
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut healthy = false;
    while std::time::Instant::now() < deadline {
        if run_check() {
            healthy = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(healthy, "the health check never passed: {check}");
}

/// The test broker's config (tests/common), with its test certificate.
fn common_config() -> String {
    common::config_text(&common::TestOptions::default())
}
