//! Agent credentials, against a real nats-server configured by `deploy/nats-config.sh`:
//!
//! - with node A's credentials, publishing node B's heartbeats or facts is refused by the
//!   server (a permissions violation reaches the publisher, and a control-plane subscriber
//!   never sees the message), and so is subscribing to B's commands (or to everything, or to
//!   the control plane's reply inboxes);
//! - a fact or heartbeat naming B, published on A's own subjects, passes NATS but is rejected
//!   and logged by the control plane, and B never becomes a node;
//! - a control plane and a real agent, each with its own user, run a pool end to end.

use crate::support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use warmpool_tests::poolctl::Client;
use warmpool_tests::proto::agent::{Fact, Heartbeat, Usage};
use warmpool_tests::proto::api::CreateAllocation;
use warmpool_tests::proto::records::Resources;
use warmpool_tests::proto::{subjects, ContainerId, NodeId, PoolName, Timestamp};
use warmpool_tests::{free_port, root, unique, wait_until, Member, TestCluster};

use support::{AgentProcess, ConfiguredNats};

/// Users and passwords made by `deploy/nats-config.sh`, a server running with them and one
/// control-plane member logged in as its own user.
struct Secured {
    dir: tempfile::TempDir,
    nats: ConfiguredNats,
    member: Member,
    client: Client,
    cp_user: String,
}

impl Secured {
    async fn start(agents: &[&str]) -> Secured {
        let dir = tempfile::tempdir().expect("temp dir");
        let conf_dir = dir.path().join("nats");
        let port = free_port();
        let mut cmd = Command::new(root().join("deploy/nats-config.sh"));
        cmd.arg("--dir")
            .arg(&conf_dir)
            .args(["--listen", &format!("127.0.0.1:{port}")]);
        for a in agents {
            cmd.args(["--agent", a]);
        }
        let out = cmd.output().expect("run deploy/nats-config.sh");
        assert!(
            out.status.success(),
            "nats-config.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let nats = ConfiguredNats::start(&conf_dir.join("nats-server.conf"), port, dir.path());
        let cp_user = "warmpool-control-plane".to_string();
        let cp_password = password(dir.path(), &cp_user);
        let mut member = Member::new(1, &nats.url(), dir.path(), true).with_args(&[
            "--nats-user",
            &cp_user,
            "--nats-password",
            &cp_password,
        ]);
        member.start();
        let client = Client::new(vec![member.url()], None).expect("client");
        let ready = client.clone();
        wait_until(Duration::from_secs(30), "a leader", || {
            let c = ready.clone();
            async move { c.ready().await.ok().filter(|r| *r) }
        })
        .await;
        Secured {
            dir,
            nats,
            member,
            client,
            cp_user,
        }
    }

    fn password(&self, user: &str) -> String {
        password(self.dir.path(), user)
    }

    /// A client logged in as `user`, and the server errors it is told about.
    async fn connect(&self, user: &str) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::with_user_and_password(
            user.to_string(),
            self.password(user),
        )
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string().to_lowercase());
                }
            }
        })
        .connect(self.nats.url())
        .await
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"));
        (client, rx)
    }

    fn member_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cp1.log")).unwrap_or_default()
    }
}

impl Drop for Secured {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- control plane -----\n{}", self.member.log_tail(60));
            let nats =
                std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default();
            let tail: Vec<&str> = nats.lines().rev().take(80).collect();
            eprintln!("----- nats-server -----");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

fn password(dir: &Path, user: &str) -> String {
    let path = dir
        .join("nats/credentials")
        .join(format!("{user}.password"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .next()
        .expect("a password line")
        .to_string()
}

/// Publishes to `subject` until `sub` (subscribed to it) receives one: then the server has the
/// subscription. Drains what came.
async fn subscribed(client: &async_nats::Client, sub: &mut async_nats::Subscriber, subject: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        client
            .publish(subject.to_string(), "probe".into())
            .await
            .expect("publish");
        client.flush().await.expect("flush");
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            while let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(50), sub.next()).await
            {}
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscription to {subject} not active within 15s"
        );
    }
}

/// Waits for a server error containing `what` (lowercase).
async fn expect_violation(errors: &mut mpsc::UnboundedReceiver<String>, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let e = tokio::time::timeout_at(deadline, errors.recv())
            .await
            .unwrap_or_else(|_| panic!("no server error {what:?} within 10s"))
            .expect("error channel open");
        if e.contains("permissions violation") && e.contains(what) {
            return;
        }
    }
}

