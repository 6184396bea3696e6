//! openraft on top of Prism's storage seams. Everything that names an openraft type lives
//! under this module, so that a move to openraft 0.10 (which rewrites the storage and network
//! traits) stays inside it.

pub mod log_store;
pub mod network;
pub mod proposal;
pub mod snapshot;
pub mod state_machine;
pub mod types;

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod simulation;
#[cfg(test)]
mod tests;
