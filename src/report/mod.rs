//! Reporting: phases and host operations emit [`Event`]s through a [`Reporter`]; renderers
//! decide how they look (terminal with progress bars, plain lines, JSON lines), and every
//! event also goes, redacted, to the debug log file. Logic never prints.

pub mod events;

pub use events::{Event, EventSink, HostOutcome, Level, Reporter, StreamKind};
