//! Images the agents pull themselves, from a real registry (Debian's `docker-registry`,
//! Docker's distribution 2.8) with htpasswd credentials, on several hosts (network namespaces
//! with their own dockerd, see `warmpool_tests::hosts`).
//!
//! The registry listens on an IPv4 address of the transit bridge (dockerd 20.10 takes no IPv6
//! literal in an image reference), plain HTTP: the hosts' dockerds run with
//! `--insecure-registry` for that /24. Basic auth over plain HTTP works with distribution 2.8
//! and dockerd 20.10 (no TLS needed for htpasswd). The image is pushed from one host, then
//! removed from every host, so the registry alone has it.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use warmpool_proto::agent::{ImagePullError, ImageState};
use warmpool_proto::api::{ContainerQuery, EventQuery};
use warmpool_proto::{ContainerState, EventKind, PoolName, PoolSpec};
use warmpool_tests::hosts::{eventually, HostCluster, HostSpec};
use warmpool_tests::{free_port, unique, TestCluster, DEMO_IMAGE};

const WARM: Duration = Duration::from_secs(60);
/// How long a pool whose image cannot be pulled is watched for creates that go on failing.
const NO_LOOP_WINDOW: Duration = Duration::from_secs(6);
const USER: &str = "wp";
const PASSWORD: &str = "wp-secret";
/// bcrypt (cost 4: fast) of [`PASSWORD`], as distribution's htpasswd wants it.
const HTPASSWD_HASH: &str = "$2b$04$SHNfW2B9RDd.cCxlcV9LAu2j3zo3vebiYy3UdD.Fzeo8OvfbMjlSK";

/// A `docker-registry` process with its own config, storage and htpasswd file.
struct Registry {
    child: Child,
    /// `10.x.y.1:port`, as image references name it.
    addr: String,
}

