//! Workspaces across hosts (issue 19): a file written in a workspace on one node is there when
//! the workspace is allocated again on another node; an agent killed between a save's upload
//! and its commit leaves the previous version whole. The same scenario runs against the
//! local directory store and against a real S3-protocol server (moto's, installed by
//! `deploy/dev.sh`'s test prerequisites).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use warmpool_proto::api::{CreateAllocation, WaitFor};
use warmpool_proto::records::NodeStatus;
use warmpool_proto::session::ExecRequest;
use warmpool_proto::workspace::{PoolWorkspace, WorkspaceKey, WorkspaceQuery, WorkspaceState};
use warmpool_proto::{Allocation, PoolSpec, TenantId};
use warmpool_tests::hosts::{eventually, HostCluster, HostSpec};
use warmpool_tests::{bin, free_port, unique, TestCluster};
use warmpool_workspace_store::{Store, COMMIT_DELAY_ENV};

const WARM: Duration = Duration::from_secs(60);
const PATH: &str = "/workspace";

/// A moto S3 server on every address of this machine, killed on drop.
struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `moto_server`: `$WARMPOOL_MOTO_SERVER`, then the virtualenv `deploy/dev.sh` makes, then
/// `PATH`.
fn moto_server() -> PathBuf {
    if let Ok(p) = std::env::var("WARMPOOL_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let cache = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache")
        });
    let venv = cache.join("warmpool/moto/bin/moto_server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("moto_server")
}

impl Moto {
    async fn start(dir: &Path, bucket: &str) -> Moto {
        let port = free_port();
        let log = std::fs::File::create(dir.join("moto.log")).expect("moto log");
        let child = Command::new(moto_server())
            .args(["-H", "::", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start moto_server (deploy/dev.sh installs it: pip install 'moto[server]')");
        let m = Moto { child, port };
        let http = warmpool_tests::http_client();
        let url = format!("http://[::1]:{port}/{bucket}");
        eventually(Duration::from_secs(30), "moto to make the bucket", || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let r = http.put(&url).send().await.map_err(|e| e.to_string())?;
                r.status()
                    .is_success()
                    .then_some(())
                    .ok_or_else(|| format!("status {}", r.status()))
            }
        })
        .await;
        m
    }

    /// An S3 options file for an endpoint at `host`.
    fn config(&self, dir: &Path, name: &str, host: &str) -> PathBuf {
        let path = dir.join(name);
        let opts = serde_json::json!({
            "aws_endpoint": format!("http://{host}:{}", self.port),
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
            "aws_region": "us-east-1",
            "aws_allow_http": "true",
            "aws_virtual_hosted_style_request": "false",
        });
        std::fs::write(&path, opts.to_string()).expect("write S3 options");
        path
    }
}

fn pool(name: &str, side: &str) -> PoolSpec {
    let mut spec = TestCluster::demo_spec(name, 1);
    spec.constraints = BTreeMap::from([("side".to_string(), side.to_string())]);
    spec.workspace = Some(PoolWorkspace {
        path: PATH.into(),
        sync_secs: 0,
        max_bytes: None,
    });
    spec
}

async fn sh(c: &HostCluster, a: &Allocation, script: &str) -> String {
    let req = ExecRequest {
        command: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    };
    let r = c.client.exec(a.id, &req).await.expect("exec");
    assert_eq!(r.exit_code, Some(0), "{script}: {}", r.stderr);
    r.stdout
}

async fn allocate(c: &HostCluster, pool: &str, ws: &str) -> Allocation {
    let req = CreateAllocation {
        workspace: Some(ws.into()),
        wait_for: Some(WaitFor::Workspace),
        ..warmpool_tests::allocation(pool, 30_000)
    };
    let a = c.client.allocate(&req).await.expect("allocate");
    let w = a
        .workspace
        .clone()
        .expect("the allocation names its workspace");
    assert_eq!(w.id, ws);
    assert_eq!(w.state, WorkspaceState::Restored, "{a:?}");
    a
}

async fn wait_warm(c: &HostCluster, pool: &str) {
    eventually(
        WARM,
        &format!("a warm container of {pool}"),
        || async move {
            let s = c.client.status().await.map_err(|e| e.to_string())?;
            s.pools
                .iter()
                .find(|p| p.name.as_str() == pool && p.counts.warm >= 1)
                .map(|_| ())
                .ok_or_else(|| "none warm".to_string())
        },
    )
    .await;
}

