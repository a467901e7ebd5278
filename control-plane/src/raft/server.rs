//! Answers Raft RPCs addressed to this member on `pool.v1.raft.<member>.*`.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use openraft::error::{InstallSnapshotError, RaftError};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use warmpool_proto::subjects::{self, RaftRpc};

use super::network::decode_snapshot_chunk;
use super::watch::{self, Heard};
use super::{MemberId, Raft};

/// Serves Raft RPCs for `member` until the subscription ends or `shutdown` fires, recording
/// in `heard` when appends arrive.
pub async fn serve(
    client: async_nats::Client,
    raft: Raft,
    member: MemberId,
    heard: Heard,
    shutdown: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let mut sub = client.subscribe(subjects::raft_all(member)).await?;
    let client = Arc::new(client);
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            msg = sub.next() => match msg { Some(m) => m, None => break },
        };
        let Some(reply) = msg.reply.clone() else {
            warn!(subject = %msg.subject, "raft message without a reply subject; dropped");
            continue;
        };
        let rpc = msg
            .subject
            .as_str()
            .rsplit('.')
            .next()
            .and_then(RaftRpc::parse);
        if rpc == Some(RaftRpc::Append) {
            heard.now();
        }
        let (raft, client, heard) = (raft.clone(), client.clone(), heard.clone());
        // One task per request: a long snapshot install must not hold up votes.
        tokio::spawn(async move {
            let answer = match rpc {
                Some(rpc) => handle(&raft, member, &heard, rpc, &msg.payload).await,
                None => Err(format!("unknown raft rpc subject {}", msg.subject)),
            };
            let payload = match answer {
                Ok(bytes) => bytes,
                Err(e) => {
                    warn!(subject = %msg.subject, error = %e, "malformed raft request; dropped");
                    return;
                }
            };
            if let Err(e) = client.publish(reply, payload).await {
                debug!(error = %e, "raft reply not sent");
            }
        });
    }
    Ok(())
}

fn to_bytes<T: Serialize>(v: &T) -> Result<Bytes, String> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| e.to_string())
}

async fn handle(
    raft: &Raft,
    member: MemberId,
    heard: &Heard,
    rpc: RaftRpc,
    payload: &[u8],
) -> Result<Bytes, String> {
    match rpc {
        RaftRpc::Append => {
            let req = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
            let res: Result<_, RaftError<MemberId>> = raft.append_entries(req).await;
            to_bytes(&res)
        }
        RaftRpc::Vote => {
            let req = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
            let res: Result<_, RaftError<MemberId>> = raft.vote(req).await;
            to_bytes(&res)
        }
        RaftRpc::Snapshot => {
            let req = decode_snapshot_chunk(payload)?;
            let res: Result<_, RaftError<MemberId, InstallSnapshotError>> =
                raft.install_snapshot(req).await;
            to_bytes(&res)
        }
        RaftRpc::Status => to_bytes(&watch::status(raft, member, heard)),
    }
}
