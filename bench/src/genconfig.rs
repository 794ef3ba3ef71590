//! `gen-config`: the inputs of one benchmark for crbroker and for the peer servers.
//!
//! Layout written under the output directory:
//! ```text
//! cert.pem key.pem combined.pem   one self-signed ECDSA P-256 certificate for the domain, shared
//! device-ca.pem device-ca-key.pem the CA of the CPEs' certificates (SASL EXTERNAL runs)
//! crbroker/config.toml accounts.txt [derived-current.key derived-previous.key]
//! prosody/prosody.cfg.lua data/<domain>/accounts/<user>.dat   (internal_plain store)
//! ejabberd/ejabberd.yml register.erl                           (accounts registered at start)
//! ```
//! The server configurations come from the templates in `bench/peers/`.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

const CRBROKER_TEMPLATE: &str = include_str!("../peers/crbroker.toml.in");
const PROSODY_TEMPLATE: &str = include_str!("../peers/prosody.cfg.lua.in");
const EJABBERD_TEMPLATE: &str = include_str!("../peers/ejabberd.yml.in");

pub struct GenConfig {
    pub out: PathBuf,
    pub sessions: usize,
    pub domain: String,
    pub component: String,
    pub secret: String,
    pub password: String,
    /// crbroker: `[accounts.derived]` with two fresh secrets instead of accounts in the file.
    pub derived: bool,
    pub c2s_port: u16,
    pub direct_tls_port: u16,
    pub external_port: u16,
    pub component_port: u16,
}

type Result<T> = std::result::Result<T, String>;

fn write(path: &Path, contents: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    fs::write(path, contents).map_err(|e| format!("{}: {e}", path.display()))
}

/// Prosody's datamanager file-name encoding: every non-alphanumeric byte becomes %xx.
fn prosody_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02x}");
        }
    }
    out
}

impl GenConfig {
    fn fill(&self, template: &str, dir: &Path) -> String {
        template
            .replace("@DIR@", &dir.display().to_string())
            .replace("@DOMAIN@", &self.domain)
            .replace("@COMPONENT@", &self.component)
            .replace("@SECRET@", &self.secret)
            .replace("@C2S_PORT@", &self.c2s_port.to_string())
            .replace("@DIRECT_TLS_PORT@", &self.direct_tls_port.to_string())
            .replace("@EXTERNAL_PORT@", &self.external_port.to_string())
            .replace("@COMPONENT_PORT@", &self.component_port.to_string())
            .replace("@SESSIONS@", &self.sessions.to_string())
            .replace("@PASSWORD@", &self.password)
    }

    pub fn write_all(&self) -> Result<()> {
        for s in [&self.domain, &self.component, &self.secret, &self.password] {
            if s.is_empty() || s.contains(|c: char| c.is_whitespace() || "'\"\\<>&@/:".contains(c))
            {
                return Err(format!("{s:?}: use plain letters, digits, '-' and '.'"));
            }
        }
        fs::create_dir_all(&self.out).map_err(|e| format!("{}: {e}", self.out.display()))?;
        let dir =
            fs::canonicalize(&self.out).map_err(|e| format!("{}: {e}", self.out.display()))?;

        // One certificate for every server: the same TLS work for each.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| format!("key generation: {e}"))?;
        let mut params =
            rcgen::CertificateParams::new(vec![self.domain.clone(), self.component.clone()])
                .map_err(|e| format!("certificate: {e}"))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, self.domain.clone());
        // A few years of validity around today (rcgen's default runs to the year 4096, and
        // ejabberd's expiry timer cannot be set that far: its pkix server crashes).
        let year = 1970
            + (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
                / 31_556_952) as i32;
        params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
        params.not_after = rcgen::date_time_ymd(year + 5, 1, 1);
        let cert = params
            .self_signed(&key)
            .map_err(|e| format!("certificate: {e}"))?;
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        write(&dir.join("cert.pem"), cert_pem.as_bytes())?;
        write(&dir.join("key.pem"), key_pem.as_bytes())?;
        write(
            &dir.join("combined.pem"),
            format!("{cert_pem}{key_pem}").as_bytes(),
        )?;

