//! The agent's OCI runtime as an option (issue 17): a host whose dockerd knows a runtime by a
//! name runs a pool's containers with it when its agent says `--runtime <name>`; an agent
//! asked for a runtime its dockerd does not know refuses to start, saying how to register it.
//!
//! The runtime registered here is runc behind a wrapper that notes its calls (`warmpool-rt`): Debian's crun 1.8
//! refuses to start containers on this machine's hybrid cgroup layout (v1 controllers with an
//! empty v2 hierarchy: "cgroups in hybrid mode not supported"), so what the test proves is that
//! the option reaches dockerd and the container runs with the named runtime.

use std::time::Duration;

use warmpool_tests::hosts::{HostCluster, HostSpec};
use warmpool_tests::{allocation, bin, wait_until, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_runtime_the_pool_runs_on_the_named_runtime() {
    // The runtime is runc behind a wrapper that notes each container it is asked to create:
    // the note, not dockerd's record of a setting, shows the container went through it.
    let dir = tempfile::tempdir().expect("temp dir");
    let calls = dir.path().join("calls");
    let wrapper = dir.path().join("warmpool-rt");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$*\" >> {}\nexec /usr/sbin/runc \"$@\"\n",
            calls.display()
        ),
    )
    .expect("wrapper");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let add = format!("warmpool-rt={}", wrapper.display());
    let c = HostCluster::start(&[HostSpec::new()
        .dockerd_args(&["--add-runtime", &add])
        .agent_args(&["--runtime", "warmpool-rt"])])
    .await;
    c.client
        .create_pool(&TestCluster::demo_spec("onrt", 1))
        .await
        .expect("create pool");
    let client = c.client.clone();
    let warm = tokio::time::timeout(
        Duration::from_secs(90),
        wait_until(Duration::from_secs(90), "a warm container", || {
            let client = client.clone();
            async move {
                let s = client.status().await.ok()?;
                (s.pools.first()?.counts.warm >= 1).then_some(())
            }
        }),
    )
    .await;
    if warm.is_err() {
        panic!(
            "no warm container on the named runtime\nagent:\n{}\ndockerd:\n{}",
            c.hosts[0].agent_log_tail(30),
            c.hosts[0].dockerd_log_tail(30)
        );
    }
    let a = client
        .allocate(&allocation("onrt", 10_000))
        .await
        .expect("allocate");
    let h = &c.hosts[0];
    assert!(
        h.fetch(a.ipv6.expect("address"), a.port, "/").await.is_ok(),
        "the container on the named runtime serves"
    );
    let docker_id = h
        .warmpool_containers()
        .into_iter()
        .find(|d| d.id == a.container_id.to_string())
        .expect("the allocated container")
        .docker_id;
    let runtime = h.docker(&["inspect", "-f", "{{.HostConfig.Runtime}}", &docker_id]);
    assert_eq!(runtime.trim(), "warmpool-rt");
    let noted = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(
        noted
            .lines()
            .any(|l| l.contains("create") && l.contains(docker_id.as_str())),
        "the wrapper runtime never created {docker_id}: {noted}"
    );
}

#[test]
fn an_agent_asked_for_a_runtime_dockerd_does_not_know_refuses_to_start() {
    let out = std::process::Command::new(bin("warmpool-agent"))
        .args([
            "--node-id",
            "no-such-runtime",
            "--ipv6-prefix",
            "fd36:7e57::/64",
            "--runtime",
            "no-such-runtime",
            "--no-isolation",
        ])
        .output()
        .expect("run the agent");
    assert!(!out.status.success());
    // The agent logs to standard output.
    let err =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--runtime no-such-runtime: dockerd does not know this runtime")
            && err.contains("--add-runtime"),
        "{err}"
    );
}
