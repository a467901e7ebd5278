//! Workspaces in an object store, through the `object_store` crate: a local directory
//! (`file:///var/lib/warmpool/workspaces`, the default, no set-up) or any S3-compatible store
//! (`s3://bucket`, options from a JSON file).
//!
//! The keys and the commit protocol are [`warmpool_proto::workspace`]'s: an archive is put
//! under a fresh version key, and only a whole, checked archive is committed by writing the
//! manifest that names it. A process that dies between the two leaves the previous manifest,
//! so the previous version. Both the agent (restore, sync, save) and the control plane (list,
//! show, delete) use this crate.
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use tracing::{info, warn};
use warmpool_proto::workspace::{orphans, Manifest, WorkspaceKey, WorkspaceView, MANIFEST};
use warmpool_proto::{ContainerId, TenantId, Timestamp};

/// The store used when none is named.
pub const DEFAULT_URL: &str = "file:///var/lib/warmpool/workspaces";

/// Test hook: a save waits this many milliseconds between its upload and its commit, so a test
/// can kill the process in between and see the previous version survive.
pub const COMMIT_DELAY_ENV: &str = "WARMPOOL_TEST_WORKSPACE_COMMIT_DELAY_MS";

/// What went wrong with the store or an archive.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL or its options cannot make a store.
    #[error("workspace store {url:?}: {message}")]
    Config {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// The store failed.
    #[error("workspace store: {0}")]
    Store(#[from] object_store::Error),
    /// A stored object does not parse or its checksum does not match.
    #[error("workspace {key}: {message}")]
    Corrupt {
        /// The object.
        key: String,
        /// Why.
        message: String,
    },
    /// An archive could not be made or read.
    #[error("workspace archive: {0}")]
    Archive(String),
}

/// A compressed archive ready to save.
#[derive(Clone, Debug)]
pub struct Archive {
    /// gzip of a tar whose entries are relative to the workspace path.
    pub bytes: Bytes,
    /// Bytes of the uncompressed tar.
    pub content_bytes: u64,
    /// SHA-256 of `bytes`, hex.
    pub sha256: String,
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes an [`Archive`] of a tar Docker's archive API gave for the workspace path: every entry
/// loses its first component (the path's own name), so the archive unpacks into whatever
/// directory it is restored to. Blocking: run it off the async threads.
pub fn pack(docker_tar: &[u8]) -> Result<Archive, StoreError> {
    let bad = |e: std::io::Error| StoreError::Archive(e.to_string());
    let mut input = tar::Archive::new(docker_tar);
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut out = tar::Builder::new(gz);
    out.mode(tar::HeaderMode::Complete);
    for entry in input.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        let rel: std::path::PathBuf = path.components().skip(1).collect();
        if rel.as_os_str().is_empty() {
            continue;
        }
        let mut header = entry.header().clone();
        let link = entry.link_name().map_err(bad)?.map(|l| l.into_owned());
        match link {
            Some(target) => out.append_link(&mut header, &rel, target).map_err(bad)?,
            None => {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).map_err(bad)?;
                out.append_data(&mut header, &rel, data.as_slice())
                    .map_err(bad)?;
            }
        }
    }
    let gz = out.into_inner().map_err(bad)?;
    let bytes = gz.finish().map_err(bad)?;
    let sha256 = hex(&Sha256::digest(&bytes));
    Ok(Archive {
        bytes: Bytes::from(bytes),
        content_bytes: docker_tar.len() as u64,
        sha256,
    })
}

/// The tar inside an archive (to upload into a container). Blocking.
pub fn unpack(archive: &[u8]) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(archive)
        .read_to_end(&mut out)
        .map_err(|e| StoreError::Archive(format!("not a gzip archive: {e}")))?;
    Ok(out)
}

/// A tar of `files` (name, content), for tests and tools.
pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        // Writing into a Vec cannot fail.
        let _ = b.append_data(&mut h, name, *data);
    }
    let mut v = b.into_inner().unwrap_or_default();
    let _ = v.flush();
    v
}

/// A workspace store.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    url: String,
    commit_delay: Option<Duration>,
}

