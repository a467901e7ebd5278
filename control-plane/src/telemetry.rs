//! HELP text of every metric the control plane exports on `/metrics` (docs/metrics.md lists
//! them with their labels).
//!
//! The recorder prints `# HELP` only for metrics described to it, so [`describe`] runs once
//! right after the recorder is installed, before any metric is touched; a metric added
//! without a line here has no HELP, which `tests/tests/metrics.rs` catches.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// Describes every control-plane metric to the installed recorder.
pub fn describe() {
    // Allocations.
    describe_histogram!(
        "warmpool_allocation_duration_seconds",
        Unit::Seconds,
        "Time from an allocation request's arrival to its answer, forwarding and waiting included, by pool and outcome (warm, waited, replayed, no_capacity, refused, unavailable)"
    );
    describe_counter!(
        "warmpool_allocations_total",
        "Allocation requests this member answered, by pool and outcome"
    );
    describe_gauge!(
        "warmpool_allocation_waiting",
        "Allocation requests waiting on this member now for a warm container, by pool"
    );

    // Pools and nodes, from this member's replica.
    describe_gauge!(
        "warmpool_pool_containers",
        "Live containers of a pool by state (creating, warm, allocated, releasing, unhealthy, outdated), from this member's replica"
    );
    describe_gauge!(
        "warmpool_node_containers",
        "Live containers on a node by state (creating, warm, allocated, unhealthy), from this member's replica"
    );
    describe_gauge!(
        "warmpool_pool_wanted",
        "Warm containers the scaler aims for in a pool"
    );
    describe_gauge!(
        "warmpool_pool_queue_length",
        "Allocations queued in the replicated state for a container of the pool to become warm"
    );
    describe_counter!(
        "warmpool_pool_container_seconds_total",
        Unit::Seconds,
        "Container time of a pool, warm and allocated, for cost"
    );
    describe_gauge!(
        "warmpool_pool_cost",
        "Cost so far at the pool's price_per_hour, warm and allocated (pools with a price only)"
    );

    // The leader's decisions.
    describe_counter!(
        "warmpool_scaler_decisions_total",
        "Changes of a pool's wanted warm count, by reason"
    );
    describe_counter!(
        "warmpool_keepwarm_planned_total",
        "Containers the leader planned for a pool (creates sent to agents)"
    );
    describe_counter!(
        "warmpool_keepwarm_retired_total",
        "Warm containers the leader retired, by reason (scale-down, old generation, drain)"
    );
    describe_histogram!(
        "warmpool_leader_step_seconds",
        Unit::Seconds,
        "One pass of the leader loop (liveness, reconciliation, scaling, keep-warm, leases), its own writes included"
    );
    describe_histogram!(
        "warmpool_leader_step_read_seconds",
        Unit::Seconds,
        "The part of a leader pass spent reading the replicated state"
    );
    describe_histogram!(
        "warmpool_leader_duty_read_seconds",
        Unit::Seconds,
        "One read of the replicated state by one duty of the leader (writes wait meanwhile)"
    );

    // Raft.
    describe_gauge!("warmpool_raft_term", "Current Raft term of this member");
    describe_gauge!(
        "warmpool_heap_allocated_bytes",
        "Bytes the member holds in its heap (the allocator's count, every 5 s)"
    );
    describe_gauge!(
        "warmpool_heap_resident_bytes",
        "Bytes the allocator keeps resident for the member's heap, freed pages not yet returned included"
    );
    describe_gauge!(
        "warmpool_raft_is_leader",
        "1 while this member is the Raft leader, else 0"
    );
    describe_gauge!(
        "warmpool_raft_leader_id",
        "Member id of the Raft leader this member knows, -1 when none"
    );
    describe_gauge!(
        "warmpool_raft_last_log_index",
        "Index of the last entry in this member's Raft log"
    );
    describe_gauge!(
        "warmpool_raft_commit_index",
        "Highest Raft log index this member knows committed"
    );
    describe_gauge!(
        "warmpool_raft_applied_index",
        "Highest Raft log index applied to this member's state machine"
    );
    describe_gauge!(
        "warmpool_raft_snapshot_index",
        "Raft log index of this member's last snapshot"
    );
    describe_gauge!(
        "warmpool_raft_snapshot_bytes",
        Unit::Bytes,
        "Size of the last snapshot this member built"
    );
    describe_histogram!(
        "warmpool_raft_write_seconds",
        Unit::Seconds,
        "Time from proposing one Raft log entry (one write, or a batch of them) to its commit and apply on this member, the leader"
    );
    describe_counter!(
        "warmpool_raft_fast_elections_total",
        "Elections this member stood for as soon as the leases ended, having found the leader's process gone"
    );
    describe_histogram!(
        "warmpool_raft_log_flush_seconds",
        Unit::Seconds,
        "Time of one flush of the Raft log to disk (every append waits for one before it counts towards a quorum)"
    );
    describe_histogram!(
        "warmpool_raft_log_flush_batch",
        "Raft log writes made durable by one flush (group commit)"
    );
    describe_counter!(
        "warmpool_writes_refused_overloaded_total",
        "Writes refused at once (503) because this member's proposal queue was full"
    );
    describe_counter!(
        "warmpool_allocations_unanswered_total",
        "Allocation requests whose client got no answer (timed out, or hung up), recorded so \
         that what they made is released unless the client comes back for it"
    );
    describe_histogram!(
        "warmpool_raft_proposal_requests",
        "Requests carried by one proposed Raft log entry (concurrent writes share one)"
    );

    // HTTP and events.
    describe_counter!(
        "warmpool_http_requests_total",
        "HTTP requests answered, by method, matched route template and status"
    );
    describe_histogram!(
        "warmpool_http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request, by method and matched route template"
    );
    describe_gauge!(
        "warmpool_event_streams",
        "Open /v1/events/stream connections on this member"
    );
    describe_counter!(
        "warmpool_events_total",
        "Events in the replicated event log"
    );

    // This member's archive.
    describe_counter!(
        "warmpool_archive_records_total",
        "Records evicted from the replicated state that this member wrote to its archive"
    );
    describe_counter!(
        "warmpool_archive_errors_total",
        "Archive writes or prunings on this member that failed (the records are not in its archive)"
    );
    describe_counter!(
        "warmpool_archive_dropped_total",
        "Batches of evicted records dropped because this member's archive writer was too far behind"
    );
    describe_counter!(
        "warmpool_archive_pruned_segments_total",
        "Archive files this member deleted, oldest first, over --archive-max-bytes or --archive-max-age-days"
    );
    describe_counter!(
        "warmpool_archive_pruned_bytes_total",
        Unit::Bytes,
        "Bytes of the archive files this member deleted"
    );

    // Agents, as heard by this member.
    describe_counter!(
        "warmpool_agent_heartbeats_received_total",
        "Agent heartbeats this member received, from all agents"
    );
    describe_counter!(
        "warmpool_agent_facts_received_total",
        "Agent facts this member received, from all agents"
    );
    describe_counter!(
        "warmpool_agent_messages_rejected_total",
        "Agent messages this member dropped: malformed, or naming another node than their subject"
    );
}
