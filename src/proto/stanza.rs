//! Stanza-level helpers: kinds, IQ types, and error replies built the way GenieACS reads them
//! (the defined condition is the first child of `<error>`).

use crate::xml::{ns, Element};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Iq,
    Message,
    Presence,
}

impl Kind {
    pub fn of(element: &Element) -> Option<Kind> {
        if !element.ns.is_empty() {
            return None;
        }
        match element.name.as_str() {
            "iq" => Some(Kind::Iq),
            "message" => Some(Kind::Message),
            "presence" => Some(Kind::Presence),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IqType {
    Get,
    Set,
    Result,
    Error,
}

impl IqType {
    pub fn of(element: &Element) -> Option<IqType> {
        match element.attr("type")? {
            "get" => Some(IqType::Get),
            "set" => Some(IqType::Set),
            "result" => Some(IqType::Result),
            "error" => Some(IqType::Error),
            _ => None,
        }
    }

    pub fn is_request(self) -> bool {
        matches!(self, IqType::Get | IqType::Set)
    }
}

/// RFC 6120 section 8.3.2 error types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    Cancel,
    Wait,
    Modify,
    Auth,
}

impl ErrorType {
    fn as_str(self) -> &'static str {
        match self {
            ErrorType::Cancel => "cancel",
            ErrorType::Wait => "wait",
            ErrorType::Modify => "modify",
            ErrorType::Auth => "auth",
        }
    }
}

/// An error reply to `request`: `from`/`to` swapped, same id, condition first inside `<error>`.
/// `from` is the entity the error is said to come from (usually the request's `to`).
pub fn error_reply(
    request: &Element,
    from: Option<&str>,
    condition: &str,
    error_type: ErrorType,
) -> Element {
    let mut reply = Element::stanza(&request.name);
    if let Some(id) = request.attr("id") {
        reply.set_attr("id", id);
    }
    reply.set_attr("type", "error");
    if let Some(from) = from {
        reply.set_attr("from", from);
    }
    if let Some(to) = request.attr("from") {
        reply.set_attr("to", to);
    }
    reply.push_child(error_element(condition, error_type));
    reply
}

/// `<error type=...><condition xmlns=stanzas/></error>`.
pub fn error_element(condition: &str, error_type: ErrorType) -> Element {
    Element::stanza("error")
        .with_attr("type", error_type.as_str())
        .with_child(Element::new(ns::STANZAS, condition))
}

/// An IQ error for a request the broker answers on behalf of `from`, addressed to `to`. The
/// `<error>` carries `by` = the broker's domain (RFC 6120 section 8.3.2: the entity that generated
/// it), so an ACS (and the HTTP API) can tell the broker's answers from a CPE's own errors.
pub fn iq_error(
    id: &str,
    from: &str,
    to: &str,
    condition: &str,
    error_type: ErrorType,
    by: &str,
) -> Element {
    Element::stanza("iq")
        .with_attr("type", "error")
        .with_attr("id", id)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_child(error_element(condition, error_type).with_attr("by", by))
}

/// An empty IQ result answering `request`.
pub fn iq_result(request: &Element, from: &str) -> Element {
    let mut reply = Element::stanza("iq").with_attr("type", "result");
    if let Some(id) = request.attr("id") {
        reply.set_attr("id", id);
    }
    reply.set_attr("from", from);
    if let Some(to) = request.attr("from") {
        reply.set_attr("to", to);
    }
    reply
}

/// The first stanza-error condition inside an `<error>` child, for logs.
pub fn error_condition(stanza: &Element) -> Option<&str> {
    let error = stanza.child_elements().find(|e| e.name == "error")?;
    error
        .child_elements()
        .find(|e| e.name != "text")
        .map(|e| e.name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::writer::write_element;

    #[test]
    fn error_reply_puts_condition_first_and_swaps_addresses() {
        let request = Element::stanza("iq")
            .with_attr("type", "get")
            .with_attr("id", "cr1")
            .with_attr("from", "acs.example.net")
            .with_attr("to", "cpe@example.net/cwmp");
        let reply = error_reply(
            &request,
            Some("cpe@example.net/cwmp"),
            "service-unavailable",
            ErrorType::Cancel,
        );
        let mut out = Vec::new();
        write_element(&mut out, &reply, ns::COMPONENT);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<iq id='cr1' type='error' from='cpe@example.net/cwmp' to='acs.example.net'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        );
        assert_eq!(error_condition(&reply), Some("service-unavailable"));
    }
}