impl Store {
    /// Opens `url`: `file:///dir` (made when missing) or `s3://bucket[/prefix]`, with options
    /// from `config` for S3 — a JSON object of `object_store`'s S3 keys, e.g.
    /// `{"aws_endpoint": "http://[::1]:9000", "aws_access_key_id": "…",
    /// "aws_secret_access_key": "…", "aws_region": "us-east-1", "aws_allow_http": "true"}`.
    pub fn open(url: &str, config: Option<&Path>) -> Result<Store, StoreError> {
        let err = |message: String| StoreError::Config {
            url: url.to_string(),
            message,
        };
        let inner: Arc<dyn ObjectStore> = if let Some(dir) = url.strip_prefix("file://") {
            if !dir.starts_with('/') {
                return Err(err("a file:// URL needs an absolute path".into()));
            }
            std::fs::create_dir_all(dir).map_err(|e| err(format!("making {dir}: {e}")))?;
            Arc::new(
                object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| err(e.to_string()))?,
            )
        } else if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(err("an s3:// URL names a bucket".into()));
            }
            // reqwest is built with rustls and no provider of its own: the process's is ring.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let mut b = object_store::aws::AmazonS3Builder::new().with_bucket_name(bucket);
            if let Some(path) = config {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| err(format!("reading {}: {e}", path.display())))?;
                let opts: BTreeMap<String, String> = serde_json::from_str(&text).map_err(|e| {
                    err(format!(
                        "{}: a JSON object of strings is expected: {e}",
                        path.display()
                    ))
                })?;
                for (k, v) in opts {
                    let key = k
                        .parse::<object_store::aws::AmazonS3ConfigKey>()
                        .map_err(|e| err(format!("{}: {e}", path.display())))?;
                    b = b.with_config(key, v);
                }
            }
            let s3 = b.build().map_err(|e| err(e.to_string()))?;
            if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
            }
        } else {
            return Err(err("use file:///dir or s3://bucket".into()));
        };
        let commit_delay = std::env::var(COMMIT_DELAY_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis);
        Ok(Store {
            inner,
            url: url.to_string(),
            commit_delay,
        })
    }

    /// The URL it was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The committed manifest of `key`, if it was ever saved.
    pub async fn manifest(&self, key: &WorkspaceKey) -> Result<Option<Manifest>, StoreError> {
        let at = ObjectPath::from(key.manifest());
        let bytes = match self.inner.get(&at).await {
            Ok(r) => r.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                key: key.manifest(),
                message: e.to_string(),
            })
    }

    /// The current version of `key` and its archive, checked against the manifest's SHA-256.
    pub async fn load(&self, key: &WorkspaceKey) -> Result<Option<(Manifest, Bytes)>, StoreError> {
        let Some(m) = self.manifest(key).await? else {
            return Ok(None);
        };
        let at = key.version(&m.version);
        let bytes = self.inner.get(&ObjectPath::from(at.clone())).await?;
        let bytes = bytes.bytes().await?;
        let sum = hex(&Sha256::digest(&bytes));
        if sum != m.sha256 {
            return Err(StoreError::Corrupt {
                key: at,
                message: format!("SHA-256 {sum}, the manifest says {}", m.sha256),
            });
        }
        Ok(Some((m, bytes)))
    }

    /// Saves `archive` as the new current version of `key`: upload under a new version key,
    /// then commit by writing the manifest, then remove what no manifest names any more.
    pub async fn save(
        &self,
        key: &WorkspaceKey,
        archive: &Archive,
        container: Option<ContainerId>,
    ) -> Result<Manifest, StoreError> {
        let version = uuid::Uuid::now_v7().simple().to_string();
        let at = ObjectPath::from(key.version(&version));
        self.inner
            .put(&at, PutPayload::from_bytes(archive.bytes.clone()))
            .await?;
        if let Some(d) = self.commit_delay {
            info!(workspace = %key.prefix(), %version, delay_ms = d.as_millis() as u64, "workspace uploaded; waiting before the commit (test hook)");
            tokio::time::sleep(d).await;
        }
        let manifest = Manifest {
            version: version.clone(),
            size: archive.bytes.len() as u64,
            content_bytes: archive.content_bytes,
            sha256: archive.sha256.clone(),
            saved_at: Timestamp::now(),
            container,
        };
        let text = serde_json::to_vec_pretty(&manifest).map_err(|e| StoreError::Corrupt {
            key: key.manifest(),
            message: e.to_string(),
        })?;
        // The commit: one whole-object put.
        self.inner
            .put(&ObjectPath::from(key.manifest()), PutPayload::from(text))
            .await?;
        if let Err(e) = self.sweep(key, Some(&manifest)).await {
            warn!(workspace = %key.prefix(), error = %e, "removing old versions failed; the next save retries");
        }
        Ok(manifest)
    }

    /// Every version key stored under `key` (committed or not).
    pub async fn versions(&self, key: &WorkspaceKey) -> Result<Vec<String>, StoreError> {
        let prefix = ObjectPath::from(key.versions_prefix());
        let metas: Vec<_> = self.inner.list(Some(&prefix)).try_collect().await?;
        Ok(metas.into_iter().map(|m| m.location.to_string()).collect())
    }

    async fn sweep(
        &self,
        key: &WorkspaceKey,
        current: Option<&Manifest>,
    ) -> Result<(), StoreError> {
        let listed = self.versions(key).await?;
        for k in orphans(&listed, key, current, None) {
            match self.inner.delete(&ObjectPath::from(k.as_str())).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Every committed workspace, of one tenant or of all.
    pub async fn list(&self, tenant: Option<&TenantId>) -> Result<Vec<WorkspaceView>, StoreError> {
        let prefix = tenant.map(|t| ObjectPath::from(t.to_string()));
        let metas: Vec<_> = self.inner.list(prefix.as_ref()).try_collect().await?;
        let mut out = Vec::new();
        for m in metas {
            let loc = m.location.to_string();
            let parts: Vec<&str> = loc.split('/').collect();
            let [t, w, name] = parts.as_slice() else {
                continue;
            };
            if *name != MANIFEST {
                continue;
            }
            let (Ok(t), Ok(key)) = (t.parse::<TenantId>(), Ok::<_, ()>(w)) else {
                continue;
            };
            let Ok(key) = WorkspaceKey::new(t, key) else {
                continue;
            };
            if let Some(man) = self.manifest(&key).await? {
                out.push(WorkspaceView::of(&key, &man));
            }
        }
        out.sort_by(|a, b| (&a.tenant, &a.id).cmp(&(&b.tenant, &b.id)));
        Ok(out)
    }

    /// Stored bytes of `tenant`'s workspaces other than `except`.
    pub async fn tenant_bytes(&self, tenant: &TenantId, except: &str) -> Result<u64, StoreError> {
        Ok(self
            .list(Some(tenant))
            .await?
            .iter()
            .filter(|v| v.id != except)
            .map(|v| v.size)
            .sum())
    }

    /// Removes a workspace (manifest first, so it is gone at once, then its versions).
    /// `false` when there was none.
    pub async fn delete(&self, key: &WorkspaceKey) -> Result<bool, StoreError> {
        let existed = self.manifest(key).await?.is_some();
        match self.inner.delete(&ObjectPath::from(key.manifest())).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.sweep(key, None).await?;
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> WorkspaceKey {
        WorkspaceKey::new("acme".parse().unwrap(), "w1").unwrap()
    }

    fn docker_like(files: &[(&str, &[u8])]) -> Vec<u8> {
        let named: Vec<(String, &[u8])> = files
            .iter()
            .map(|(n, d)| (format!("workspace/{n}"), *d))
            .collect();
        let refs: Vec<(&str, &[u8])> = named.iter().map(|(n, d)| (n.as_str(), *d)).collect();
        tar_of(&refs)
    }

    fn names(tar_bytes: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn pack_strips_the_workspace_dir_and_unpack_restores_the_tar() {
        let a = pack(&docker_like(&[("a.txt", b"hello"), ("d/b.txt", b"x")])).unwrap();
        assert_eq!(a.sha256, hex(&Sha256::digest(&a.bytes)));
        let t = unpack(&a.bytes).unwrap();
        assert_eq!(names(&t), vec!["a.txt", "d/b.txt"]);
        assert!(unpack(b"not gzip").is_err());
    }

    #[tokio::test]
    async fn save_commits_and_a_dead_save_keeps_the_old_version() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let s = Store::open(&url, None).unwrap();
        let k = key();
        assert!(s.load(&k).await.unwrap().is_none());
        let a1 = pack(&docker_like(&[("f", b"one")])).unwrap();
        let m1 = s.save(&k, &a1, None).await.unwrap();
        // A save that died after its upload: an archive no manifest names.
        let a2 = pack(&docker_like(&[("f", b"two")])).unwrap();
        s.inner
            .put(
                &ObjectPath::from(k.version("zzdead")),
                PutPayload::from_bytes(a2.bytes.clone()),
            )
            .await
            .unwrap();
        let (m, bytes) = s.load(&k).await.unwrap().unwrap();
        assert_eq!(m, m1);
        assert_eq!(bytes, a1.bytes);
        // The next save sweeps the leftover and the old version.
        let m3 = s.save(&k, &a2, None).await.unwrap();
        assert_eq!(s.versions(&k).await.unwrap(), vec![k.version(&m3.version)]);
        let list = s.list(None).await.unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].id, "w1");
        assert_eq!(s.tenant_bytes(&k.tenant, "w1").await.unwrap(), 0);
        assert_eq!(s.tenant_bytes(&k.tenant, "other").await.unwrap(), m3.size);
        assert!(s
            .list(Some(&"other".parse().unwrap()))
            .await
            .unwrap()
            .is_empty());
        // A corrupt archive is refused, not restored.
        s.inner
            .put(
                &ObjectPath::from(k.version(&m3.version)),
                PutPayload::from_static(b"garbage"),
            )
            .await
            .unwrap();
        assert!(matches!(s.load(&k).await, Err(StoreError::Corrupt { .. })));
        assert!(s.delete(&k).await.unwrap());
        assert!(!s.delete(&k).await.unwrap());
        assert!(s.versions(&k).await.unwrap().is_empty());
    }

    #[test]
    fn bad_urls_are_refused() {
        assert!(Store::open("http://x", None).is_err());
        assert!(Store::open("file://relative", None).is_err());
        assert!(Store::open("s3://", None).is_err());
    }
}
