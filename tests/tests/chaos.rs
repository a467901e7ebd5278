//! The fault campaign (issue 18): three control-plane members, a NATS cluster of three servers,
//! two hosts each with its own dockerd (live restore) and agent, and a steady allocation load
//! whose every attempt is recorded. Faults are injected one after another, each settling before
//! the next: the leader SIGKILLed; the NATS server carrying the leader SIGKILLed; every NATS
//! server down for 10 s; dockerd restarted on a host; an agent SIGKILLed while creates run; a
//! member restarted with its clock 30 s ahead; a member's disk (its sled directory, moved onto a
//! small tmpfs; it leads when it can) filled up. After each, the campaign counts acknowledged allocations, lost ones (answered
//! to a client, missing from the state), doubled ones (one key or one container answered to two
//! allocations), orphan containers (running in Docker with no live record) and the seconds until
//! allocations were answered again (granted, or refused `no_capacity` when the load holds every
//! container), prints one table, and holds every row to 0 / 0 / 0 and ≤ 5 s.
//!
//! `deploy/dev.sh test` runs it once (about three minutes); `deploy/bench/chaos.sh` runs it
//! with `WARMPOOL_CHAOS_ROUNDS` (default 3) rounds of every fault.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command as Proc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use poolctl::{Client, ClientError};
use warmpool_proto::api::{ContainerQuery, ErrorCode};
use warmpool_proto::records::UnreachableReason;
use warmpool_proto::{AllocationId, ContainerId};
use warmpool_tests::hosts::{HostCluster, HostSpec};
use warmpool_tests::{unique, wait_until};

/// How many of the load's allocations are answered, held and released while a fault stands,
/// before it is undone: the load runs through every fault.
const UNDER_FAULT_OPS: usize = 3;
/// How long every NATS server is down (issue 21's outage).
const NATS_OUTAGE: Duration = Duration::from_secs(10);
/// The most a single fault may stop allocation for.
const RECOVERY_BOUND: Duration = Duration::from_secs(5);

/// One allocation a client asked for, with what it was told.
#[derive(Clone, Debug)]
struct Op {
    key: String,
    /// The fault running when it was answered (its index in the campaign, from 1; 0 before
    /// the first).
    fault: usize,
    answers: Vec<AllocationId>,
    container: Option<ContainerId>,
}

/// One row of the table.
#[derive(Debug)]
struct Row {
    fault: String,
    acknowledged: usize,
    lost: usize,
    doubled: usize,
    orphans: usize,
    recovery: Duration,
    /// From the fault's end until no node was backed off for failed creates.
    cleared: Duration,
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    LeaderKill,
    NatsNodeKill,
    NatsAllDown,
    DockerdRestart,
    AgentKillMidCreate,
    ClockAhead,
    DiskFull,
}

impl Fault {
    const ALL: [Fault; 7] = [
        Fault::LeaderKill,
        Fault::NatsNodeKill,
        Fault::NatsAllDown,
        Fault::DockerdRestart,
        Fault::AgentKillMidCreate,
        Fault::ClockAhead,
        Fault::DiskFull,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::LeaderKill => "leader SIGKILL",
            Fault::NatsNodeKill => "NATS node SIGKILL",
            Fault::NatsAllDown => "all NATS down 10 s",
            Fault::DockerdRestart => "dockerd restart",
            Fault::AgentKillMidCreate => "agent SIGKILL mid-create",
            Fault::ClockAhead => "member clock +30 s",
            Fault::DiskFull => "a member's disk full",
        }
    }
}

/// The load's record: every allocation asked for, and the fault running now.
#[derive(Clone, Default)]
struct Load {
    history: Arc<Mutex<Vec<Op>>>,
    /// The fault running (its index in the campaign, from 1; 0 before the first).
    current: Arc<AtomicUsize>,
}

impl Load {
    /// Waits until [`UNDER_FAULT_OPS`] allocations answered during the fault now running are
    /// done (held and released): the load ran through the fault.
    async fn through_fault(&self) {
        let fault = self.current.load(Ordering::Relaxed);
        wait_until(
            Duration::from_secs(60),
            "the load's allocations under the fault",
            || {
                let done = self
                    .history
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|op| op.fault == fault && !op.answers.is_empty())
                    .count();
                async move { (done >= UNDER_FAULT_OPS).then_some(()) }
            },
        )
        .await;
    }
}

