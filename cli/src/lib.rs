//! `poolctl`: a typed client of Warmpool's REST API v1, and the command line built on it.
//!
//! The library is the client; the binary is a thin layer that parses flags, calls the client
//! and prints. Other Rust code (tests, tools) uses [`Client`] directly.
//!
//! - [`client`]: [`Client`], one connection pool over every control-plane member, with
//!   fail-over between them and a typed method per route.
//! - [`error`]: [`ClientError`], the one error type of the client.
//! - [`sse`]: an incremental Server-Sent Events parser (pure).
//! - `stream` (private): the self-reconnecting event stream behind
//!   [`Client::event_stream`].
//! - [`args`]: the command line (clap derive).
//! - [`spec`]: pool specs from flags and files, and merging for `pool update` (pure).
//! - [`render`]: tables and `key: value` blocks (pure).
//! - [`simulate`]: `poolctl simulate`, replaying a pool's history against a proposed policy
//!   with [`policy`] (`warmpool-policy`, re-exported for tools and tests).
//! - [`bench`]: `poolctl bench`, allocate+release cycles measured from the client, with
//!   [`cold`] (the cold-start baseline through the Docker API) and a replenish measurement;
//!   [`tiers`]: its `--tier paused` and `--burst` modes (the paused tier from the client).
//! - [`session`]: `poolctl logs`, `exec` and `cp`: using an allocated container.
//! - [`run`]: carrying out a command, exit codes and error messages.
#![warn(missing_docs)]
#![deny(clippy::await_holding_lock)]

pub mod args;
pub mod bench;
pub mod client;
pub mod cold;
pub mod error;
pub mod render;
pub mod run;
pub mod session;
pub mod simulate;
pub mod spec;
pub mod sse;
mod stream;
pub mod tiers;

pub use client::{AllocationQuery, ArchiveRange, Client, ClientBuilder, NodeAction, PageQuery};
pub use error::ClientError;
pub use warmpool_policy as policy;
