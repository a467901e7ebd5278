//! Workspaces: a directory of an allocated container that outlives it.
//!
//! A pool that declares a [`PoolWorkspace`] gets that path as a volume in each of its
//! containers. An allocation that names a workspace (an id of the tenant's choosing) has it
//! restored there after the grant, synced while it runs, and saved once more before the
//! container is removed (release, idle end, lease expiry). The archives live in an object
//! store (a local directory by default, any S3-compatible store in production) under per-tenant
//! keys.
//!
//! ## Keys and the commit protocol
//!
//! Everything of workspace `w` of tenant `t` is under `t/w/`:
//!
//! - `t/w/v/<version>.tar.gz`: one saved version, a gzip-compressed tar of the path's
//!   content (a temporary key until the manifest names it);
//! - `t/w/manifest.json`: the [`Manifest`] naming the current version, its size and its
//!   SHA-256.
//!
//! A save uploads the archive under a new version key, then writes the manifest (a single
//! whole-object put: atomic in every store `object_store` speaks to), then deletes the
//! version the old manifest named. A save that dies before the manifest leaves the old
//! manifest, so the old version is what the next restore gets; its orphan archive is swept by
//! the next save ([`orphans`]). A restore checks the archive's SHA-256 against the manifest.

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// Longest workspace id.
pub const MAX_WORKSPACE_ID_LEN: usize = 64;
/// Fewest seconds between syncs of a running workspace.
pub const MIN_SYNC_SECS: u64 = 5;
/// Most bytes (uncompressed) a pool's workspace may hold when it names no `max_bytes`.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Most bytes a pool may allow a workspace.
pub const MAX_MAX_BYTES: u64 = 64 * 1024 * 1024 * 1024;
/// The manifest's name under a workspace's prefix.
pub const MANIFEST: &str = "manifest.json";

/// A pool's workspace: where it lives in the container, how often it is synced, how big it may
/// get.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PoolWorkspace {
    /// Absolute path in the container (a volume of its own, writable even with a read-only
    /// root filesystem), e.g. `/workspace`.
    pub path: String,
    /// Seconds between saves while allocated (at least 5); 0 or absent: saved only at the end.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(maximum = 86_400))]
    pub sync_secs: u64,
    /// Most bytes (uncompressed) a save may hold; a bigger one is refused and the previous
    /// version stays. 256 MiB when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub max_bytes: Option<u64>,
}

impl PoolWorkspace {
    /// Checks the path and numbers.
    pub fn validate(&self) -> Result<(), String> {
        let p = &self.path;
        if !p.starts_with('/') || p == "/" || p.len() > 256 {
            return Err(format!(
                "workspace.path {p:?} must be an absolute path other than / (at most 256 bytes)"
            ));
        }
        if p.split('/').any(|c| c == "." || c == "..")
            || p.ends_with('/')
            || p.contains("//")
            || p.bytes().any(|b| b.is_ascii_control())
        {
            return Err(format!(
                "workspace.path {p:?} must be a plain path (no '.', '..', '//', trailing '/' or control characters)"
            ));
        }
        if self.sync_secs != 0 && !(MIN_SYNC_SECS..=86_400).contains(&self.sync_secs) {
            return Err(format!(
                "workspace.sync_secs must be 0 or {MIN_SYNC_SECS}..=86400"
            ));
        }
        if let Some(m) = self.max_bytes {
            if m == 0 || m > MAX_MAX_BYTES {
                return Err(format!("workspace.max_bytes must be 1..={MAX_MAX_BYTES}"));
            }
        }
        Ok(())
    }

    /// The cap on one save.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes.unwrap_or(DEFAULT_MAX_BYTES)
    }
}

/// Checks a workspace id: 1..=64 of `[A-Za-z0-9._-]`, starting with a letter or digit (so never
/// `.` or `..`, never a path).
pub fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_WORKSPACE_ID_LEN
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "workspace {id:?} must be 1..={MAX_WORKSPACE_ID_LEN} of [A-Za-z0-9._-], starting with a letter or digit"
        ))
    }
}

/// Where a workspace's objects live: `{tenant}/{workspace}/`. Both parts are checked ids
/// (tenant ids are `[a-z0-9-]`), so a key never escapes its prefix.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkspaceKey {
    /// The tenant.
    pub tenant: crate::TenantId,
    /// The workspace id.
    pub workspace: String,
}

