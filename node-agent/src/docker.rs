//! The Docker edge: a thin typed layer over one bollard [`Docker`] handle.
//!
//! Everything Docker answers is turned into plain values here ([`Observation`], [`DockerState`]),
//! so the rest of the agent never touches bollard's generated models, and nothing from the
//! daemon is unwrapped: a missing field is `None`, a 404 is `Ok(None)` or `Ok(false)`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;
use warmpool_proto::session::SETTINGS_DIR;

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum,
    ContainerSummaryStateEnum, EndpointIpamConfig, EndpointSettings, EventMessage, HostConfig,
    HostConfigLogConfig, NetworkingConfig, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, InspectContainerOptions, ListContainersOptions,
    RemoveContainerOptions,
};
use bollard::Docker;
use futures::Stream;
use warmpool_proto::agent::CreateSpec;
use warmpool_proto::{ContainerId, NodeId, LABEL_NODE};

use crate::config::Ipv6Prefix;
use crate::labels;
use crate::telemetry::docker_call as timed;

/// Time any single Docker API call may take (the event stream excepted: only its headers are
/// bounded by this).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A Docker call that failed.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The daemon could not be reached or its API version not negotiated.
    #[error("connecting to dockerd at {socket}: {cause}")]
    Connect {
        /// The socket.
        socket: String,
        /// Docker's error.
        cause: BollardError,
    },
    /// An API call failed.
    #[error("docker {op}: {cause}")]
    Api {
        /// What was being done.
        op: &'static str,
        /// Docker's error.
        cause: BollardError,
    },
    /// The container started but has no IPv6 address from the node's /64.
    #[error("container has no IPv6 address from the node's prefix on network {0}")]
    NoAddress(String),
    /// The container disappeared between two calls of one operation.
    #[error("container vanished during {0}")]
    Vanished(&'static str),
    /// The container's labels are unusable.
    #[error("container labels: {0}")]
    Labels(String),
}

impl DockerError {
    fn api(op: &'static str) -> impl FnOnce(BollardError) -> DockerError {
        move |cause| DockerError::Api { op, cause }
    }
}

/// Whether `e` is Docker's answer `status`.
pub fn is_status(e: &BollardError, status: u16) -> bool {
    matches!(e, BollardError::DockerResponseServerError { status_code, .. } if *status_code == status)
}

/// Connects to the daemon's unix socket and negotiates the API version (dockerd 20.10 refuses
/// bollard's newer default version otherwise).
pub async fn connect(socket: &str) -> Result<Docker, DockerError> {
    let connect_err = |cause| DockerError::Connect {
        socket: socket.to_string(),
        cause,
    };
    Docker::connect_with_unix(
        socket,
        REQUEST_TIMEOUT.as_secs(),
        bollard::API_DEFAULT_VERSION,
    )
    .map_err(connect_err)?
    .negotiate_version()
    .await
    .map_err(connect_err)
}

/// What Docker says a container is doing, reduced to what the agent needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DockerState {
    /// Created, not started (or restarting).
    Created,
    /// Running (or paused: it still holds its resources and its address).
    Running,
    /// Exited, dead or being removed.
    Exited,
}

/// One container as inspected.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// Docker's id.
    pub docker_id: String,
    /// Its name, without Docker's leading `/`.
    pub name: String,
    /// Its labels.
    pub labels: HashMap<String, String>,
    /// Its state.
    pub state: DockerState,
    /// Exit code, once exited.
    pub exit_code: Option<i64>,
    /// Killed by the OOM killer.
    pub oom_killed: bool,
    /// Address on the node's network.
    pub ipv6: Option<Ipv6Addr>,
    /// IPv4 address on the node's network.
    pub ipv4: Option<Ipv4Addr>,
    /// Process id of its init process while it runs (its network namespace is
    /// `/proc/<pid>/net`).
    pub pid: Option<u32>,
    /// Paused (`docker pause`): it counts as running, frozen.
    pub paused: bool,
}

/// One container as listed (cheaper than inspect; no address, no exit code).
#[derive(Clone, Debug, PartialEq)]
pub struct Listed {
    /// Docker's id.
    pub docker_id: String,
    /// Its name, without the leading `/`.
    pub name: String,
    /// Its labels.
    pub labels: HashMap<String, String>,
    /// Its state.
    pub state: DockerState,
    /// When it was created, seconds since the epoch.
    pub created: i64,
}

