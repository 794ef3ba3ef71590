//! JID parsing and normalisation (RFC 7622, simplified).
//!
//! The broker compares JIDs as routing keys. Localparts and domains are case-folded to ASCII
//! lowercase (CPE usernames and ISP domains are ASCII in practice); resources are kept verbatim.
//! Full PRECIS profiles are out of scope: a JID with characters the broker cannot normalise is
//! refused (`jid-malformed`), never guessed at.

use std::borrow::Cow;

const MAX_PART: usize = 1023;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JidRef<'a> {
    pub local: Option<&'a str>,
    pub domain: &'a str,
    pub resource: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed JID")]
pub struct JidMalformed;

impl<'a> JidRef<'a> {
    pub fn parse(s: &'a str) -> Result<JidRef<'a>, JidMalformed> {
        let (rest, resource) = match s.split_once('/') {
            Some((rest, resource)) => (rest, Some(resource)),
            None => (s, None),
        };
        let (local, domain) = match rest.split_once('@') {
            Some((local, domain)) => (Some(local), domain),
            None => (None, rest),
        };
        if let Some(local) = local {
            if !is_valid_localpart(local) {
                return Err(JidMalformed);
            }
        }
        if domain.is_empty()
            || domain.len() > MAX_PART
            || !domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return Err(JidMalformed);
        }
        if let Some(resource) = resource {
            if resource.is_empty()
                || resource.len() > MAX_PART
                || resource.chars().any(|c| c.is_control())
            {
                return Err(JidMalformed);
            }
        }
        Ok(JidRef {
            local,
            domain,
            resource,
        })
    }

    /// `local@domain` (or `domain`), case-folded.
    pub fn bare(&self) -> Cow<'a, str> {
        match self.local {
            Some(local) => Cow::Owned(format!(
                "{}@{}",
                local.to_ascii_lowercase(),
                self.domain.to_ascii_lowercase()
            )),
            None => lower(self.domain),
        }
    }

    /// The normalised full JID (`local@domain/resource`), or the bare form when there is no resource.
    pub fn normalized(&self) -> String {
        let mut out = self.bare().into_owned();
        if let Some(resource) = self.resource {
            out.push('/');
            out.push_str(resource);
        }
        out
    }

    pub fn domain_is(&self, domain: &str) -> bool {
        self.domain.eq_ignore_ascii_case(domain)
    }
}

/// Whether `s` is already in normalised form (so lookups need no allocation).
pub fn lower(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

pub fn is_valid_localpart(local: &str) -> bool {
    !local.is_empty()
        && local.len() <= MAX_PART
        && !local.chars().any(|c| {
            c.is_whitespace()
                || c.is_control()
                || matches!(c, '"' | '&' | '\'' | '/' | ':' | '<' | '>' | '@')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        let jid = JidRef::parse("CPE-1@Example.NET/cwmp").unwrap();
        assert_eq!(jid.local, Some("CPE-1"));
        assert_eq!(jid.bare(), "cpe-1@example.net");
        assert_eq!(jid.normalized(), "cpe-1@example.net/cwmp");
        let domain_only = JidRef::parse("acs.example.net").unwrap();
        assert_eq!(domain_only.local, None);
        assert_eq!(domain_only.normalized(), "acs.example.net");
        assert_eq!(
            JidRef::parse("a@b/c/d").unwrap().resource,
            Some("c/d"),
            "resource may contain a slash"
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "@example.net",
            "a@",
            "a@b/",
            "a b@c",
            "a@b c",
            "a@@b",
            "<x>@b",
        ] {
            assert_eq!(JidRef::parse(bad), Err(JidMalformed), "{bad:?}");
        }
    }
}