impl WorkspaceKey {
    /// A key, with the workspace id checked.
    pub fn new(tenant: crate::TenantId, workspace: &str) -> Result<WorkspaceKey, String> {
        check_id(workspace)?;
        Ok(WorkspaceKey {
            tenant,
            workspace: workspace.to_string(),
        })
    }

    /// `{tenant}/{workspace}`.
    pub fn prefix(&self) -> String {
        format!("{}/{}", self.tenant, self.workspace)
    }

    /// `{tenant}/{workspace}/manifest.json`.
    pub fn manifest(&self) -> String {
        format!("{}/{MANIFEST}", self.prefix())
    }

    /// `{tenant}/{workspace}/v/{version}.tar.gz`.
    pub fn version(&self, version: &str) -> String {
        format!("{}/v/{version}.tar.gz", self.prefix())
    }

    /// `{tenant}/{workspace}/v/`: where versions are listed.
    pub fn versions_prefix(&self) -> String {
        format!("{}/v", self.prefix())
    }
}

/// The committed state of one workspace: which version is current.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The current version's id (its archive is [`WorkspaceKey::version`]).
    pub version: String,
    /// The archive's bytes (compressed).
    pub size: u64,
    /// The content's bytes (uncompressed tar).
    #[serde(default)]
    pub content_bytes: u64,
    /// SHA-256 of the archive, hex.
    pub sha256: String,
    /// When it was saved.
    pub saved_at: Timestamp,
    /// The container it was saved from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<crate::ContainerId>,
}

/// Why a save did not become the current version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SaveRefusal {
    /// Larger than the pool's `workspace.max_bytes`.
    OverPoolCap,
    /// The tenant's workspaces together would be larger than its `workspace_max_bytes`.
    OverTenantCap,
}

/// What to do with a save whose archive is `content_bytes` (uncompressed) and `size`
/// (compressed), given the pool's cap on one save and the tenant's cap on all of its
/// workspaces together, where `tenant_others` is the stored size of the tenant's other
/// workspaces. Compressed sizes count toward the tenant's cap (that is what is stored).
pub fn decide_save(
    content_bytes: u64,
    size: u64,
    pool_max: u64,
    tenant_max: Option<u64>,
    tenant_others: u64,
) -> Result<(), SaveRefusal> {
    if content_bytes > pool_max {
        return Err(SaveRefusal::OverPoolCap);
    }
    if let Some(cap) = tenant_max {
        if tenant_others.saturating_add(size) > cap {
            return Err(SaveRefusal::OverTenantCap);
        }
    }
    Ok(())
}

/// The version keys under a workspace's `v/` prefix that no manifest names: leftovers of saves
/// that died before their commit, or of a commit that died before deleting the old version.
/// `in_flight` is the version a save is writing now (never an orphan).
pub fn orphans<'a>(
    listed: &'a [String],
    key: &WorkspaceKey,
    current: Option<&Manifest>,
    in_flight: Option<&str>,
) -> Vec<&'a String> {
    let keep: Vec<String> = current
        .map(|m| m.version.as_str())
        .into_iter()
        .chain(in_flight)
        .map(|v| key.version(v))
        .collect();
    listed.iter().filter(|k| !keep.contains(k)).collect()
}

/// Where an allocation's workspace stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum WorkspaceState {
    /// Being restored into the container (wait with `wait_for: "workspace"`).
    Restoring,
    /// In the container (the saved version, or empty for a new workspace); synced while it
    /// runs, saved once more before the container goes.
    Restored,
    /// Could not be restored (the store or the agent failed); the container starts empty and
    /// nothing of it is saved, so the stored version is not overwritten.
    Failed,
}

/// An allocation's workspace: which, and where it stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AllocationWorkspace {
    /// The workspace id the allocation named.
    pub id: String,
    /// Where it stands.
    pub state: WorkspaceState,
}

/// What the agent needs to restore, sync and save one workspace (member → agent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceBinding {
    /// Whose and which.
    pub key: WorkspaceKey,
    /// The pool's declaration.
    pub spec: PoolWorkspace,
    /// The tenant's cap on all its workspaces together (stored, compressed bytes).
    #[serde(default)]
    pub tenant_max_bytes: Option<u64>,
}

