//! Image pulls: a pool's image is pulled on this node before the pool's first container here.
//!
//! A create asks [`ensure`] for its image before it waits for a create slot. What happens is
//! decided by [`decide`] (pure) from the pool's pull policy, whether Docker has the image, and
//! what this node last did with it:
//!
//! - One pull per image at a time: a create that finds its image being pulled waits for that
//!   pull (off the hot path: in the create's own task; health, commands and other pools go on).
//! - A failed pull is remembered with its reason ([`classify`]) and a retry time
//!   ([`retry_delay`], slow and doubling). Until then creates of that image fail at once, with
//!   no Docker create, and the heartbeat lists the image as failed, so the control plane
//!   places no container of its pools here: no crash loop. The agent retries the pull on its
//!   own ([`run`]) while the image was wanted recently, and once it works the node takes
//!   the pools again.
//! - Credentials come from the `--registry-auth` file ([`RegistryAuth`]), never from the
//!   replicated state.
//!
//! A rollout to a new image goes through the same path: the new generation's creates pull
//! first, and the old containers keep serving (the control plane retires them only once new
//! ones are warm).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use warmpool_proto::agent::{ImagePullError, ImageState, ImageStatus};
use warmpool_proto::pool::PullPolicy;
use warmpool_proto::{PoolName, Timestamp};

use crate::agent::Shared;

/// First retry of a failed pull after this long; it doubles per failure up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(10);
/// Longest wait between two pulls of an image that keeps failing.
pub const RETRY_MAX: Duration = Duration::from_secs(300);
/// With pull policy `always`, a pull younger than this is fresh enough for another create.
pub const ALWAYS_FRESH: Duration = Duration::from_secs(60);
/// An image no create asked for in this long is forgotten (no more retries, not reported).
pub const WANTED_FOR: Duration = Duration::from_secs(3600);
/// How often the retry loop looks for pulls that are due.
const RETRY_TICK: Duration = Duration::from_secs(1);

/// Where this node is with one image.
#[derive(Clone, Debug, PartialEq)]
pub enum Have {
    /// Nothing done yet (or forgotten).
    Unknown,
    /// A pull is under way.
    Pulling,
    /// Last pulled (or found) at.
    Pulled {
        /// When.
        at: Instant,
    },
    /// The last pull failed; no other before `retry_at`.
    Failed {
        /// Why.
        reason: ImagePullError,
        /// Docker's words.
        message: String,
        /// When the next pull may start.
        retry_at: Instant,
    },
}

/// What a create does about its image.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Go ahead: the image is there.
    Use,
    /// Wait for the pull under way, then decide again.
    Wait,
    /// Start a pull, then decide again.
    Pull,
    /// Fail the create now, without touching Docker.
    Refuse(ImagePullError, String),
}

/// The decision for one create (pure): `present` is whether Docker has the image now.
pub fn decide(image: &str, policy: PullPolicy, present: bool, have: &Have, now: Instant) -> Step {
    if *have == Have::Pulling {
        return Step::Wait;
    }
    let backing_off = match have {
        Have::Failed {
            reason,
            message,
            retry_at,
        } if *retry_at > now => Some(Step::Refuse(*reason, message.clone())),
        _ => None,
    };
    match policy {
        PullPolicy::Never if present => Step::Use,
        PullPolicy::Never => Step::Refuse(
            ImagePullError::NotPresent,
            format!("image {image} is not on this node and the pool's pull policy is never"),
        ),
        PullPolicy::IfNotPresent if present => Step::Use,
        PullPolicy::IfNotPresent => backing_off.unwrap_or(Step::Pull),
        PullPolicy::Always => match have {
            Have::Pulled { at } if present && now.saturating_duration_since(*at) < ALWAYS_FRESH => {
                Step::Use
            }
            _ => backing_off.unwrap_or(Step::Pull),
        },
    }
}

/// Wait before the next pull after `attempts` failures in a row (at least 1).
pub fn retry_delay(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    RETRY_FIRST.saturating_mul(1u32 << doublings).min(RETRY_MAX)
}