fn heartbeat(node: &NodeId) -> Vec<u8> {
    serde_json::to_vec(&Heartbeat {
        node: node.clone(),
        boot_id: uuid::Uuid::new_v4(),
        seq: 1,
        sent_at: Timestamp::now(),
        agent_version: "forged".into(),
        ipv6_prefix: "fd36:ffee::/64".into(),
        labels: BTreeMap::new(),
        capacity: Resources {
            cpu_millis: 1000,
            memory_mb: 1024,
        },
        usage: Usage::default(),
        containers: 0,
        inventory_digest: 0,
        create_slots: None,
        runtime_unavailable: None,
        images: Vec::new(),
    })
    .expect("json")
}

fn fact(node: &NodeId) -> Vec<u8> {
    serde_json::to_vec(&Fact::Gone {
        node: node.clone(),
        seq: 2,
        id: ContainerId::new(),
        reason: "forged".into(),
    })
    .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_can_only_speak_and_listen_for_its_own_node() {
    let a = NodeId::new(unique("a")).unwrap();
    let b = NodeId::new(unique("b")).unwrap();
    let s = Secured::start(&[a.as_str(), b.as_str()]).await;
    let (as_a, mut a_errors) = s.connect(a.as_str()).await;
    let (spy, _) = s.connect(&s.cp_user).await;
    let mut seen = spy.subscribe("pool.v1.node.>").await.expect("spy");
    // `flush` only empties the client's buffer: the server has the subscription once a message
    // sent through it comes back.
    subscribed(&spy, &mut seen, &format!("pool.v1.node.{a}.probe")).await;

    // 1. A publishing as B: refused by the server, never delivered.
    as_a.publish(subjects::heartbeat(&b), heartbeat(&b).into())
        .await
        .expect("queued");
    as_a.publish(subjects::facts(&b), fact(&b).into())
        .await
        .expect("queued");
    let marker = format!("pool.v1.node.{a}.marker");
    as_a.publish(marker.clone(), "after".into())
        .await
        .expect("queued");
    as_a.flush().await.expect("flush");
    expect_violation(
        &mut a_errors,
        &format!("publish to \"{}\"", subjects::heartbeat(&b)),
    )
    .await;
    expect_violation(
        &mut a_errors,
        &format!("publish to \"{}\"", subjects::facts(&b)),
    )
    .await;
    // One publisher's messages arrive in order: whatever of A's reached the server before the
    // marker has been delivered by the time the marker is.
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), seen.next())
            .await
            .expect("the marker within 10s")
            .expect("subscription open");
        assert!(
            !m.subject.as_str().contains(b.as_str()),
            "a message for {b} was delivered: {}",
            m.subject
        );
        if m.subject.as_str() == marker {
            break;
        }
    }

    // 2. A subscribing to B's commands, to every node's subjects, to reply inboxes: refused.
    let mut b_cmds = as_a.subscribe(subjects::cmd(&b)).await.expect("sent");
    expect_violation(
        &mut a_errors,
        &format!("subscription to \"{}\"", subjects::cmd(&b)),
    )
    .await;
    let _all = as_a.subscribe("pool.v1.node.>").await.expect("sent");
    expect_violation(&mut a_errors, "subscription to \"pool.v1.node.>\"").await;
    let _inboxes = as_a.subscribe("_INBOX.>").await.expect("sent");
    expect_violation(&mut a_errors, "subscription to \"_inbox.>\"").await;
    let give_up = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut a_cmds = as_a
        .subscribe(subjects::cmd(&a))
        .await
        .expect("own commands");
    as_a.flush().await.expect("flush");
    // B's command, then A's, on one connection, until A has its own (one round is enough
    // unless the machine is very busy).
    let own = loop {
        spy.publish(subjects::cmd(&b), "for b".into())
            .await
            .expect("publish");
        spy.publish(subjects::cmd(&a), "for a".into())
            .await
            .expect("publish");
        spy.flush().await.expect("flush");
        match tokio::time::timeout(Duration::from_secs(1), a_cmds.next()).await {
            Ok(m) => break m.expect("open"),
            Err(_) if tokio::time::Instant::now() < give_up => continue,
            Err(_) => panic!("A's own command did not arrive within 15s"),
        }
    };
    assert_eq!(&own.payload[..], b"for a");
    // B's command was published first on the same connection: had it been delivered to A, it
    // would be there already.
    let leaked = tokio::time::timeout(Duration::from_millis(200), b_cmds.next()).await;
    assert!(
        !matches!(leaked, Ok(Some(_))),
        "A received B's command: {leaked:?}"
    );

    // 3. A fact and a heartbeat naming B on A's own subjects pass NATS, and the control plane
    // rejects them, says so, and never takes B for a node.
    as_a.publish(subjects::facts(&a), fact(&b).into())
        .await
        .expect("queued");
    as_a.publish(subjects::heartbeat(&a), heartbeat(&b).into())
        .await
        .expect("queued");
    as_a.flush().await.expect("flush");
    let rejection = format!("names node {b} but was published by node {a}");
    wait_until(
        Duration::from_secs(10),
        "the control plane to log both rejections",
        || {
            let log = s.member_log();
            let rejection = rejection.clone();
            async move {
                let hits = log
                    .lines()
                    .filter(|l| l.contains("agent message rejected") && l.contains(&rejection))
                    .count();
                (hits >= 2).then_some(())
            }
        },
    )
    .await;
    let nodes = s.client.nodes().await.expect("nodes");
    assert!(
        nodes.iter().all(|n| n.node.id != b && n.node.id != a),
        "forged messages made a node: {:?}",
        nodes
            .iter()
            .map(|n| n.node.id.to_string())
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_and_an_agent_with_their_own_users_run_a_pool() {
    warmpool_tests::ensure_demo_image();
    let node = unique("cred");
    let s = Secured::start(&[&node]).await;
    // deploy/install-agent.sh takes the generated credentials (staged under a scratch root,
    // no systemd); the agent then runs with what it wrote.
    let stage = s.dir.path().join("root");
    let out = Command::new(root().join("deploy/install-agent.sh"))
        .args([
            "--nats-url",
            &s.nats.url(),
            "--ipv6-prefix",
            "fd36:ffed::/64",
        ])
        .args(["--node-id", &node, "--no-start", "--binary"])
        .arg(warmpool_tests::bin("warmpool-agent"))
        .arg("--root")
        .arg(&stage)
        .arg("--nats-credentials")
        .arg(s.dir.path().join("nats"))
        .output()
        .expect("run install-agent.sh");
    assert!(
        out.status.success(),
        "install-agent.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env = std::fs::read_to_string(stage.join("etc/warmpool/agent.env")).expect("agent.env");
    let var = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(|v| v.trim_matches(|c| c == '"' || c == '\'').to_string())
            .unwrap_or_else(|| panic!("{name} missing from agent.env:\n{env}"))
    };
    let (user, password) = (var("WARMPOOL_NATS_USER"), var("WARMPOOL_NATS_PASSWORD"));
    assert_eq!(user, node);
    assert_eq!(password, s.password(&node));
    let _agent = AgentProcess::start_as(
        &node,
        &s.nats.url(),
        s.dir.path(),
        &["--nats-user", &user, "--nats-password", &password],
    );
    let pool = unique("cred");
    s.client
        .create_pool(&TestCluster::demo_spec(&pool, 2))
        .await
        .expect("create pool");
    let client = s.client.clone();
    wait_until(Duration::from_secs(60), "2 warm containers", || {
        let (client, pool) = (client.clone(), pool.clone());
        async move {
            let st = client.status().await.ok()?;
            let p = st.pools.iter().find(|p| p.name.as_str() == pool)?;
            (p.counts.warm >= 2).then_some(())
        }
    })
    .await;
    // The leader's commands reached the agent and its replies came back (creates were
    // answered, containers reported): now an allocation and a release, which destroys one.
    let a = s
        .client
        .allocate(&CreateAllocation {
            pool: PoolName::new(&pool).unwrap(),
            session_id: None,
            lease_seconds: None,
            wait_ms: Some(10_000),
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
    assert_eq!(a.node.as_str(), node);
    s.client.release(a.id).await.expect("release");
    let released = a.container_id.to_string();
    wait_until(
        Duration::from_secs(30),
        "the released container to be destroyed",
        || {
            let gone = !warmpool_tests::docker_containers_of(&node).contains(&released);
            async move { gone.then_some(()) }
        },
    )
    .await;
    let log = s.member_log();
    assert!(
        !log.contains("agent message rejected"),
        "the control plane rejected messages of a well-behaved agent"
    );
    let agent_log = std::fs::read_to_string(&_agent.log).unwrap_or_default();
    assert!(
        !agent_log.to_lowercase().contains("permissions violation"),
        "the agent hit a permission it needs:\n{agent_log}"
    );
}

/// Each member its own NATS user (`nats-config.sh --member`): three members form a cluster and
/// replicate through them, and a member's user can neither speak for an agent nor listen to
/// another member's Raft traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_member_has_its_own_user_limited_to_its_own_subjects() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf_dir = dir.path().join("nats");
    let port = free_port();
    let node = NodeId::new(unique("n")).unwrap();
    let out = Command::new(root().join("deploy/nats-config.sh"))
        .arg("--dir")
        .arg(&conf_dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--agent", node.as_str()])
        .args(["--member", "1", "--member", "2", "--member", "3"])
        .output()
        .expect("run deploy/nats-config.sh");
    assert!(
        out.status.success(),
        "nats-config.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nats = ConfiguredNats::start(&conf_dir.join("nats-server.conf"), port, dir.path());
    let env_of = |id: u64| -> BTreeMap<String, String> {
        std::fs::read_to_string(conf_dir.join(format!("members/{id}.env")))
            .expect("member env file")
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let mut members = Vec::new();
    for id in 1..=3u64 {
        let env = env_of(id);
        let user = env["WARMPOOL_NATS_USER"].clone();
        assert_eq!(user, format!("warmpool-control-plane-{id}"));
        let m = if id == 1 {
            Member::new(1, &nats.url(), dir.path(), true)
        } else {
            Member::joining(id, &nats.url(), dir.path())
        };
        let mut m = m.with_args(&[
            "--nats-user",
            &user,
            "--nats-password",
            &env["WARMPOOL_NATS_PASSWORD"],
        ]);
        m.start();
        members.push(m);
    }
    let client = Client::new(members.iter().map(Member::url).collect(), None).expect("client");
    let c = client.clone();
    wait_until(
        Duration::from_secs(60),
        "three voters over per-member users",
        || {
            let c = c.clone();
            async move {
                let v = c.cluster().await.ok()?;
                (v.members.iter().filter(|m| m.role == "voter").count() == 3).then_some(())
            }
        },
    )
    .await;
    // Writes replicate through them (through every member, forwards included).
    for (i, m) in members.iter().enumerate() {
        let one = Client::new(vec![m.url()], None).expect("client");
        one.create_pool(&TestCluster::demo_spec(&format!("p{i}"), 0))
            .await
            .unwrap_or_else(|e| panic!("a write through member {}: {e}", m.id));
    }

    // Member 1's user: may not speak for an agent, nor listen to member 2's Raft RPCs.
    let env = env_of(1);
    let (tx, mut errors) = mpsc::unbounded_channel();
    let as_member = async_nats::ConnectOptions::with_user_and_password(
        env["WARMPOOL_NATS_USER"].clone(),
        env["WARMPOOL_NATS_PASSWORD"].clone(),
    )
    .event_callback(move |event| {
        let tx = tx.clone();
        async move {
            if let async_nats::Event::ServerError(e) = event {
                let _ = tx.send(e.to_string().to_lowercase());
            }
        }
    })
    .connect(nats.url())
    .await
    .expect("connect as member 1");
    as_member
        .publish(subjects::heartbeat(&node), heartbeat(&node).into())
        .await
        .expect("queued");
    as_member.flush().await.expect("flush");
    expect_violation(
        &mut errors,
        &format!("publish to \"{}\"", subjects::heartbeat(&node)),
    )
    .await;
    let _spy = as_member
        .subscribe("pool.v1.raft.2.append")
        .await
        .expect("sent");
    expect_violation(&mut errors, "subscription to \"pool.v1.raft.2.append\"").await;
    // And a process with no credentials at all is refused at the door.
    let anonymous = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(nats.url());
    let refused = tokio::time::timeout(Duration::from_secs(5), anonymous).await;
    match refused {
        Ok(Err(e)) => assert!(
            e.to_string().to_lowercase().contains("authorization"),
            "refused, but why: {e}"
        ),
        Ok(Ok(_)) => panic!("a client without credentials connected"),
        Err(_) => panic!("no answer to a client without credentials within 5 s"),
    }
}
