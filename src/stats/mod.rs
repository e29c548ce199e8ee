//! Service statistics (EN 15838 7.3): contact-centre KPIs per service and interval, from
//! call records and queue facts. A layer above [`crate::record`], below the daemon and the
//! commands.
//!
//! - [`queue`]: [`QueueFact`], what a queue source says about one call (the authority for
//!   queue KPIs when present).

pub mod queue;

pub use queue::{FlowOut, QueueEnd, QueueFact, QueueHangup};
