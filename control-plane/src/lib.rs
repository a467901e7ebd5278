//! Warmpool's control plane.
//!
//! Layout:
//! - [`state`]: the replicated state machine, pure: commands in, state and events out.
//! - `raft`: openraft storage on sled and the Raft network over NATS.
//! - `cluster`: writes (forwarded to the leader) and reads (local or linearizable).
//! - `placement` and `keepwarm`: pure decisions of where and how many containers to make.
//! - `reconcile`: pure comparison of what the state wants with what agents report.
//! - `agents`: the NATS edge to node agents: heartbeats, facts, commands.
//! - `liveness`: pure decisions of which nodes take grants, are down, or are lost.
//! - `engine`: the leader's decisions, one module per duty: state, facts and a clock in,
//!   effects out.
//! - `leader`: the runner that feeds the engine and carries out its effects.
//! - [`sim`]: the engine and the state machine replayed against a simulated fleet on a
//!   virtual clock (`poolctl simulate`).
//! - `session`: logs, exec and files of allocated containers, pulled from their agents.
//! - `api`: the REST API and event stream.
//! - `archive`: records evicted from the state, on this member's disk.
//! - `telemetry`: the HELP text of every metric.
#![warn(missing_docs)]
// openraft's error types (StorageError, RaftError) are large by design and travel in Results
// throughout the storage and network layers; boxing them at every boundary buys nothing.
#![allow(clippy::result_large_err)]

pub mod agents;
pub mod api;
pub mod archive;
pub mod auth;
pub mod cluster;
pub mod engine;
pub mod keepwarm;
pub mod leader;
pub mod liveness;
pub mod placement;
pub mod raft;
pub mod reconcile;
pub mod server;
pub mod session;
pub mod sim;
pub mod state;
pub mod telemetry;
pub mod tls;
