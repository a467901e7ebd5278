//! Failover without waiting out the timers: a follower that finds the leader's process gone
//! stands for election as soon as every voter's lease has ended.
//!
//! openraft lets a follower stand once it has heard no leader for the lease (the election
//! timeout's maximum) plus a random election timeout, and a voter refuses votes until its own
//! lease has ended. With the default 400-800 ms that is 1.2-1.6 s of silence before the first
//! vote. Over NATS a dead leader is known much sooner: its subscriptions go with its
//! connection, and the server answers a request to its subject with "no responders" at once.
//!
//! So a follower that has heard no append for [`QUIET_HEARTBEATS`] heartbeats asks the leader
//! for its [`MemberStatus`]. When no one is there, it asks the other voters for theirs; the one
//! with the longest log (the lowest id among equals) stands when the last voter's lease has
//! ended ([`stand_after`]), and the others leave it to. A leader that is only slow, or cut off
//! from this member alone, answers or times out, and nothing changes.
//!
//! Raft's safety does not depend on who stands or when; this only moves the first vote
//! earlier. If that election fails, openraft's own timers go on as before.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use warmpool_proto::subjects::{self, RaftRpc};

use super::{MemberId, Raft};

/// Heartbeats without an append before the leader is asked whether it is there.
pub const QUIET_HEARTBEATS: u32 = 2;

/// Time after the last voter's lease ends before standing: a vote request must not reach a
/// voter whose lease, counted from when it handled its last append, has not quite ended.
pub const LEASE_MARGIN: Duration = Duration::from_millis(30);

/// What a member says of itself when asked (`pool.v1.raft.<member>.status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The member.
    pub id: MemberId,
    /// The index of the last entry in its log.
    pub last_log_index: u64,
    /// Milliseconds since it last received an append from a leader; none since it started
    /// when absent.
    pub heard_ms: Option<u64>,
    /// The leader it knows.
    pub leader: Option<MemberId>,
}

/// When `me` should stand for election, counted from now, now that `gone` (the leader) is
/// known to be gone; `None` when another voter is the better candidate or a new leader is
/// already known. `others` are the answers of the other voters (the ones that did not answer
/// are left out: they cannot stand, nor vote, before they are back).
pub fn stand_after(
    me: &MemberStatus,
    others: &[MemberStatus],
    gone: MemberId,
    lease: Duration,
) -> Option<Duration> {
    let better = |o: &MemberStatus| {
        (o.last_log_index, std::cmp::Reverse(o.id)) > (me.last_log_index, std::cmp::Reverse(me.id))
    };
    if others.iter().any(better) {
        return None;
    }
    if others
        .iter()
        .chain(std::iter::once(me))
        .any(|s| s.leader.is_some_and(|l| l != gone))
    {
        return None;
    }
    // A voter that never heard a leader holds no lease.
    let lease_left = |s: &MemberStatus| {
        s.heard_ms.map_or(Duration::ZERO, |ms| {
            lease.saturating_sub(Duration::from_millis(ms))
        })
    };
    let wait = others
        .iter()
        .chain(std::iter::once(me))
        .map(lease_left)
        .max()
        .unwrap_or(Duration::ZERO);
    Some(wait + LEASE_MARGIN)
}

/// When this member last received an append, shared by the RPC server (which records it) and
/// the watch (which reads it).
#[derive(Clone, Debug, Default)]
pub struct Heard(Arc<Mutex<Option<Instant>>>);

