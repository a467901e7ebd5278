//! The cold-start baseline of `poolctl bench`: what a user without Warmpool waits for.
//!
//! Through the Docker API (bollard, on the Docker host's unix socket: the same client and
//! calls the agent uses), for each run: create a container of the pool's image, command,
//! limits and hardening on an IPv6 bridge with its own /64 (as an agent's), start it, read its
//! address, and poll that address with the pool's health check until it answers. The clock
//! runs from the create call to the first healthy answer; removing the container afterwards
//! is not timed.
//!
//! Fair to the baseline: the address is polled every 2 ms (an agent probes at the pool's
//! interval), and one unmeasured start comes first, since a brand-new bridge's own address is
//! tentative (duplicate address detection) for a moment while an agent's bridge is long
//! settled.

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::{Duration, Instant};

use bollard::models::{
    ContainerCreateBody, HostConfig, Ipam, IpamConfig, NetworkCreateRequest, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, RemoveContainerOptions,
};
use bollard::Docker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warmpool_proto::{HealthProbe, PoolSpec};

use crate::bench::{BenchError, ColdPhase, Percentiles};

/// Label on everything the baseline makes, so leftovers are easy to find.
pub const LABEL: &str = "io.warmpool.bench";
/// Longest a cold start may take before it counts as failed.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// Pause between two polls of a starting container.
const POLL: Duration = Duration::from_millis(2);

/// The unix socket path of a Docker host given as `unix:///path` or a plain path.
pub fn socket_path(host: &str) -> Result<&str, BenchError> {
    if let Some(path) = host.strip_prefix("unix://") {
        return Ok(path);
    }
    if host.starts_with('/') {
        return Ok(host);
    }
    Err(BenchError::Setup(format!(
        "--docker-host {host:?}: only unix sockets (unix:///path) are supported"
    )))
}

/// A random /64 under fd36::/16 for the baseline's network (fd36:1::/64 is `dev.sh`'s).
pub fn random_prefix() -> String {
    let n = 0x100 + (uuid::Uuid::now_v7().as_u128() % 0xfe00) as u16;
    format!("fd36:{n:x}::/64")
}

fn docker_err(what: &str) -> impl FnOnce(bollard::errors::Error) -> BenchError + '_ {
    move |e| BenchError::Docker(format!("{what}: {e}"))
}

/// Times `runs` cold starts of `spec`'s containers on `host`.
pub async fn measure(
    host: &str,
    prefix: Option<&str>,
    spec: &PoolSpec,
    runs: usize,
) -> Result<ColdPhase, BenchError> {
    let docker = Docker::connect_with_unix(socket_path(host)?, 60, bollard::API_DEFAULT_VERSION)
        .map_err(docker_err("connecting"))?
        .negotiate_version()
        .await
        .map_err(docker_err("negotiating the API version"))?;
    let version = docker
        .version()
        .await
        .map_err(docker_err("version"))?
        .version
        .unwrap_or_default();
    let prefix = prefix.map_or_else(random_prefix, str::to_string);
    let network = format!(
        "warmpool-bench-{}",
        &uuid::Uuid::now_v7().simple().to_string()[24..]
    );
    create_network(&docker, &network, &prefix).await?;

    let mut create = Vec::new();
    let mut started = Vec::new();
    let mut healthy = Vec::new();
    let mut failures = Vec::new();
    for i in 0..=runs {
        match once(&docker, &network, spec).await {
            Ok(_) if i == 0 => {}
            Ok(t) => {
                create.push(t.created);
                started.push(t.started);
                healthy.push(t.healthy);
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    if let Err(e) = docker.remove_network(&network).await {
        eprintln!("warning: could not remove docker network {network}: {e}");
    }
    Ok(ColdPhase {
        docker_host: host.to_string(),
        docker_version: version,
        network,
        prefix,
        runs: healthy.len(),
        failures: failures.len(),
        first_failure: failures.into_iter().next(),
        create_ms: Percentiles::of(&create),
        started_ms: Percentiles::of(&started),
        healthy_ms: Percentiles::of(&healthy),
    })
}

/// The bridge an agent would make: IPv6 on, the given /64, no inter-container traffic.
async fn create_network(docker: &Docker, name: &str, prefix: &str) -> Result<(), BenchError> {
    let request = NetworkCreateRequest {
        name: name.to_string(),
        driver: Some("bridge".into()),
        enable_ipv6: Some(true),
        ipam: Some(Ipam {
            driver: Some("default".into()),
            config: Some(vec![IpamConfig {
                subnet: Some(prefix.to_string()),
                ..Default::default()
            }]),
            options: None,
        }),
        options: Some(HashMap::from([(
            "com.docker.network.bridge.enable_icc".to_string(),
            "false".to_string(),
        )])),
        labels: Some(HashMap::from([(LABEL.to_string(), "cold".to_string())])),
        ..Default::default()
    };
    docker
        .create_network(request)
        .await
        .map(|_| ())
        .map_err(docker_err("creating the baseline's network"))
}

/// Times of one cold start, each from the create call.
struct Timing {
    created: Duration,
    started: Duration,
    healthy: Duration,
}

async fn once(docker: &Docker, network: &str, spec: &PoolSpec) -> Result<Timing, BenchError> {
    let name = format!("warmpool-bench-cold-{}", uuid::Uuid::now_v7().simple());
    let t0 = Instant::now();
    let id = docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            }),
            container_body(spec, network),
        )
        .await
        .map_err(docker_err("create"))?
        .id;
    let created = t0.elapsed();
    let result = async {
        docker
            .start_container(&id, None)
            .await
            .map_err(docker_err("start"))?;
        let started = t0.elapsed();
        let ip = address(docker, &id, network).await?;
        let target = SocketAddr::V6(SocketAddrV6::new(ip, spec.port, 0, 0));
        answers(target, &spec.health.probe, START_DEADLINE).await?;
        Ok(Timing {
            created,
            started,
            healthy: t0.elapsed(),
        })
    }
    .await;
    let remove = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    if let Err(e) = docker.remove_container(&id, Some(remove)).await {
        eprintln!("warning: could not remove container {name}: {e}");
    }
    result
}

