//! Heartbeats: liveness, capacity, load and an inventory digest every `--heartbeat-ms`.
//!
//! The digest is the level in a few bytes: when it differs from the digest of the inventory the
//! leader holds, the leader asks for the full inventory. Digest and count come from one
//! snapshot, so they always describe the same inventory.

use std::sync::Arc;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use warmpool_proto::agent::{inventory_digest, Heartbeat};
use warmpool_proto::Timestamp;

use crate::agent::Shared;
use crate::host;
use crate::outbox::Outgoing;

/// Sends heartbeats until `cancel`.
pub async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    let config = &shared.config;
    let capacity = host::capacity(config.cpu_millis, config.memory_mb);
    let mut tick = tokio::time::interval(config.heartbeat);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let entries = shared.inventory.snapshot();
        crate::telemetry::containers(&entries);
        let hb = Heartbeat {
            node: config.node_id.clone(),
            boot_id: shared.boot_id,
            seq: 0, // numbered by the outbox
            sent_at: Timestamp::now(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            ipv6_prefix: config.ipv6_prefix.to_string(),
            labels: config.labels.clone(),
            capacity,
            usage: host::read_usage(),
            containers: u32::try_from(entries.len()).unwrap_or(u32::MAX),
            inventory_digest: inventory_digest(&entries),
            create_slots: Some(u32::try_from(shared.creates.limit()).unwrap_or(u32::MAX)),
            runtime_unavailable: shared.runtime.outage(),
            images: shared.images.report(),
        };
        shared.outbox.send(Outgoing::Heartbeat(Box::new(hb)));
    }
}
