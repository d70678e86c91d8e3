pub mod config;
pub mod http;
pub mod intake;
pub mod queue;
pub mod registry;
