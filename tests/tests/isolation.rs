//! Network isolation, proven by traffic: two hosts of the multi-host harness (each a network
//! namespace with its own dockerd and agent), real NATS, a real control plane, and real
//! connection attempts from inside allocated containers (`docker exec … nc`), never a look at
//! the rules.
//!
//! From a container of a pool with egress `none`: another container on the same host (IPv6
//! and IPv4) and on the other host, the host's agent (its metrics port, on the host's bridge
//! and transit addresses), the control plane's API and NATS, and a listener outside the fleet
//! are all unreachable, while the container's own port answers the host and the test process.
//! From a container of a pool whose egress allows one outside prefix and port, that one
//! listener answers and the rest stays closed; from one of an `internet` pool, every port
//! outside the fleet answers and the fleet stays closed. Every "unreachable" has a control: the same
//! target is reached from a place that is allowed to, so a failure means the rules, not a
//! missing route.
//!
//! Then the same holds after the host's dockerd restarts (for containers of a pool made
//! afterwards, checked before any of them is handed out), and after the agent restarts: with its table
//! deleted while it was down (so the check is seen to fail without it), the restarted agent
//! closes everything again before the node takes anything new.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use futures::future::join_all;
use poolctl::NodeAction;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use warmpool_proto::api::ContainerQuery;
use warmpool_proto::records::NodeStatus;
use warmpool_proto::{Container, ContainerState, Egress, EgressRule, NodeId, PoolSpec, Timestamp};
use warmpool_tests::hosts::{eventually, Host, HostCluster, HostSpec};
use warmpool_tests::{allocation, http_get, unique, TestCluster};

const WARM: Duration = Duration::from_secs(60);
const METRICS_PORT: u16 = 9101;

/// A connection attempt from inside container `docker_id` of `host` to `ip:port`: busybox
/// `nc` with a 2 s connect timeout, running `true` once connected. `Ok` when it connected.
async fn connect_from(host: &Host, docker_id: &str, ip: IpAddr, port: u16) -> Result<(), String> {
    let args = [
        "docker",
        "-H",
        host.docker_host.as_str(),
        "exec",
        docker_id,
        "nc",
        "-w",
        "2",
        &ip.to_string(),
        &port.to_string(),
        "-e",
        "/bin/true",
    ];
    let out = host.exec(&args).await.map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// The same attempt from the host's own namespace (busybox on the host): the control.
async fn connect_from_host(host: &Host, ip: IpAddr, port: u16) -> Result<(), String> {
    let out = host
        .exec(&[
            "busybox",
            "nc",
            "-w",
            "2",
            &ip.to_string(),
            &port.to_string(),
            "-e",
            "/bin/true",
        ])
        .await
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// One place a container tries to reach.
#[derive(Clone, Debug)]
struct Target {
    what: String,
    ip: IpAddr,
    port: u16,
}

fn target(what: &str, ip: impl Into<IpAddr>, port: u16) -> Target {
    Target {
        what: what.to_string(),
        ip: ip.into(),
        port,
    }
}

/// Tries every target from container `from` (on `host`) at once; panics naming each target
/// whose outcome is not `want` (true: must connect).
async fn expect_from(host: &Host, from: &Container, targets: &[Target], want: bool, when: &str) {
    let docker_id = from.docker_id.clone().expect("a docker id");
    let results = join_all(
        targets
            .iter()
            .map(|t| connect_from(host, &docker_id, t.ip, t.port)),
    )
    .await;
    let wrong: Vec<String> = targets
        .iter()
        .zip(results)
        .filter(|(_, r)| r.is_ok() != want)
        .map(|(t, r)| format!("{} [{}]:{} -> {r:?}", t.what, t.ip, t.port))
        .collect();
    assert!(
        wrong.is_empty(),
        "{when}: from container {} on host {} these should {}: {wrong:#?}",
        from.id,
        host.name,
        if want { "connect" } else { "fail" },
    );
}

/// The IPv4 address of a container on its host's Warmpool network.
fn ipv4_of(host: &Host, c: &Container) -> Ipv4Addr {
    let id = c.docker_id.as_deref().expect("docker id");
    let out = host.docker(&[
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        id,
    ]);
    out.trim()
        .parse()
        .unwrap_or_else(|e| panic!("IPv4 of {id}: {out:?}: {e}"))
}

/// The host's own address on its containers' bridge (the /64's `::1`, Docker's gateway).
fn gateway_of(host: &Host) -> Ipv6Addr {
    let net: Ipv6Addr = host
        .prefix
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .expect("prefix");
    Ipv6Addr::from(u128::from(net) | 1)
}

/// A TCP listener in the test process that accepts and closes every connection.
async fn listener(ip: Ipv6Addr) -> u16 {
    let l = TcpListener::bind((ip, 0)).await.expect("bind listener");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.write_all(b"hello\n").await;
        }
    });
    port
}

