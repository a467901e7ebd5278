//! The Warmpool node agent: keeps warm containers on one Docker host and reports them.
//!
//! The agent is the source of truth for what its host runs. It takes commands from the
//! control plane over NATS (create, destroy, inventory), makes containers with bollard on a
//! per-host IPv6 /64 bridge, probes their health, watches Docker's events, resyncs with Docker
//! every few seconds, and publishes facts (edges) and heartbeats (with a digest of the level).
//! Containers carry every label needed to re-adopt them, so a restarted agent picks up where
//! the last one left off and leaves nothing orphaned.
//!
//! Layout, by responsibility:
//!
//! - [`config`]: flags and their validation.
//! - `agent`: start-up, shared state, ordered shutdown.
//! - `docker`: the typed Docker edge (bollard); `network`: the per-host IPv6 bridge.
//! - [`isolation`]: the nftables rules that keep containers from each other, the host and the
//!   fleet, and enforce each pool's egress policy (pure rule writer in `isolation::rules`).
//! - `labels`: the container labels that make re-adoption possible.
//! - `inventory`: the agent's truth, with the rules that keep concurrent updates correct.
//! - `health` (pure verdict and the probe itself) and `prober` (one task per container).
//! - `events`: the Docker event watcher; `resync`: level-triggered repair and adoption.
//! - `runtime`: whether dockerd answers; the agent rides out its restarts.
//! - `session`: logs, exec, files and settings of allocated containers (pulled streams).
//! - [`images`]: image pulls before a pool's first container (policy, credentials, backoff).
//! - `creates`: how many containers are made at once (adaptive, see its doc).
//! - `commands`: the NATS command handler; `heartbeat`; `outbox`: ordered publishing.
//! - `host`: capacity and load from `/proc`.
//! - `telemetry`: Prometheus metrics and the tiny `/metrics` listener (`--metrics-addr`).
#![warn(missing_docs)]
#![deny(clippy::await_holding_lock)]

mod activity;
mod agent;
mod commands;
pub mod config;
mod creates;
mod docker;
mod events;
mod freezer;
mod health;
mod heartbeat;
pub mod host;
pub mod images;
mod inventory;
pub mod isolation;
pub mod labels;
mod network;
mod outbox;
mod pause;
mod prober;
mod resync;
mod runtime;
mod session;
mod telemetry;
mod workspace;

use std::future::Future;

pub use config::{Config, ConfigError, Ipv6Prefix, RawConfig};
pub use docker::DockerError;
pub use network::NetworkError;

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Docker failed at start-up (connect, adopt).
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// The workspace store cannot be opened.
    #[error(transparent)]
    WorkspaceStore(#[from] warmpool_workspace_store::StoreError),
    /// The node's network could not be made ready.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// The network isolation rules could not be applied at start.
    #[error(transparent)]
    Isolation(#[from] isolation::IsolationError),
    /// NATS could not be set up (the connection itself is retried forever).
    #[error("nats: {0}")]
    Nats(String),
    /// The metrics address could not be bound.
    #[error("--metrics-addr {0}: {1}")]
    Metrics(std::net::SocketAddr, std::io::Error),
    /// The registry credentials file does not read.
    #[error("--registry-auth {path}: {reason}")]
    RegistryAuth {
        /// The file.
        path: String,
        /// Why it does not read.
        reason: String,
    },
    /// dockerd does not know the container runtime asked for.
    #[error("--runtime {0}: dockerd does not know this runtime (it knows: {1}); register it, e.g. `dockerd --add-runtime {0}=/usr/bin/{0}` or \"runtimes\" in daemon.json, and reload dockerd")]
    UnknownRuntime(String, String),
}

/// Runs the agent with a validated `config` until `shutdown` resolves, then stops its tasks in
/// order and returns. Containers keep running; the next start adopts them.
///
/// Fails only at start-up: when Docker cannot be reached, the network is not the configured
/// one, or the existing containers cannot be listed. Once running, every error (Docker, NATS,
/// a malformed message) is logged and retried, never fatal.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    agent::run(config, shutdown).await
}
