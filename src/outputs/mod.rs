//! Where records go at the end of the pipeline: JSON Lines, or a table for people.
//! (The spool and the uplink sink are later stages of the same pipeline.)

pub mod jsonl;
pub mod table;
