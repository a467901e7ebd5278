//! Hardened containers, as Docker itself reports them: every capability dropped (a pool's
//! `security.cap_add` given back), no-new-privileges, the cpu, memory and pids limits, the
//! node's network with inter-container traffic off, and a read-only root filesystem (with a
//! tmpfs) when the pool asks. The demo image's busybox httpd serves from a read-only root.

use std::time::Duration;

use serde_json::Value;
use warmpool_tests::proto::pool::{Capability, Security};
use warmpool_tests::proto::ContainerState;
use warmpool_tests::{docker, http_get, unique, TestCluster};

const WARM_TIMEOUT: Duration = Duration::from_secs(60);

/// `docker inspect` of the warm containers of `pool`, by Docker id.
async fn inspect_warm(c: &TestCluster, pool: &str) -> Vec<(Value, std::net::Ipv6Addr, u16)> {
    let all = c
        .client
        .list_containers(&Default::default())
        .await
        .expect("containers");
    all.into_iter()
        .filter(|x| x.pool.as_str() == pool && x.state == ContainerState::Warm)
        .map(|x| {
            let id = x
                .docker_id
                .clone()
                .expect("a warm container has a docker id");
            let json: Value =
                serde_json::from_str(&docker(&["inspect", &id])).expect("inspect json");
            (json[0].clone(), x.ipv6.expect("address"), x.port)
        })
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_containers_are_hardened_and_pools_may_add_capabilities_and_a_read_only_root() {
    let c = TestCluster::single().await;
    let plain = unique("plain");
    let locked = unique("locked");
    let mut spec = TestCluster::demo_spec(&plain, 1);
    spec.resources.cpu_millis = 250;
    spec.resources.memory_mb = 48;
    spec.resources.pids = 32;
    c.client
        .create_pool(&spec)
        .await
        .expect("create plain pool");
    let mut spec = TestCluster::demo_spec(&locked, 1);
    spec.security = Security {
        cap_add: vec![Capability::NetBindService],
        read_only_rootfs: true,
        tmpfs: vec!["/tmp".into()],
        privileged: false,
    };
    c.client
        .create_pool(&spec)
        .await
        .expect("create locked pool");
    c.wait_warm(&plain, 1, WARM_TIMEOUT).await;
    // Warm means its health probe passed: httpd serves /healthz from the read-only root.
    c.wait_warm(&locked, 1, WARM_TIMEOUT).await;

    let network = format!("warmpool-{}", c.agents[0].node);
    let net: Value =
        serde_json::from_str(&docker(&["network", "inspect", &network])).expect("json");
    assert_eq!(
        net[0]["Options"]["com.docker.network.bridge.enable_icc"], "false",
        "inter-container traffic must be off on {network}: {}",
        net[0]["Options"]
    );
    assert_eq!(net[0]["EnableIPv6"], true);

    let plain_c = inspect_warm(&c, &plain).await;
    let (p, _, _) = plain_c.first().expect("a warm plain container");
    let host = &p["HostConfig"];
    assert_eq!(strings(&host["CapDrop"]), ["ALL"], "{host}");
    assert!(strings(&host["CapAdd"]).is_empty(), "{host}");
    assert_eq!(
        strings(&host["SecurityOpt"]),
        ["no-new-privileges"],
        "{host}"
    );
    assert_eq!(host["NanoCpus"], 250_000_000);
    assert_eq!(host["Memory"], 48 * 1024 * 1024);
    assert_eq!(
        host["MemorySwap"],
        48 * 1024 * 1024,
        "no swap beyond the memory limit"
    );
    assert_eq!(host["PidsLimit"], 32);
    // By default: a read-only root with a tmpfs /tmp, and a bounded log.
    assert_eq!(host["ReadonlyRootfs"], true);
    assert!(host["Tmpfs"].get("/tmp").is_some(), "{}", host["Tmpfs"]);
    assert_eq!(
        host["LogConfig"]["Type"], "json-file",
        "{}",
        host["LogConfig"]
    );
    assert_eq!(host["LogConfig"]["Config"]["max-size"], "10m");
    assert_eq!(host["NetworkMode"], network.as_str());
    assert_eq!(host["Privileged"], false);

    let locked_c = inspect_warm(&c, &locked).await;
    let (l, ip, port) = locked_c.first().expect("a warm locked container");
    let host = &l["HostConfig"];
    assert_eq!(strings(&host["CapDrop"]), ["ALL"], "{host}");
    assert_eq!(strings(&host["CapAdd"]), ["NET_BIND_SERVICE"], "{host}");
    assert_eq!(
        strings(&host["SecurityOpt"]),
        ["no-new-privileges"],
        "{host}"
    );
    assert_eq!(host["ReadonlyRootfs"], true);
    assert!(host["Tmpfs"].get("/tmp").is_some(), "{}", host["Tmpfs"]);

    // The page is served; the root refuses writes, the tmpfs takes them.
    let (status, body) = http_get(*ip, *port, "/").await.expect("GET /");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("warmpool demo"), "{body}");
    let id = l["Id"].as_str().expect("id");
    let root = std::process::Command::new("docker")
        .args(["exec", id, "/bin/sh", "-c", "echo x > /www/x"])
        .output()
        .expect("docker exec");
    assert!(
        !root.status.success(),
        "a write to the read-only root succeeded"
    );
    assert!(
        String::from_utf8_lossy(&root.stderr).contains("Read-only file system"),
        "{}",
        String::from_utf8_lossy(&root.stderr)
    );
    docker(&["exec", id, "/bin/sh", "-c", "echo x > /tmp/x && cat /tmp/x"]);
    // Capabilities as the kernel sees them: only NET_BIND_SERVICE (bit 10) is bounded in.
    let status = docker(&["exec", id, "cat", "/proc/1/status"]);
    let bnd = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(str::trim)
        .expect("CapBnd line");
    assert_eq!(
        u64::from_str_radix(bnd, 16).expect("hex"),
        1 << 10,
        "CapBnd {bnd}"
    );
    let plain_id = p["Id"].as_str().expect("id");
    let status = docker(&["exec", plain_id, "cat", "/proc/1/status"]);
    let bnd = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(str::trim)
        .expect("CapBnd line");
    assert_eq!(
        u64::from_str_radix(bnd, 16).expect("hex"),
        0,
        "CapBnd {bnd}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_capabilities_and_bad_tmpfs_paths_are_refused() {
    let c = TestCluster::replicated(1, &[]).await;
    let http = warmpool_tests::http_client();
    let url = format!("{}/v1/pools", c.members[0].url());
    for security in [
        serde_json::json!({"cap_add": ["ALL"]}),
        serde_json::json!({"cap_add": ["CAP_NET_ADMIN"]}),
        serde_json::json!({"cap_add": ["net_admin"]}),
        serde_json::json!({"tmpfs": ["relative"]}),
        serde_json::json!({"tmpfs": ["/a:exec"]}),
        serde_json::json!({"read_only_rootfs": "yes"}),
        serde_json::json!({"privileged": "yes"}),
        // Capabilities that reach past the container need the escape hatch.
        serde_json::json!({"cap_add": ["SYS_ADMIN"]}),
        serde_json::json!({"cap_add": ["NET_BIND_SERVICE", "NET_ADMIN"]}),
        serde_json::json!({"cap_add": ["SYS_PTRACE"]}),
        serde_json::json!({"cap_add": ["SYS_MODULE"]}),
    ] {
        let body = serde_json::json!({"name": unique("bad"), "image": "x", "security": security});
        let resp = http.post(&url).json(&body).send().await.expect("post");
        assert_eq!(resp.status(), 400, "{security} was not refused");
        let err: Value = resp.json().await.expect("json");
        assert_eq!(err["error"]["code"], "bad_request");
    }
    // With it, an admin may.
    let body = serde_json::json!({
        "name": unique("escape"), "image": "x",
        "security": {"cap_add": ["SYS_PTRACE"], "privileged": true},
    });
    let resp = http.post(&url).json(&body).send().await.expect("post");
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
}