impl Registry {
    fn start(dir: &Path, listen: SocketAddrV4) -> Registry {
        let root = dir.join("registry");
        std::fs::create_dir_all(root.join("data")).expect("registry dir");
        let htpasswd = root.join("htpasswd");
        std::fs::write(&htpasswd, format!("{USER}:{HTPASSWD_HASH}\n")).expect("htpasswd");
        let config = root.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {listen}\n  secret: warmpool-test\n\
                 auth:\n  htpasswd:\n    realm: warmpool-test\n    path: {}\n",
                root.join("data").display(),
                htpasswd.display()
            ),
        )
        .expect("registry config");
        let log = std::fs::File::create(dir.join("registry.log")).expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry (apt-get install docker-registry; deploy/dev.sh deps)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&listen.into(), Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {listen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            child,
            addr: listen.to_string(),
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A random 10.x.y.0/24 for the bridge's IPv4 side (unique enough per test run).
fn random_net() -> [u8; 3] {
    let r = uuid::Uuid::new_v4().as_u128();
    [10, 128 + (r % 120) as u8, ((r >> 8) % 250) as u8]
}

/// The agents' `--registry-auth` file (Docker's config.json form) for `registry`.
fn auth_file(dir: &Path, registry: &str) -> PathBuf {
    use base64::Engine as _;
    let path = dir.join("registry-auth.json");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    std::fs::write(
        &path,
        format!(r#"{{"auths": {{"{registry}": {{"auth": "{auth}"}}}}}}"#),
    )
    .expect("write auth file");
    path
}

/// A cluster of `specs` with a registry on the bridge; `auth_hosts` of them get credentials.
/// The demo image is pushed as `<repo>:1` and `<repo>:2` (returned without tag), then
/// removed from every host.
async fn cluster_with_registry(
    hosts: usize,
    auth_hosts: usize,
) -> (HostCluster, Registry, String, tempfile::TempDir) {
    let net = random_net();
    let port = free_port();
    let root = Ipv4Addr::new(net[0], net[1], net[2], 1);
    let registry_addr = format!("{root}:{port}");
    let files = tempfile::tempdir().expect("temp dir");
    let auth = auth_file(files.path(), &registry_addr);
    let insecure = format!("{}.{}.{}.0/24", net[0], net[1], net[2]);
    let specs: Vec<HostSpec> = (0..hosts)
        .map(|i| {
            let s = HostSpec::new().dockerd_args(&["--insecure-registry", &insecure]);
            if i < auth_hosts {
                s.agent_args(&["--registry-auth", auth.to_str().expect("utf-8 path")])
            } else {
                s
            }
        })
        .collect();
    let c = HostCluster::start(&specs).await;
    assert_eq!(c.add_ipv4(net), root);
    let registry = Registry::start(c.dir(), SocketAddrV4::new(root, port));
    let repo = format!("{}/{}/demo", registry.addr, unique("wp-img"));

    // Push from host a (its dockerd trusts the registry's /24), logged in with a config dir
    // of the test's own.
    let a = &c.hosts[0];
    let config = files.path().join("docker-config");
    let config = config.to_str().expect("utf-8 path");
    a.docker(&[
        "--config",
        config,
        "login",
        "-u",
        USER,
        "-p",
        PASSWORD,
        &registry.addr,
    ]);
    for tag in ["1", "2"] {
        let r = format!("{repo}:{tag}");
        a.docker(&["tag", DEMO_IMAGE, &r]);
        a.docker(&["--config", config, "push", &r]);
        a.docker(&["rmi", &r]);
    }
    // Only the registry has it now.
    for h in &c.hosts {
        h.docker(&["rmi", DEMO_IMAGE]);
        assert!(h
            .try_docker(&["image", "inspect", &format!("{repo}:1")])
            .is_err());
    }
    (c, registry, repo, files)
}

fn spec(name: &str, image: &str, min_warm: u32) -> PoolSpec {
    let mut s = TestCluster::demo_spec(name, min_warm);
    s.image = image.to_string();
    s
}

/// Warm containers of `pool` per node, and every live one's (node, generation, state).
async fn live(c: &HostCluster, pool: &str) -> Result<Vec<(String, u64, ContainerState)>, String> {
    let list = c
        .client
        .list_containers(&ContainerQuery {
            pool: Some(pool.into()),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(list
        .into_iter()
        .map(|c| (c.node.to_string(), c.generation, c.state))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_only_in_the_registry_comes_up_warm_on_two_hosts_and_a_rollout_pulls_first() {
    let (c, _registry, repo, _files) = cluster_with_registry(2, 2).await;
    let pool = unique("pulled");
    let v1 = format!("{repo}:1");
    c.client
        .create_pool(&spec(&pool, &v1, 4))
        .await
        .expect("create pool");
    let nodes: BTreeSet<String> = c.hosts.iter().map(|h| h.node.clone()).collect();
    eventually(WARM, "4 warm containers over both hosts", || async {
        let l = live(&c, &pool).await?;
        let warm_nodes: BTreeSet<String> = l
            .iter()
            .filter(|(_, _, s)| *s == ContainerState::Warm)
            .map(|(n, _, _)| n.clone())
            .collect();
        let warm = l
            .iter()
            .filter(|(_, _, s)| *s == ContainerState::Warm)
            .count();
        if warm == 4 && warm_nodes == nodes {
            Ok(())
        } else {
            Err(format!("{l:?}"))
        }
    })
    .await;
    for h in &c.hosts {
        h.try_docker(&["image", "inspect", &v1])
            .unwrap_or_else(|e| panic!("host {} has no {v1} after the pool came up: {e}", h.name));
    }
    // Ready everywhere: nothing pulling or failed is shown.
    let view = c
        .client
        .get_pool(&PoolName::new(&pool).unwrap())
        .await
        .unwrap();
    assert!(view.images.is_empty(), "{:?}", view.images);

    // A rollout to :2 pulls it first; the old containers keep serving meanwhile (warm ones
    // of either generation never fewer than the pool wants).
    let v2 = format!("{repo}:2");
    let mut s2 = spec(&pool, &v2, 4);
    s2.scaling.batch_size = 2;
    c.client.put_pool(&s2).await.expect("update pool");
    let fewest = std::sync::atomic::AtomicUsize::new(usize::MAX);
    let fewest = &fewest;
    eventually(
        WARM,
        "4 warm containers of generation 2 and none older",
        || async {
            let l = live(&c, &pool).await?;
            let warm = l
                .iter()
                .filter(|(_, _, s)| *s == ContainerState::Warm)
                .count();
            fewest.fetch_min(warm, std::sync::atomic::Ordering::SeqCst);
            let new = l
                .iter()
                .filter(|(_, g, s)| *g == 2 && *s == ContainerState::Warm)
                .count();
            if new == 4 && l.len() == 4 {
                Ok(())
            } else {
                Err(format!("{l:?}"))
            }
        },
    )
    .await;
    let fewest = fewest.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        fewest >= 4,
        "warm containers dropped to {fewest} during the rollout"
    );
    for h in &c.hosts {
        assert!(
            h.try_docker(&["image", "inspect", &v2]).is_ok(),
            "host {} has no {v2}",
            h.name
        );
        let log = h.agent_log_tail(400);
        assert!(
            log.contains("image pulled") && log.contains(&v2),
            "host {}'s agent does not say it pulled {v2}:\n{log}",
            h.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_image_or_missing_credentials_give_a_clear_error_and_no_crash_loop() {
    // Host a has the registry's credentials, host b none.
    let (c, _registry, repo, _files) = cluster_with_registry(2, 1).await;
    let (a, b) = (c.hosts[0].node.clone(), c.hosts[1].node.clone());
    let bad = unique("badimg");
    let nope = format!("{repo}-nope:1");
    c.client
        .create_pool(&spec(&bad, &nope, 2))
        .await
        .expect("create pool");

    // Each node says why, with the registry's words: not found on a, unauthorized on b.
    let name = PoolName::new(&bad).unwrap();
    let images = eventually(WARM, "the pool's image failed on both nodes", || async {
        let v = c.client.get_pool(&name).await.map_err(|e| e.to_string())?;
        let failed: Vec<_> = v
            .images
            .iter()
            .filter_map(|i| match &i.state {
                ImageState::Failed {
                    reason, message, ..
                } => Some((i.node.to_string(), *reason, message.clone())),
                _ => None,
            })
            .collect();
        if failed.len() == 2 {
            Ok(failed)
        } else {
            Err(format!("{:?}", v.images))
        }
    })
    .await;
    for (node, reason, message) in &images {
        let want = if node == &a {
            ImagePullError::NotFound
        } else {
            assert_eq!(node, &b);
            ImagePullError::Unauthorized
        };
        assert_eq!(*reason, want, "{node}: {message}");
        assert!(!message.is_empty());
    }
    // The pool's status says why it does not grow.
    let status = c.client.status().await.unwrap();
    let p = status.pools.iter().find(|p| p.name == name).unwrap();
    let condition = p.condition.clone().unwrap_or_default();
    assert!(condition.contains("could not be pulled"), "{condition:?}");
    assert_eq!(p.counts.warm, 0);

    // No crash loop: over a window of several seconds no container of the pool is made or
    // fails, and neither dockerd ever had one. The window is the rest of the test (the good
    // image's pool warming up), checked at its end, rather than a pause of its own.
    let failures = || async {
        c.client
            .events(&EventQuery {
                pool: Some(bad.clone()),
                limit: Some(1000),
                ..Default::default()
            })
            .await
            .unwrap()
            .iter()
            .filter(|e| e.kind == EventKind::ContainerFailed)
            .count()
    };
    let before = failures().await;
    assert!(before <= 4, "{before} failed containers already");
    let window = Instant::now();

    // The same registry's good image: warm on a (credentials), refused on b (none), where
    // the pool shows unauthorized.
    let good = unique("goodimg");
    let v1 = format!("{repo}:1");
    c.client
        .create_pool(&spec(&good, &v1, 2))
        .await
        .expect("create pool");
    eventually(WARM, "2 warm containers on host a", || async {
        let l = live(&c, &good).await?;
        let warm_on_a = l
            .iter()
            .filter(|(n, _, s)| n == &a && *s == ContainerState::Warm)
            .count();
        if warm_on_a == 2 && l.len() == 2 {
            Ok(())
        } else {
            Err(format!("{l:?}"))
        }
    })
    .await;
    let v = c
        .client
        .get_pool(&PoolName::new(&good).unwrap())
        .await
        .unwrap();
    assert!(
        v.images.iter().any(|i| i.node.as_str() == b
            && matches!(
                i.state,
                ImageState::Failed {
                    reason: ImagePullError::Unauthorized,
                    ..
                }
            )),
        "{:?}",
        v.images
    );

    // The bad pool's window: the good pool's warm-up took seconds, and only if it was quicker
    // than NO_LOOP_WINDOW is the rest waited out.
    tokio::time::sleep(NO_LOOP_WINDOW.saturating_sub(window.elapsed())).await;
    let after = failures().await;
    assert_eq!(
        before,
        after,
        "creates of the bad pool went on failing over {:?}: {before} then {after}",
        window.elapsed()
    );
    for h in &c.hosts {
        let made = h.docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=io.warmpool.pool={bad}"),
        ]);
        assert!(
            made.trim().is_empty(),
            "host {} made containers of the bad pool: {made}",
            h.name
        );
    }
}
