//! SASL EXTERNAL's one decision (RFC 6120 section 6.4, XEP-0178 section 3): which of the
//! usernames a verified client certificate names the client logs in as, given the
//! authorization identity it sent. Whether that username is an account is the caller's
//! question (the account sources, or `[accounts.certificate] trust_ca`).

use super::Failure;

/// The username to log in as. `authzid` is the decoded `<auth>`/`<response>` payload: empty
/// means "the certificate's identity", which must then be exactly one name; otherwise a bare
/// JID at `domain` or a bare username, which must be one of `names` (normalised usernames).
///
/// # Errors
/// `NotAuthorized` when the certificate names nobody here; `InvalidAuthzid` when the authzid
/// is not one of the names, or is empty while the certificate names several (XEP-0178: the
/// client must then choose); `MalformedRequest` when it is not UTF-8.
pub fn choose_identity<'n>(
    authzid: &[u8],
    names: &'n [Box<str>],
    domain: &str,
) -> Result<&'n str, Failure> {
    let authzid = std::str::from_utf8(authzid).map_err(|_| Failure::MalformedRequest)?;
    if names.is_empty() {
        return Err(Failure::NotAuthorized);
    }
    if authzid.is_empty() {
        return match names {
            [only] => Ok(only),
            _ => Err(Failure::InvalidAuthzid),
        };
    }
    let local = match authzid.split_once('@') {
        Some((local, at)) if at.eq_ignore_ascii_case(domain) => local,
        Some(_) => return Err(Failure::InvalidAuthzid),
        None => authzid,
    };
    names
        .iter()
        .find(|name| name.eq_ignore_ascii_case(local))
        .map(|name| &**name)
        .ok_or(Failure::InvalidAuthzid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<Box<str>> {
        list.iter().map(|n| (*n).into()).collect()
    }

    #[test]
    fn empty_authzid_takes_the_only_name() {
        let one = names(&["cpe-1"]);
        assert_eq!(choose_identity(b"", &one, "example.net"), Ok("cpe-1"));
        let two = names(&["cpe-1", "cpe-2"]);
        assert_eq!(
            choose_identity(b"", &two, "example.net"),
            Err(Failure::InvalidAuthzid)
        );
        assert_eq!(
            choose_identity(b"", &[], "example.net"),
            Err(Failure::NotAuthorized)
        );
    }

    #[test]
    fn authzid_picks_one_of_the_names() {
        let two = names(&["cpe-1", "cpe-2"]);
        assert_eq!(choose_identity(b"cpe-2", &two, "example.net"), Ok("cpe-2"));
        assert_eq!(
            choose_identity(b"CPE-2@Example.net", &two, "example.net"),
            Ok("cpe-2")
        );
        for bad in [
            &b"cpe-3"[..],
            b"cpe-1@elsewhere.org",
            b"cpe-1@example.net/res",
        ] {
            assert_eq!(
                choose_identity(bad, &two, "example.net"),
                Err(Failure::InvalidAuthzid),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            choose_identity(b"\xff", &two, "example.net"),
            Err(Failure::MalformedRequest)
        );
    }
}
