//! Ends what has run out: leases past their expiry, allocations on a draining node past its
//! deadline, allocations nobody came back for after their request went unanswered, waits past
//! their deadline, and sessions idle longer than their pool allows.

use tracing::info;
use warmpool_proto::records::ReleaseReason;
use warmpool_proto::Timestamp;

use super::{Effect, Engine, Facts, Now};
use crate::state::{Command, PoolState};

pub(super) fn decide(e: &Engine, s: &PoolState, facts: &Facts, now: Now) -> Vec<Effect> {
    let mut out = Vec::new();
    if s.pending()
        .any(|(_, q)| q.iter().any(|p| p.deadline < now.wall))
    {
        out.push(Effect::propose(Command::ExpireWaits));
    }
    let release = |allocation_id, reason| {
        Effect::propose(Command::Release {
            allocation_id,
            reason,
        })
    };
    // One release per allocation, for the first reason that applies.
    let ends = s
        .expired_allocations(now.wall)
        .map(|a| (a.id, ReleaseReason::Expired))
        .chain(
            s.overdue_drain_allocations(now.wall)
                .into_iter()
                .map(|id| (id, ReleaseReason::Drained)),
        )
        .chain(
            s.abandoned_allocations(now.wall)
                .map(|id| (id, ReleaseReason::Abandoned)),
        )
        .chain(
            idle(e, s, facts, now)
                .into_iter()
                .map(|id| (id, ReleaseReason::Idle)),
        );
    let mut seen = std::collections::HashSet::new();
    out.extend(
        ends.filter(|(id, _)| seen.insert(*id))
            .map(|(id, reason)| release(id, reason)),
    );
    out
}

/// Allocations of pools with `idle_timeout_secs` that saw no traffic for that long.
/// Idleness counts from the latest of: the allocation, the last traffic the agent measured,
/// when this leader took over, and when it first heard the agent's current process (activity
/// before either is unknown, so it is not held against anyone).
fn idle(e: &Engine, s: &PoolState, facts: &Facts, now: Now) -> Vec<warmpool_proto::AllocationId> {
    let took_over = Timestamp(
        now.wall
            .as_millis()
            .saturating_sub(now.mono.saturating_duration_since(e.since).as_millis() as u64),
    );
    let mut out = Vec::new();
    // Most fleets have no pool with an idle timeout: then no allocation need be read.
    if s.pools().all(|p| p.spec.idle_timeout_secs.is_none()) {
        return out;
    }
    for a in s.active_allocations() {
        let Some(timeout) = s.pool(&a.pool).and_then(|p| p.spec.idle_timeout_secs) else {
            continue;
        };
        let Some((last_activity, boot_seen_at)) = facts.activity(&a.node, &a.container_id) else {
            continue;
        };
        let since = [
            Some(a.created_at),
            last_activity,
            Some(boot_seen_at),
            Some(took_over),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(a.created_at);
        let idle = now.wall.since(since);
        if idle.as_secs() >= timeout {
            info!(allocation = %a.id, container = %a.container_id, idle_secs = idle.as_secs(), "releasing idle allocation");
            out.push(a.id);
        }
    }
    out
}
