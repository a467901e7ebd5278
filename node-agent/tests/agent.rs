//! The agent against the real dockerd and a real nats-server.

mod common;

use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::*;
use warmpool_proto::agent::{AgentCommand, AgentReply, Fact, InventoryEntry, ObservedStatus};
use warmpool_proto::{ContainerId, Health, HealthProbe};

const T: Duration = Duration::from_secs(30);

fn healthy(id: ContainerId) -> impl Fn(&Fact) -> bool {
    move |f| {
        matches!(f, Fact::Observed { entry, .. }
            if entry.id == id && entry.status == ObservedStatus::Running && entry.health == Health::Healthy)
    }
}

fn entry_of(f: Fact) -> InventoryEntry {
    match f {
        Fact::Observed { entry, .. } => entry,
        other => panic!("not an observation: {other:?}"),
    }
}

async fn create(ctl: &Control, spec: &warmpool_proto::agent::CreateSpec) -> Result<()> {
    match ctl.request(&AgentCommand::Create(spec.clone())).await? {
        AgentReply::Accepted => Ok(()),
        other => bail!("create answered {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_becomes_healthy_on_its_ipv6_address_with_limits() -> Result<()> {
    ensure_demo_image();
    let nats = Nats::start().await?;
    let node = Node::new();
    let _agent = AgentProc::start(&node, &nats.url, &[])?;
    let ctl = Control::new(&nats, &node).await?;
    ctl.wait_ready().await?;
    let mut facts = ctl.facts().await?;

    let spec = demo_spec();
    create(&ctl, &spec).await?;
    let starting = facts
        .wait("a Starting observation", T, |f| {
            matches!(f, Fact::Observed { entry, .. } if entry.id == spec.id && entry.status == ObservedStatus::Starting)
        })
        .await?;
    let e = entry_of(facts.wait("healthy", T, healthy(spec.id)).await?);
    assert_eq!(e.pool, spec.pool);
    assert_eq!(entry_of(starting).docker_id, e.docker_id);
    let ip = e.ipv6.context("an IPv6 address")?;
    assert!(node.owns(&ip), "{ip} is not in {}", node.prefix);

    // The container answers from the host on its own address.
    let (status, body) = http_get(ip, 8080, "/healthz").await?;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, whoami) = http_get(ip, 8080, "/cgi-bin/whoami").await?;
    assert_eq!(status, 200);
    assert!(
        whoami.contains(&node.prefix.trim_end_matches(":/64").to_string()),
        "{whoami}"
    );

    // Limits and hardening as Docker sees them.
    let c = &e.docker_id;
    assert_eq!(inspect(c, "{{.HostConfig.NanoCpus}}")?, "250000000");
    assert_eq!(
        inspect(c, "{{.HostConfig.Memory}}")?,
        (64u64 << 20).to_string()
    );
    assert_eq!(inspect(c, "{{.HostConfig.PidsLimit}}")?, "64");
    assert_eq!(inspect(c, "{{json .HostConfig.CapDrop}}")?, r#"["ALL"]"#);
    assert_eq!(
        inspect(c, "{{json .HostConfig.SecurityOpt}}")?,
        r#"["no-new-privileges"]"#
    );
    assert_eq!(inspect(c, "{{.HostConfig.RestartPolicy.Name}}")?, "no");
    assert_eq!(inspect(c, "{{.HostConfig.NetworkMode}}")?, node.network);
    assert_eq!(inspect(c, "{{.Name}}")?, format!("/wp-{}", spec.id));
    assert_eq!(
        inspect(c, "{{index .Config.Labels \"io.warmpool.node\"}}")?,
        node.id.to_string()
    );
    assert_eq!(
        inspect(c, "{{index .Config.Labels \"io.warmpool.port\"}}")?,
        "8080"
    );
    assert!(inspect(c, "{{json .Config.Env}}")?.contains("GREETING=hello"));
    // The network: the node's /64, no inter-container traffic.
    let net = inspect(
        &node.network,
        "{{.EnableIPv6}} {{index .Options \"com.docker.network.bridge.enable_icc\"}}",
    )?;
    assert_eq!(net, "true false");
    assert!(inspect(&node.network, "{{json .IPAM.Config}}")?.contains(&node.prefix));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_is_idempotent_and_destroy_removes() -> Result<()> {
    ensure_demo_image();
    let nats = Nats::start().await?;
    let node = Node::new();
    let _agent = AgentProc::start(&node, &nats.url, &[])?;
    let ctl = Control::new(&nats, &node).await?;
    ctl.wait_ready().await?;
    let mut facts = ctl.facts().await?;

    // The same create three times, two of them while the first is in flight.
    let spec = demo_spec();
    let (a, b) = tokio::join!(create(&ctl, &spec), create(&ctl, &spec));
    a?;
    b?;
    facts.wait("healthy", T, healthy(spec.id)).await?;
    create(&ctl, &spec).await?;
    assert_eq!(
        node.docker_ids()?,
        vec![spec.id.to_string()],
        "exactly one container"
    );
    let inv = ctl.inventory().await?;
    assert_eq!(inv.containers.len(), 1);

    let destroy = AgentCommand::Destroy {
        id: spec.id,
        reason: "test".into(),
    };
    assert_eq!(
        ctl.request(&destroy).await?,
        AgentReply::Destroyed { existed: true }
    );
    // Answered once gone: Docker has nothing left, at once.
    assert!(node.docker_containers()?.is_empty());
    facts
        .wait(
            "gone",
            T,
            |f| matches!(f, Fact::Gone { id, reason, .. } if *id == spec.id && reason.to_string() == "test"),
        )
        .await?;
    assert!(ctl.inventory().await?.containers.is_empty());
    assert_eq!(
        ctl.request(&destroy).await?,
        AgentReply::Destroyed { existed: false }
    );
    // A destroyed id is never made again (a late duplicate create must not resurrect it).
    assert!(matches!(
        ctl.request(&AgentCommand::Create(spec.clone())).await?,
        AgentReply::Error { .. }
    ));
    // Destroying what was never created is fine.
    let unknown = AgentCommand::Destroy {
        id: ContainerId::new(),
        reason: "test".into(),
    };
    assert_eq!(
        ctl.request(&unknown).await?,
        AgentReply::Destroyed { existed: false }
    );

    // Destroy right behind a create: nothing is left behind.
    let spec2 = demo_spec();
    create(&ctl, &spec2).await?;
    let destroy2 = AgentCommand::Destroy {
        id: spec2.id,
        reason: "test".into(),
    };
    assert!(matches!(
        ctl.request(&destroy2).await?,
        AgentReply::Destroyed { .. }
    ));
    assert!(node.docker_containers()?.is_empty());
    assert!(ctl.inventory().await?.containers.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_kill_and_rm_are_reported_before_any_resync() -> Result<()> {
    ensure_demo_image();
    let nats = Nats::start().await?;
    let node = Node::new();
    // A resync every 10 minutes: whatever is reported within seconds came from events.
    let _agent = AgentProc::start(&node, &nats.url, &["--resync-ms", "600000"])?;
    let ctl = Control::new(&nats, &node).await?;
    ctl.wait_ready().await?;
    let mut facts = ctl.facts().await?;

    let (a, b) = (demo_spec(), demo_spec());
    create(&ctl, &a).await?;
    create(&ctl, &b).await?;
    let ea = entry_of(facts.wait("a healthy", T, healthy(a.id)).await?);
    let eb = entry_of(facts.wait("b healthy", T, healthy(b.id)).await?);

    docker(&["kill", &ea.docker_id])?;
    let dead = entry_of(
        facts
            .wait("a exited", Duration::from_secs(5), |f| {
                matches!(f, Fact::Observed { entry, .. } if entry.id == a.id && entry.status == ObservedStatus::Exited)
            })
            .await?,
    );
    assert_eq!(dead.exit_code, Some(137));
    let inv = ctl.inventory().await?;
    assert_eq!(
        inv.containers
            .iter()
            .find(|e| e.id == a.id)
            .map(|e| e.status),
        Some(ObservedStatus::Exited)
    );

    docker(&["rm", "-f", &eb.docker_id])?;
    facts
        .wait(
            "b gone",
            Duration::from_secs(5),
            |f| matches!(f, Fact::Gone { id, .. } if *id == b.id),
        )
        .await?;
    let ids: Vec<ContainerId> = ctl
        .inventory()
        .await?
        .containers
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, vec![a.id]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_checks_make_a_container_unhealthy() -> Result<()> {
    ensure_demo_image();
    let nats = Nats::start().await?;
    let node = Node::new();
    let _agent = AgentProc::start(&node, &nats.url, &[])?;
    let ctl = Control::new(&nats, &node).await?;
    ctl.wait_ready().await?;
    let mut facts = ctl.facts().await?;

    let http = demo_spec();
    let mut tcp = demo_spec();
    tcp.health.probe = HealthProbe::Tcp;
    create(&ctl, &http).await?;
    create(&ctl, &tcp).await?;
    let e = entry_of(facts.wait("http healthy", T, healthy(http.id)).await?);
    facts.wait("tcp healthy", T, healthy(tcp.id)).await?;

    // The demo's /cgi-bin/fail removes /healthz: two failed probes (the threshold) later it is
    // unhealthy, and still running.
    let ip = e.ipv6.context("address")?;
    assert_eq!(http_get(ip, 8080, "/cgi-bin/fail").await?.0, 200);
    let sick = entry_of(
        facts
            .wait("unhealthy", T, |f| {
                matches!(f, Fact::Observed { entry, .. } if entry.id == http.id && matches!(entry.health, Health::Unhealthy { .. }))
            })
            .await?,
    );
    assert_eq!(
        sick.health,
        Health::Unhealthy {
            consecutive_failures: 2
        }
    );
    assert_eq!(sick.status, ObservedStatus::Running);
    // And back.
    assert_eq!(http_get(ip, 8080, "/cgi-bin/heal").await?.0, 200);
    let mut facts = ctl.facts().await?;
    facts
        .wait("healthy again", T, |f| {
            matches!(f, Fact::Observed { entry, .. } if entry.id == http.id && entry.health == Health::Healthy)
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_readopts_its_containers_and_removes_garbage() -> Result<()> {
    ensure_demo_image();
    let nats = Nats::start().await?;
    let node = Node::new();
    let mut agent = AgentProc::start(&node, &nats.url, &[])?;
    let ctl = Control::new(&nats, &node).await?;
    let first = ctl.wait_ready().await?;
    let mut facts = ctl.facts().await?;

    let (a, b) = (demo_spec(), demo_spec());
    create(&ctl, &a).await?;
    create(&ctl, &b).await?;
    facts.wait("a healthy", T, healthy(a.id)).await?;
    facts.wait("b healthy", T, healthy(b.id)).await?;
    let before = ctl.inventory().await?;

    agent.kill();
    // While it is down: a container of this node whose id label is garbage, and a second
    // container claiming a's id.
    let node_label = format!("io.warmpool.node={}", node.id);
    docker(&[
        "create",
        "--network",
        &node.network,
        "--label",
        &node_label,
        "--label",
        "io.warmpool.id=garbage",
        IMAGE,
    ])?;
    let dup = docker(&[
        "create",
        "--network",
        &node.network,
        "--label",
        &node_label,
        "--label",
        &format!("io.warmpool.id={}", a.id),
        IMAGE,
    ])?;
    // And a container whose create was cut off: made by Docker with every label of a real
    // create, never started (the agent died between create and start).
    let cut = demo_spec();
    let mut args = vec![
        "create".to_string(),
        "--network".to_string(),
        node.network.clone(),
    ];
    for (k, v) in warmpool_agent::labels::for_spec(&node.id, &cut) {
        args.push("--label".into());
        args.push(format!("{k}={v}"));
    }
    args.push(IMAGE.into());
    let cut_off = docker(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    assert_eq!(node.docker_containers()?.len(), 5);

    let mut facts = ctl.facts().await?;
    let _agent = AgentProc::start(&node, &nats.url, &[])?;
    let after = ctl.wait_ready().await?;
    assert_ne!(after.boot_id, first.boot_id, "a new process");
    let ids = |inv: &warmpool_proto::agent::Inventory| {
        inv.containers
            .iter()
            .map(|e| (e.id, e.docker_id.clone()))
            .collect::<Vec<_>>()
    };
    let adopted = wait_until("the cut-off create finished and adopted", T, || async {
        let inv = ctl.inventory().await.ok()?;
        (inv.containers.len() == 3).then_some(inv)
    })
    .await?;
    let mut want_ids = ids(&before);
    want_ids.extend(ids(&adopted).into_iter().filter(|(id, _)| *id == cut.id));
    want_ids.sort();
    let mut got = ids(&adopted);
    got.sort();
    assert_eq!(
        got, want_ids,
        "same containers, same docker ids, and the cut-off one"
    );
    let mut want = vec![a.id.to_string(), b.id.to_string(), cut.id.to_string()];
    want.sort();
    assert_eq!(node.docker_ids()?, want, "no duplicates, no orphans");
    assert!(!node.docker_containers()?.contains(&dup));
    assert!(node.docker_containers()?.contains(&cut_off));
    // Adopted containers are reported, and probed again; the cut-off one was started, not left
    // starting for ever.
    for id in [a.id, b.id, cut.id] {
        facts.wait("healthy after adoption", T, healthy(id)).await?;
    }
    let healthy_again = wait_until("both healthy in the inventory", T, || async {
        let inv = ctl.inventory().await.ok()?;
        inv.containers
            .iter()
            .all(|e| e.health == Health::Healthy && e.status == ObservedStatus::Running)
            .then_some(inv)
    })
    .await?;
    assert_eq!(healthy_again.containers.len(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbled_commands_get_errors_and_the_agent_keeps_working() -> Result<()> {
    ensure_demo_image();
    let nats = Nats::start().await?;
    let node = Node::new();
    let _agent = AgentProc::start(&node, &nats.url, &[])?;
    let ctl = Control::new(&nats, &node).await?;
    ctl.wait_ready().await?;
    let mut facts = ctl.facts().await?;

    for garbage in [
        b"\xff\x00not json".to_vec(),
        br#"{"op":"explode"}"#.to_vec(),
        br#"{"op":"create","id":"nope"}"#.to_vec(),
        Vec::new(),
    ] {
        match ctl.request_raw(garbage.clone()).await? {
            AgentReply::Error { message } => assert!(message.contains("malformed"), "{message}"),
            other => bail!("{:?} answered {other:?}", String::from_utf8_lossy(&garbage)),
        }
    }
    // A well-formed create with a dangerous health path is refused before anything is made.
    let mut evil = demo_spec();
    evil.health.probe = HealthProbe::Http {
        path: "/ HTTP/1.0\r\nX: y".into(),
    };
    assert!(matches!(
        ctl.request(&AgentCommand::Create(evil)).await?,
        AgentReply::Error { .. }
    ));
    // A missing image fails in the background: reported, nothing left behind.
    let mut missing = demo_spec();
    missing.image = "warmpool-no-such-image:never".into();
    create(&ctl, &missing).await?;
    facts
        .wait(
            "create failed",
            T,
            |f| matches!(f, Fact::CreateFailed { id, .. } if *id == missing.id),
        )
        .await?;
    assert!(node.docker_containers()?.is_empty());

    // A container that is made but cannot start (no such binary) is removed again.
    let mut broken = demo_spec();
    broken.command = vec!["/no/such/binary".into()];
    create(&ctl, &broken).await?;
    let failed = facts
        .wait(
            "start failed",
            T,
            |f| matches!(f, Fact::CreateFailed { id, .. } if *id == broken.id),
        )
        .await?;
    assert!(
        format!("{failed:?}").contains("start container"),
        "{failed:?}"
    );
    assert!(node.docker_containers()?.is_empty(), "nothing left behind");

    // Still working.
    let spec = demo_spec();
    create(&ctl, &spec).await?;
    facts.wait("healthy", T, healthy(spec.id)).await?;
    assert_eq!(ctl.inventory().await?.containers.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_carry_the_inventory_digest() -> Result<()> {
    ensure_demo_image();
    let nats = Nats::start().await?;
    let node = Node::new();
    let _agent = AgentProc::start(
        &node,
        &nats.url,
        &["--label", "region=test", "--cpu-millis", "1500"],
    )?;
    let ctl = Control::new(&nats, &node).await?;
    ctl.wait_ready().await?;
    let mut facts = ctl.facts().await?;
    let mut hbs = ctl.heartbeats().await?;

    let spec = demo_spec();
    create(&ctl, &spec).await?;
    facts.wait("healthy", T, healthy(spec.id)).await?;
    let inv = ctl.inventory().await?;
    assert_eq!(inv.containers.len(), 1);

    // Heartbeats come every 200 ms; the first after the inventory settled carries its digest.
    let want = inv.digest();
    let deadline = tokio::time::Instant::now() + T;
    let mut last_seq = 0;
    let hb = loop {
        let hb = next_heartbeat(&mut hbs, Duration::from_secs(5)).await?;
        assert!(hb.seq > last_seq, "seq increases");
        last_seq = hb.seq;
        if hb.inventory_digest == want {
            break hb;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no heartbeat with digest {want}"
        );
    };
    assert_eq!(hb.node, node.id);
    assert_eq!(hb.boot_id, inv.boot_id);
    assert_eq!(hb.containers, 1);
    assert_eq!(hb.ipv6_prefix, node.prefix);
    assert_eq!(hb.labels.get("region").map(String::as_str), Some("test"));
    assert_eq!(hb.capacity.cpu_millis, 1500);
    assert!(hb.capacity.memory_mb > 0 && hb.usage.memory_total_mb > 0);
    // Facts and heartbeats share one counter.
    let fact_seqs: Vec<u64> = facts
        .seen
        .iter()
        .map(|f| match f {
            Fact::Observed { seq, .. }
            | Fact::Gone { seq, .. }
            | Fact::CreateFailed { seq, .. } => *seq,
        })
        .collect();
    assert!(fact_seqs.windows(2).all(|w| w[0] < w[1]), "{fact_seqs:?}");
    assert!(fact_seqs.iter().all(|s| *s != hb.seq));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_shutdown_leaves_containers_running_for_the_next_start() -> Result<()> {
    ensure_demo_image();
    let nats = Nats::start().await?;
    let node = Node::new();
    let config = node.raw_config(&nats.url).validate(None)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(warmpool_agent::run(config.clone(), async {
        let _ = stopped.await;
    }));
    let ctl = Control::new(&nats, &node).await?;
    ctl.wait_ready().await?;
    let mut facts = ctl.facts().await?;
    let spec = demo_spec();
    create(&ctl, &spec).await?;
    let e = entry_of(facts.wait("healthy", T, healthy(spec.id)).await?);

    let _ = stop.send(());
    tokio::time::timeout(T, agent)
        .await
        .context("agent stops")???;
    assert_eq!(
        inspect(&e.docker_id, "{{.State.Running}}")?,
        "true",
        "left running"
    );

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(warmpool_agent::run(config, async {
        let _ = stopped.await;
    }));
    let inv = ctl.wait_ready().await?;
    assert_eq!(
        inv.containers.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![spec.id]
    );
    let _ = stop.send(());
    tokio::time::timeout(T, agent)
        .await
        .context("agent stops")???;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_with_another_subnet_is_a_clear_error() -> Result<()> {
    let nats = Nats::start().await?;
    let node = Node::new();
    let other = Node::new();
    docker(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        &other.prefix,
        &node.network,
    ])?;
    let config = node.raw_config(&nats.url).validate(None)?;
    let err = warmpool_agent::run(config, std::future::pending())
        .await
        .expect_err("refused");
    let msg = err.to_string();
    assert!(matches!(err, warmpool_agent::Error::Network(_)), "{msg}");
    assert!(
        msg.contains(&node.prefix) && msg.contains(&other.prefix),
        "{msg}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_outage_does_not_stop_the_agent() -> Result<()> {
    ensure_demo_image();
    let mut nats = Nats::start().await?;
    let node = Node::new();
    let agent = AgentProc::start(&node, &nats.url, &[])?;
    let ctl = Control::new(&nats, &node).await?;
    ctl.wait_ready().await?;
    let mut facts = ctl.facts().await?;
    let spec = demo_spec();
    create(&ctl, &spec).await?;
    let e = entry_of(facts.wait("healthy", T, healthy(spec.id)).await?);

    // While NATS is down the container dies; the fact about it may be lost, the level is not.
    nats.stop();
    docker(&["kill", &e.docker_id])?;
    nats.restart().await?;
    let ctl = Control::new(&nats, &node).await?;
    let inv = wait_until("the agent back, reporting the exit", T, || async {
        let inv = ctl.wait_ready().await.ok()?;
        inv.containers
            .iter()
            .any(|c| c.id == spec.id && c.status == ObservedStatus::Exited)
            .then_some(inv)
    })
    .await?;
    assert_eq!(inv.containers.len(), 1);
    assert!(
        agent.log().contains("disconnected from NATS"),
        "the agent noticed the outage"
    );
    // And it takes commands again.
    let spec2 = demo_spec();
    let mut facts = ctl.facts().await?;
    create(&ctl, &spec2).await?;
    facts
        .wait("healthy after the outage", T, healthy(spec2.id))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resync_adopts_and_cleans_what_no_event_announced() -> Result<()> {
    ensure_demo_image();
    let nats = Nats::start().await?;
    let node = Node::new();
    let _agent = AgentProc::start(&node, &nats.url, &["--resync-ms", "300"])?;
    let ctl = Control::new(&nats, &node).await?;
    ctl.wait_ready().await?;

    // `docker create` makes no event the agent watches: only the resync can find these.
    let id = ContainerId::new();
    let labels = [
        format!("io.warmpool.node={}", node.id),
        format!("io.warmpool.id={id}"),
        "io.warmpool.pool=demo".to_string(),
        "io.warmpool.generation=3".to_string(),
        r#"io.warmpool.health={"probe":{"kind":"tcp"}}"#.to_string(),
        "io.warmpool.port=8080".to_string(),
    ];
    let mut args = vec!["create", "--network", &node.network];
    for l in &labels {
        args.extend(["--label", l.as_str()]);
    }
    args.push(IMAGE);
    docker(&args)?;
    let node_label = format!("io.warmpool.node={}", node.id);
    let garbage = docker(&[
        "create",
        "--label",
        &node_label,
        "--label",
        "io.warmpool.id=???",
        IMAGE,
    ])?;

    let inv = wait_until("the resync to adopt the created container", T, || async {
        let inv = ctl.inventory().await.ok()?;
        (!inv.containers.is_empty()).then_some(inv)
    })
    .await?;
    let e = &inv.containers[0];
    // Never started, with no create of it under way: the resync finishes the start.
    assert_eq!((e.id, e.generation), (id, 3));
    assert!(
        matches!(e.status, ObservedStatus::Starting | ObservedStatus::Running),
        "{e:?}"
    );
    wait_until("the garbage container to be removed", T, || async {
        (!node.docker_containers().ok()?.contains(&garbage)).then_some(())
    })
    .await?;

    // It is probed (TCP, from its label) and becomes healthy.
    wait_until("healthy", T, || async {
        let inv = ctl.inventory().await.ok()?;
        let e = inv.containers.first()?;
        (e.status == ObservedStatus::Running && e.health == Health::Healthy).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_missed_while_the_event_stream_was_broken_are_recovered() -> Result<()> {
    ensure_demo_image();
    let nats = Nats::start().await?;
    let node = Node::new();
    let proxy = DockerProxy::start(node.id.as_str())?;
    // No periodic resync within the test: recovery must come from the reconnect.
    let _agent = AgentProc::start(
        &node,
        &nats.url,
        &["--docker-host", &proxy.url(), "--resync-ms", "600000"],
    )?;
    let ctl = Control::new(&nats, &node).await?;
    ctl.wait_ready().await?;
    let mut facts = ctl.facts().await?;
    let spec = demo_spec();
    create(&ctl, &spec).await?;
    let e = entry_of(facts.wait("healthy", T, healthy(spec.id)).await?);

    // The agent's view of Docker breaks; the container dies meanwhile.
    proxy.cut();
    docker(&["kill", &e.docker_id])?;
    proxy.resume();
    let dead = entry_of(
        facts
            .wait("the missed death, after the reconnect", T, |f| {
                matches!(f, Fact::Observed { entry, .. } if entry.id == spec.id && entry.status == ObservedStatus::Exited)
            })
            .await?,
    );
    assert_eq!(dead.exit_code, Some(137));
    // And the watcher works again for what happens next.
    docker(&["rm", "-f", &e.docker_id])?;
    facts
        .wait(
            "gone",
            Duration::from_secs(10),
            |f| matches!(f, Fact::Gone { id, .. } if *id == spec.id),
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_queue_and_a_destroy_cancels_a_queued_one() -> Result<()> {
    ensure_demo_image();
    let nats = Nats::start().await?;
    let node = Node::new();
    let _agent = AgentProc::start(&node, &nats.url, &["--max-concurrent-creates", "1"])?;
    let ctl = Control::new(&nats, &node).await?;
    ctl.wait_ready().await?;
    let mut facts = ctl.facts().await?;

    let specs = [demo_spec(), demo_spec(), demo_spec()];
    for s in &specs {
        create(&ctl, s).await?;
    }
    // The third waits behind the others (one create at a time): destroying it cancels it.
    let destroy = AgentCommand::Destroy {
        id: specs[2].id,
        reason: "no longer wanted".into(),
    };
    assert_eq!(
        ctl.request(&destroy).await?,
        AgentReply::Destroyed { existed: false }
    );
    for s in &specs[..2] {
        facts.wait("healthy", T, healthy(s.id)).await?;
    }
    let mut want = vec![specs[0].id.to_string(), specs[1].id.to_string()];
    want.sort();
    assert_eq!(node.docker_ids()?, want);
    assert!(
        !facts.seen.iter().any(|f| fact_id(f) == specs[2].id),
        "nothing reported about the cancelled create: {:?}",
        facts.seen
    );
    Ok(())
}

fn fact_id(f: &Fact) -> ContainerId {
    match f {
        Fact::Observed { entry, .. } => entry.id,
        Fact::Gone { id, .. } | Fact::CreateFailed { id, .. } => *id,
    }
}

/// The activity meter: probes are not activity, a new connection is, and so is a connection
/// held open with nothing new on the counters (only the socket tables show it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_is_connections_beyond_the_probes_including_held_ones() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    ensure_demo_image();
    let nats = Nats::start().await?;
    let node = Node::new();
    let _agent = AgentProc::start(&node, &nats.url, &["--meter-ms", "300"])?;
    let ctl = Control::new(&nats, &node).await?;
    ctl.wait_ready().await?;
    let mut facts = ctl.facts().await?;
    let spec = demo_spec();
    create(&ctl, &spec).await?;
    let ip = entry_of(facts.wait("healthy", T, healthy(spec.id)).await?)
        .ipv6
        .context("an IPv6 address")?;
    let last_activity = || async {
        let inv = ctl.inventory().await?;
        let e = inv
            .containers
            .into_iter()
            .find(|e| e.id == spec.id)
            .context("the container is in the inventory")?;
        anyhow::Ok(e.last_activity_at)
    };

    // Probes every 200 ms for three meter passes (300 ms apart): no activity.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(last_activity().await?, None, "probes are not activity");

    // A connection held open with half a request: seen at once, and again while it stays.
    let mut held = tokio::net::TcpStream::connect((ip, 8080)).await?;
    held.write_all(b"GET / HTTP/1.1\r\n").await?;
    let first = wait_until("the connection to count as activity", T, || async {
        last_activity().await.ok().flatten()
    })
    .await?;
    let later = wait_until("the held connection to keep counting", T, || async {
        last_activity()
            .await
            .ok()
            .flatten()
            .filter(|at| at.since(first) >= Duration::from_secs(1))
    })
    .await?;
    assert!(later > first);
    drop(held);
    Ok(())
}

/// Without `nft` the agent refuses to start and says what to do; `--no-isolation` starts it
/// anyway, with a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nft_the_agent_refuses_to_start_unless_told_to_go_without_isolation() -> Result<()>
{
    let nats = Nats::start().await?;
    let node = Node::new();
    let empty = tempfile_dir()?;
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_warmpool-agent"))
            .args(["--node-id", node.id.as_str()])
            .args(["--nats-url", &nats.url])
            .args(["--ipv6-prefix", &node.prefix])
            .args(extra)
            // No directory holding nft.
            .env("PATH", &empty)
            .env("RUST_LOG", "info,async_nats=warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
    };
    let out = tokio::task::spawn_blocking({
        let child = run(&[])?;
        move || child.wait_with_output()
    });
    let out = tokio::time::timeout(T, out)
        .await
        .context("agent exits")???;
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("nft command is missing") && said.contains("--no-isolation"),
        "{said}"
    );

    let mut child = run(&["--no-isolation"])?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let seen = tokio::task::spawn_blocking(move || {
        use std::io::{BufRead, BufReader};
        BufReader::new(&mut stdout)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("ready for commands") || l.contains("NO NETWORK ISOLATION"))
    });
    let first = tokio::time::timeout(T, seen)
        .await
        .context("agent starts")??;
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        first.is_some_and(|l| l.contains("NO NETWORK ISOLATION")),
        "the warning comes before the agent is ready"
    );
    Ok(())
}

/// An empty directory that outlives the test process only until the next reboot.
fn tempfile_dir() -> Result<String> {
    let dir = std::env::temp_dir().join(format!("warmpool-empty-path-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir.display().to_string())
}