async fn leader_index(c: &HostCluster) -> usize {
    let leader = wait_until(Duration::from_secs(30), "a leader", || {
        let client = c.client.clone();
        async move { client.cluster().await.ok()?.leader }
    })
    .await;
    c.members.iter().position(|m| m.id == leader).unwrap()
}

/// Allocates and releases once with a fresh key, as a client that wants an answer now. The
/// control plane works when it grants, or refuses for want of a free container (the load may
/// hold every one: that is capacity, not a fault).
async fn probe(client: &Client, pool: &str) -> bool {
    let mut req = warmpool_tests::allocation(pool, 1_000);
    req.idempotency_key = Some(unique("probe"));
    match client.allocate(&req).await {
        Ok(a) => {
            let _ = client.release(a.id).await;
            true
        }
        Err(ClientError::Api {
            code: ErrorCode::NoCapacity,
            ..
        }) => true,
        Err(_) => false,
    }
}

/// The time from `from` until a probe allocation works, probing every 100 ms.
async fn recovered(client: &Client, pool: &str, from: Instant) -> Duration {
    let deadline = from + Duration::from_secs(60);
    loop {
        if probe(client, pool).await {
            return from.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "allocation did not work again within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Containers running in some host's Docker that the state has no live record of, once the
/// fleet has had `settle` to reconcile.
async fn orphans(c: &HostCluster, settle: Duration) -> Vec<String> {
    let deadline = Instant::now() + settle;
    loop {
        let live: BTreeSet<String> = c
            .client
            .list_containers(&ContainerQuery::default())
            .await
            .map(|cs| {
                cs.into_iter()
                    .filter(|c| c.state.is_live())
                    .map(|c| c.id.to_string())
                    .collect()
            })
            .unwrap_or_default();
        let running: Vec<String> = c
            .hosts
            .iter()
            .flat_map(|h| h.warmpool_containers())
            .filter(|d| d.state == "running" && !live.contains(&d.id))
            .map(|d| format!("{} on {}", d.id, d.node))
            .collect();
        if running.is_empty() || Instant::now() > deadline {
            return running;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Moves a member's data directory onto a tmpfs of `mib` MiB (the member must be stopped).
fn onto_tmpfs(dir: &std::path::Path, mib: u32) {
    let keep = dir.with_extension("keep");
    std::fs::rename(dir, &keep).expect("move the data aside");
    std::fs::create_dir_all(dir).unwrap();
    run(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={mib}m"),
            "tmpfs",
            path(dir),
        ],
    );
    run("cp", &["-a", &format!("{}/.", path(&keep)), path(dir)]);
    std::fs::remove_dir_all(&keep).unwrap();
}

/// Moves a data directory off its tmpfs again (its member must be stopped).
fn off_tmpfs(dir: &std::path::Path) {
    let keep = dir.with_extension("keep");
    std::fs::create_dir_all(&keep).unwrap();
    let _ = std::fs::remove_file(dir.join("filler"));
    run("cp", &["-a", &format!("{}/.", path(dir)), path(&keep)]);
    run("umount", &[path(dir)]);
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::rename(&keep, dir).unwrap();
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn run(cmd: &str, args: &[&str]) {
    let out = Proc::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fills the filesystem holding `dir` (a small tmpfs) to the last byte.
fn fill(dir: &std::path::Path) {
    let _ = Proc::new("dd")
        .args(["if=/dev/zero", &format!("of={}/filler", path(dir)), "bs=1M"])
        .output();
}

/// Injects `fault`, keeps it until the load has run through it, undoes it; answers the time
/// until allocation worked again, counted from the injection (from the return, for the NATS
/// outage).
async fn inject(
    c: &mut HostCluster,
    fault: Fault,
    pool: &str,
    load: &Load,
    tmpfs: &mut Option<PathBuf>,
) -> Duration {
    let probe_client = c.client.clone();
    match fault {
        Fault::LeaderKill => {
            let i = leader_index(c).await;
            c.members[i].kill();
            let t = Instant::now();
            let r = recovered(&probe_client, pool, t).await;
            load.through_fault().await;
            c.members[i].start();
            r
        }
        Fault::NatsNodeKill => {
            let leader = c.members[leader_index(c).await].id;
            let name = format!("warmpool-control-plane-{leader}");
            let server = (0..3)
                .find(|&s| c.nats.client_names(s).contains(&name))
                .unwrap_or(0);
            c.nats.kill_server(server);
            let t = Instant::now();
            let r = recovered(&probe_client, pool, t).await;
            load.through_fault().await;
            c.nats.restart_server(server);
            r
        }
        Fault::NatsAllDown => {
            // The containers warm now, with the host each runs on (none of them can be
            // claimed, held and released before NATS is down, within a second).
            let warm: Vec<(usize, std::net::Ipv6Addr, u16)> = c
                .client
                .list_containers(&ContainerQuery {
                    state: Some("warm".into()),
                    ..Default::default()
                })
                .await
                .expect("list containers")
                .into_iter()
                .filter_map(|x| {
                    let h = c.hosts.iter().position(|h| h.node == x.node.as_str())?;
                    Some((h, x.ipv6?, x.port))
                })
                .collect();
            c.nats.kill();
            let down = Instant::now();
            // Meanwhile each is asked every half second that it still answers: the data
            // path never needs NATS, and no agent destroys a container for want of it.
            while down.elapsed() < NATS_OUTAGE {
                for (h, ip, port) in &warm {
                    if let Err(e) = c.hosts[*h].fetch(*ip, *port, "/").await {
                        panic!("a warm container stopped answering during the outage: {e}");
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            c.nats.restart();
            let t = Instant::now();
            let r = recovered(&probe_client, pool, t).await;
            load.through_fault().await;
            r
        }
        Fault::DockerdRestart => {
            c.hosts[0].stop_dockerd();
            let t = Instant::now();
            // Probed meanwhile (starting dockerd blocks this task until it answers).
            let pool = pool.to_string();
            let probing = tokio::spawn(async move { recovered(&probe_client, &pool, t).await });
            // Down until the control plane knows: the agent reported its runtime gone, and
            // the node takes no grants.
            let node = c.hosts[0].node.clone();
            c.wait_node(&node, Duration::from_secs(30), "runtime unavailable", |n| {
                n.node
                    .unreachable
                    .as_ref()
                    .is_some_and(|u| u.reason == UnreachableReason::RuntimeUnavailable)
            })
            .await;
            let h = &mut c.hosts[0];
            h.start_dockerd();
            let r = probing.await.expect("probe");
            load.through_fault().await;
            r
        }
        Fault::AgentKillMidCreate => {
            // Releases send creates to replace what they free; kill the agent in the middle
            // of them.
            let node = c.hosts[1].node.clone();
            let client = c.client.clone();
            wait_until(Duration::from_secs(20), "a create on the host", || {
                let (client, node) = (client.clone(), node.clone());
                async move {
                    let cs = client
                        .list_containers(&ContainerQuery {
                            node: Some(node),
                            state: Some("creating".into()),
                            ..Default::default()
                        })
                        .await
                        .ok()?;
                    (!cs.is_empty()).then_some(())
                }
            })
            .await;
            c.hosts[1].kill_agent();
            let t = Instant::now();
            let r = recovered(&probe_client, pool, t).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            c.hosts[1].start_agent();
            load.through_fault().await;
            r
        }
        Fault::ClockAhead => {
            let leader = leader_index(c).await;
            let i = (leader + 1) % c.members.len();
            c.members[i].kill();
            c.members[i].set_clock_ahead(30);
            let t = Instant::now();
            c.members[i].start();
            let r = recovered(&probe_client, pool, t).await;
            load.through_fault().await;
            c.members[i].kill();
            c.members[i].set_clock_ahead(0);
            c.members[i].start();
            r
        }
        Fault::DiskFull => {
            // The leader's data directory moves onto a 256 MiB tmpfs (a restart, so another
            // member may lead meanwhile: the one leading when the disk fills is the victim).
            let i = leader_index(c).await;
            c.members[i].kill();
            let dir = c.members[i].data_dir().to_path_buf();
            onto_tmpfs(&dir, 256);
            *tmpfs = Some(dir.clone());
            c.members[i].start();
            let client = c.client.clone();
            let id = c.members[i].id;
            // Caught up and leading again (it is the most up to date, so it often wins).
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    if client.cluster().await.ok().and_then(|v| v.leader) == Some(id) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .await;
            let leading = c.members[leader_index(c).await].id == id;
            eprintln!(
                "CHAOS: filling the disk of member {id}, {}",
                if leading { "the leader" } else { "a follower" }
            );
            fill(&dir);
            let t = Instant::now();
            let r = recovered(&probe_client, pool, t).await;
            load.through_fault().await;
            // Space again: the member is restarted (if it stopped, or stalled) off the tmpfs.
            c.members[i].kill();
            off_tmpfs(&dir);
            *tmpfs = None;
            c.members[i].start();
            r
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_campaign_loses_nothing_doubles_nothing_and_recovers() {
    let rounds: usize = std::env::var("WARMPOOL_CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let specs = [
        HostSpec::new().live_restore(),
        HostSpec::new().live_restore(),
    ];
    let mut c = HostCluster::start_with(&specs, 3, 3).await;
    let pool = unique("chaos").replace('-', "");
    let mut spec = warmpool_tests::TestCluster::demo_spec(&pool, 6);
    spec.max_warm = Some(8);
    c.client.create_pool(&spec).await.expect("create pool");
    c.wait_status(Duration::from_secs(120), "6 warm", |s| {
        s.pools
            .iter()
            .any(|p| p.name.as_str() == pool && p.counts.warm >= 6)
    })
    .await;

    // The load: three clients allocate, hold 1 s and release, each retrying with its key
    // until answered (up to 60 s) and recording every answer.
    let load = Load::default();
    let (history, current) = (load.history.clone(), load.current.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let urls: Vec<String> = c.members.iter().map(|m| m.url()).collect();
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut urls = urls.clone();
        urls.rotate_left(i);
        let client = Client::new(urls, None).unwrap();
        let (history, pool, current, stop) =
            (history.clone(), pool.clone(), current.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let mut op = Op {
                    key: format!("c{i}-{n}"),
                    fault: 0,
                    answers: vec![],
                    container: None,
                };
                let deadline = Instant::now() + Duration::from_secs(60);
                while Instant::now() < deadline && op.answers.is_empty() {
                    let mut req = warmpool_tests::allocation(&pool, 3_000);
                    req.idempotency_key = Some(op.key.clone());
                    match client.allocate(&req).await {
                        Ok(a) => {
                            op.answers.push(a.id);
                            op.container = Some(a.container_id);
                            op.fault = current.load(Ordering::Relaxed);
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
                if let Some(&id) = op.answers.first() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    while Instant::now() < deadline && client.release(id).await.is_err() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                history.lock().unwrap().push(op);
            }
        }));
    }

    let mut tmpfs: Option<PathBuf> = None;
    let mut rows = Vec::new();
    // `WARMPOOL_CHAOS_FAULTS=1,2` runs only those faults (1-based, in the order above).
    let only: Option<Vec<usize>> = std::env::var("WARMPOOL_CHAOS_FAULTS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect());
    let faults: Vec<Fault> = (0..rounds)
        .flat_map(|_| Fault::ALL.into_iter().enumerate())
        .filter(|(i, _)| only.as_ref().is_none_or(|o| o.contains(&(i + 1))))
        .map(|(_, f)| f)
        .collect();
    for (k, fault) in faults.iter().enumerate() {
        current.store(k + 1, Ordering::Relaxed);
        eprintln!("CHAOS: injecting {}", fault.name());
        let recovery = inject(&mut c, *fault, &pool, &load, &mut tmpfs).await;
        let undone = Instant::now();
        let orphaned = orphans(&c, Duration::from_secs(30)).await;
        // No node is left backed off for failures the fault caused (a create cut off by a
        // dockerd restart is not the node's fault).
        let clear_by = Instant::now() + Duration::from_secs(60);
        loop {
            let nodes = c.client.status().await.map(|s| s.nodes).unwrap_or_default();
            if !nodes.is_empty() && nodes.iter().all(|n| n.condition.is_none()) {
                break;
            }
            assert!(
                Instant::now() < clear_by,
                "{}: a node is still backed off 60 s after: {nodes:#?}",
                fault.name()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let cleared = undone.elapsed();
        eprintln!(
            "CHAOS: {} recovered in {recovery:?}; orphans {orphaned:?}",
            fault.name()
        );
        rows.push(Row {
            fault: fault.name().to_string(),
            acknowledged: 0,
            lost: 0,
            doubled: 0,
            orphans: orphaned.len(),
            recovery,
            cleared,
        });
    }
    // After the campaign, allocations are served again before the load stops.
    let after = faults.len() + 1;
    current.store(after, Ordering::Relaxed);
    wait_until(
        Duration::from_secs(60),
        "an allocation after the campaign",
        || {
            let history = history.clone();
            async move {
                let h = history.lock().unwrap();
                h.iter()
                    .any(|o| o.fault == after && !o.answers.is_empty())
                    .then_some(())
            }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in clients {
        t.await.unwrap();
    }
    if let Some(dir) = tmpfs {
        let _ = Proc::new("umount").args(["-l", path(&dir)]).status();
    }

    // Lost and doubled, per fault (an operation counts for the fault running when it was
    // answered).
    let history = history.lock().unwrap().clone();
    let state: BTreeMap<AllocationId, _> = c
        .client
        .list_allocations(&Default::default())
        .await
        .expect("list")
        .into_iter()
        .filter(|a| a.pool.as_str() == pool)
        .map(|a| (a.id, a))
        .collect();
    let mut by_key: BTreeMap<&str, BTreeSet<AllocationId>> = BTreeMap::new();
    let mut by_container: BTreeMap<ContainerId, BTreeSet<AllocationId>> = BTreeMap::new();
    for a in state.values() {
        if let Some(k) = a.idempotency_key.as_deref() {
            by_key.entry(k).or_default().insert(a.id);
        }
        by_container.entry(a.container_id).or_default().insert(a.id);
    }
    for op in &history {
        let Some(row) = op.fault.checked_sub(1).and_then(|i| rows.get_mut(i)) else {
            continue;
        };
        if op.answers.is_empty() {
            continue;
        }
        row.acknowledged += 1;
        let id = op.answers[0];
        match state.get(&id) {
            None => row.lost += 1,
            Some(a) if Some(a.container_id) != op.container => row.lost += 1,
            Some(a) => {
                let doubled = by_key.get(op.key.as_str()).is_some_and(|s| s.len() > 1)
                    || by_container
                        .get(&a.container_id)
                        .is_some_and(|s| s.len() > 1);
                if doubled {
                    row.doubled += 1;
                }
            }
        }
    }

    eprintln!();
    eprintln!(
        "{:<26} {:>12} {:>5} {:>8} {:>8} {:>12} {:>12}",
        "fault", "acknowledged", "lost", "doubled", "orphans", "recovery (s)", "backoff (s)"
    );
    for r in &rows {
        eprintln!(
            "{:<26} {:>12} {:>5} {:>8} {:>8} {:>12.2} {:>12.2}",
            r.fault,
            r.acknowledged,
            r.lost,
            r.doubled,
            r.orphans,
            r.recovery.as_secs_f64(),
            r.cleared.as_secs_f64()
        );
    }
    if let Ok(file) = std::env::var("WARMPOOL_CHAOS_REPORT") {
        let text: String = rows
            .iter()
            .map(|r| {
                format!(
                    "{}\t{}\t{}\t{}\t{}\t{:.2}\t{:.2}\n",
                    r.fault,
                    r.acknowledged,
                    r.lost,
                    r.doubled,
                    r.orphans,
                    r.recovery.as_secs_f64(),
                    r.cleared.as_secs_f64()
                )
            })
            .collect();
        let _ = std::fs::write(file, text);
    }
    for r in &rows {
        assert_eq!(r.lost, 0, "{}: acknowledged allocations lost", r.fault);
        assert_eq!(r.doubled, 0, "{}: allocations doubled", r.fault);
        assert_eq!(r.orphans, 0, "{}: orphan containers", r.fault);
        assert!(
            r.recovery <= RECOVERY_BOUND,
            "{}: allocation worked again only after {:?}",
            r.fault,
            r.recovery
        );
    }
    let acknowledged: usize = rows.iter().map(|r| r.acknowledged).sum();
    assert!(
        acknowledged >= 20,
        "the load was served: {acknowledged} allocations"
    );
}
