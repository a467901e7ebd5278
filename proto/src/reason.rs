//! Why a container ended, and why the leader retires one: typed inside every process, the same
//! strings as ever on the wire.
//!
//! These strings are stored: in container records and conditions inside Raft snapshots, and in
//! `ContainersGone` / `RetireContainers` commands inside the Raft log. A data directory
//! written by any earlier version must load, so the wire form is fixed:
//!
//! - every variant serialises to exactly the string earlier versions wrote for it;
//! - any string deserialises, and a string no variant claims becomes [`ContainerEndReason::Other`]
//!   holding it unchanged, so that parsing then printing gives back the same string, always
//!   (a non-canonical spelling such as `exited (007)` is kept as `Other` for that reason).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::records::ReleaseReason;

/// Why a container was released, terminated or failed (its record's `reason`), why an agent
/// says it is gone, and why the leader has it destroyed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ContainerEndReason {
    /// `client`: its session's client released the allocation.
    Client,
    /// `expired`: the allocation's lease ran out.
    Expired,
    /// `idle`: no network activity for the pool's `idle_timeout_secs`.
    Idle,
    /// `lost`: its allocation was lost (the container or node went, with no more detail).
    Lost,
    /// `drained`: its node's drain deadline passed while a session held it.
    Drained,
    /// `abandoned`: the request that allocated it was never answered and its client did not
    /// come back for it.
    Abandoned,
    /// `runtime_unavailable`: its create was cut off by the node's dockerd going away (a
    /// restart, a hang); not a create failure, so neither its pool nor its node is backed off.
    RuntimeUnavailable,
    /// `unhealthy`: it failed its health check (retired, or its allocation ended for it).
    Unhealthy,
    /// `pool_deleted`: its pool was deleted.
    PoolDeleted,
    /// `spec_changed`: its pool's spec changed and a container of the new one replaced it.
    SpecChanged,
    /// `drain`: its node is draining and the pool holds enough elsewhere.
    Drain,
    /// `scale_down`: the pool holds more warm containers than it wants.
    ScaleDown,
    /// `exited (<code>)`, or `exited (?)` when Docker gave no code: it stopped on its own.
    Exited {
        /// The exit code, when known.
        code: Option<i64>,
    },
    /// `oom_killed`: the kernel killed it at its memory limit.
    OomKilled,
    /// `create_failed: <message>`: Docker refused to make it.
    CreateFailed {
        /// Docker's (or the agent's) error.
        message: String,
    },
    /// `create_timed_out`: it was never reported made (written by earlier versions).
    CreateTimedOut,
    /// `destroyed`: its agent destroyed it on the leader's command.
    Destroyed,
    /// `released`: destroyed with no reason on record (an agent's default).
    Released,
    /// `vanished`: its agent's inventory stopped listing it.
    Vanished,
    /// `vanished from docker (found by resync)`: the agent's resync found it gone from Docker.
    VanishedFromDocker,
    /// `removed outside the agent`: Docker removed it and the agent did not ask.
    RemovedOutsideAgent,
    /// `node_down`: its node missed its heartbeats (what no session held).
    NodeDown,
    /// `node_lost`: its node stayed down too long (what sessions held).
    NodeLost,
    /// `unpause_failed`: a paused container did not answer on its port once unpaused for
    /// an allocation (the allocation went to another container).
    UnpauseFailed,
    /// Any other string, kept as it was written (a newer peer's reason, or a test's).
    Other(String),
}

/// Prefix of [`ContainerEndReason::CreateFailed`]'s wire form.
const CREATE_FAILED: &str = "create_failed: ";