        let (device_ca, device_ca_key) = crate::devices::generate()?;
        write(&dir.join("device-ca.pem"), device_ca.as_bytes())?;
        write(&dir.join("device-ca-key.pem"), device_ca_key.as_bytes())?;

        // crbroker
        let mut config = self.fill(CRBROKER_TEMPLATE, &dir);
        let mut accounts = String::with_capacity(self.sessions * 24);
        if self.derived {
            for name in ["derived-current", "derived-previous"] {
                let path = dir.join(format!("crbroker/{name}.key"));
                write(&path, format!("{}\n", random_hex(32)?).as_bytes())?;
                set_owner_only(&path)?;
            }
            config.push_str(DERIVED_SECTION);
            accounts.push_str("# every CPE is a derived account ([accounts.derived])\n");
        } else {
            for i in 0..self.sessions {
                let _ = writeln!(
                    accounts,
                    "{} plain:{}",
                    crate::cpe::username(i),
                    self.password
                );
            }
        }
        write(&dir.join("crbroker/config.toml"), config.as_bytes())?;
        write(&dir.join("crbroker/accounts.txt"), accounts.as_bytes())?;

        // Prosody: config and one internal_plain account file per user.
        write(
            &dir.join("prosody/prosody.cfg.lua"),
            self.fill(PROSODY_TEMPLATE, &dir).as_bytes(),
        )?;
        let accounts_dir = dir
            .join("prosody/data")
            .join(prosody_encode(&self.domain))
            .join("accounts");
        fs::create_dir_all(&accounts_dir)
            .map_err(|e| format!("{}: {e}", accounts_dir.display()))?;
        let record = format!(
            "return {{\n\t[\"password\"] = \"{}\";\n}};\n",
            self.password
        );
        for i in 0..self.sessions {
            let path =
                accounts_dir.join(format!("{}.dat", prosody_encode(&crate::cpe::username(i))));
            let mut f = fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            f.write_all(record.as_bytes())
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }

        // ejabberd: config, and the registration run inside the node once it has started.
        write(
            &dir.join("ejabberd/ejabberd.yml"),
            self.fill(EJABBERD_TEMPLATE, &dir).as_bytes(),
        )?;
        write(
            &dir.join("ejabberd/register.erl"),
            self.fill(EJABBERD_REGISTER, &dir).as_bytes(),
        )?;
        Ok(())
    }
}

/// Appended to crbroker's configuration by `--derived`.
const DERIVED_SECTION: &str = r#"
[accounts.derived]
secrets = [
  { id = "current", file = "derived-current.key" },
  { id = "previous", file = "derived-previous.key" },
]
username_prefixes = ["cpe-"]
"#;

/// `bytes` random bytes from the OS, in hex.
fn random_hex(bytes: usize) -> Result<String> {
    use std::io::Read as _;
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(buf.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

fn set_owner_only(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Erlang expression run by `erl -eval` after ejabberd has started: registers the CPE accounts
/// through ejabberd's own API (internal auth, Mnesia), then writes a marker file.
const EJABBERD_REGISTER: &str = r#"
Host = <<"@DOMAIN@">>,
Pass = <<"@PASSWORD@">>,
Started = erlang:monotonic_time(millisecond),
Register = fun(I) ->
    User = iolist_to_binary(io_lib:format("cpe-~6..0B", [I])),
    case ejabberd_auth:try_register(User, Host, Pass) of
        ok -> ok;
        {error, exists} -> ok;
        Other -> erlang:error({register_failed, User, Other})
    end
end,
lists:foreach(Register, lists:seq(0, @SESSIONS@ - 1)),
Elapsed = erlang:monotonic_time(millisecond) - Started,
ok = file:write_file("@DIR@/ejabberd/registered", io_lib:format("~p accounts in ~p ms~n", [@SESSIONS@, Elapsed])).
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prosody_names() {
        assert_eq!(prosody_encode("example.net"), "example%2enet");
        assert_eq!(prosody_encode("cpe-000001"), "cpe%2d000001");
    }
}