/// The container an agent would create for `spec` (see the agent's `Driver::create`).
fn container_body(spec: &PoolSpec, network: &str) -> ContainerCreateBody {
    let r = &spec.resources;
    let memory = i64::try_from(r.memory_mb.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX);
    let nano_cpus = i64::try_from(r.cpu_millis.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(HashMap::from([(LABEL.to_string(), "cold".to_string())])),
        host_config: Some(HostConfig {
            network_mode: Some(network.to_string()),
            nano_cpus: Some(nano_cpus),
            memory: Some(memory),
            memory_swap: Some(memory),
            pids_limit: Some(r.pids),
            cap_drop: Some(vec!["ALL".to_string()]),
            security_opt: Some(vec!["no-new-privileges".to_string()]),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The container's IPv6 address on `network`, as Docker reports it once started.
async fn address(docker: &Docker, id: &str, network: &str) -> Result<Ipv6Addr, BenchError> {
    let c = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .map_err(docker_err("inspect"))?;
    c.network_settings
        .and_then(|n| n.networks)
        .and_then(|mut nets| nets.remove(network))
        .and_then(|ep| ep.global_ipv6_address)
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| BenchError::Docker(format!("container has no IPv6 address on {network}")))
}

/// Polls `target` with the pool's health check until it passes, for at most `within`.
pub(crate) async fn answers(
    target: SocketAddr,
    check: &HealthProbe,
    within: Duration,
) -> Result<(), BenchError> {
    let deadline = Instant::now() + within;
    loop {
        if probe(target, check).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Docker(format!(
                "{target} did not answer its health check within {within:?}"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One health check: a TCP connection accepted, or an HTTP GET answered 2xx or 3xx (the
/// agent's rule).
async fn probe(target: SocketAddr, check: &HealthProbe) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(target).await.ok()?;
        let HealthProbe::Http { path } = check else {
            return Some(true);
        };
        let req = format!("GET {path} HTTP/1.0\r\nHost: {target}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = [0u8; 64];
        let mut got = 0;
        while got < 12 {
            let n = s.read(&mut buf[got..]).await.ok()?;
            if n == 0 {
                break;
            }
            got += n;
        }
        let status: u16 = std::str::from_utf8(&buf[..got])
            .ok()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some((200..400).contains(&status))
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(200), attempt).await,
        Ok(Some(true))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hosts_are_unix_sockets() {
        assert_eq!(
            socket_path("unix:///var/run/docker.sock").unwrap(),
            "/var/run/docker.sock"
        );
        assert_eq!(socket_path("/run/d.sock").unwrap(), "/run/d.sock");
        assert!(socket_path("tcp://10.0.0.1:2375").is_err());
    }

    #[test]
    fn the_container_is_the_one_an_agent_makes() {
        let mut spec = PoolSpec::new(warmpool_proto::PoolName::new("p").unwrap(), "img:1");
        spec.command = vec!["/bin/httpd".into(), "-f".into()];
        spec.env.insert("A".into(), "1".into());
        let body = container_body(&spec, "net");
        assert_eq!(body.image.as_deref(), Some("img:1"));
        assert_eq!(body.env, Some(vec!["A=1".to_string()]));
        let hc = body.host_config.unwrap();
        assert_eq!(hc.network_mode.as_deref(), Some("net"));
        assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(
            hc.memory,
            Some(spec.resources.memory_mb as i64 * 1024 * 1024)
        );
        assert_eq!(hc.memory_swap, hc.memory);
        assert_eq!(hc.pids_limit, Some(spec.resources.pids));
    }

    #[test]
    fn random_prefixes_are_64s_under_fd36() {
        let p = random_prefix();
        assert!(p.starts_with("fd36:") && p.ends_with("::/64"), "{p}");
        assert_ne!(p, "fd36:1::/64");
    }
}