impl ContainerEndReason {
    /// The wire form of a variant that carries no data; `None` for the others.
    fn fixed_str(&self) -> Option<&'static str> {
        use ContainerEndReason::*;
        Some(match self {
            Client => "client",
            Expired => "expired",
            Idle => "idle",
            Lost => "lost",
            Drained => "drained",
            Abandoned => "abandoned",
            RuntimeUnavailable => "runtime_unavailable",
            Unhealthy => "unhealthy",
            PoolDeleted => "pool_deleted",
            SpecChanged => "spec_changed",
            Drain => "drain",
            ScaleDown => "scale_down",
            OomKilled => "oom_killed",
            CreateTimedOut => "create_timed_out",
            Destroyed => "destroyed",
            Released => "released",
            Vanished => "vanished",
            VanishedFromDocker => "vanished from docker (found by resync)",
            RemovedOutsideAgent => "removed outside the agent",
            NodeDown => "node_down",
            NodeLost => "node_lost",
            UnpauseFailed => "unpause_failed",
            Exited { .. } | CreateFailed { .. } | Other(_) => return None,
        })
    }

    /// Every variant without data, for tests and documentation.
    pub const FIXED: [ContainerEndReason; 22] = [
        ContainerEndReason::Client,
        ContainerEndReason::Expired,
        ContainerEndReason::Idle,
        ContainerEndReason::Lost,
        ContainerEndReason::Drained,
        ContainerEndReason::Abandoned,
        ContainerEndReason::RuntimeUnavailable,
        ContainerEndReason::Unhealthy,
        ContainerEndReason::PoolDeleted,
        ContainerEndReason::SpecChanged,
        ContainerEndReason::Drain,
        ContainerEndReason::ScaleDown,
        ContainerEndReason::OomKilled,
        ContainerEndReason::CreateTimedOut,
        ContainerEndReason::Destroyed,
        ContainerEndReason::Released,
        ContainerEndReason::Vanished,
        ContainerEndReason::VanishedFromDocker,
        ContainerEndReason::RemovedOutsideAgent,
        ContainerEndReason::NodeDown,
        ContainerEndReason::NodeLost,
        ContainerEndReason::UnpauseFailed,
    ];

    /// Whether a container that ended this way before it was ever warm says something is
    /// wrong with making containers (its image, its command, its host), rather than that it
    /// was no longer wanted. The leader backs off a pool (and a node) on these.
    pub fn is_create_failure(&self) -> bool {
        use ContainerEndReason::*;
        matches!(
            self,
            CreateFailed { .. }
                | CreateTimedOut
                | Unhealthy
                | Exited { .. }
                | OomKilled
                | Vanished
                | VanishedFromDocker
        )
    }

    /// Reads a wire string; never fails (see the module doc).
    pub fn parse(s: &str) -> ContainerEndReason {
        if let Some(r) = ContainerEndReason::FIXED
            .iter()
            .find(|r| r.fixed_str() == Some(s))
        {
            return r.clone();
        }
        let parsed = if let Some(message) = s.strip_prefix(CREATE_FAILED) {
            Some(ContainerEndReason::CreateFailed {
                message: message.to_string(),
            })
        } else if let Some(code) = s
            .strip_prefix("exited (")
            .and_then(|rest| rest.strip_suffix(')'))
        {
            match code {
                "?" => Some(ContainerEndReason::Exited { code: None }),
                n => n
                    .parse()
                    .ok()
                    .map(|c| ContainerEndReason::Exited { code: Some(c) }),
            }
        } else {
            None
        };
        // Only the canonical spelling maps to a variant, so printing gives back `s`.
        match parsed {
            Some(r) if r.to_string() == s => r,
            _ => ContainerEndReason::Other(s.to_string()),
        }
    }
}

impl fmt::Display for ContainerEndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = self.fixed_str() {
            return f.write_str(s);
        }
        match self {
            ContainerEndReason::Exited { code: Some(c) } => write!(f, "exited ({c})"),
            ContainerEndReason::Exited { code: None } => f.write_str("exited (?)"),
            ContainerEndReason::CreateFailed { message } => write!(f, "{CREATE_FAILED}{message}"),
            ContainerEndReason::Other(s) => f.write_str(s),
            _ => unreachable!("fixed_str covers every variant without data"),
        }
    }
}

impl FromStr for ContainerEndReason {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(ContainerEndReason::parse(s))
    }
}

impl From<&str> for ContainerEndReason {
    fn from(s: &str) -> Self {
        ContainerEndReason::parse(s)
    }
}

impl From<ReleaseReason> for ContainerEndReason {
    /// What a container's record says when its allocation ended for `r` (the same string).
    fn from(r: ReleaseReason) -> Self {
        match r {
            ReleaseReason::Client => ContainerEndReason::Client,
            ReleaseReason::Expired => ContainerEndReason::Expired,
            ReleaseReason::Idle => ContainerEndReason::Idle,
            ReleaseReason::Unhealthy => ContainerEndReason::Unhealthy,
            ReleaseReason::Lost => ContainerEndReason::Lost,
            ReleaseReason::PoolDeleted => ContainerEndReason::PoolDeleted,
            ReleaseReason::Drained => ContainerEndReason::Drained,
            ReleaseReason::Abandoned => ContainerEndReason::Abandoned,
        }
    }
}

impl From<RetireReason> for ContainerEndReason {
    fn from(r: RetireReason) -> Self {
        match r {
            RetireReason::SpecChanged => ContainerEndReason::SpecChanged,
            RetireReason::Drain => ContainerEndReason::Drain,
            RetireReason::ScaleDown => ContainerEndReason::ScaleDown,
        }
    }
}

impl Serialize for ContainerEndReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ContainerEndReason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(ContainerEndReason::parse(&s))
    }
}

/// Why the leader's keep-warm planner retires warm or creating containers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetireReason {
    /// `spec_changed`: an older generation, replaced by the current spec's containers.
    SpecChanged,
    /// `drain`: on a draining node, and the pool holds enough elsewhere.
    Drain,
    /// `scale_down`: more warm containers than the pool wants.
    ScaleDown,
}