/// The Docker name of Warmpool container `id`.
pub fn container_name(id: &ContainerId) -> String {
    format!("wp-{id}")
}

/// A random address in `prefix` for a new container: 64 random bits (from a v4 UUID's
/// random ones), never `::0` or the gateway's `::1`. Docker's own allocator hands out ::2,
/// ::3, ... in order, which tells anyone how many containers a host made and where the next
/// one will be.
pub fn random_address(prefix: &Ipv6Prefix) -> Ipv6Addr {
    let r = uuid::Uuid::new_v4().as_u128() as u64;
    let low = if r < 2 { r + 2 } else { r };
    Ipv6Addr::from((u128::from(prefix.network()) & !u128::from(u64::MAX)) | u128::from(low))
}

/// The OCI runtimes `docker`'s daemon knows, by name.
pub async fn runtimes(docker: &Docker) -> Result<Vec<String>, DockerError> {
    timed("info", docker.info())
        .await
        .map(|i| {
            let mut names: Vec<String> = i.runtimes.unwrap_or_default().into_keys().collect();
            names.sort();
            names
        })
        .map_err(DockerError::api("info"))
}

/// The node's view of dockerd: one shared handle, the node's label, network and /64.
#[derive(Clone)]
pub struct Driver {
    docker: Docker,
    node: NodeId,
    network: String,
    prefix: Ipv6Prefix,
    /// The OCI runtime containers are made with; dockerd's default when `None`.
    runtime: Option<String>,
}

impl Driver {
    /// A driver for `node`'s containers on `network`, whose IPv6 subnet is `prefix`.
    pub fn new(docker: Docker, node: NodeId, network: String, prefix: Ipv6Prefix) -> Self {
        Driver {
            docker,
            node,
            network,
            prefix,
            runtime: None,
        }
    }

    /// Containers are made with this OCI runtime (one dockerd knows, e.g. `crun`).
    pub fn with_runtime(mut self, runtime: Option<String>) -> Self {
        self.runtime = runtime;
        self
    }

