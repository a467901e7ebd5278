//! Paged lists and archive reads: the query parameters they add, parsed and checked.
//!
//! The list routes answered plain arrays before they were paged, and every client reads them
//! so; a list answers the paged envelope (`{"items":[…],"next_cursor":"…"}`) only when asked
//! with `limit` or `cursor`, or for archived records.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use warmpool_proto::{TenantId, Timestamp};

use super::error::ApiError;
use crate::archive::{Archive, Kind, Line, Position, Range, ReadPage};
use crate::state::query::{LIST_PAGE, LIST_PAGE_MAX};

/// Paging and tenant parameters of `GET /v1/containers` (the filters are `ContainerQuery`).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PageParams {
    /// Answer a page (`{"items":[…],"next_cursor":"…"}`) of at most this many (1..=1000;
    /// 100 when only `cursor` is given). Without `limit` and `cursor` the answer is the
    /// whole list as an array.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// The `next_cursor` of the previous page (opaque).
    cursor: Option<String>,
    /// Only this tenant's (of the allocation holding it). A tenant's own key sees only its
    /// own anyway.
    tenant: Option<String>,
}

/// Archive parameters of `GET /v1/events` and `GET /v1/containers`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ArchiveParams {
    /// Read this member's archive of records evicted from the replicated state, instead of
    /// the state. Each member answers from its own archive.
    archived: Option<bool>,
    /// Archived records at or after this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<String>,
    /// Archived records at or before this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    until: Option<String>,
}

/// A query string split into the parameters a handler takes itself and the rest (for the
/// route's own query type, which refuses unknown fields).
pub struct Split {
    /// The parameters taken out.
    pub taken: BTreeMap<String, String>,
    /// The rest, as pairs.
    pub rest: Vec<(String, String)>,
}

impl Split {
    /// Splits `raw`, taking out `keys`; a key given twice is an error.
    pub fn new(raw: &str, keys: &[&str]) -> Result<Split, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw)
            .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))?;
        let mut taken = BTreeMap::new();
        let mut rest = Vec::new();
        for (k, v) in pairs {
            if keys.contains(&k.as_str()) {
                if taken.insert(k.clone(), v).is_some() {
                    return Err(ApiError::BadRequest(format!("{k} is given twice")));
                }
            } else {
                rest.push((k, v));
            }
        }
        Ok(Split { taken, rest })
    }

    /// The rest, parsed as `T`.
    pub fn parse_rest<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let s = serde_urlencoded::to_string(&self.rest)
            .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))?;
        serde_urlencoded::from_str(&s)
            .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.taken.get(k).map(String::as_str)
    }

    /// `limit`: none when absent; 1..=`max` else.
    pub fn limit(&self, max: usize) -> Result<Option<usize>, ApiError> {
        parse_limit(self.get("limit"), max)
    }

    /// `tenant`.
    pub fn tenant(&self) -> Result<Option<TenantId>, ApiError> {
        self.get("tenant")
            .map(|t| {
                TenantId::new(t).map_err(|e| ApiError::BadRequest(format!("tenant {t:?}: {e}")))
            })
            .transpose()
    }

    /// `archived`.
    pub fn archived(&self) -> Result<bool, ApiError> {
        match self.get("archived") {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(ApiError::BadRequest(format!(
                "archived must be true or false, not {other:?}"
            ))),
        }
    }

    /// `since` and `until`, checked to be in order.
    pub fn time_range(&self) -> Result<(Option<Timestamp>, Option<Timestamp>), ApiError> {
        parse_time_range(self.get("since"), self.get("until"))
    }

    /// The raw `cursor`.
    pub fn cursor(&self) -> Option<&str> {
        self.get("cursor")
    }
}

/// Parses a `limit` (1..=`max`).
pub fn parse_limit(s: Option<&str>, max: usize) -> Result<Option<usize>, ApiError> {
    let Some(s) = s else {
        return Ok(None);
    };
    match s.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(Some(n)),
        _ => Err(ApiError::BadRequest(format!(
            "limit must be a number in 1..={max}, not {s:?}"
        ))),
    }
}

/// Parses `since` and `until` (RFC 3339); `since` after `until` is an error.
pub fn parse_time_range(
    since: Option<&str>,
    until: Option<&str>,
) -> Result<(Option<Timestamp>, Option<Timestamp>), ApiError> {
    let parse = |name: &str, s: Option<&str>| {
        s.map(|s| {
            s.parse::<Timestamp>()
                .map_err(|e| ApiError::BadRequest(format!("{name}: {e}")))
        })
        .transpose()
    };
    let (since, until) = (parse("since", since)?, parse("until", until)?);
    if let (Some(s), Some(u)) = (since, until) {
        if s > u {
            return Err(ApiError::BadRequest(format!(
                "since ({s}) is after until ({u})"
            )));
        }
    }
    Ok((since, until))
}