impl RetireReason {
    /// The wire name (the same as the [`ContainerEndReason`] it becomes).
    pub fn as_str(self) -> &'static str {
        match self {
            RetireReason::SpecChanged => "spec_changed",
            RetireReason::Drain => "drain",
            RetireReason::ScaleDown => "scale_down",
        }
    }
}

impl fmt::Display for RetireReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every string an earlier version wrote, and what it reads as now.
    fn known() -> Vec<(&'static str, ContainerEndReason)> {
        use ContainerEndReason::*;
        vec![
            ("client", Client),
            ("expired", Expired),
            ("idle", Idle),
            ("lost", Lost),
            ("drained", Drained),
            ("abandoned", Abandoned),
            ("runtime_unavailable", RuntimeUnavailable),
            ("unhealthy", Unhealthy),
            ("pool_deleted", PoolDeleted),
            ("spec_changed", SpecChanged),
            ("drain", Drain),
            ("scale_down", ScaleDown),
            ("exited (137)", Exited { code: Some(137) }),
            ("exited (0)", Exited { code: Some(0) }),
            ("exited (-1)", Exited { code: Some(-1) }),
            ("exited (?)", Exited { code: None }),
            ("oom_killed", OomKilled),
            (
                "create_failed: docker create container: Docker responded with status code 404: No such image: x:latest",
                CreateFailed {
                    message: "docker create container: Docker responded with status code 404: No such image: x:latest".into(),
                },
            ),
            ("create_failed: ", CreateFailed { message: String::new() }),
            ("create_failed: a: b: c", CreateFailed { message: "a: b: c".into() }),
            ("create_timed_out", CreateTimedOut),
            ("destroyed", Destroyed),
            ("released", Released),
            ("vanished", Vanished),
            ("vanished from docker (found by resync)", VanishedFromDocker),
            ("removed outside the agent", RemovedOutsideAgent),
            ("node_down", NodeDown),
            ("node_lost", NodeLost),
            ("unpause_failed", UnpauseFailed),
        ]
    }

    #[test]
    fn every_reason_string_reads_as_its_variant_and_writes_back_exactly() {
        for (s, r) in known() {
            assert_eq!(ContainerEndReason::parse(s), r, "{s:?}");
            assert_eq!(r.to_string(), s);
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, serde_json::to_string(s).unwrap(), "{r:?} on the wire");
            let back: ContainerEndReason = serde_json::from_str(&json).unwrap();
            assert_eq!(back, r);
        }
        // No fixed variant is left out of the table above.
        for r in ContainerEndReason::FIXED {
            assert!(known().iter().any(|(_, k)| *k == r), "{r:?} untested");
        }
    }

    #[test]
    fn unknown_and_odd_strings_are_kept_exactly_as_other() {
        for s in [
            "",
            "test",
            "forged",
            "exited",
            "exited ()",
            "exited (007)",
            "exited (+1)",
            "exited (1",
            "exited (x)",
            "create_failed",
            "create_failed:no space",
            "Unhealthy",
            " unhealthy",
            "no heartbeat for 3.3s",
        ] {
            let r = ContainerEndReason::parse(s);
            assert_eq!(r, ContainerEndReason::Other(s.to_string()), "{s:?}");
            assert_eq!(r.to_string(), s);
            let back: ContainerEndReason =
                serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
            assert_eq!(back.to_string(), s);
        }
    }

    #[test]
    fn create_failures_are_what_the_prefixes_said_they_were() {
        // The strings the leader's prefix match counted as failures to make a container.
        let prefixes = [
            "create_failed",
            "create_timed_out",
            "unhealthy",
            "exited",
            "oom_killed",
            "vanished",
        ];
        for (s, r) in known() {
            let by_prefix = prefixes.iter().any(|p| s.starts_with(p));
            assert_eq!(r.is_create_failure(), by_prefix, "{s:?}");
        }
    }

    #[test]
    fn release_and_retire_reasons_become_the_same_strings() {
        for r in [
            ReleaseReason::Client,
            ReleaseReason::Expired,
            ReleaseReason::Idle,
            ReleaseReason::Unhealthy,
            ReleaseReason::Lost,
            ReleaseReason::PoolDeleted,
            ReleaseReason::Drained,
            ReleaseReason::Abandoned,
        ] {
            assert_eq!(ContainerEndReason::from(r).to_string(), r.as_str());
        }
        for r in [
            RetireReason::SpecChanged,
            RetireReason::Drain,
            RetireReason::ScaleDown,
        ] {
            assert_eq!(ContainerEndReason::from(r).to_string(), r.as_str());
        }
    }
}
