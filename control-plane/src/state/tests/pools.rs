//! Pools: spec changes, generations, deletion.

use super::*;

#[test]
fn a_changed_spec_bumps_generation_and_old_containers_are_not_offered() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 1);
    h.warm(&p, &n, 1);
    let mut spec = h.state.pool(&p).unwrap().spec.clone();
    let same = h.apply(Command::PutPool { spec: spec.clone() });
    assert!(matches!(same, Response::Pool { ref pool, created: false } if pool.generation == 1));
    spec.image = "img:v2".into();
    h.apply(Command::PutPool { spec });
    assert_eq!(h.state.pool(&p).unwrap().generation, 2);
    assert_eq!(rejection(h.allocate(&p, None)), RejectCode::NoCapacity);
    // A plan made for the old generation is stale.
    let r = h.apply(Command::PlanContainers {
        pool: p.clone(),
        generation: 1,
        placements: vec![(ContainerId::new(), n.clone())],
    });
    assert_eq!(rejection(r), RejectCode::Conflict);
    let new = h.warm(&p, &n, 1);
    assert_eq!(allocation(h.allocate(&p, None)).0.container_id, new[0]);
}

#[test]
fn delete_pool_releases_its_containers() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 2);
    h.warm(&p, &n, 2);
    let (a, _) = allocation(h.allocate(&p, None));
    h.apply(Command::DeletePool { name: p.clone() });
    assert!(h.state.pool(&p).is_none());
    assert_eq!(
        h.state.allocation(&a.id).unwrap().release_reason,
        Some(ReleaseReason::PoolDeleted)
    );
    assert!(h
        .state
        .containers()
        .all(|c| c.state == ContainerState::Releasing));
    assert_eq!(
        rejection(h.apply(Command::DeletePool { name: p })),
        RejectCode::NotFound
    );
}

#[test]
fn old_spec_containers_count_as_outdated_not_warm() {
    let mut h = Harness::new();
    let n = h.node("n1");
    let p = h.pool("demo", 2);
    h.warm(&p, &n, 2);
    let mut spec = h.state.pool(&p).unwrap().spec.clone();
    spec.image = "img:v2".into();
    h.apply(Command::PutPool { spec });
    // Kept as stand-ins while new ones are made, but nothing to hand out: status says so.
    let c = h.state.pool_counts(&p);
    assert_eq!((c.warm, c.outdated, c.total), (0, 2, 2));
    assert!(!h.state.has_allocatable(&p));
    let status = h.state.status(Timestamp(h.now));
    assert_eq!((status.totals.warm, status.totals.outdated), (0, 2));
    assert_eq!(status.nodes[0].counts.outdated, 2);
    // New ones of the current spec are warm.
    h.warm(&p, &n, 1);
    let c = h.state.pool_counts(&p);
    assert_eq!((c.warm, c.outdated), (1, 2));
}
