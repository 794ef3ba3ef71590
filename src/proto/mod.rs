//! Sans-I/O protocol decisions: what to answer to this element in this state.
//! No sockets and no clock here, so everything is tested without I/O.

pub mod component;
pub mod sasl;
pub mod stanza;
