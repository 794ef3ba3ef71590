//! XML for untrusted streams: a small element tree, the sans-I/O stream framer on `rxml`
//! (limits enforced while parsing), and the writer that serialises elements for one stream.

pub mod element;
pub mod framer;
pub mod writer;

pub use element::{Element, Node};
pub use framer::{Frame, FrameError, Framer, FramerLimits, StreamHeader};

/// Namespaces the broker speaks.
pub mod ns {
    pub const STREAM: &str = "http://etherx.jabber.org/streams";
    pub const CLIENT: &str = "jabber:client";
    pub const COMPONENT: &str = "jabber:component:accept";
    pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
    pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
    pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
    pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
    pub const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
    pub const STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
    pub const PING: &str = "urn:xmpp:ping";
    pub const ROSTER: &str = "jabber:iq:roster";
    pub const CONN_REQ: &str = "urn:broadband-forum-org:cwmp:xmppConnReq-1-0";
    pub const XML: &str = "http://www.w3.org/XML/1998/namespace";
}
