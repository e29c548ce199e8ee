//! Service statistics (EN 15838 7.3): contact-centre KPIs per service and interval, from
//! call records and queue facts. A layer above [`crate::record`], below the daemon and the
//! commands.
//!
//! - [`service`]: which calls are contacts of which service (`[[service]]`), classified on
//!   clear numbers before pseudonymisation;
//! - [`contact`]: a contact's facts from a call record, with a [`QueueFact`] as the
//!   authority for its queue figures when there is one;
//! - [`kpi`]: contacts into primitive sums that merge exactly; ratios with their formulas;
//! - [`interval`]: intervals aligned in a time zone, the [`Aggregator`] emitting
//!   `teledge.interval/1` records after a grace and revising them for late contacts, joining
//!   call records with the queue records of the same contacts, summing the node's
//!   per-minute registration records (RFC 6076 RRD, IRA) and every call's RFC 6076 facts
//!   (`node_sip`) into its first service, and agents' presences (`teledge.agent/1`) into
//!   staffed and paused agent time per queue, split exactly at interval boundaries;
//! - [`merge`]: interval records of many nodes and runs into one per service and interval;
//! - [`report`]: tables, CSV and JSON Lines of interval records; a collector's output read;
//! - [`queue`]: [`QueueFact`], what a queue source says about one call.

pub mod contact;
pub mod interval;
pub mod kpi;
pub mod merge;
pub mod queue;
pub mod report;
pub mod service;

pub use contact::{Contact, ContactOutcome};
pub use interval::{run_id, Aggregator, Attribution, IntervalClock, StatsSettings};
pub use queue::{FlowOut, QueueEnd, QueueFact, QueueHangup};
pub use service::{Direction, ServiceSettings, Services};
