pub mod intake;
pub mod queue;
pub mod registry;