/// The reason code for Docker's (or the registry's) error message.
pub fn classify(message: &str) -> ImagePullError {
    let m = message.to_ascii_lowercase();
    let any = |words: &[&str]| words.iter().any(|w| m.contains(w));
    if any(&["invalid reference format", "invalid reference"]) {
        ImagePullError::InvalidReference
    } else if any(&[
        "repository does not exist",
        "manifest unknown",
        "not found",
        "name unknown",
    ]) {
        ImagePullError::NotFound
    } else if any(&[
        "unauthorized",
        "authentication required",
        "no basic auth credentials",
        "denied",
        "incorrect username or password",
    ]) {
        ImagePullError::Unauthorized
    } else if any(&[
        "connection refused",
        "no such host",
        "dial tcp",
        "i/o timeout",
        "no route to host",
        "network is unreachable",
        "deadline exceeded",
        "http response to https client",
        "x509",
        "tls:",
        "connection reset",
        "eof",
    ]) {
        ImagePullError::Unreachable
    } else {
        ImagePullError::Other
    }
}

/// The registry an image reference names: its first component when that looks like a host
/// (holds a `.` or a `:`, or is `localhost`), else Docker Hub (`docker.io`).
pub fn registry_host(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

/// `image` with `:latest` added when it names neither a tag nor a digest (Docker's API would
/// pull every tag of a bare name).
pub fn with_tag(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

/// Registry credentials by registry host, from the `--registry-auth` file.
#[derive(Clone, Default, PartialEq)]
pub struct RegistryAuth {
    by_host: BTreeMap<String, (String, String)>,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hosts only: passwords never reach a log.
        f.debug_list().entries(self.by_host.keys()).finish()
    }
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl RegistryAuth {
    /// Parses Docker's config.json (`{"auths": {host: {"auth": base64("user:pass")}}}`, or
    /// `username`/`password` in place of `auth`) or the same map without `auths` around it.
    /// Other keys of a config.json (`credsStore`, `HttpHeaders`, ...) are ignored.
    pub fn parse(text: &str) -> Result<RegistryAuth, String> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let map = match value.get("auths") {
            Some(auths) => auths.clone(),
            None => value,
        };
        let entries: BTreeMap<String, Entry> = serde_json::from_value(map).map_err(|e| {
            format!(
                "expected {{\"auths\": {{host: {{\"auth\" or \"username\"+\"password\"}}}}}}: {e}"
            )
        })?;
        let mut by_host = BTreeMap::new();
        for (host, e) in entries {
            let host = host
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .trim_end_matches("/v1")
                .to_string();
            let pair = match (e.auth, e.username, e.password) {
                (_, Some(u), Some(p)) => (u, p),
                (Some(auth), _, _) => {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|_| format!("{host}: \"auth\" is not base64"))?;
                    let s = String::from_utf8(raw)
                        .map_err(|_| format!("{host}: \"auth\" is not UTF-8"))?;
                    let (u, p) = s.split_once(':').ok_or_else(|| {
                        format!("{host}: \"auth\" is not base64 of user:password")
                    })?;
                    (u.to_string(), p.to_string())
                }
                _ => {
                    return Err(format!(
                        "{host}: give \"auth\", or \"username\" and \"password\""
                    ))
                }
            };
            // Docker Hub goes by several names.
            let host = match host.as_str() {
                "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
                _ => host,
            };
            by_host.insert(host, pair);
        }
        Ok(RegistryAuth { by_host })
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<RegistryAuth, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        RegistryAuth::parse(&text)
    }

    /// The registry host and user and password for `image`, if the file has its registry.
    pub fn for_image(&self, image: &str) -> Option<(&str, &str, &str)> {
        let host = registry_host(image);
        self.by_host
            .get_key_value(host)
            .map(|(h, (u, p))| (h.as_str(), u.as_str(), p.as_str()))
    }

    /// How many registries it has credentials for.
    pub fn len(&self) -> usize {
        self.by_host.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }
}

struct Image {
    have: Have,
    /// Failed pulls in a row.
    attempts: u32,
    /// When the pull under way started (agent's clock), for reports.
    pulling_since: Timestamp,
    /// Resolves (errs) when the pull under way ends.
    done: Option<watch::Receiver<()>>,
    pools: BTreeSet<PoolName>,
    policy: PullPolicy,
    wanted_at: Instant,
}

/// What this node knows of each image its creates asked for.
pub struct Images {
    auth: RegistryAuth,
    inner: Mutex<HashMap<String, Image>>,
    cancel: CancellationToken,
}