    /// The Docker handle (for session streams: logs and exec).
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    fn node_filter(&self) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_NODE}={}", self.node)],
        )])
    }

    /// Every container labelled with this node, running or not.
    pub async fn list(&self) -> Result<Vec<Listed>, DockerError> {
        let opts = ListContainersOptions {
            all: true,
            filters: Some(self.node_filter()),
            ..Default::default()
        };
        let list = timed("list containers", self.docker.list_containers(Some(opts)))
            .await
            .map_err(DockerError::api("list containers"))?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                Some(Listed {
                    docker_id: c.id?,
                    name: c
                        .names
                        .and_then(|n| n.into_iter().next())
                        .map(|n| n.trim_start_matches('/').to_string())
                        .unwrap_or_default(),
                    labels: c.labels.unwrap_or_default(),
                    state: match c.state {
                        Some(ContainerSummaryStateEnum::RUNNING)
                        | Some(ContainerSummaryStateEnum::PAUSED) => DockerState::Running,
                        Some(ContainerSummaryStateEnum::CREATED)
                        | Some(ContainerSummaryStateEnum::RESTARTING) => DockerState::Created,
                        _ => DockerState::Exited,
                    },
                    created: c.created.unwrap_or(0),
                })
            })
            .collect())
    }

    /// Inspects a container by id or name; `None` if it does not exist.
    pub async fn inspect(&self, id_or_name: &str) -> Result<Option<Observation>, DockerError> {
        match timed(
            "inspect container",
            self.docker
                .inspect_container(id_or_name, None::<InspectContainerOptions>),
        )
        .await
        {
            Ok(c) => Ok(Some(self.observe(c))),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(DockerError::api("inspect container")(e)),
        }
    }

    fn observe(&self, c: ContainerInspectResponse) -> Observation {
        let state = c.state.unwrap_or_default();
        let frozen = c.id.as_deref().and_then(crate::freezer::is_frozen) == Some(true);
        let docker_state = match state.status {
            Some(ContainerStateStatusEnum::RUNNING) | Some(ContainerStateStatusEnum::PAUSED) => {
                DockerState::Running
            }
            Some(ContainerStateStatusEnum::CREATED)
            | Some(ContainerStateStatusEnum::RESTARTING) => DockerState::Created,
            _ => DockerState::Exited,
        };
        let endpoint = c
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut nets| nets.remove(&self.network));
        let (ipv6, ipv4) = match endpoint {
            Some(ep) => (
                ep.global_ipv6_address.and_then(|a| a.parse().ok()),
                ep.ip_address.and_then(|a| a.parse().ok()),
            ),
            None => (None, None),
        };
        Observation {
            docker_id: c.id.unwrap_or_default(),
            name: c
                .name
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_default(),
            labels: c.config.and_then(|cfg| cfg.labels).unwrap_or_default(),
            state: docker_state,
            exit_code: (docker_state == DockerState::Exited)
                .then_some(state.exit_code)
                .flatten(),
            oom_killed: state.oom_killed.unwrap_or(false),
            ipv6,
            ipv4,
            pid: state
                .pid
                .and_then(|p| u32::try_from(p).ok())
                .filter(|p| *p > 0),
            paused: state.paused.unwrap_or(false)
                || state.status == Some(ContainerStateStatusEnum::PAUSED)
                || frozen,
        }
    }

    /// Creates (does not start) the container for `spec`, named `wp-<id>`, on the node's
    /// network at a random address of the /64 ([`random_address`]), with limits, every capability dropped (the pool's `security.cap_add` given
    /// back), no privilege escalation, the root filesystem read-only when the pool asks, and no
    /// restart policy (a dead container is reported, and replaced by the control plane, not
    /// revived).
    /// Returns Docker's id. A name conflict is Docker's 409.
    pub async fn create(&self, spec: &CreateSpec) -> Result<String, DockerError> {
        const LOG_MAX_SIZE: &str = "10m";
        const LOG_MAX_FILES: u32 = 2;
        let memory =
            i64::try_from(spec.resources.memory_mb.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX);
        let nano_cpus =
            i64::try_from(spec.resources.cpu_millis.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
        let sec = &spec.security;
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels::for_spec(&self.node, spec)),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    self.network.clone(),
                    EndpointSettings {
                        ipam_config: Some(EndpointIpamConfig {
                            ipv6_address: Some(random_address(&self.prefix).to_string()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )])),
            }),
            host_config: Some(HostConfig {
                runtime: self.runtime.clone(),
                network_mode: Some(self.network.clone()),
                nano_cpus: Some(nano_cpus),
                memory: Some(memory),
                // No swap beyond the memory limit: a pool's memory limit is what it gets.
                memory_swap: Some(memory),
                pids_limit: Some(spec.resources.pids),
                cap_drop: Some(vec!["ALL".to_string()]),
                cap_add: (!sec.cap_add.is_empty())
                    .then(|| sec.cap_add.iter().map(|c| c.as_str().to_string()).collect()),
                security_opt: Some(vec!["no-new-privileges".to_string()]),
                readonly_rootfs: Some(sec.read_only_rootfs),
                // In memory, counted against the memory limit; no devices, no setuid.
                // The pool's, and always a small one for the settings given at claim
                // (`/run/warmpool/env`): in memory, never in the image or on the host's disk.
                tmpfs: Some(
                    sec.tmpfs
                        .iter()
                        .filter(|p| p.as_str() != SETTINGS_DIR)
                        .map(|p| (p.clone(), "rw,nosuid,nodev".to_string()))
                        .chain(std::iter::once((
                            SETTINGS_DIR.to_string(),
                            "rw,nosuid,nodev,noexec,size=1m,mode=0755".to_string(),
                        )))
                        .collect(),
                ),
                // The pool's workspace: an anonymous volume of its own (writable with a
                // read-only root filesystem, readable by Docker's archive API even once the
                // container stopped), removed with the container.
                mounts: spec.workspace_path.as_ref().map(|p| {
                    vec![bollard::models::Mount {
                        target: Some(p.clone()),
                        typ: Some(bollard::models::MountType::VOLUME),
                        ..Default::default()
                    }]
                }),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                // A container that prints without end fills at most this much of the host's
                // disk, whatever the daemon's own default.
                log_config: Some(HostConfigLogConfig {
                    typ: Some("json-file".to_string()),
                    config: Some(
                        [
                            ("max-size".to_string(), LOG_MAX_SIZE.to_string()),
                            ("max-file".to_string(), LOG_MAX_FILES.to_string()),
                        ]
                        .into(),
                    ),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptions {
            name: Some(container_name(&spec.id)),
            ..Default::default()
        };
        timed(
            "create container",
            self.docker.create_container(Some(opts), body),
        )
        .await
        .map(|r| r.id)
        .map_err(DockerError::api("create container"))
    }

    /// Whether dockerd has `image` (by reference or id).
    pub async fn image_present(&self, image: &str) -> Result<bool, DockerError> {
        match timed("inspect image", self.docker.inspect_image(image)).await {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 404) => Ok(false),
            // A reference Docker cannot parse is not there either; the pull says why.
            Err(e) if is_status(&e, 400) => Ok(false),
            Err(e) => Err(DockerError::api("inspect image")(e)),
        }
    }

    /// Pulls `reference` (tagged or by digest) with `creds` (registry host, user, password)
    /// if given. `Err` is Docker's (or the registry's) message, without bollard's framing.
    pub async fn pull(
        &self,
        reference: &str,
        creds: Option<(&str, &str, &str)>,
    ) -> Result<(), String> {
        use futures::StreamExt;
        let opts = bollard::query_parameters::CreateImageOptionsBuilder::new()
            .from_image(reference)
            .build();
        let creds = creds.map(|(host, user, password)| bollard::auth::DockerCredentials {
            username: Some(user.to_string()),
            password: Some(password.to_string()),
            serveraddress: Some(host.to_string()),
            ..Default::default()
        });
        let mut stream = self.docker.create_image(Some(opts), None, creds);
        while let Some(item) = stream.next().await {
            match item {
                Ok(_) => {}
                Err(BollardError::DockerResponseServerError { message, .. }) => {
                    return Err(message)
                }
                Err(BollardError::DockerStreamError { error }) => return Err(error),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }

    /// Whether dockerd answers (`GET /_ping`).
    pub async fn ping(&self) -> Result<(), DockerError> {
        timed("ping", self.docker.ping())
            .await
            .map(|_| ())
            .map_err(DockerError::api("ping"))
    }

    /// Whether dockerd keeps containers running while it is down (`live-restore`); `None`
    /// when it does not say.
    pub async fn live_restore(&self) -> Result<Option<bool>, DockerError> {
        timed("info", self.docker.info())
            .await
            .map(|i| i.live_restore_enabled)
            .map_err(DockerError::api("info"))
    }

    /// Restarts a container in place (stop with a short grace, then start).
    pub async fn restart(&self, docker_id: &str) -> Result<(), DockerError> {
        let opts = bollard::query_parameters::RestartContainerOptionsBuilder::new()
            .t(2)
            .build();
        timed(
            "restart container",
            self.docker.restart_container(docker_id, Some(opts)),
        )
        .await
        .map_err(DockerError::api("restart container"))
    }

    /// Stops a container: SIGTERM, then SIGKILL after `grace_secs`.
    pub async fn stop(&self, docker_id: &str, grace_secs: u32) -> Result<(), DockerError> {
        let opts = bollard::query_parameters::StopContainerOptionsBuilder::new()
            .t(i32::try_from(grace_secs).unwrap_or(i32::MAX))
            .build();
        match self.docker.stop_container(docker_id, Some(opts)).await {
            Ok(()) => Ok(()),
            // Not running (304) or gone (404): stopped enough.
            Err(e) if is_status(&e, 304) || is_status(&e, 404) => Ok(()),
            Err(e) => Err(DockerError::api("stop container")(e)),
        }
    }

    /// Pauses a running container (the cgroup freezer: no CPU, memory kept), through its
    /// freezer file where there is one ([`crate::freezer`]), else through Docker. Pausing a
    /// paused container is not an error.
    pub async fn pause(&self, docker_id: &str) -> Result<(), DockerError> {
        match crate::freezer::freeze(docker_id).await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => {
                tracing::debug!(docker_id, error = %e, "freezer write failed; pausing through Docker")
            }
        }
        match timed("pause container", self.docker.pause_container(docker_id)).await {
            Ok(()) => Ok(()),
            // Already paused (409 says so, as it does for a container not running: the
            // caller checks it runs first).
            Err(e) if is_status(&e, 409) && self.is_paused(docker_id).await => Ok(()),
            Err(e) => Err(DockerError::api("pause container")(e)),
        }
    }

    /// Unpauses a container (its freezer file, and Docker when Docker paused it); `Ok(false)`
    /// when it was not paused.
    pub async fn unpause(&self, docker_id: &str) -> Result<bool, DockerError> {
        match crate::freezer::thaw(docker_id).await {
            Ok(Some(was)) => return Ok(was),
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(docker_id, error = %e, "freezer write failed; unpausing through Docker")
            }
        }
        match timed(
            "unpause container",
            self.docker.unpause_container(docker_id),
        )
        .await
        {
            Ok(()) => Ok(true),
            Err(e) if is_status(&e, 409) => Ok(false),
            Err(e) => Err(DockerError::api("unpause container")(e)),
        }
    }

    async fn is_paused(&self, docker_id: &str) -> bool {
        matches!(self.inspect(docker_id).await, Ok(Some(o)) if o.paused)
    }

    /// Starts a created container.
    pub async fn start(&self, docker_id: &str) -> Result<(), DockerError> {
        timed(
            "start container",
            self.docker.start_container(docker_id, None),
        )
        .await
        .map_err(DockerError::api("start container"))
    }

    /// A tar of `path` in the container (Docker's archive API: entries named after the path's
    /// last component), at most `max_bytes`; `Ok(None)` when the tar would be larger.
    pub async fn download_archive(
        &self,
        id: &str,
        path: &str,
        max_bytes: u64,
    ) -> Result<Option<Vec<u8>>, DockerError> {
        use futures::StreamExt;
        let opts = bollard::query_parameters::DownloadFromContainerOptions {
            path: path.to_string(),
        };
        let mut stream = self.docker.download_from_container(id, Some(opts));
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(DockerError::api("download archive"))?;
            out.extend_from_slice(&chunk);
            // A tar's end is two 512-byte blocks of zeros and padding: allow for them.
            if out.len() as u64 > max_bytes.saturating_add(16 * 1024) {
                return Ok(None);
            }
        }
        Ok(Some(out))
    }

    /// Unpacks `tar` into directory `path` of the container (Docker's archive API).
    pub async fn upload_archive(
        &self,
        id: &str,
        path: &str,
        tar: Vec<u8>,
    ) -> Result<(), DockerError> {
        let opts = bollard::query_parameters::UploadToContainerOptions {
            path: path.to_string(),
            ..Default::default()
        };
        timed(
            "upload archive",
            self.docker
                .upload_to_container(id, Some(opts), bollard::body_full(tar.into())),
        )
        .await
        .map_err(DockerError::api("upload archive"))
    }

    /// Force-removes a container (and its anonymous volumes). `Ok(false)` if there was none.
    ///
    /// If Docker is already removing it (409), waits until it is gone, so that "removed" always
    /// means gone.
    pub async fn remove(&self, id_or_name: &str) -> Result<bool, DockerError> {
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match timed(
            "remove container",
            self.docker.remove_container(id_or_name, Some(opts)),
        )
        .await
        {
            Ok(()) => Ok(true),
            Err(e) if is_status(&e, 404) => Ok(false),
            Err(e) if is_status(&e, 409) => {
                let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
                while tokio::time::Instant::now() < deadline {
                    if self.inspect(id_or_name).await?.is_none() {
                        return Ok(true);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(DockerError::api("remove container")(e))
            }
            Err(e) => Err(DockerError::api("remove container")(e)),
        }
    }

    /// The node's container events (`start`, `die`, `oom`, `destroy`), from `since` (Docker's
    /// `since`: seconds since the epoch, fractions allowed) if given: Docker replays what
    /// happened after it, so events that happened while the stream was down are not lost.
    pub fn events(
        &self,
        since: Option<String>,
    ) -> impl Stream<Item = Result<EventMessage, BollardError>> + use<> {
        let mut filters = self.node_filter();
        filters.insert("type".into(), vec!["container".into()]);
        filters.insert(
            "event".into(),
            ["start", "die", "oom", "destroy"]
                .into_iter()
                .map(String::from)
                .collect(),
        );
        let opts = EventsOptions {
            since,
            until: None,
            filters: Some(filters),
        };
        self.docker.events(Some(opts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_addresses_stay_in_the_prefix_and_do_not_repeat() {
        let p: Ipv6Prefix = "fd36:7:8:9::/64".parse().unwrap();
        let a: Vec<Ipv6Addr> = (0..100).map(|_| random_address(&p)).collect();
        for ip in &a {
            assert!(p.contains(ip), "{ip}");
            assert!(u128::from(*ip) as u64 >= 2, "{ip}");
        }
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert_eq!(distinct.len(), a.len());
    }
}
