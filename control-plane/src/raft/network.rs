//! Raft RPCs over NATS request/reply, on `pool.v1.raft.<member>.<rpc>`.
//!
//! A member needs only the NATS URL and the ids of its peers: no peer addresses, no ports.
//! Append and vote travel as JSON. A snapshot chunk travels as a small JSON header followed by
//! the raw chunk bytes (JSON would triple their size), and openraft keeps each chunk under
//! `snapshot_max_chunk_size`, which [`crate::raft`] sets below the NATS payload limit.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use warmpool_proto::subjects::{self, RaftRpc};

use super::typ::{SnapshotMeta, Vote};
use super::{MemberId, TypeConfig};

/// Creates a connection per peer; all share one NATS client.
#[derive(Clone)]
pub struct NatsNetwork {
    client: async_nats::Client,
}

impl NatsNetwork {
    /// A network over `client`.
    pub fn new(client: async_nats::Client) -> Self {
        NatsNetwork { client }
    }
}

impl RaftNetworkFactory<TypeConfig> for NatsNetwork {
    type Network = NatsConnection;

    async fn new_client(&mut self, target: MemberId, _node: &BasicNode) -> NatsConnection {
        NatsConnection {
            client: self.client.clone(),
            target,
        }
    }
}

/// The RPC path to one peer.
pub struct NatsConnection {
    client: async_nats::Client,
    target: MemberId,
}

/// The header of a snapshot chunk; the chunk's bytes follow it.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotChunkHeader {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    pub offset: u64,
    pub done: bool,
}

/// Frames a snapshot chunk: 4-byte big-endian header length, JSON header, raw data.
pub(crate) fn encode_snapshot_chunk(
    req: &InstallSnapshotRequest<TypeConfig>,
) -> Result<Bytes, serde_json::Error> {
    let header = serde_json::to_vec(&SnapshotChunkHeader {
        vote: req.vote,
        meta: req.meta.clone(),
        offset: req.offset,
        done: req.done,
    })?;
    let mut buf = BytesMut::with_capacity(4 + header.len() + req.data.len());
    buf.put_u32(header.len() as u32);
    buf.put_slice(&header);
    buf.put_slice(&req.data);
    Ok(buf.freeze())
}

/// Parses a frame made by [`encode_snapshot_chunk`].
pub(crate) fn decode_snapshot_chunk(
    bytes: &[u8],
) -> Result<InstallSnapshotRequest<TypeConfig>, String> {
    let len_bytes: [u8; 4] = bytes
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or("short snapshot frame")?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    let header = bytes
        .get(4..4 + len)
        .ok_or("snapshot header runs past the frame")?;
    let h: SnapshotChunkHeader = serde_json::from_slice(header).map_err(|e| e.to_string())?;
    Ok(InstallSnapshotRequest {
        vote: h.vote,
        meta: h.meta,
        offset: h.offset,
        data: bytes[4 + len..].to_vec(),
        done: h.done,
    })
}

type RpcResult<T, E> = Result<T, RPCError<MemberId, BasicNode, RaftError<MemberId, E>>>;

impl NatsConnection {
    async fn call<Resp, E>(&self, rpc: RaftRpc, payload: Bytes, ttl: Duration) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let subject = subjects::raft(self.target, rpc);
        let max = self.client.server_info().max_payload;
        if max > 0 && payload.len() > max {
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(1),
            ));
        }
        let reply = match tokio::time::timeout(ttl, self.client.request(subject, payload)).await {
            Err(_) => {
                return Err(net_err(format!(
                    "raft {} to member {} timed out after {ttl:?}",
                    rpc.as_str(),
                    self.target
                )))
            }
            Ok(Err(e)) => {
                return Err(match e.kind() {
                    async_nats::RequestErrorKind::NoResponders => {
                        RPCError::Unreachable(Unreachable::new(&std::io::Error::other(format!(
                            "member {} is not listening",
                            self.target
                        ))))
                    }
                    _ => net_err(format!(
                        "raft {} to member {}: {e}",
                        rpc.as_str(),
                        self.target
                    )),
                })
            }
            Ok(Ok(msg)) => msg,
        };
        let answer: Result<Resp, RaftError<MemberId, E>> =
            serde_json::from_slice(&reply.payload)
                .map_err(|e| net_err(format!("bad raft reply from member {}: {e}", self.target)))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn net_err<E: std::error::Error>(
    msg: String,
) -> RPCError<MemberId, BasicNode, RaftError<MemberId, E>> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(msg)))
}

fn encode<T: Serialize, E: std::error::Error>(v: &T) -> RpcResult<Bytes, E> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| net_err(format!("encode raft request: {e}")))
}

impl RaftNetwork<TypeConfig> for NatsConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<MemberId>, openraft::error::Infallible> {
        let payload = encode(&rpc)?;
        self.call(RaftRpc::Append, payload, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<MemberId>, InstallSnapshotError> {
        let payload = encode_snapshot_chunk(&rpc)
            .map_err(|e| net_err(format!("encode snapshot chunk: {e}")))?;
        self.call(RaftRpc::Snapshot, payload, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<MemberId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<MemberId>, openraft::error::Infallible> {
        let payload = encode(&rpc)?;
        self.call(RaftRpc::Vote, payload, option.hard_ttl()).await
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId, StoredMembership};

    use super::*;

    #[test]
    fn snapshot_chunk_frame_round_trips_and_rejects_garbage() {
        let req = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new(3, 1),
            meta: SnapshotMeta {
                last_log_id: Some(LogId::new(CommittedLeaderId::new(3, 1), 77)),
                last_membership: StoredMembership::default(),
                snapshot_id: "s-1".into(),
            },
            offset: 1024,
            data: (0..=255u8).cycle().take(5000).collect(),
            done: false,
        };
        let frame = encode_snapshot_chunk(&req).unwrap();
        assert!(
            frame.len() < req.data.len() + 400,
            "raw bytes, not JSON arrays"
        );
        assert_eq!(decode_snapshot_chunk(&frame).unwrap(), req);
        assert!(decode_snapshot_chunk(b"\x00\x00").is_err());
        assert!(decode_snapshot_chunk(b"\x00\x00\xff\xffabc").is_err());
        assert!(decode_snapshot_chunk(b"\x00\x00\x00\x02{}").is_err());
    }
}