impl Images {
    /// Nothing known yet; pulls stop when `cancel` fires.
    pub fn new(auth: RegistryAuth, cancel: CancellationToken) -> Self {
        Images {
            auth,
            inner: Mutex::new(HashMap::new()),
            cancel,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Image>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The images being pulled or failed, for the heartbeat (sorted by image).
    pub fn report(&self) -> Vec<ImageStatus> {
        let now = Instant::now();
        let wall = Timestamp::now();
        let mut out: Vec<ImageStatus> = self
            .lock()
            .iter()
            .filter(|(_, i)| now.saturating_duration_since(i.wanted_at) < WANTED_FOR)
            .filter_map(|(image, i)| {
                let state = match &i.have {
                    Have::Pulling => ImageState::Pulling {
                        since: i.pulling_since,
                    },
                    Have::Failed {
                        reason,
                        message,
                        retry_at,
                    } => ImageState::Failed {
                        reason: *reason,
                        message: message.clone(),
                        attempts: i.attempts,
                        retry_at: wall.plus(retry_at.saturating_duration_since(now)),
                    },
                    _ => return None,
                };
                Some(ImageStatus {
                    image: image.clone(),
                    pools: i.pools.iter().cloned().collect(),
                    state,
                })
            })
            .collect();
        out.sort_by(|a, b| a.image.cmp(&b.image));
        out
    }
}

/// Makes sure `image` is on this node for a create of `pool`, pulling it if the policy says
/// so. `Err` is why it is not (the create then fails without touching Docker). `waiting` is
/// called before each wait for a pull (the create's place in line goes to the next meanwhile).
pub async fn ensure(
    shared: &Arc<Shared>,
    image: &str,
    pool: &PoolName,
    policy: PullPolicy,
    waiting: impl Fn(),
) -> Result<(), (ImagePullError, String)> {
    loop {
        let present = shared
            .driver
            .image_present(image)
            .await
            .map_err(|e| (ImagePullError::Other, e.to_string()))?;
        let now = Instant::now();
        let wait = {
            let mut map = shared.images.lock();
            let entry = map.entry(image.to_string()).or_insert_with(|| Image {
                have: Have::Unknown,
                attempts: 0,
                pulling_since: Timestamp::now(),
                done: None,
                pools: BTreeSet::new(),
                policy,
                wanted_at: now,
            });
            entry.pools.insert(pool.clone());
            entry.policy = policy;
            entry.wanted_at = now;
            match decide(image, policy, present, &entry.have, now) {
                Step::Use => {
                    if matches!(entry.have, Have::Failed { .. } | Have::Unknown) {
                        entry.have = Have::Pulled { at: now };
                        entry.attempts = 0;
                    }
                    return Ok(());
                }
                Step::Refuse(reason, message) => {
                    if reason == ImagePullError::NotPresent
                        && !matches!(&entry.have, Have::Failed { retry_at, .. } if *retry_at > now)
                    {
                        entry.attempts += 1;
                        entry.have = Have::Failed {
                            reason,
                            message: message.clone(),
                            retry_at: now + retry_delay(entry.attempts),
                        };
                    }
                    return Err((reason, message));
                }
                Step::Wait => entry.done.clone(),
                Step::Pull => Some(start_pull(shared, image, entry)),
            }
        };
        if let Some(mut done) = wait {
            waiting();
            // Errs when the pull's sender is dropped: the pull is over.
            let _ = done.changed().await;
        }
    }
}

/// Marks `entry` as being pulled and pulls `image` in its own task; the receiver resolves
/// when the pull is over.
fn start_pull(shared: &Arc<Shared>, image: &str, entry: &mut Image) -> watch::Receiver<()> {
    let (tx, rx) = watch::channel(());
    entry.have = Have::Pulling;
    entry.pulling_since = Timestamp::now();
    entry.done = Some(rx.clone());
    let shared = shared.clone();
    let image = image.to_string();
    let reference = with_tag(&image);
    shared.clone().tasks.spawn(async move {
        let creds = shared.images.auth.for_image(&image);
        let host = creds.map(|(h, _, _)| h.to_string());
        info!(%image, registry = registry_host(&image), credentials = creds.is_some(), "pulling image");
        let started = Instant::now();
        let result = tokio::select! {
            r = shared.driver.pull(&reference, creds) => r,
            _ = shared.images.cancel.cancelled() => Err("the agent is stopping".to_string()),
        };
        let now = Instant::now();
        let mut map = shared.images.lock();
        if let Some(entry) = map.get_mut(&image) {
            entry.done = None;
            match result {
                Ok(()) => {
                    info!(%image, elapsed_ms = started.elapsed().as_millis() as u64, "image pulled");
                    entry.have = Have::Pulled { at: now };
                    entry.attempts = 0;
                }
                Err(message) => {
                    entry.attempts += 1;
                    let reason = classify(&message);
                    let delay = retry_delay(entry.attempts);
                    warn!(%image, %reason, error = %message, registry = ?host, attempts = entry.attempts, retry_in = ?delay, "image pull failed");
                    entry.have = Have::Failed {
                        reason,
                        message,
                        retry_at: now + delay,
                    };
                }
            }
        }
        drop(map);
        drop(tx);
    });
    rx
}

/// Retries failed pulls when they are due, while their image was wanted recently; forgets
/// images no create asked for in [`WANTED_FOR`]. Until `cancel`.
pub async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(RETRY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let due: Vec<(String, PullPolicy)> = {
            let mut map = shared.images.lock();
            map.retain(|_, i| {
                i.have == Have::Pulling || now.saturating_duration_since(i.wanted_at) < WANTED_FOR
            });
            map.iter()
                .filter(
                    |(_, i)| matches!(&i.have, Have::Failed { retry_at, .. } if *retry_at <= now),
                )
                .map(|(image, i)| (image.clone(), i.policy))
                .collect()
        };
        for (image, policy) in due {
            let present = shared.driver.image_present(&image).await.unwrap_or(false);
            let mut map = shared.images.lock();
            let Some(entry) = map.get_mut(&image) else {
                continue;
            };
            if !matches!(&entry.have, Have::Failed { retry_at, .. } if *retry_at <= now) {
                continue;
            }
            match policy {
                // Someone put the image there: the pools may come back.
                PullPolicy::Never | PullPolicy::IfNotPresent if present => {
                    info!(%image, "image is on the node now");
                    entry.have = Have::Pulled { at: now };
                    entry.attempts = 0;
                }
                PullPolicy::Never => {
                    entry.attempts += 1;
                    if let Have::Failed { retry_at, .. } = &mut entry.have {
                        *retry_at = now + retry_delay(entry.attempts);
                    }
                }
                _ => {
                    let _ = start_pull(&shared, &image, entry);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(retry_at: Instant) -> Have {
        Have::Failed {
            reason: ImagePullError::NotFound,
            message: "manifest unknown".into(),
            retry_at,
        }
    }

    #[test]
    fn if_not_present_pulls_only_what_is_missing_and_waits_out_a_failure() {
        let now = Instant::now();
        let p = PullPolicy::IfNotPresent;
        assert_eq!(decide("a", p, true, &Have::Unknown, now), Step::Use);
        assert_eq!(decide("a", p, false, &Have::Unknown, now), Step::Pull);
        assert_eq!(decide("a", p, false, &Have::Pulling, now), Step::Wait);
        // A failed pull: no create and no pull until the retry time...
        let later = now + Duration::from_secs(10);
        assert_eq!(
            decide("a", p, false, &failed(later), now),
            Step::Refuse(ImagePullError::NotFound, "manifest unknown".into())
        );
        // ...then a pull again; and an image put there meanwhile is simply used.
        assert_eq!(decide("a", p, false, &failed(later), later), Step::Pull);
        assert_eq!(decide("a", p, true, &failed(later), now), Step::Use);
    }

    #[test]
    fn always_pulls_unless_the_last_pull_is_fresh() {
        let now = Instant::now();
        let p = PullPolicy::Always;
        assert_eq!(decide("a", p, true, &Have::Unknown, now), Step::Pull);
        let fresh = Have::Pulled { at: now };
        assert_eq!(
            decide("a", p, true, &fresh, now + Duration::from_secs(5)),
            Step::Use
        );
        assert_eq!(decide("a", p, true, &fresh, now + ALWAYS_FRESH), Step::Pull);
        // Removed behind the agent's back: pulled again.
        assert_eq!(decide("a", p, false, &fresh, now), Step::Pull);
        // A failed pull fails the create, even with an older copy there.
        let later = now + Duration::from_secs(10);
        assert!(matches!(
            decide("a", p, true, &failed(later), now),
            Step::Refuse(ImagePullError::NotFound, _)
        ));
        assert_eq!(decide("a", p, true, &Have::Pulling, now), Step::Wait);
    }

    #[test]
    fn never_uses_what_is_there_and_refuses_the_rest() {
        let now = Instant::now();
        let p = PullPolicy::Never;
        assert_eq!(decide("a", p, true, &Have::Unknown, now), Step::Use);
        match decide("app:1", p, false, &Have::Unknown, now) {
            Step::Refuse(ImagePullError::NotPresent, m) => {
                assert!(m.contains("app:1") && m.contains("never"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retries_slow_down_to_a_cap() {
        assert_eq!(retry_delay(0), RETRY_FIRST);
        assert_eq!(retry_delay(1), Duration::from_secs(10));
        assert_eq!(retry_delay(2), Duration::from_secs(20));
        assert_eq!(retry_delay(4), Duration::from_secs(80));
        assert_eq!(retry_delay(6), RETRY_MAX);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
    }

    #[test]
    fn docker_errors_get_reason_codes() {
        use ImagePullError::*;
        for (message, reason) in [
            ("invalid reference format", InvalidReference),
            ("invalid reference format: repository name must be lowercase", InvalidReference),
            ("manifest for 10.1.2.1:5000/nope:1 not found: manifest unknown: manifest unknown", NotFound),
            ("pull access denied for nope, repository does not exist or may require 'docker login'", NotFound),
            ("Head \"http://10.1.2.1:5000/v2/app/manifests/1\": no basic auth credentials", Unauthorized),
            ("unauthorized: authentication required", Unauthorized),
            ("Get \"http://10.1.2.1:5000/v2/\": dial tcp 10.1.2.1:5000: connect: connection refused", Unreachable),
            ("Get \"https://r.example/v2/\": dial tcp: lookup r.example: no such host", Unreachable),
            ("Get \"https://10.1.2.1:5000/v2/\": http: server gave HTTP response to HTTPS client", Unreachable),
            ("write /var/lib/docker/tmp/x: no space left on device", Other),
        ] {
            assert_eq!(classify(message), reason, "{message}");
        }
    }

    #[test]
    fn references_name_their_registry_and_get_a_tag() {
        assert_eq!(registry_host("busybox"), "docker.io");
        assert_eq!(registry_host("library/busybox:1"), "docker.io");
        assert_eq!(registry_host("10.1.2.1:5000/app:1"), "10.1.2.1:5000");
        assert_eq!(
            registry_host("registry.example/team/app"),
            "registry.example"
        );
        assert_eq!(registry_host("localhost/app"), "localhost");
        assert_eq!(with_tag("app"), "app:latest");
        assert_eq!(with_tag("10.1.2.1:5000/app"), "10.1.2.1:5000/app:latest");
        assert_eq!(with_tag("10.1.2.1:5000/app:2"), "10.1.2.1:5000/app:2");
        assert_eq!(with_tag("app@sha256:abc"), "app@sha256:abc");
    }

    #[test]
    fn credentials_are_read_from_docker_config_or_a_plain_map() {
        // base64("alice:s3cret:with:colons")
        let docker = r#"{"auths": {"https://registry.example:5000": {"auth": "YWxpY2U6czNjcmV0OndpdGg6Y29sb25z"}, "https://index.docker.io/v1/": {"username": "bob", "password": "pw"}}, "credsStore": "desktop"}"#;
        let a = RegistryAuth::parse(docker).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(
            a.for_image("registry.example:5000/team/app:1"),
            Some(("registry.example:5000", "alice", "s3cret:with:colons"))
        );
        assert_eq!(a.for_image("busybox"), Some(("docker.io", "bob", "pw")));
        assert_eq!(a.for_image("other.example/app"), None);
        let plain = r#"{"10.1.2.1:5000": {"username": "u", "password": "p"}}"#;
        let a = RegistryAuth::parse(plain).unwrap();
        assert_eq!(
            a.for_image("10.1.2.1:5000/app"),
            Some(("10.1.2.1:5000", "u", "p"))
        );
        // Passwords never reach a log.
        assert_eq!(format!("{a:?}"), r#"["10.1.2.1:5000"]"#);
        for bad in [
            "not json",
            r#"{"auths": {"r.example": {"auth": "%%%"}}}"#,
            r#"{"auths": {"r.example": {"auth": "bm9jb2xvbg=="}}}"#,
            r#"{"r.example": {"username": "only"}}"#,
            r#"{"auths": []}"#,
        ] {
            assert!(RegistryAuth::parse(bad).is_err(), "{bad}");
        }
    }
}
