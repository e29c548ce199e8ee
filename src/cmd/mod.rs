//! Subcommands that are more than a few lines.

pub mod dead_letters;
pub mod sensors;
