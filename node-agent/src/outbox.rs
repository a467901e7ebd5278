//! Everything the agent publishes (facts and heartbeats) goes through one queue and one
//! publishing task.
//!
//! One task numbers and sends messages in the order they were queued, so `seq` increases in
//! publish order, and facts about one container arrive in the order they happened (the
//! inventory queues a fact while it still holds the lock under which the change was made).
//! Queueing never blocks: if NATS is down long enough for the queue to fill, new messages are
//! dropped with a warning. That is safe by design: facts are edges, and the next heartbeat's
//! inventory digest makes the control plane fetch the level.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use warmpool_proto::agent::{Fact, Heartbeat, InventoryEntry};
use warmpool_proto::{subjects, ContainerId, NodeId};

/// Messages waiting to be published, at most.
const CAPACITY: usize = 4096;
/// Time one publish may take before the message is dropped.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// A message to publish; the publisher adds node and sequence number.
#[derive(Debug)]
pub enum Outgoing {
    /// `Fact::Observed`.
    Observed(InventoryEntry),
    /// `Fact::Gone`.
    Gone {
        /// The container.
        id: ContainerId,
        /// Why.
        reason: warmpool_proto::ContainerEndReason,
    },
    /// `Fact::CreateFailed`.
    CreateFailed {
        /// The container.
        id: ContainerId,
        /// Docker's error.
        error: String,
        /// Whether dockerd stopped answering meanwhile.
        runtime_unavailable: bool,
    },
    /// A heartbeat (its `seq` is overwritten).
    Heartbeat(Box<Heartbeat>),
}

/// The sending side, cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    seq: Arc<AtomicU64>,
}

/// The receiving side, for [`publish`].
pub struct OutboxReceiver {
    rx: mpsc::Receiver<Outgoing>,
    seq: Arc<AtomicU64>,
}

/// A new, empty outbox.
pub fn outbox() -> (Outbox, OutboxReceiver) {
    let (tx, rx) = mpsc::channel(CAPACITY);
    let seq = Arc::new(AtomicU64::new(0));
    (
        Outbox {
            tx,
            seq: seq.clone(),
        },
        OutboxReceiver { rx, seq },
    )
}

impl Outbox {
    /// Queues `msg`; never blocks (see the module doc).
    pub fn send(&self, msg: Outgoing) {
        if let Err(e) = self.tx.try_send(msg) {
            crate::telemetry::dropped("queue_full");
            warn!(error = %e, "outbox full or closed: message dropped");
        }
    }

    /// The sequence number of the last message published.
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }
}

/// Publishes queued messages until `cancel`, then whatever is still queued, then flushes.
pub async fn publish(
    client: async_nats::Client,
    node: NodeId,
    mut outbox: OutboxReceiver,
    cancel: CancellationToken,
) {
    let facts = subjects::facts(&node);
    let heartbeats = subjects::heartbeat(&node);
    loop {
        let msg = tokio::select! {
            biased;
            m = outbox.rx.recv() => m,
            _ = cancel.cancelled() => {
                // Drain: messages queued before shutdown (e.g. the last facts) still go out.
                while let Ok(m) = outbox.rx.try_recv() {
                    send_one(&client, &node, &facts, &heartbeats, &outbox.seq, m).await;
                }
                break;
            }
        };
        match msg {
            Some(m) => send_one(&client, &node, &facts, &heartbeats, &outbox.seq, m).await,
            None => break,
        }
    }
    if tokio::time::timeout(PUBLISH_TIMEOUT, client.flush())
        .await
        .is_err()
    {
        warn!("NATS flush at shutdown timed out");
    }
}

async fn send_one(
    client: &async_nats::Client,
    node: &NodeId,
    facts: &str,
    heartbeats: &str,
    seq: &AtomicU64,
    msg: Outgoing,
) {
    let seq = seq.fetch_add(1, Ordering::SeqCst) + 1;
    let node = node.clone();
    let is_heartbeat = matches!(msg, Outgoing::Heartbeat(_));
    let (subject, payload) = match msg {
        Outgoing::Observed(entry) => (
            facts,
            serde_json::to_vec(&Fact::Observed { node, seq, entry }),
        ),
        Outgoing::Gone { id, reason } => (
            facts,
            serde_json::to_vec(&Fact::Gone {
                node,
                seq,
                id,
                reason,
            }),
        ),
        Outgoing::CreateFailed {
            id,
            error,
            runtime_unavailable,
        } => (
            facts,
            serde_json::to_vec(&Fact::CreateFailed {
                node,
                seq,
                id,
                error,
                runtime_unavailable,
            }),
        ),
        Outgoing::Heartbeat(mut hb) => {
            hb.seq = seq;
            (heartbeats, serde_json::to_vec(&*hb))
        }
    };
    let payload = match payload {
        Ok(p) => Bytes::from(p),
        Err(e) => {
            warn!(error = %e, "cannot serialise message");
            return;
        }
    };
    match tokio::time::timeout(
        PUBLISH_TIMEOUT,
        client.publish(subject.to_string(), payload),
    )
    .await
    {
        Ok(Ok(())) => {
            crate::telemetry::sent(is_heartbeat);
            debug!(subject, seq, "published");
        }
        Ok(Err(e)) => {
            crate::telemetry::dropped("publish_failed");
            warn!(subject, seq, error = %e, "publish failed: message dropped");
        }
        Err(_) => {
            crate::telemetry::dropped("timeout");
            warn!(subject, seq, "publish timed out: message dropped");
        }
    }
}

#[cfg(test)]
impl OutboxReceiver {
    /// The raw queue, for tests that check what was queued.
    pub fn rx_for_tests(&mut self) -> &mut mpsc::Receiver<Outgoing> {
        &mut self.rx
    }
}
