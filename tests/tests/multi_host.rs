//! Warmpool across hosts: several network namespaces on this machine, each with its own
//! dockerd, /64 and real `warmpool-agent`, joined by routed IPv6 (see `warmpool_tests::hosts`).
//!
//! Spread and cross-host reachability with real source addresses, placement constraints,
//! a host dying (agent and Docker) and coming back, a host cut off the network and coming
//! back, drain and uncordon, and `deploy/install-agent.sh` bringing up an agent that joins.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use poolctl::{Client, NodeAction};
use warmpool_proto::api::{ContainerQuery, CreateAllocation, EventQuery};
use warmpool_proto::records::NodeStatus;
use warmpool_proto::{
    Container, ContainerState, Event, EventKind, NodeId, PoolName, PoolSpec, Timestamp,
};
use warmpool_tests::hosts::{eventually, HostCluster, HostSpec};
use warmpool_tests::{http_get, in_prefix, TestCluster};

const POOL: &str = "demo";
const WARM: Duration = Duration::from_secs(40);

fn three() -> Vec<HostSpec> {
    vec![HostSpec::new(); 3]
}

fn demo(min_warm: u32) -> PoolSpec {
    TestCluster::demo_spec(POOL, min_warm)
}

/// Live containers of `pool`, by node id.
async fn live_by_node(
    client: &Client,
    pool: &str,
) -> Result<BTreeMap<String, Vec<Container>>, String> {
    let q = ContainerQuery {
        pool: Some(pool.into()),
        ..Default::default()
    };
    let all = client
        .list_containers(&q)
        .await
        .map_err(|e| e.to_string())?;
    let mut by: BTreeMap<String, Vec<Container>> = BTreeMap::new();
    for c in all {
        by.entry(c.node.to_string()).or_default().push(c);
    }
    Ok(by)
}

/// Warm container count per node of `pool`.
fn warm_counts(by: &BTreeMap<String, Vec<Container>>) -> BTreeMap<String, usize> {
    by.iter()
        .map(|(n, v)| {
            let warm = v.iter().filter(|c| c.state == ContainerState::Warm).count();
            (n.clone(), warm)
        })
        .filter(|(_, w)| *w > 0)
        .collect()
}

/// Waits until `pool` has exactly `n` warm containers, all on `nodes`, and nothing else live
/// (no creating, no extra); returns them by node.
async fn wait_warm_on(
    c: &HostCluster,
    pool: &str,
    n: usize,
    nodes: &[&str],
    timeout: Duration,
) -> BTreeMap<String, Vec<Container>> {
    let allowed: BTreeSet<&str> = nodes.iter().copied().collect();
    let allowed = &allowed;
    eventually(
        timeout,
        &format!("exactly {n} warm containers of {pool}, all on {nodes:?}"),
        || async move {
            let by = live_by_node(&c.client, pool).await?;
            let warm: usize = warm_counts(&by).values().sum();
            let live: usize = by.values().map(Vec::len).sum();
            let elsewhere: Vec<&String> = by.keys().filter(|k| !allowed.contains(k.as_str())).collect();
            if warm == n && live == n && elsewhere.is_empty() {
                Ok(by)
            } else {
                Err(format!(
                    "{warm} warm, {live} live, warm by node {:?}, live on other nodes {elsewhere:?}",
                    warm_counts(&by)
                ))
            }
        },
    )
    .await
}

async fn events(client: &Client, q: EventQuery) -> Vec<Event> {
    client
        .events(&EventQuery {
            limit: Some(1000),
            ..q
        })
        .await
        .expect("events")
}