impl Heard {
    /// An append arrived now.
    pub fn now(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// Time since the last append, if one came.
    pub fn since(&self) -> Option<Duration> {
        let at = *self.0.lock().unwrap_or_else(|e| e.into_inner());
        at.map(|at| at.elapsed())
    }
}

/// This member's status as it answers it.
pub fn status(raft: &Raft, id: MemberId, heard: &Heard) -> MemberStatus {
    let m = raft.metrics().borrow().clone();
    MemberStatus {
        id,
        last_log_index: m.last_log_index.unwrap_or(0),
        heard_ms: heard.since().map(|d| d.as_millis() as u64),
        leader: m.current_leader,
    }
}

/// How a member answered a status request.
enum Answer {
    Status(MemberStatus),
    /// No one subscribes to its subject: its process, or its NATS connection, is gone.
    Gone,
    /// It answered with garbage, the request timed out or NATS failed: it may be there.
    Unknown,
}

async fn ask(nats: &async_nats::Client, member: MemberId, ttl: Duration) -> Answer {
    let subject = subjects::raft(member, RaftRpc::Status);
    match tokio::time::timeout(ttl, nats.request(subject, Bytes::new())).await {
        Ok(Ok(msg)) => serde_json::from_slice(&msg.payload).map_or(Answer::Unknown, Answer::Status),
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => Answer::Gone,
        _ => Answer::Unknown,
    }
}

/// Watches the leader from a follower until `stop` fires; see the module's documentation.
pub async fn run(
    nats: async_nats::Client,
    raft: Raft,
    me: MemberId,
    heard: Heard,
    stop: CancellationToken,
) {
    let config = raft.config().clone();
    let heartbeat = Duration::from_millis(config.heartbeat_interval);
    let lease = Duration::from_millis(config.election_timeout_max);
    let quiet = heartbeat * QUIET_HEARTBEATS;
    // The term whose leader was last looked into: once a term is enough.
    let mut looked_into = None;
    let mut tick = tokio::time::interval(heartbeat / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let m = raft.metrics().borrow().clone();
        let Some(leader) = m.current_leader.filter(|l| *l != me) else {
            continue;
        };
        if looked_into == Some(m.current_term)
            || !m
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == me)
            || heard.since().is_none_or(|d| d < quiet)
        {
            continue;
        }
        if !matches!(ask(&nats, leader, heartbeat).await, Answer::Gone) {
            continue;
        }
        looked_into = Some(m.current_term);
        let voters: Vec<MemberId> = m
            .membership_config
            .membership()
            .voter_ids()
            .filter(|v| *v != me && *v != leader)
            .collect();
        let answers = futures::future::join_all(voters.iter().map(|v| ask(&nats, *v, heartbeat)));
        let others: Vec<MemberStatus> = answers
            .await
            .into_iter()
            .filter_map(|a| match a {
                Answer::Status(s) => Some(s),
                Answer::Gone | Answer::Unknown => None,
            })
            .collect();
        let mine = status(&raft, me, &heard);
        let Some(wait) = stand_after(&mine, &others, leader, lease) else {
            info!(
                leader,
                "the leader is gone; another member stands for election"
            );
            continue;
        };
        info!(
            leader,
            wait_ms = wait.as_millis() as u64,
            "the leader is gone; standing for election when the leases end"
        );
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        // Nothing changed meanwhile: same term, no append, and still no one at the leader's
        // subject (a leader back from a NATS reconnect is left alone).
        let now = raft.metrics().borrow().clone();
        if now.current_term != m.current_term
            || heard.since().is_none_or(|d| d < quiet)
            || !matches!(ask(&nats, leader, heartbeat).await, Answer::Gone)
        {
            debug!(
                leader,
                "the leader came back, or another member stood first"
            );
            continue;
        }
        metrics::counter!("warmpool_raft_fast_elections_total").increment(1);
        if let Err(e) = raft.trigger().elect().await {
            debug!(error = %e, "raft stopped before the election");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(800);

    fn member(id: MemberId, last_log_index: u64, heard_ms: u64) -> MemberStatus {
        MemberStatus {
            id,
            last_log_index,
            heard_ms: Some(heard_ms),
            leader: Some(1),
        }
    }

    #[test]
    fn the_longest_log_stands_when_the_last_lease_ends() {
        let (two, three) = (member(2, 41, 300), member(3, 40, 250));
        // Member 3's lease ends 550 ms from now, member 2's 500 ms.
        assert_eq!(
            stand_after(&two, &[three], 1, LEASE),
            Some(Duration::from_millis(550) + LEASE_MARGIN)
        );
        assert_eq!(stand_after(&three, &[two], 1, LEASE), None);
    }

    #[test]
    fn among_equal_logs_the_lowest_id_stands() {
        let (two, three) = (member(2, 40, 300), member(3, 40, 300));
        assert!(stand_after(&two, &[three], 1, LEASE).is_some());
        assert_eq!(stand_after(&three, &[two], 1, LEASE), None);
    }

    #[test]
    fn a_voter_that_did_not_answer_does_not_hold_the_election_up() {
        // Five voters, the leader and one more gone: the three left pick one.
        let (two, four, five) = (member(2, 40, 900), member(4, 39, 900), member(5, 40, 850));
        assert_eq!(
            stand_after(&two, &[four, five], 1, LEASE),
            Some(LEASE_MARGIN)
        );
        assert_eq!(stand_after(&five, &[two, four], 1, LEASE), None);
        assert_eq!(stand_after(&two, &[], 1, LEASE), Some(LEASE_MARGIN));
    }

    #[test]
    fn no_one_stands_once_a_new_leader_is_known() {
        let (two, mut three) = (member(2, 41, 300), member(3, 40, 250));
        three.leader = Some(3);
        assert_eq!(stand_after(&two, &[three], 1, LEASE), None);
    }

    #[test]
    fn a_voter_that_never_heard_a_leader_holds_no_lease() {
        let two = member(2, 41, 700);
        let three = MemberStatus {
            heard_ms: None,
            ..member(3, 0, 0)
        };
        assert_eq!(
            stand_after(&two, &[three], 1, LEASE),
            Some(Duration::from_millis(100) + LEASE_MARGIN)
        );
    }
}