/// One workspace in `GET /v1/workspaces`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkspaceView {
    /// The tenant.
    pub tenant: crate::TenantId,
    /// The workspace id.
    pub id: String,
    /// The current version's id.
    pub version: String,
    /// Stored bytes (compressed archive).
    pub size: u64,
    /// Bytes of content (uncompressed).
    pub content_bytes: u64,
    /// SHA-256 of the archive, hex.
    pub sha256: String,
    /// When it was saved.
    pub saved_at: Timestamp,
}

/// `GET /v1/workspaces` and `/v1/workspaces/{id}` query.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct WorkspaceQuery {
    /// The tenant (admins: any, every tenant's when absent from a list and `default` for
    /// one workspace; other keys: their own only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", param(value_type = Option<String>))]
    pub tenant: Option<crate::TenantId>,
}

impl WorkspaceView {
    /// The view of a committed manifest.
    pub fn of(key: &WorkspaceKey, m: &Manifest) -> WorkspaceView {
        WorkspaceView {
            tenant: key.tenant.clone(),
            id: key.workspace.clone(),
            version: m.version.clone(),
            size: m.size,
            content_bytes: m.content_bytes,
            sha256: m.sha256.clone(),
            saved_at: m.saved_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> WorkspaceKey {
        WorkspaceKey::new("acme".parse().unwrap(), "proj-1").unwrap()
    }

    #[test]
    fn ids_are_short_and_safe() {
        for ok in ["a", "proj-1", "my.ws_2", &"x".repeat(64)] {
            assert!(check_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-x",
            "a/b",
            "a b",
            "ü",
            &"x".repeat(65),
            "a\0",
        ] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_are_per_tenant() {
        let k = key();
        assert_eq!(k.prefix(), "acme/proj-1");
        assert_eq!(k.manifest(), "acme/proj-1/manifest.json");
        assert_eq!(k.version("0190"), "acme/proj-1/v/0190.tar.gz");
        assert_eq!(k.versions_prefix(), "acme/proj-1/v");
        let other = WorkspaceKey::new("other".parse().unwrap(), "proj-1").unwrap();
        assert_ne!(other.manifest(), k.manifest());
        assert!(WorkspaceKey::new("acme".parse().unwrap(), "../x").is_err());
    }

    #[test]
    fn pool_workspace_paths_and_numbers_are_checked() {
        let ws = |path: &str, sync_secs: u64, max_bytes: Option<u64>| PoolWorkspace {
            path: path.into(),
            sync_secs,
            max_bytes,
        };
        assert!(ws("/workspace", 60, None).validate().is_ok());
        assert!(ws("/home/user/work", 0, Some(1)).validate().is_ok());
        for bad in ["", "/", "rel", "/a/../b", "/a/", "/a//b", "/a/./b", "/a\nb"] {
            assert!(ws(bad, 0, None).validate().is_err(), "{bad:?}");
        }
        assert!(ws("/w", 1, None).validate().is_err());
        assert!(ws("/w", 0, Some(0)).validate().is_err());
        assert_eq!(ws("/w", 0, None).max_bytes(), DEFAULT_MAX_BYTES);
    }

    #[test]
    fn saves_over_a_cap_are_refused() {
        assert_eq!(decide_save(10, 5, 10, None, 0), Ok(()));
        assert_eq!(
            decide_save(11, 5, 10, None, 0),
            Err(SaveRefusal::OverPoolCap)
        );
        assert_eq!(decide_save(10, 5, 100, Some(20), 15), Ok(()));
        assert_eq!(
            decide_save(10, 5, 100, Some(20), 16),
            Err(SaveRefusal::OverTenantCap)
        );
        assert_eq!(
            decide_save(10, 5, 100, Some(20), u64::MAX),
            Err(SaveRefusal::OverTenantCap)
        );
    }

    #[test]
    fn only_unnamed_versions_are_orphans() {
        let k = key();
        let m = Manifest {
            version: "b".into(),
            size: 1,
            content_bytes: 1,
            sha256: "00".into(),
            saved_at: Timestamp(0),
            container: None,
        };
        let listed = vec![k.version("a"), k.version("b"), k.version("c")];
        let o = orphans(&listed, &k, Some(&m), Some("c"));
        assert_eq!(o, vec![&k.version("a")]);
        // Nothing committed yet: everything not in flight goes.
        assert_eq!(orphans(&listed, &k, None, Some("a")).len(), 2);
    }
}
