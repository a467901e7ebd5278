//! How large a snapshot of a big fleet is, raw and as written (compressed). Not a behaviour
//! test: run it by name (`cargo test --release -p warmpool-control-plane snapshot_size --
//! --ignored --nocapture`); the figure goes to docs/BENCHMARKS.md.

use super::*;

fn req(at: u64, cmd: Command) -> Request {
    Request {
        at: Timestamp(at),
        cmd,
    }
}

fn entry(s: &PoolState, id: ContainerId, n: u32) -> InventoryEntry {
    let c = s.container(&id).unwrap();
    InventoryEntry {
        id,
        pool: c.pool.clone(),
        generation: c.generation,
        docker_id: format!("{:064x}", u128::from(n) * 0x9e37_79b9_7f4a_7c15),
        ipv6: Some(
            format!("fd36:1:2:3:{:x}:{:x}:9a2e:dbac", n >> 16, n & 0xffff)
                .parse()
                .unwrap(),
        ),
        status: ObservedStatus::Running,
        health: Health::Healthy,
        exit_code: None,
        oom_killed: false,
        last_activity_at: None,
        paused: false,
    }
}

#[test]
#[ignore = "a measurement; run by name with --ignored"]
fn snapshot_size_at_a_thousand_nodes_of_a_hundred_containers() {
    let (nodes, per_node) = (1_000u32, 100u32);
    // One short of 100,000 live, the most a pool may have, so each cycle has room for its
    // replacement before the released container is gone.
    let mut s = PoolState::default();
    let (mut i, mut at) = (0u64, 1_000_000u64);
    let mut apply = |s: &mut PoolState, cmd: Command| {
        i += 1;
        at += 10;
        s.apply(i, req(at, cmd))
    };
    let pool = PoolName::new("ide").unwrap();
    let mut spec = PoolSpec::new(pool.clone(), "registry.example.com/team/ide:2026.12");
    spec.max_total = 100_000;
    spec.min_warm = nodes * per_node - 1;
    let created = apply(&mut s, Command::CreatePool { spec });
    assert!(!matches!(created, Response::Rejected(_)), "{created:?}");
    let mut n = 0u32;
    let mut node_ids = Vec::new();
    for k in 0..nodes {
        let node = NodeId::new(format!("host-{k:04}")).unwrap();
        let joined = apply(
            &mut s,
            Command::NodeJoin {
                node: node.clone(),
                ipv6_prefix: format!("fd36:{k:x}::/64"),
                labels: [("region".to_string(), "eu".to_string())].into(),
                capacity: Resources {
                    cpu_millis: 64_000,
                    memory_mb: 262_144,
                },
                agent_version: "0.1.0".into(),
            },
        );
        assert!(!matches!(joined, Response::Rejected(_)), "{joined:?}");
        let here = if k + 1 == nodes {
            per_node - 1
        } else {
            per_node
        };
        let ids: Vec<ContainerId> = (0..here).map(|_| ContainerId::new()).collect();
        let planned = apply(
            &mut s,
            Command::PlanContainers {
                pool: pool.clone(),
                generation: 1,
                placements: ids.iter().map(|id| (*id, node.clone())).collect(),
            },
        );
        assert!(s.container(&ids[0]).is_some(), "{planned:?}");
        let entries = ids
            .iter()
            .map(|id| {
                n += 1;
                entry(&s, *id, n)
            })
            .collect();
        apply(
            &mut s,
            Command::Observe {
                node: node.clone(),
                entries,
            },
        );
        node_ids.push(node);
    }
    // Allocations come and go until every retention cap is full: released allocations,
    // ended containers and events.
    for cycle in 0..RELEASED_ALLOCATION_RETENTION as u32 + 1_000 {
        let r = apply(
            &mut s,
            Command::Allocate {
                allocation_id: AllocationId::new(),
                pool: pool.clone(),
                session: SessionId::new(format!("s-{}", uuid::Uuid::now_v7())).unwrap(),
                lease_ms: 600_000,
                idempotency_key: Some(format!("job-{}", uuid::Uuid::now_v7())),
                wait_ms: 0,
                tenant: Default::default(),
                metadata: Default::default(),
                with_settings: false,
                token_sha256: Some("ab".repeat(32)),
                workspace: None,
                asynchronous: false,
                location: None,
                max_lifetime_secs: None,
            },
        );
        let Response::Allocation { allocation, .. } = r else {
            panic!("cycle {cycle}: {r:?}");
        };
        apply(
            &mut s,
            Command::Release {
                allocation_id: allocation.id,
                reason: ReleaseReason::Client,
            },
        );
        apply(
            &mut s,
            Command::ContainersGone {
                gone: vec![(allocation.container_id, ContainerEndReason::Destroyed)],
            },
        );
        let node = allocation.node.clone();
        let id = ContainerId::new();
        apply(
            &mut s,
            Command::PlanContainers {
                pool: pool.clone(),
                generation: 1,
                placements: vec![(id, node.clone())],
            },
        );
        n += 1;
        let e = entry(&s, id, n);
        apply(
            &mut s,
            Command::Observe {
                node,
                entries: vec![e],
            },
        );
    }
    let started = std::time::Instant::now();
    let json = serde_json::to_vec(&s).unwrap();
    let json_took = started.elapsed();
    let started = std::time::Instant::now();
    let packed = crate::raft::state_machine::encode_snapshot(&s).unwrap();
    let took = started.elapsed();
    eprintln!(
        "SNAPSHOT {} nodes x {} containers, {} events, {} allocations kept: JSON {:.1} MB, as written (gzip) {:.1} MB in {:?} (the JSON alone {:?})",
        nodes,
        per_node,
        s.events.len(),
        s.allocations.len(),
        json.len() as f64 / 1e6,
        packed.len() as f64 / 1e6,
        took,
        json_took
    );
    assert!(packed.len() <= 20_000_000, "{} bytes", packed.len());
}