/// Starts host `name`'s agent with the store flags (and `env`), and waits until it is ready.
async fn start_agent(c: &mut HostCluster, name: &str, store: &[String], env: &[(&str, &str)]) {
    let h = c.host_mut(name);
    let mut cmd = h.command(bin("warmpool-agent"));
    cmd.args(h.agent_args())
        .args(store)
        .env("RUST_LOG", "info,async_nats=warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    h.spawn_agent(cmd);
    let node = c.host(name).node.clone();
    c.wait_node(&node, Duration::from_secs(30), "ready", |n| {
        n.node.status == NodeStatus::Ready && n.heartbeat_age_ms.is_some()
    })
    .await;
}

/// The agents' store flags, given the transit network's root address.
type AgentStore = Box<dyn Fn(&str) -> Vec<String>>;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Local,
    S3,
}

async fn scenario(kind: Kind) {
    let dir = tempfile::tempdir().expect("temp dir");
    let bucket = unique("ws").replace('_', "-").to_lowercase();
    let (moto, member_store, agent_store_of): (Option<Moto>, Vec<String>, AgentStore) = match kind {
        Kind::Local => {
            let url = format!("file://{}", dir.path().join("store").display());
            let args = vec!["--workspace-store".to_string(), url];
            let a = args.clone();
            (None, args, Box::new(move |_| a.clone()))
        }
        Kind::S3 => {
            let m = Moto::start(dir.path(), &bucket).await;
            let cfg = m.config(dir.path(), "member.json", "[::1]");
            let url = format!("s3://{bucket}");
            let args = vec![
                "--workspace-store".to_string(),
                url.clone(),
                "--workspace-store-config".to_string(),
                cfg.display().to_string(),
            ];
            let port = m.port;
            let d = dir.path().to_path_buf();
            let b = bucket.clone();
            (
                Some(m),
                args,
                Box::new(move |root: &str| {
                    let path = d.join("agents.json");
                    let opts = serde_json::json!({
                        "aws_endpoint": format!("http://[{root}]:{port}"),
                        "aws_access_key_id": "testing",
                        "aws_secret_access_key": "testing",
                        "aws_region": "us-east-1",
                        "aws_allow_http": "true",
                    });
                    std::fs::write(&path, opts.to_string()).expect("agent S3 options");
                    vec![
                        "--workspace-store".to_string(),
                        format!("s3://{b}"),
                        "--workspace-store-config".to_string(),
                        path.display().to_string(),
                    ]
                }),
            )
        }
    };
    let member_args: Vec<&str> = member_store.iter().map(String::as_str).collect();
    let specs = vec![
        HostSpec::new().labels(&["side=a"]).without_agent(),
        HostSpec::new().labels(&["side=b"]).without_agent(),
    ];
    let mut c = HostCluster::start_with_member_args(&specs, &member_args).await;
    let agent_store = agent_store_of(&c.root_addr().to_string());
    start_agent(&mut c, "a", &agent_store, &[]).await;
    // b's saves stop between upload and commit for ten minutes: the test kills it there.
    start_agent(&mut c, "b", &agent_store, &[(COMMIT_DELAY_ENV, "600000")]).await;
    // The test's own view of the store, as the member opens it.
    let store = match kind {
        Kind::Local => Store::open(&member_store[1], None),
        Kind::S3 => Store::open(&member_store[1], Some(Path::new(&member_store[3]))),
    }
    .expect("open the store");

    let (pa, pb) = (unique("wsa"), unique("wsb"));
    c.client.create_pool(&pool(&pa, "a")).await.expect("pool a");
    c.client.create_pool(&pool(&pb, "b")).await.expect("pool b");
    wait_warm(&c, &pa).await;
    wait_warm(&c, &pb).await;
    let ws = unique("proj").replace('_', "-");
    let key = WorkspaceKey::new(TenantId::default(), &ws).expect("key");

    // A new workspace starts empty on a; what is written there is saved on release.
    let a1 = allocate(&c, &pa, &ws).await;
    assert_eq!(a1.node.as_str(), c.host("a").node);
    sh(&c, &a1, &format!("test -z \"$(ls -A {PATH})\" && echo v1 > {PATH}/f && mkdir -p {PATH}/d && echo deep > {PATH}/d/g")).await;
    c.client.release(a1.id).await.expect("release a1");
    let q = WorkspaceQuery::default();
    let v1 = eventually(Duration::from_secs(60), "the first save", || {
        let (client, ws, q) = (c.client.clone(), ws.clone(), q.clone());
        async move {
            client
                .get_workspace(&ws, &q)
                .await
                .map_err(|e| e.to_string())
        }
    })
    .await;
    assert!(c
        .client
        .list_workspaces(&q)
        .await
        .expect("list")
        .iter()
        .any(|w| w.id == ws && w.version == v1.version));

    // On the other node, the same workspace has it.
    let b1 = allocate(&c, &pb, &ws).await;
    assert_eq!(b1.node.as_str(), c.host("b").node);
    assert_eq!(
        sh(&c, &b1, &format!("cat {PATH}/f {PATH}/d/g")).await,
        "v1\ndeep\n"
    );

    // b's save of v2 is uploaded but not committed when its agent is killed.
    sh(&c, &b1, &format!("echo v2 > {PATH}/f")).await;
    let release = {
        let client = c.client.clone();
        tokio::spawn(async move { client.release(b1.id).await })
    };
    eventually(
        Duration::from_secs(60),
        "b's save uploaded, not committed",
        || {
            let (store, key) = (store.clone(), key.clone());
            async move {
                let n = store.versions(&key).await.map_err(|e| e.to_string())?.len();
                (n >= 2).then_some(()).ok_or(format!("{n} versions stored"))
            }
        },
    )
    .await;
    c.host_mut("b").kill_agent();
    let _ = release.await;
    let now = c.client.get_workspace(&ws, &q).await.expect("show");
    assert_eq!(
        now.version, v1.version,
        "the killed save must not be the current version"
    );
    assert_eq!(now.sha256, v1.sha256);

    // The previous version restores whole.
    let a2 = allocate(&c, &pa, &ws).await;
    assert_eq!(
        sh(&c, &a2, &format!("cat {PATH}/f {PATH}/d/g")).await,
        "v1\ndeep\n"
    );
    c.client.release(a2.id).await.expect("release a2");
    // That release's save commits and sweeps the dead save's leftover.
    eventually(
        Duration::from_secs(60),
        "a2's save, and the leftover swept",
        || {
            let (client, store, key, ws, q, old) = (
                c.client.clone(),
                store.clone(),
                key.clone(),
                ws.clone(),
                q.clone(),
                v1.version.clone(),
            );
            async move {
                let w = client
                    .get_workspace(&ws, &q)
                    .await
                    .map_err(|e| e.to_string())?;
                let n = store.versions(&key).await.map_err(|e| e.to_string())?.len();
                (w.version != old && n == 1)
                    .then_some(())
                    .ok_or(format!("version {} with {n} stored", w.version))
            }
        },
    )
    .await;

    // Delete, and it is gone.
    c.client.delete_workspace(&ws, &q).await.expect("delete");
    assert!(c.client.get_workspace(&ws, &q).await.is_err());
    assert!(store.versions(&key).await.expect("versions").is_empty());
    drop(c);
    drop(moto);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workspace_moves_between_nodes_and_survives_a_killed_save_with_the_local_store() {
    scenario(Kind::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workspace_moves_between_nodes_and_survives_a_killed_save_with_an_s3_server() {
    scenario(Kind::S3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_goes_on_saving_the_workspace_of_its_container() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("file://{}", dir.path().join("store").display());
    let agent_args = vec![
        "--workspace-store".to_string(),
        url.clone(),
        "--state-dir".to_string(),
        dir.path().join("agent-state").display().to_string(),
    ];
    let specs = vec![HostSpec::new().labels(&["side=a"]).without_agent()];
    let mut c = HostCluster::start_with_member_args(&specs, &["--workspace-store", &url]).await;
    start_agent(&mut c, "a", &agent_args, &[]).await;
    let p = unique("wsr");
    c.client.create_pool(&pool(&p, "a")).await.expect("pool");
    wait_warm(&c, &p).await;
    let ws = unique("keep").replace('_', "-");
    let a1 = allocate(&c, &p, &ws).await;
    sh(&c, &a1, &format!("echo before > {PATH}/f")).await;

    // The agent dies (SIGKILL) and comes back: it re-adopts the container, and with it the
    // container's workspace, which it has never restored over what the session wrote.
    c.host_mut("a").kill_agent();
    start_agent(&mut c, "a", &agent_args, &[]).await;
    let script = format!("echo after >> {PATH}/f");
    eventually(Duration::from_secs(30), "exec after the restart", || {
        let (client, id, script) = (c.client.clone(), a1.id, script.clone());
        async move {
            let req = ExecRequest {
                command: vec!["sh".into(), "-c".into(), script],
                ..Default::default()
            };
            match client.exec(id, &req).await {
                Ok(r) if r.exit_code == Some(0) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    c.client.release(a1.id).await.expect("release");
    let q = WorkspaceQuery::default();
    eventually(Duration::from_secs(60), "the save at release", || {
        let (client, ws, q) = (c.client.clone(), ws.clone(), q.clone());
        async move {
            client
                .get_workspace(&ws, &q)
                .await
                .map_err(|e| e.to_string())
        }
    })
    .await;
    wait_warm(&c, &p).await;
    let a2 = allocate(&c, &p, &ws).await;
    assert_eq!(
        sh(&c, &a2, &format!("cat {PATH}/f")).await,
        "before\nafter\n",
        "what was written before and after the agent's restart was saved"
    );
    // Saved and done: no binding is left on disk for a container that is gone.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("agent-state"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|node| {
            std::fs::read_dir(node.path().join("workspaces"))
                .into_iter()
                .flatten()
        })
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| {
            !n.to_string_lossy()
                .starts_with(&a2.container_id.to_string())
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
