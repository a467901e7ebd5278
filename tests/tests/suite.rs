//! Warmpool's whole-system tests against real nats-server, dockerd and processes: one test
//! binary, a module per subject (one link instead of one per file, which cost a cold build
//! about 16 s here). `deploy/test-cargo.sh` runs each module in its own process, several at
//! once, as it runs the other test binaries; one by hand:
//!
//! ```text
//! cargo test -p warmpool-tests --test suite single_host::
//! ```

mod support;

mod archive;
mod async_alloc;
mod auth;
mod benchmarks;
mod chaos;
mod clock;
mod cluster;
mod compat;
mod dashboard_files;
mod dockerd_restart;
mod drain;
mod hardening;
mod image_pull;
mod isolation;
mod logs;
mod membership;
mod metrics;
mod multi_host;
mod nats_failover;
mod nats_outage;
mod nats_permissions;
mod overload;
mod paused_tier;
mod policy;
mod poolctl;
mod proxy;
mod runtime;
mod session_io;
mod simulation;
mod single_host;
mod tenants;
mod tls;
mod unanswered;
mod usage;
mod userns;
mod workspaces;
