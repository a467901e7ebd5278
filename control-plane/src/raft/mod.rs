//! Consensus: openraft with our own storage on sled and its network over NATS.
//!
//! - [`log_store`]: the Raft log and vote, flushed to disk before they are acknowledged.
//! - [`state_machine`]: the in-memory [`PoolState`](crate::state::PoolState), snapshots in sled.
//! - [`network`]: Raft RPCs as NATS requests on `pool.v1.raft.<member>.<rpc>`.
//! - [`server`]: answers those requests for the local member.
//! - [`router`]: an in-process network for tests of consensus without NATS.
//! - [`watch`]: a follower that finds the leader gone stands as soon as the leases allow.

pub mod log_store;
pub mod network;
pub mod router;
pub mod server;
pub mod state_machine;
#[cfg(test)]
mod tests;
pub mod watch;

use std::io::Cursor;

use openraft::BasicNode;

use crate::state::{Request, Response};

pub use warmpool_proto::MemberId;

openraft::declare_raft_types!(
    /// Warmpool's Raft types: the log carries [`Request`]s, applying one answers a [`Response`],
    /// members are `u64` ids whose node data is their REST address.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = MemberId,
        Node = BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;

/// Shorthands for openraft's generic types.
pub mod typ {
    use openraft::BasicNode;

    use super::{MemberId, TypeConfig};

    /// A log entry.
    pub type Entry = openraft::Entry<TypeConfig>;
    /// A storage error.
    pub type StorageError = openraft::StorageError<MemberId>;
    /// A log id.
    pub type LogId = openraft::LogId<MemberId>;
    /// A vote.
    pub type Vote = openraft::Vote<MemberId>;
    /// Snapshot metadata.
    pub type SnapshotMeta = openraft::SnapshotMeta<MemberId, BasicNode>;
    /// Membership as stored.
    pub type StoredMembership = openraft::StoredMembership<MemberId, BasicNode>;
    /// A Raft error.
    pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<MemberId, E>;
    /// An RPC error.
    pub type RpcError<E = openraft::error::Infallible> =
        openraft::error::RPCError<MemberId, BasicNode, RaftError<E>>;
    /// A client-write error.
    pub type ClientWriteError = openraft::error::ClientWriteError<MemberId, BasicNode>;
    /// A linearizable-read error.
    pub type CheckIsLeaderError = openraft::error::CheckIsLeaderError<MemberId, BasicNode>;
}
