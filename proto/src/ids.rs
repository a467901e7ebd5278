//! Identifiers. String ids are validated when parsed or deserialized, because they end up in
//! NATS subjects, Docker labels and URL paths.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

/// Id of a control-plane member (a Raft node). Small integers: 1, 2, 3.
pub type MemberId = u64;

/// An id that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {rule}")]
pub struct IdError {
    what: &'static str,
    value: String,
    rule: &'static str,
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered (UUID v7) id.
            pub fn new() -> Self {
                $name(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl $name {
            /// The all-zero id: stands for "none yet" where a record has no id to give
            /// (never made by [`Self::new`]).
            pub fn nil() -> Self {
                $name(Uuid::nil())
            }

            /// Whether this is [`Self::nil`].
            pub fn is_nil(&self) -> bool {
                self.0.is_nil()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Uuid::parse_str(s).map($name).map_err(|_| IdError {
                    what: $what,
                    value: s.to_string(),
                    rule: "expected a UUID",
                })
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                crate::openapi::uuid($what)
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}
    };
}

uuid_id!(
    /// A container's id, assigned by the control plane before the container is created. It is
    /// the Docker label `io.warmpool.id`, so a restarted agent can re-adopt what it runs.
    ContainerId,
    "container id"
);
uuid_id!(
    /// An allocation's id.
    AllocationId,
    "allocation id"
);

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr, $valid:expr, $rule:literal, $pattern:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps `s`.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                let valid: fn(&str) -> bool = $valid;
                if s.is_empty() || s.len() > $max || !valid(&s) {
                    return Err(IdError { what: $what, value: s, rule: $rule });
                }
                Ok($name(s))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                $name::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::new(s).map_err(serde::de::Error::custom)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                crate::openapi::pattern_string($rule, $pattern, $max)
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}
    };
}

fn subject_safe(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn pool_name_ok(s: &str) -> bool {
    s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn session_ok(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

string_id!(
    /// A Docker host's stable id, chosen at agent install (default: the hostname). It is part of
    /// NATS subjects, so it holds only ASCII letters, digits, `-` and `_`.
    NodeId,
    "node id",
    64,
    subject_safe,
    "1 to 64 ASCII letters, digits, '-' or '_'",
    "^[A-Za-z0-9_-]{1,64}$"
);
impl NodeId {
    /// Stands for "no node yet" (a pending allocation's): empty, so never a valid node id,
    /// and never sent on the wire (the field is left out instead).
    pub fn unassigned() -> Self {
        NodeId(String::new())
    }

    /// Whether this is [`NodeId::unassigned`].
    pub fn is_unassigned(&self) -> bool {
        self.0.is_empty()
    }
}

string_id!(
    /// A pool's name: lowercase letters, digits and `-`, starting with a letter.
    PoolName,
    "pool name",
    63,
    pool_name_ok,
    "1 to 63 lowercase letters, digits or '-', starting with a letter",
    "^[a-z][a-z0-9-]{0,62}$"
);
string_id!(
    /// The caller's session the allocation belongs to; any printable ASCII without spaces.
    SessionId,
    "session id",
    128,
    session_ok,
    "1 to 128 printable ASCII characters without spaces",
    "^[!-~]{1,128}$"
);

string_id!(
    /// Who an allocation belongs to: every user and viewer key names one, and sees only its
    /// allocations. ASCII letters, digits, `-` and `_`.
    TenantId,
    "tenant",
    64,
    subject_safe,
    "1 to 64 ASCII letters, digits, '-' or '_'",
    "^[A-Za-z0-9_-]{1,64}$"
);

impl TenantId {
    /// The tenant of allocations and keys made before tenants existed, and of allocations
    /// made with auth off.
    pub fn default_tenant() -> TenantId {
        TenantId("default".to_string())
    }
}

impl Default for TenantId {
    fn default() -> Self {
        TenantId::default_tenant()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_subject_safe() {
        assert!(NodeId::new("host-a_1").is_ok());
        assert!(
            NodeId::new("a.b").is_err(),
            "a dot would split the NATS subject"
        );
        assert!(NodeId::new("a*").is_err());
        assert!(NodeId::new("").is_err());
        assert!(NodeId::new("x".repeat(65)).is_err());
    }

    #[test]
    fn pool_names_are_validated_on_deserialize() {
        assert!(serde_json::from_str::<PoolName>("\"demo-2\"").is_ok());
        let err = serde_json::from_str::<PoolName>("\"Demo\"").unwrap_err();
        assert!(err.to_string().contains("invalid pool name"), "{err}");
        assert!(PoolName::new("2demo").is_err());
    }

    #[test]
    fn uuid_ids_round_trip_and_order_by_time() {
        let a = ContainerId::new();
        let b = ContainerId::new();
        assert!(a < b, "v7 ids sort by creation time");
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<ContainerId>(&json).unwrap(), a);
        assert!("nope".parse::<AllocationId>().is_err());
    }
}