/// Live container records of the control plane vs the Warmpool containers in every host's
/// dockerd (any state): `Ok(total)` when they are the same set, each on the host of its record
/// and running, and the total in `/v1/status` agrees. Nothing leaked, nothing double-counted.
async fn records_match_docker(c: &HostCluster) -> Result<usize, String> {
    let status = c.client.status().await.map_err(|e| e.to_string())?;
    let records = c
        .client
        .list_containers(&ContainerQuery::default())
        .await
        .map_err(|e| e.to_string())?;
    let want: BTreeSet<(String, String)> = records
        .iter()
        .map(|r| (r.node.to_string(), r.id.to_string()))
        .collect();
    let mut have = BTreeSet::new();
    let mut not_running = Vec::new();
    for (name, containers) in c.docker_by_host() {
        let node = c.host(&name).node.clone();
        for x in containers {
            if x.state != "running" {
                not_running.push(format!("{} on {name} is {}", x.id, x.state));
            }
            have.insert((node.clone(), x.id));
        }
    }
    let total = status.totals.total as usize;
    if want == have && total == have.len() && not_running.is_empty() {
        Ok(total)
    } else {
        Err(format!(
            "status total {total}, {} live records, {} Warmpool containers in Docker; only in records: {:?}; only in Docker: {:?}; not running: {not_running:?}",
            want.len(),
            have.len(),
            want.difference(&have).collect::<Vec<_>>(),
            have.difference(&want).collect::<Vec<_>>()
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_spreads_over_hosts_and_containers_answer_across_hosts_with_real_sources() {
    let c = HostCluster::start(&three()).await;
    c.client.create_pool(&demo(6)).await.expect("create pool");
    let nodes: Vec<&str> = c.hosts.iter().map(|h| h.node.as_str()).collect();
    let by = wait_warm_on(&c, POOL, 6, &nodes, WARM).await;
    assert_eq!(
        warm_counts(&by).values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2],
        "6 warm spread 2/2/2 over 3 equal hosts: {:?}",
        warm_counts(&by)
    );

    for h in &c.hosts {
        let mine = &by[&h.node];
        // Each record's address is in its host's /64, and its host's dockerd runs it.
        let running = h.running_ids();
        for w in mine {
            let ip = w.ipv6.expect("a warm container has an address");
            assert!(
                in_prefix(&ip, &h.prefix),
                "{ip} is not in {}'s {}",
                h.name,
                h.prefix
            );
            assert!(
                running.contains(&w.id.to_string()),
                "{} not running on {}",
                w.id,
                h.name
            );
            // Routed from the root namespace too (the test process is a client).
            let (status, _) = http_get(ip, w.port, "/healthz")
                .await
                .unwrap_or_else(|e| panic!("{ip} unreachable from the root namespace: {e}"));
            assert_eq!(status, 200);
        }
    }

    // Every host reaches a container on the next host, and the container sees the caller's
    // own transit address: routed, no NAT.
    for (i, from) in c.hosts.iter().enumerate() {
        let to = &c.hosts[(i + 1) % c.hosts.len()];
        let target = &by[&to.node][0];
        let ip = target.ipv6.unwrap();
        let body = from
            .fetch(ip, target.port, "/cgi-bin/whoami")
            .await
            .unwrap_or_else(|e| panic!("host {} -> container on {}: {e}", from.name, to.name));
        assert_eq!(
            body.trim(),
            format!("[{}]", from.transit),
            "the container on {} saw {} as the source of a request from host {}",
            to.name,
            body.trim(),
            from.name
        );
    }
    assert_eq!(records_match_docker(&c).await, Ok(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_constrained_pool_lands_only_on_hosts_with_the_label() {
    let c = HostCluster::start(&[
        HostSpec::new().labels(&["region=eu", "disk=ssd"]),
        HostSpec::new().labels(&["region=us"]),
        HostSpec::new().labels(&["region=eu"]),
    ])
    .await;
    let nodes = c.client.nodes().await.unwrap();
    let labels: BTreeMap<String, BTreeMap<String, String>> = nodes
        .iter()
        .map(|n| (n.node.id.to_string(), n.node.labels.clone()))
        .collect();
    assert_eq!(labels[&c.host("a").node]["region"], "eu");
    assert_eq!(labels[&c.host("a").node]["disk"], "ssd");
    assert_eq!(labels[&c.host("b").node]["region"], "us");

    let mut eu = TestCluster::demo_spec("eu", 4);
    eu.constraints.insert("region".into(), "eu".into());
    let mut mars = TestCluster::demo_spec("mars", 2);
    mars.constraints.insert("region".into(), "mars".into());
    c.client.create_pool(&mars).await.unwrap();
    c.client.create_pool(&eu).await.unwrap();

    let (a, b, cc) = (&c.host("a").node, &c.host("b").node, &c.host("c").node);
    let by = wait_warm_on(&c, "eu", 4, &[a, cc], WARM).await;
    assert_eq!(
        warm_counts(&by).get(a.as_str()),
        Some(&2),
        "{:?}",
        warm_counts(&by)
    );
    assert_eq!(
        warm_counts(&by).get(cc.as_str()),
        Some(&2),
        "{:?}",
        warm_counts(&by)
    );
    // Created at the same moment as "eu", which is warm by now: nothing may fit "mars".
    let s = c.client.status().await.unwrap();
    let m = s.pools.iter().find(|p| p.name.as_str() == "mars").unwrap();
    assert_eq!(m.counts.total, 0, "no node is in region mars: {m:?}");
    assert!(
        c.host("b").warmpool_containers().is_empty(),
        "host b (region=us) runs nothing: {:?}",
        c.host("b").warmpool_containers()
    );
    let created = events(
        &c.client,
        EventQuery {
            kind: Some("container_created".into()),
            node: Some(b.clone()),
            ..Default::default()
        },
    )
    .await;
    assert!(
        created.is_empty(),
        "nothing was ever planned on b: {created:?}"
    );
}

/// Kills host b's agent and Docker (a power cut); returns b's containers before, and when.
/// How host b's Docker goes in [`kill_host_b`].
#[derive(Clone, Copy, Debug, PartialEq)]
enum DockerEnd {
    /// A power cut: dockerd, containerd, shims and containers SIGKILLed.
    Crash,
    /// `dockerd` SIGTERMed: it stops every container first (10 s each for the demo image,
    /// whose httpd ignores SIGTERM as PID 1).
    Stop,
}

/// Kills host b's agent, then ends its Docker; returns b's containers before, and when the
/// agent was killed (the control plane's clock: the same machine's).
async fn kill_host_b(c: &mut HostCluster, end: DockerEnd) -> (Vec<Container>, Timestamp) {
    let b = c.host("b").node.clone();
    let before = live_by_node(&c.client, POOL).await.unwrap()[&b].clone();
    assert_eq!(before.len(), 2);
    let killed_at = Timestamp::now();
    let h = c.host_mut("b");
    h.kill_agent();
    match end {
        DockerEnd::Crash => h.crash_docker(),
        DockerEnd::Stop => h.stop_dockerd(),
    }
    (before, killed_at)
}

async fn three_hosts_with_six_warm() -> HostCluster {
    let c = HostCluster::start(&three()).await;
    c.client.create_pool(&demo(6)).await.expect("create pool");
    let nodes: Vec<&str> = c.hosts.iter().map(|h| h.node.as_str()).collect();
    let by = wait_warm_on(&c, POOL, 6, &nodes, WARM).await;
    assert_eq!(
        warm_counts(&by).len(),
        3,
        "on every host: {:?}",
        warm_counts(&by)
    );
    c
}

/// After `kill_host_b`: b is down within 10 s of the kill, the pool is back at 6 warm on a
/// and c, and the log says why. Returns the `node_down` event.
async fn b_is_down_and_replaced(
    c: &HostCluster,
    before: &[Container],
    killed_at: Timestamp,
) -> Event {
    let b = c.host("b").node.clone();
    let down = c
        .wait_node(&b, Duration::from_secs(10), "down", |n| {
            n.node.status == NodeStatus::Down
        })
        .await;
    // When the control plane recorded it, not when this test looked.
    let took = down.node.status_changed_at.since(killed_at);
    assert!(took < Duration::from_secs(10), "down after {took:?}");
    eprintln!("node {b} down {took:?} after its agent died");
    assert!(
        down.node.reason.as_deref().is_some_and(|r| !r.is_empty()),
        "{down:?}"
    );

    let (a, cc) = (c.host("a").node.clone(), c.host("c").node.clone());
    wait_warm_on(c, POOL, 6, &[&a, &cc], WARM).await;
    eprintln!(
        "pool back at 6 warm on a and c {:?} after the kill",
        Timestamp::now().since(killed_at)
    );

    let downs = events(
        &c.client,
        EventQuery {
            kind: Some("node_down".into()),
            node: Some(b.clone()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(downs.len(), 1, "{downs:?}");
    let why = downs[0].reason.clone().unwrap_or_default();
    assert!(why.contains("heartbeat"), "node_down says why: {why:?}");
    for old in before {
        let ev = events(
            &c.client,
            EventQuery {
                container: Some(old.id.to_string()),
                ..Default::default()
            },
        )
        .await;
        let end = ev.last().expect("events of the lost container");
        assert_eq!(end.kind, EventKind::ContainerTerminated, "{ev:?}");
        assert_eq!(end.reason.as_deref(), Some("node_down"), "{end:?}");
        assert!(end.seq > downs[0].seq);
        let rec = c.client.get_container(old.id).await.unwrap();
        assert_eq!(rec.state, ContainerState::Terminated);
    }
    downs[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_host_goes_down_and_its_containers_are_replaced_elsewhere() {
    let mut c = three_hosts_with_six_warm().await;
    let (before, killed_at) = kill_host_b(&mut c, DockerEnd::Crash).await;
    b_is_down_and_replaced(&c, &before, killed_at).await;
    // The fleet view: b down, a and c ready, counts per node agree.
    let nodes = c.client.nodes().await.unwrap();
    for n in &nodes {
        let want = if n.node.id.as_str() == c.host("b").node {
            NodeStatus::Down
        } else {
            NodeStatus::Ready
        };
        assert_eq!(n.node.status, want, "{}", n.node.id);
    }
    assert_eq!(records_match_docker(&c).await, Ok(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_host_that_comes_back_loses_its_stale_containers_and_is_ready_again() {
    let mut c = three_hosts_with_six_warm().await;
    // This time Docker shuts down cleanly (the previous test has the power cut).
    let (before, killed_at) = kill_host_b(&mut c, DockerEnd::Stop).await;
    let down = b_is_down_and_replaced(&c, &before, killed_at).await;
    let b = c.host("b").node.clone();

    // Docker first: it finds b's old containers (exited).
    c.host_mut("b").start_dockerd();
    let leftovers = c.host("b").warmpool_containers();
    let stale: BTreeSet<String> = before.iter().map(|x| x.id.to_string()).collect();
    assert_eq!(
        leftovers
            .iter()
            .map(|x| x.id.clone())
            .collect::<BTreeSet<_>>(),
        stale,
        "b's dockerd still has its old containers before the agent returns"
    );
    // Then the agent.
    let back_at = Instant::now();
    c.host_mut("b").start_agent();
    c.wait_node(&b, Duration::from_secs(15), "ready again", |n| {
        n.node.status == NodeStatus::Ready
    })
    .await;
    let (h, stale) = (c.host("b"), &stale);
    eventually(
        Duration::from_secs(30),
        "b's stale containers to be removed",
        || async move {
            let left: Vec<String> = h
                .warmpool_containers()
                .into_iter()
                .filter(|x| stale.contains(&x.id))
                .map(|x| format!("{} ({})", x.id, x.state))
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("still in b's dockerd: {left:?}"))
            }
        },
    )
    .await;
    eprintln!(
        "b ready and cleaned {:?} after its agent restarted",
        back_at.elapsed()
    );

    // Nothing double-counted: the records, the status totals and what runs agree, at 6.
    let total = eventually(Duration::from_secs(20), "records to match Docker", || {
        records_match_docker(&c)
    })
    .await;
    assert_eq!(total, 6);
    let s = c.client.status().await.unwrap();
    assert_eq!(s.pools[0].counts.warm, 6);
    for old in &before {
        let rec = c.client.get_container(old.id).await.unwrap();
        assert_eq!(
            rec.state,
            ContainerState::Terminated,
            "stale records stay ended"
        );
    }
    let joined = events(
        &c.client,
        EventQuery {
            kind: Some("node_joined".into()),
            node: Some(b.clone()),
            after: Some(down.seq),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(joined.len(), 1, "{joined:?}");
    assert_eq!(joined[0].reason.as_deref(), Some("returned"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_host_goes_down_and_its_orphans_are_destroyed_when_it_returns() {
    let c = three_hosts_with_six_warm().await;
    let b = c.host("b").node.clone();
    let before = live_by_node(&c.client, POOL).await.unwrap()[&b].clone();
    let cut_at = Instant::now();
    c.host("b").cut_link();
    c.wait_node(&b, Duration::from_secs(10), "down", |n| {
        n.node.status == NodeStatus::Down
    })
    .await;
    eprintln!("partitioned node down after {:?}", cut_at.elapsed());
    let (a, cc) = (c.host("a").node.clone(), c.host("c").node.clone());
    wait_warm_on(&c, POOL, 6, &[&a, &cc], WARM).await;
    // Cut off, b's agent and containers live on: the pool has replaced them all the same.
    let running_on_b: BTreeSet<String> = c.host("b").running_ids().into_iter().collect();
    let old: BTreeSet<String> = before.iter().map(|x| x.id.to_string()).collect();
    assert_eq!(
        running_on_b, old,
        "b still runs its containers while cut off"
    );
    // Unreachable from the others meanwhile.
    let ip = before[0].ipv6.unwrap();
    assert!(c.host("a").fetch(ip, 8080, "/healthz").await.is_err());

    c.host("b").restore_link();
    let back_at = Instant::now();
    c.wait_node(&b, Duration::from_secs(30), "ready again", |n| {
        n.node.status == NodeStatus::Ready && n.heartbeat_age_ms.is_some_and(|a| a < 2000)
    })
    .await;
    let (h, old) = (c.host("b"), &old);
    eventually(
        Duration::from_secs(30),
        "b's orphans to be destroyed",
        || async move {
            let left: Vec<String> = h
                .warmpool_containers()
                .into_iter()
                .filter(|x| old.contains(&x.id))
                .map(|x| format!("{} ({})", x.id, x.state))
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("still in b's dockerd: {left:?}"))
            }
        },
    )
    .await;
    eprintln!(
        "b back and its orphans gone {:?} after the link came back",
        back_at.elapsed()
    );
    let total = eventually(Duration::from_secs(20), "records to match Docker", || {
        records_match_docker(&c)
    })
    .await;
    assert_eq!(total, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_host_moves_its_warm_containers_and_uncordon_lets_it_take_new_ones() {
    let c = three_hosts_with_six_warm().await;
    let (a, b, hc) = (
        c.host("a").node.clone(),
        c.host("b").node.clone(),
        c.host("c").node.clone(),
    );
    let before = live_by_node(&c.client, POOL).await.unwrap()[&hc].clone();
    let node = NodeId::new(&hc).unwrap();
    let view = c
        .client
        .node_action(&node, NodeAction::Drain)
        .await
        .expect("drain");
    assert_eq!(view.node.status, NodeStatus::Draining);
    let drained = events(
        &c.client,
        EventQuery {
            kind: Some("node_draining".into()),
            node: Some(hc.clone()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(drained.len(), 1, "{drained:?}");
    let drain_seq = drained[0].seq;

    let by = wait_warm_on(&c, POOL, 6, &[&a, &b], WARM).await;
    assert_eq!(
        warm_counts(&by).values().copied().collect::<Vec<_>>(),
        vec![3, 3]
    );
    let h = c.host("c");
    eventually(
        Duration::from_secs(20),
        "c's containers to be destroyed in Docker",
        || async move {
            let left = h.warmpool_containers();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        },
    )
    .await;
    for old in &before {
        let rec = c.client.get_container(old.id).await.unwrap();
        assert_eq!(rec.state, ContainerState::Terminated, "{rec:?}");
        assert_eq!(
            rec.reason,
            Some(warmpool_proto::ContainerEndReason::Drain),
            "{rec:?}"
        );
    }
    let created_on_c = events(
        &c.client,
        EventQuery {
            kind: Some("container_created".into()),
            node: Some(hc.clone()),
            after: Some(drain_seq),
            ..Default::default()
        },
    )
    .await;
    assert!(
        created_on_c.is_empty(),
        "nothing new lands on a draining node: {created_on_c:?}"
    );
    let s = c.client.status().await.unwrap();
    let cn = s.nodes.iter().find(|n| n.node.as_str() == hc).unwrap();
    assert_eq!(cn.status, NodeStatus::Draining);
    assert_eq!(cn.counts.total, 0);

    // Uncordon: c is ready, and the next container the pool makes goes to it (it holds the
    // fewest of the pool). An allocation makes the pool refill.
    let view = c
        .client
        .node_action(&node, NodeAction::Uncordon)
        .await
        .expect("uncordon");
    assert_eq!(view.node.status, NodeStatus::Ready);
    let alloc = c
        .client
        .allocate(&CreateAllocation {
            pool: PoolName::new(POOL).unwrap(),
            session_id: None,
            lease_seconds: None,
            wait_ms: Some(5_000),
            idempotency_key: None,
            tenant: None,
            env: Default::default(),
            secrets: Default::default(),
            metadata: Default::default(),
            wait_for: None,
            asynchronous: false,
            location: None,
            max_lifetime_secs: None,
            workspace: None,
        })
        .await
        .expect("allocate");
    assert_ne!(alloc.node.as_str(), hc, "c had nothing warm to hand out");
    let (client, hc_ref) = (&c.client, &hc);
    let refill = eventually(
        Duration::from_secs(30),
        "a warm refill on c",
        || async move {
            let by = live_by_node(client, POOL).await?;
            let on_c: Vec<Container> = by
                .get(hc_ref)
                .map(|v| {
                    v.iter()
                        .filter(|x| x.state == ContainerState::Warm)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            on_c.into_iter()
                .next()
                .ok_or_else(|| format!("warm by node {:?}", warm_counts(&by)))
        },
    )
    .await;
    assert!(c.host("c").running_ids().contains(&refill.id.to_string()));
    assert_eq!(
        records_match_docker(&c).await,
        Ok(7),
        "6 warm and 1 allocated"
    );
}

/// `deploy/install-agent.sh`, installed under a scratch root from inside host b, then started
/// as its unit's `ExecStart` would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_agent_script_brings_up_an_agent_that_joins_the_pool() {
    let mut c = HostCluster::start(&[HostSpec::new(), HostSpec::new().without_agent()]).await;
    let root = tempfile::tempdir().unwrap();
    let script = warmpool_tests::root().join("deploy/install-agent.sh");
    let binary = warmpool_tests::bin("warmpool-agent");
    let (node, prefix, docker_host, nats_url, transit, transit_net) = {
        let b = c.host("b");
        (
            b.node.clone(),
            b.prefix.clone(),
            b.docker_host.clone(),
            b.nats_url.clone(),
            b.transit,
            b.transit_net.clone(),
        )
    };
    let password = r#"s3cret "with" \ $pecial`s"#;
    let args: Vec<String> = [
        "--root",
        root.path().to_str().unwrap(),
        "--binary",
        binary.to_str().unwrap(),
        "--node-id",
        &node,
        "--nats-url",
        &nats_url,
        "--nats-user",
        "agent-b",
        "--nats-password",
        password,
        "--ipv6-prefix",
        &prefix,
        "--docker-host",
        &docker_host,
        "--label",
        "region=eu",
        "--label",
        "disk=ssd",
        "--heartbeat-ms",
        "300",
        "--metrics-addr",
        "[::1]:9101",
        // Where clients reach containers from: without it only host b itself could.
        "--ingress-from",
        &transit_net,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let install = |extra: &[&str]| {
        let mut cmd = c.host("b").command(&script);
        cmd.args(&args).args(extra);
        cmd.output().expect("run install-agent.sh")
    };

    let out = install(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "install failed:\n{stdout}\n{stderr}");
    // The route the other hosts need, with this host's own address found by the script.
    let route = format!("ip -6 route add {prefix} via {transit}");
    assert!(stdout.contains(&route), "no `{route}` in:\n{stdout}");
    assert!(
        stdout.contains("systemctl") || stdout.contains("by hand"),
        "{stdout}"
    );

    let r = root.path();
    let installed = r.join("usr/local/bin/warmpool-agent");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(&binary).unwrap(),
        "the binary is in place"
    );
    assert!(is_executable(&installed));
    let env_path = r.join("etc/warmpool/agent.env");
    assert_eq!(
        mode(&env_path) & 0o077,
        0,
        "the env file holds a password: not world-readable"
    );
    let env = parse_env_file(&std::fs::read_to_string(&env_path).unwrap());
    assert_eq!(env["WARMPOOL_NODE_ID"], node);
    assert_eq!(env["WARMPOOL_NATS_URL"], nats_url);
    assert_eq!(env["WARMPOOL_NATS_USER"], "agent-b");
    assert_eq!(env["WARMPOOL_NATS_PASSWORD"], password);
    assert_eq!(env["WARMPOOL_IPV6_PREFIX"], prefix);
    assert_eq!(env["WARMPOOL_DOCKER_HOST"], docker_host);
    assert_eq!(env["WARMPOOL_LABELS"], "region=eu,disk=ssd");
    assert_eq!(env["WARMPOOL_HEARTBEAT_MS"], "300");
    assert_eq!(env["WARMPOOL_METRICS_ADDR"], "[::1]:9101");
    assert_eq!(env["WARMPOOL_INGRESS_FROM"], transit_net);
    let unit_path = r.join("etc/systemd/system/warmpool-agent.service");
    let unit_text = std::fs::read_to_string(&unit_path).unwrap();
    assert_eq!(
        unit_text,
        std::fs::read_to_string(
            warmpool_tests::root().join("deploy/systemd/warmpool-agent.service")
        )
        .unwrap(),
        "the unit is the template"
    );
    let unit = parse_unit(&unit_text);
    assert_eq!(unit["EnvironmentFile"], ["/etc/warmpool/agent.env"]);
    assert_eq!(unit["Restart"], ["always"]);
    assert!(unit["After"]
        .iter()
        .any(|a| a.split_whitespace().any(|s| s == "docker.service")));
    assert_eq!(unit["ExecStart"].len(), 1);
    let files = [&installed, &env_path, &unit_path].map(|p| std::fs::read(p).unwrap());

    // Idempotent: again, the same files, and it says nothing changed.
    let again = install(&[]);
    let again_out = String::from_utf8_lossy(&again.stdout).into_owned();
    assert!(
        again.status.success(),
        "{again_out}{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        [&installed, &env_path, &unit_path].map(|p| std::fs::read(p).unwrap()),
        files
    );
    assert!(again_out.contains("unchanged"), "{again_out}");

    // Clear refusals.
    for (bad, says) in [
        (vec!["--ipv6-prefix", "fd36:1::1/64"], "--ipv6-prefix"),
        (vec!["--ipv6-prefix", "fd36:1::/48"], "--ipv6-prefix"),
        (vec!["--label", "novalue"], "--label"),
        (vec!["--nats-url", "http://x"], "--nats-url"),
        (vec!["--metrics-addr", "9101"], "--metrics-addr"),
        (vec!["--surprise"], "--surprise"),
    ] {
        let out = install(&bad);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad:?} accepted");
        assert!(err.contains(says), "{bad:?}: {err}");
    }
    let missing = c
        .host("b")
        .command(&script)
        .args(["--root", r.to_str().unwrap(), "--nats-url", &nats_url])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--ipv6-prefix"));
    let help = std::process::Command::new(&script)
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--ipv6-prefix"));

    // Start it as systemd would: the unit's environment (files, then Environment=), a clean
    // process environment otherwise, ExecStart's command line; inside host b.
    let exec: Vec<&str> = unit["ExecStart"][0].split_whitespace().collect();
    let program = under(r, exec[0]);
    let mut cmd = c.host("b").command(&program);
    cmd.args(&exec[1..]).env_clear().env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    // Environment= first: systemd lets EnvironmentFile= override it.
    for e in unit.get("Environment").into_iter().flatten() {
        for kv in e.split_whitespace() {
            let (k, v) = kv.trim_matches('"').split_once('=').unwrap();
            cmd.env(k, v);
        }
    }
    for f in &unit["EnvironmentFile"] {
        let text = std::fs::read_to_string(under(r, f.trim_start_matches('-'))).unwrap();
        cmd.envs(parse_env_file(&text));
    }
    c.host_mut("b").spawn_agent(cmd);

    let view = c
        .wait_node(&node, Duration::from_secs(30), "ready", |n| {
            n.node.status == NodeStatus::Ready
        })
        .await;
    assert_eq!(view.node.ipv6_prefix, prefix);
    assert_eq!(view.node.labels["region"], "eu");
    assert_eq!(view.node.labels["disk"], "ssd");

    // It takes part: a pool constrained to its label lands there, and a container on it
    // answers host a.
    let mut eu = TestCluster::demo_spec("eu", 2);
    eu.constraints.insert("region".into(), "eu".into());
    c.client.create_pool(&eu).await.unwrap();
    let by = wait_warm_on(&c, "eu", 2, &[&node], WARM).await;
    let w = &by[&node][0];
    let body = c
        .host("a")
        .fetch(w.ipv6.unwrap(), w.port, "/cgi-bin/whoami")
        .await
        .unwrap();
    assert_eq!(body.trim(), format!("[{}]", c.host("a").transit));
}

/// Misconfiguration: a second host announces the /64 another node already owns. Whatever the
/// control plane does about it (refuse the node, keep it out of placement), it must never
/// hand out two live containers with the same address: the route to that address reaches
/// only one of them, so a session could land in another session's container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_announced_by_two_nodes_never_yields_two_containers_with_one_address() {
    let p = warmpool_tests::hosts::random_fd36_64();
    let prefix = format!(
        "{}/64",
        std::net::Ipv6Addr::new(p[0], p[1], p[2], p[3], 0, 0, 0, 0)
    );
    let mut c = HostCluster::start(&[
        HostSpec::new().prefix(&prefix),
        HostSpec::new().prefix(&prefix).without_agent(),
    ])
    .await;
    // b comes second: the /64 is a's.
    c.host_mut("b").start_agent();
    let b = c.host("b").node.clone();
    c.wait_node(&b, Duration::from_secs(15), "heard", |n| {
        n.heartbeat_age_ms.is_some()
    })
    .await;
    c.client.create_pool(&demo(4)).await.unwrap();
    let by = eventually(WARM, "4 warm containers", || async {
        let by = live_by_node(&c.client, POOL).await?;
        let warm: usize = warm_counts(&by).values().sum();
        if warm >= 4 {
            Ok(by)
        } else {
            Err(format!("warm by node {:?}", warm_counts(&by)))
        }
    })
    .await;
    let mut seen: BTreeMap<std::net::Ipv6Addr, Vec<String>> = BTreeMap::new();
    for (node, v) in &by {
        for x in v.iter().filter(|x| x.state == ContainerState::Warm) {
            seen.entry(x.ipv6.unwrap())
                .or_default()
                .push(format!("{} on {node}", x.id));
        }
    }
    let shared: Vec<_> = seen.iter().filter(|(_, v)| v.len() > 1).collect();
    let nodes: Vec<_> = c
        .client
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| (n.node.id, n.node.status, n.node.ipv6_prefix, n.node.reason))
        .collect();
    assert!(
        shared.is_empty(),
        "two live containers share an address: {shared:?}; nodes: {nodes:?}"
    );
}

/// Misconfiguration: two hosts run agents with the same node id (cloned machines sharing a
/// hostname, the installer's default id). Whatever the control plane does about it, Docker
/// across the fleet must hold exactly the live records, each once: no container made twice
/// and leaked, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_claiming_one_node_id_leak_no_containers() {
    let twin = warmpool_tests::unique("twin");
    let mut c = HostCluster::start(&[
        HostSpec::new().node(&twin),
        HostSpec::new().node(&twin).without_agent(),
        HostSpec::new(),
    ])
    .await;
    c.client.create_pool(&demo(6)).await.unwrap();
    let cn = c.host("c").node.clone();
    wait_warm_on(&c, POOL, 6, &[&twin, &cn], WARM).await;
    // The clone starts; wait until NATS carries heartbeats of both agents under the one id.
    let nats = async_nats::connect(c.nats.url()).await.unwrap();
    let mut beats = nats
        .subscribe(warmpool_proto::subjects::heartbeat(
            &NodeId::new(&twin).unwrap(),
        ))
        .await
        .unwrap();
    c.host_mut("b").start_agent();
    let mut boots = BTreeSet::new();
    tokio::time::timeout(Duration::from_secs(15), async {
        while boots.len() < 2 {
            let msg = futures::StreamExt::next(&mut beats).await.unwrap();
            let hb: warmpool_proto::agent::Heartbeat =
                serde_json::from_slice(&msg.payload).unwrap();
            boots.insert(hb.boot_id);
        }
    })
    .await
    .expect("heartbeats from both agents claiming the node id");
    eventually(Duration::from_secs(20), "Docker to hold exactly the live records, each once", || async {
        let mut ids: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (host, v) in c.docker_by_host() {
            for x in v {
                ids.entry(x.id).or_default().push(format!("{host}:{}", x.state));
            }
        }
        let twice: Vec<_> = ids.iter().filter(|(_, v)| v.len() > 1).collect();
        let records: BTreeSet<String> = c
            .client
            .list_containers(&ContainerQuery::default())
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .map(|r| r.id.to_string())
            .collect();
        let docker: BTreeSet<String> = ids.keys().cloned().collect();
        let warm = c.client.status().await.map_err(|e| e.to_string())?.pools[0].counts.warm;
        if twice.is_empty() && records == docker && warm == 6 {
            Ok(())
        } else {
            Err(format!(
                "{warm} warm; in Docker on two hosts: {twice:?}; records not in Docker: {:?}; in Docker without a record: {:?}",
                records.difference(&docker).collect::<Vec<_>>(),
                docker.difference(&records).collect::<Vec<_>>()
            ))
        }
    })
    .await;
}

fn is_executable(p: &Path) -> bool {
    mode(p) & 0o111 == 0o111
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode()
}

/// `path` (absolute, as the unit names it) under the install root.
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// A systemd `EnvironmentFile=` as systemd reads the subset the script writes: `KEY=value`
/// or `KEY="value"` lines (inside double quotes, a backslash escapes `"`, `\`, `` ` `` and
/// `$`), `#` comments and blank lines.
fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("bad env line {line:?}"));
        let v = match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            Some(inner) => {
                let mut s = String::new();
                let mut chars = inner.chars();
                while let Some(ch) = chars.next() {
                    if ch == '\\' {
                        match chars.next() {
                            Some(e @ ('"' | '\\' | '`' | '$')) => s.push(e),
                            Some(e) => {
                                s.push('\\');
                                s.push(e);
                            }
                            None => s.push('\\'),
                        }
                    } else {
                        s.push(ch);
                    }
                }
                s
            }
            None => v.to_string(),
        };
        out.insert(k.trim().to_string(), v);
    }
    out
}

/// `Key=value` settings of a unit file, every section together, by key.
fn parse_unit(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty()
            || line.starts_with('#')
            || line.starts_with(';')
            || line.starts_with('[')
        {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.entry(k.trim().to_string())
                .or_default()
                .push(v.trim().to_string());
        }
    }
    out
}