/// Forwards `[ip]:port` (a free port) to `to`: the control plane listens on loopback only, so
/// this puts its real API on the fleet's network, where a container could try it.
async fn forwarder(ip: Ipv6Addr, to: std::net::SocketAddr) -> u16 {
    let l = TcpListener::bind((ip, 0)).await.expect("bind forwarder");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            tokio::spawn(async move {
                if let Ok(mut out) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    port
}

/// Live containers of `pool` in `state`.
async fn containers(c: &HostCluster, pool: &str, state: ContainerState) -> Vec<Container> {
    let q = ContainerQuery {
        pool: Some(pool.into()),
        ..Default::default()
    };
    c.client
        .list_containers(&q)
        .await
        .expect("containers")
        .into_iter()
        .filter(|x| x.state == state)
        .collect()
}

/// Waits until `pool` has at least `n` warm containers on `node`; returns them.
async fn warm_on(c: &HostCluster, pool: &str, node: &str, n: usize) -> Vec<Container> {
    eventually(
        WARM,
        &format!("{n} warm containers of {pool} on {node}"),
        || async move {
            let warm: Vec<Container> = containers(c, pool, ContainerState::Warm)
                .await
                .into_iter()
                .filter(|x| x.node.as_str() == node)
                .collect();
            if warm.len() >= n {
                Ok(warm)
            } else {
                Err(format!("{} warm", warm.len()))
            }
        },
    )
    .await
}

/// Allocates from `pool` until a container on `node` is handed out (others stay allocated).
async fn allocate_on(c: &HostCluster, pool: &str, node: &str) -> Container {
    for _ in 0..8 {
        let a = c
            .client
            .allocate(&allocation(pool, 30_000))
            .await
            .expect("allocate");
        if a.node.as_str() == node {
            return c
                .client
                .get_container(a.container_id)
                .await
                .expect("container");
        }
    }
    panic!("no container of {pool} on {node} after 8 allocations");
}

fn pool(name: &str, min_warm: u32, egress: Egress) -> PoolSpec {
    let mut spec = TestCluster::demo_spec(name, min_warm);
    spec.max_total = 20;
    spec.egress = egress;
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_reach_only_what_their_pool_allows_before_and_after_restarts() {
    let metrics = format!("[::]:{METRICS_PORT}");
    let spec = HostSpec::new().agent_args(&["--metrics-addr", &metrics]);
    let mut c = HostCluster::start(&[spec.clone(), spec]).await;
    let (a_node, b_node) = (c.hosts[0].node.clone(), c.hosts[1].node.clone());

    // Things that stand for the fleet's infrastructure and for the internet.
    let root = c.root_addr();
    let nats_port: u16 = c
        .nats
        .url()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("nats port");
    let api: std::net::SocketAddr = c.members[0]
        .url()
        .trim_start_matches("http://")
        .parse()
        .expect("api addr");
    let api_port = forwarder(root, api).await;
    let (outside, outside_prefix) = c.add_outside_address();
    let open_port = listener(outside).await;
    let closed_port = listener(outside).await;

    let closed = unique("iso-none");
    let allowing = unique("iso-allow");
    c.client
        .create_pool(&pool(&closed, 4, Egress::None))
        .await
        .expect("create the closed pool");
    let allow = Egress::Allow(vec![EgressRule {
        prefix: outside_prefix.clone(),
        ports: vec![open_port],
    }]);
    c.client
        .create_pool(&pool(&allowing, 1, allow))
        .await
        .expect("create the allowing pool");
    let internet = unique("iso-internet");
    c.client
        .create_pool(&pool(&internet, 1, Egress::Internet))
        .await
        .expect("create the internet pool");

    // Two allocated containers on host a, one on host b.
    warm_on(&c, &closed, &a_node, 2).await;
    warm_on(&c, &closed, &b_node, 1).await;
    let x = allocate_on(&c, &closed, &a_node).await;
    let y = allocate_on(&c, &closed, &a_node).await;
    let z = allocate_on(&c, &closed, &b_node).await;
    let w = c
        .client
        .allocate(&allocation(&allowing, 30_000))
        .await
        .expect("allocate from the allowing pool");
    let w = c.client.get_container(w.container_id).await.expect("w");
    let (ha, hb) = (c.host("a"), c.host("b"));
    let hw = c.host_of(w.node.as_str());
    let ip6 = |x: &Container| x.ipv6.expect("an address");

    // Addresses are not handed out in order (::2, ::3, ...).
    for x in [&x, &y, &z, &w] {
        let low = u128::from(ip6(x)) as u64;
        assert!(low > 0xffff, "{} looks sequential", ip6(x));
    }

    let infrastructure = |h: &Host| {
        vec![
            target("NATS", root, nats_port),
            target("the control plane's API", root, api_port),
            target(
                "the agent's metrics on the host's bridge address",
                gateway_of(h),
                METRICS_PORT,
            ),
            target(
                "the agent's metrics on the host's transit address",
                h.transit,
                METRICS_PORT,
            ),
        ]
    };
    let mut denied = vec![
        target("another container on the same host (IPv6)", ip6(&y), y.port),
        target(
            "another container on the same host (IPv4)",
            ipv4_of(ha, &y),
            y.port,
        ),
        target("a container on the other host", ip6(&z), z.port),
        target("a listener outside the fleet", outside, open_port),
    ];
    denied.extend(infrastructure(ha));

    // Controls: each target answers where it is allowed to.
    let controls = [
        (
            "container y from host a",
            connect_from_host(ha, ip6(&y).into(), y.port).await,
        ),
        (
            "container z from host a",
            connect_from_host(ha, ip6(&z).into(), z.port).await,
        ),
        (
            "NATS from host a",
            connect_from_host(ha, root.into(), nats_port).await,
        ),
        (
            "the API from host a",
            connect_from_host(ha, root.into(), api_port).await,
        ),
        (
            "the outside listener from host a",
            connect_from_host(ha, outside.into(), open_port).await,
        ),
        (
            "host a's metrics from host b",
            connect_from_host(hb, ha.transit.into(), METRICS_PORT).await,
        ),
    ];
    for (what, r) in controls {
        assert!(r.is_ok(), "control: {what} must connect: {r:?}");
    }
    expect_from(ha, &x, &denied, false, "egress none").await;
    // Its own port still answers the host and the test process (through the routed /64).
    ha.fetch(ip6(&x), x.port, "/healthz")
        .await
        .expect("x's port from its host");
    let (status, _) = http_get(ip6(&x), x.port, "/healthz")
        .await
        .expect("x's port from the test process");
    assert_eq!(status, 200);
    // A port other than the pool's is closed even to allowed sources: none is listening in
    // the demo image, so a refusal (an answer) would show the packet got through.
    let other = hb
        .exec(&[
            "busybox",
            "nc",
            "-w",
            "2",
            &ip6(&x).to_string(),
            "8081",
            "-e",
            "/bin/true",
        ])
        .await
        .expect("nc");
    let said = String::from_utf8_lossy(&other.stderr).to_string();
    assert!(
        said.contains("timed out"),
        "a port of x other than its pool's must be dropped, not refused: {said:?}"
    );

    // The allowing pool: its one prefix and port, nothing else.
    expect_from(
        hw,
        &w,
        &[target("the allowed listener", outside, open_port)],
        true,
        "egress allow",
    )
    .await;
    let mut denied_w = vec![
        target(
            "the allowed prefix on a port not allowed",
            outside,
            closed_port,
        ),
        target("a container of another pool on host a", ip6(&y), y.port),
        target("a container of another pool on host b", ip6(&z), z.port),
    ];
    denied_w.extend(infrastructure(hw));
    expect_from(hw, &w, &denied_w, false, "egress allow").await;
    let (status, _) = http_get(ip6(&w), w.port, "/healthz")
        .await
        .expect("w's port");
    assert_eq!(status, 200);

    // The internet pool: anything outside the fleet, nothing inside it.
    let v = c
        .client
        .allocate(&allocation(&internet, 30_000))
        .await
        .expect("allocate from the internet pool");
    let v = c.client.get_container(v.container_id).await.expect("v");
    let hv = c.host_of(v.node.as_str());
    expect_from(
        hv,
        &v,
        &[
            target("the outside listener", outside, open_port),
            target("another outside port", outside, closed_port),
        ],
        true,
        "egress internet",
    )
    .await;
    let mut denied_v = vec![
        target("a container of another pool on host a", ip6(&y), y.port),
        target("a container of another pool on host b", ip6(&z), z.port),
    ];
    denied_v.extend(infrastructure(hv));
    expect_from(hv, &v, &denied_v, false, "egress internet").await;

    // ---- dockerd of host a restarts: its containers die; new ones are checked before any
    // of them is handed out.
    // Host b takes nothing new from here on, so what is made next lands on host a.
    c.client
        .node_action(
            &NodeId::new(b_node.as_str()).expect("id"),
            NodeAction::Cordon,
        )
        .await
        .expect("cordon b");
    c.host_mut("a").stop_dockerd();
    c.host_mut("a").start_dockerd();
    // A pool made after the restart: its containers are all new, all on host a.
    let later = unique("iso-later");
    c.client
        .create_pool(&pool(&later, 2, Egress::None))
        .await
        .expect("create a pool after the restart");
    let fresh = warm_on(&c, &later, &a_node, 2).await;
    let ha = c.host("a");
    let (x2, y2) = (&fresh[0], &fresh[1]);
    let mut denied = vec![
        target("another new container on host a (IPv6)", ip6(y2), y2.port),
        target(
            "another new container on host a (IPv4)",
            ipv4_of(ha, y2),
            y2.port,
        ),
        target("a container on the other host", ip6(&z), z.port),
        target("a listener outside the fleet", outside, open_port),
    ];
    denied.extend(infrastructure(ha));
    expect_from(ha, x2, &denied, false, "after dockerd restarted").await;
    let (status, _) = http_get(ip6(x2), x2.port, "/healthz")
        .await
        .expect("a new container's port from the test process");
    assert_eq!(status, 200);

    // ---- the agent of host a restarts. While it is down, its table is deleted (as a reboot
    // or a careless `nft flush ruleset` would): the check then fails, which shows it would
    // notice. The restarted agent puts the rules back before the node takes anything.
    c.host_mut("a").kill_agent();
    let ha = c.host("a");
    let flushed = ha
        .exec(&["sh", "-c", "nft list tables inet | grep -o 'warmpool_[A-Za-z0-9_]*' | xargs -r -n1 nft delete table inet"])
        .await
        .expect("delete the table");
    assert!(flushed.status.success(), "{flushed:?}");
    // (The container's kernel may remember for a few seconds that y2's neighbour discovery
    // failed: "no route to host" until it tries again.)
    let x2_id = x2.docker_id.clone().expect("id");
    eventually(
        Duration::from_secs(30),
        "IPv6 between two containers of host a to open without the rules",
        || connect_from(ha, &x2_id, ip6(y2).into(), y2.port),
    )
    .await;
    // A heartbeat from the new agent: it sends them only once its rules are in place (and a
    // heartbeat of the killed one could still look fresh here).
    let restarted = Timestamp::now();
    c.host_mut("a").start_agent();
    c.wait_node(
        &a_node,
        Duration::from_secs(30),
        "heard from the new agent",
        |n| {
            n.node.status == NodeStatus::Ready && n.last_heartbeat_at.is_some_and(|t| t > restarted)
        },
    )
    .await;
    let ha = c.host("a");
    expect_from(ha, x2, &denied, false, "after the agent restarted").await;
    let (status, _) = http_get(ip6(x2), x2.port, "/healthz")
        .await
        .expect("the container's port after the agent restarted");
    assert_eq!(status, 200);
    // Only now is anything handed out.
    let x3 = allocate_on(&c, &later, &a_node).await;
    expect_from(
        c.host("a"),
        &x3,
        &denied[2..],
        false,
        "handed out after the restarts",
    )
    .await;
}
