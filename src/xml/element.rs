//! A minimal owned element tree: what the framer produces and the writer consumes.
//!
//! Elements in the stream's content namespace (`jabber:client` on c2s streams,
//! `jabber:component:accept` on component streams) carry the empty namespace [`Element::STANZA_NS`],
//! so a stanza read from a CPE is written to a component in the component's namespace and back.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// Namespace URI; empty for the stream's content namespace.
    pub ns: String,
    pub name: String,
    pub attrs: Vec<Attr>,
    pub children: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// Namespace URI of a namespaced attribute (`xml:lang` carries the XML namespace).
    pub ns: Option<String>,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

impl Element {
    /// The namespace marker for "the stream's content namespace".
    pub const STANZA_NS: &'static str = "";

    pub fn new(ns: &str, name: &str) -> Element {
        Element {
            ns: ns.to_string(),
            name: name.to_string(),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// A stanza-level element (`iq`, `message`, `presence`, or `error` inside one).
    pub fn stanza(name: &str) -> Element {
        Element::new(Element::STANZA_NS, name)
    }

    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.ns.is_none() && a.name == name)
            .map(|a| a.value.as_str())
    }

    pub fn set_attr(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self
            .attrs
            .iter_mut()
            .find(|a| a.ns.is_none() && a.name == name)
        {
            Some(attr) => attr.value = value,
            None => self.attrs.push(Attr {
                ns: None,
                name: name.to_string(),
                value,
            }),
        }
    }

    pub fn remove_attr(&mut self, name: &str) -> Option<String> {
        let index = self
            .attrs
            .iter()
            .position(|a| a.ns.is_none() && a.name == name)?;
        Some(self.attrs.remove(index).value)
    }

    pub fn with_attr(mut self, name: &str, value: impl Into<String>) -> Element {
        self.set_attr(name, value);
        self
    }

    pub fn with_child(mut self, child: Element) -> Element {
        self.children.push(Node::Element(child));
        self
    }

    pub fn with_text(mut self, text: impl Into<String>) -> Element {
        self.children.push(Node::Text(text.into()));
        self
    }

    pub fn push_child(&mut self, child: Element) {
        self.children.push(Node::Element(child));
    }

    pub fn child_elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    pub fn first_child(&self) -> Option<&Element> {
        self.child_elements().next()
    }

    pub fn child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.child_elements().find(|e| e.is(name, ns))
    }

    /// Concatenated text children.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for node in &self.children {
            if let Node::Text(t) = node {
                out.push_str(t);
            }
        }
        out
    }
}
