//! The paused tier on one host, against the real dockerd and a real nats-server: a paused
//! container stays paused (and healthy) across an agent restart, is reported paused, and
//! answers again once unpaused; a container unpaused for an allocation is never paused again.

mod common;

use std::time::Duration;

use anyhow::{bail, Result};
use common::*;
use warmpool_proto::agent::{AgentCommand, AgentReply, Fact, ObservedStatus};
use warmpool_proto::{ContainerId, Health};

const T: Duration = Duration::from_secs(30);

fn healthy(id: ContainerId) -> impl Fn(&Fact) -> bool {
    move |f| {
        matches!(f, Fact::Observed { entry, .. }
            if entry.id == id && entry.status == ObservedStatus::Running && entry.health == Health::Healthy)
    }
}

/// The agent's inventory entry of `id`: (paused, health, status).
async fn entry(ctl: &Control, id: ContainerId) -> Result<(bool, Health, ObservedStatus)> {
    let inv = ctl.inventory().await?;
    match inv.containers.iter().find(|e| e.id == id) {
        Some(e) => Ok((e.paused, e.health, e.status)),
        None => bail!("{id} is not in the inventory"),
    }
}

/// Whether the container's cgroup freezer holds it (or Docker says it is paused).
fn frozen(docker_id: &str) -> bool {
    let file = [
        format!("/sys/fs/cgroup/freezer/docker/{docker_id}/freezer.state"),
        format!("/sys/fs/cgroup/docker/{docker_id}/cgroup.freeze"),
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok());
    match file {
        Some(s) => matches!(s.trim(), "FROZEN" | "FREEZING" | "1"),
        None => inspect(docker_id, "{{.State.Paused}}").is_ok_and(|s| s.trim() == "true"),
    }
}

/// `warmpool_agent_probes_total{result="pass"}` from the agent's `/metrics` on `[::1]:port`.
async fn probes_passed(port: u16) -> Result<u64> {
    let (_, body) = http_get(std::net::Ipv6Addr::LOCALHOST, port, "/metrics").await?;
    Ok(body
        .lines()
        .find(|l| l.starts_with("warmpool_agent_probes_total{result=\"pass\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_container_is_readopted_paused_after_an_agent_restart() -> Result<()> {
    ensure_demo_image();
    let nats = Nats::start().await?;
    let node = Node::new();
    let mut agent = AgentProc::start(&node, &nats.url, &[])?;
    let ctl = Control::new(&nats, &node).await?;
    ctl.wait_ready().await?;
    let mut facts = ctl.facts().await?;
    let (a, b) = (demo_spec(), demo_spec());
    for s in [&a, &b] {
        match ctl.request(&AgentCommand::Create(s.clone())).await? {
            AgentReply::Accepted => {}
            other => bail!("create answered {other:?}"),
        }
    }
    facts.wait("a healthy", T, healthy(a.id)).await?;
    facts.wait("b healthy", T, healthy(b.id)).await?;

    assert_eq!(
        ctl.request(&AgentCommand::Pause { id: a.id }).await?,
        AgentReply::Paused
    );
    let inv = ctl.inventory().await?;
    let docker_a = inv
        .containers
        .iter()
        .find(|e| e.id == a.id)
        .map(|e| e.docker_id.clone())
        .expect("a listed");
    assert!(frozen(&docker_a), "a is frozen");
    assert!(entry(&ctl, a.id).await?.0, "reported paused");
    assert!(!entry(&ctl, b.id).await?.0, "b runs");

    // The agent dies and comes back: a is adopted paused, healthy, and stays so (it is not
    // probed while frozen, which would find it failing).
    agent.kill();
    let metrics = free_port();
    let metrics_addr = format!("[::1]:{metrics}");
    let _agent = AgentProc::start(&node, &nats.url, &["--metrics-addr", &metrics_addr])?;
    wait_until("both adopted", T, || async {
        let inv = ctl.inventory().await.ok()?;
        (inv.containers.len() == 2).then_some(())
    })
    .await?;
    // Probe rounds pass: b is probed 12 more times (every 200 ms), time enough for two probes
    // of a to time out (1 s each) and cross its failure threshold (2), were it probed.
    facts.wait("b healthy again", T, healthy(b.id)).await?;
    let passed = probes_passed(metrics).await?;
    wait_until("12 more probes", T, || async {
        (probes_passed(metrics).await.ok()? >= passed + 12).then_some(())
    })
    .await?;
    assert_eq!(
        entry(&ctl, a.id).await?,
        (true, Health::Healthy, ObservedStatus::Running),
        "a adopted paused and healthy"
    );
    assert!(frozen(&docker_a), "a still frozen");
    assert!(!entry(&ctl, b.id).await?.0);

    // Unpaused (as for an allocation): it answers on its port at once, and a late pause is
    // refused.
    assert_eq!(
        ctl.request(&AgentCommand::Unpause { id: a.id }).await?,
        AgentReply::Unpaused
    );
    assert!(!frozen(&docker_a));
    let ip = ctl
        .inventory()
        .await?
        .containers
        .iter()
        .find(|e| e.id == a.id)
        .and_then(|e| e.ipv6)
        .expect("address");
    let (status, _) = http_get(ip, 8080, "/").await?;
    assert_eq!(status, 200);
    assert!(matches!(
        ctl.request(&AgentCommand::Pause { id: a.id }).await?,
        AgentReply::Error { .. }
    ));
    assert!(!frozen(&docker_a));
    assert!(!entry(&ctl, a.id).await?.0);
    Ok(())
}