/// What a list cursor names: the last id of the page before (ids are UUIDs, ordered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cursor {
    /// After this container id.
    Container(uuid::Uuid),
    /// After this allocation id.
    Allocation(uuid::Uuid),
    /// After this position in the archive.
    Archive(Position),
}

impl Cursor {
    /// The opaque form.
    pub fn encode(self) -> String {
        match self {
            Cursor::Container(id) => format!("c{}", id.simple()),
            Cursor::Allocation(id) => format!("a{}", id.simple()),
            Cursor::Archive(p) => p.to_cursor(),
        }
    }

    /// Reads a cursor of the kind `want` names ('c', 'a' or 'z').
    pub fn decode(s: &str, want: char) -> Result<Cursor, ApiError> {
        let bad = || ApiError::BadRequest(format!("cursor {s:?} is not one this list gave"));
        let mut chars = s.chars();
        if chars.next() != Some(want) {
            return Err(bad());
        }
        match want {
            'z' => Position::from_cursor(s)
                .map(Cursor::Archive)
                .ok_or_else(bad),
            _ => {
                let id = uuid::Uuid::try_parse(chars.as_str()).map_err(|_| bad())?;
                if chars.as_str().len() != 32 {
                    return Err(bad());
                }
                Ok(if want == 'c' {
                    Cursor::Container(id)
                } else {
                    Cursor::Allocation(id)
                })
            }
        }
    }
}

/// The archive position an archived list's `cursor` names (`None` without one).
pub fn archive_cursor(cursor: Option<&str>) -> Result<Option<Position>, ApiError> {
    match cursor.map(|c| Cursor::decode(c, 'z')).transpose()? {
        Some(Cursor::Archive(p)) => Ok(Some(p)),
        _ => Ok(None),
    }
}

/// Reads records of `kind` that pass `keep` from this member's archive, on a blocking thread
/// (the files are gzip and may be many).
pub async fn read_archive<T>(
    archive: Option<&std::sync::Arc<Archive>>,
    kind: Kind,
    range: Range,
    keep: impl FnMut(&Line<T>) -> bool + Send + 'static,
) -> Result<ReadPage<T>, ApiError>
where
    T: DeserializeOwned + Send + 'static,
{
    let archive = archive
        .cloned()
        .ok_or_else(|| ApiError::BadRequest("this member keeps no archive".into()))?;
    tokio::task::spawn_blocking(move || archive.read::<T>(kind, range, keep))
        .await
        .map_err(|e| ApiError::Internal(format!("archive read: {e}")))?
        .map_err(|e| ApiError::Internal(format!("archive read: {e}")))
}

/// The page size of a paged answer: `limit`, or the default when only a cursor is given.
pub fn page_size(limit: Option<usize>) -> usize {
    limit.unwrap_or(LIST_PAGE).min(LIST_PAGE_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_outside_the_range_are_refused() {
        assert_eq!(parse_limit(None, 1000).unwrap(), None);
        assert_eq!(parse_limit(Some("5"), 1000).unwrap(), Some(5));
        for bad in ["0", "1001", "-1", "x", "99999999999999999999999"] {
            assert!(parse_limit(Some(bad), 1000).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_time_range_must_be_in_order() {
        let (s, u) =
            parse_time_range(Some("2026-01-01T00:00:00Z"), Some("2026-01-01T00:00:01Z")).unwrap();
        assert!(s < u);
        assert!(
            parse_time_range(Some("2026-01-02T00:00:00Z"), Some("2026-01-01T00:00:00Z")).is_err()
        );
        assert!(parse_time_range(Some("yesterday"), None).is_err());
        assert_eq!(parse_time_range(None, None).unwrap(), (None, None));
    }

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        let id = uuid::Uuid::now_v7();
        for (c, k) in [
            (Cursor::Container(id), 'c'),
            (Cursor::Allocation(id), 'a'),
            (Cursor::Archive(Position { index: 42, n: 3 }), 'z'),
        ] {
            assert_eq!(Cursor::decode(&c.encode(), k).unwrap(), c);
        }
        let c = Cursor::Container(id).encode();
        assert!(
            Cursor::decode(&c, 'a').is_err(),
            "a container cursor for allocations"
        );
        for bad in [
            "",
            "c",
            "cnot-a-uuid",
            "z1",
            "z.1",
            "zx.y",
            &format!("c{id}"),
        ] {
            assert!(
                Cursor::decode(bad, 'c').is_err() || bad.starts_with('z'),
                "{bad}"
            );
            assert!(Cursor::decode(bad, 'z').is_err(), "{bad}");
        }
    }

    #[test]
    fn taken_keys_are_split_from_the_rest() {
        let s = Split::new("pool=a&limit=3&cursor=x&node=n", &["limit", "cursor"]).unwrap();
        assert_eq!(s.limit(1000).unwrap(), Some(3));
        assert_eq!(s.cursor(), Some("x"));
        assert_eq!(s.rest.len(), 2);
        assert!(Split::new("limit=1&limit=2", &["limit"]).is_err());
    }
}
