//! User namespace remapping as an option of a host's set-up (issue 15): with dockerd's
//! `userns-remap` (`deploy/install-agent.sh --userns-remap`), a container's root is an
//! unprivileged user on the host. The pool works as before; the test reads the uid of the
//! container's first process as the host sees it.

use std::time::Duration;

use warmpool_tests::hosts::{HostCluster, HostSpec};
use warmpool_tests::{allocation, wait_until, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_userns_remap_a_containers_root_is_no_root_on_the_host() {
    let c = HostCluster::start(&[HostSpec::new().dockerd_args(&["--userns-remap=default"])]).await;
    c.client
        .create_pool(&TestCluster::demo_spec("remapped", 1))
        .await
        .expect("create pool");
    let client = c.client.clone();
    wait_until(Duration::from_secs(90), "a warm container", || {
        let client = client.clone();
        async move {
            let s = client.status().await.ok()?;
            (s.pools.first()?.counts.warm >= 1).then_some(())
        }
    })
    .await;
    let a = client
        .allocate(&allocation("remapped", 10_000))
        .await
        .expect("allocate");
    let h = &c.hosts[0];
    assert!(
        h.fetch(a.ipv6.expect("address"), a.port, "/").await.is_ok(),
        "the remapped container serves"
    );
    let docker_id = h
        .warmpool_containers()
        .into_iter()
        .find(|d| d.id == a.container_id.to_string())
        .expect("the allocated container")
        .docker_id;
    let pid = h
        .docker(&["inspect", "-f", "{{.State.Pid}}", &docker_id])
        .trim()
        .to_string();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("its status");
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .expect("a Uid line");
    assert_ne!(uid, 0, "the container's root is root on the host");
    let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).expect("uid_map");
    assert!(
        !map.split_whitespace().eq(["0", "0", "4294967295"]),
        "no remapping: {map}"
    );
    eprintln!(
        "container root runs as host uid {uid} (uid_map {})",
        map.trim()
    );
}
