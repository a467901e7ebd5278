//! Extractors that answer malformed input with the API's JSON errors instead of axum's text.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON body. The content type is not checked (a body that parses is JSON); the size limit
/// answers 413, a parse error 400 naming what is wrong.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(format!(
                    "request body is larger than {} bytes",
                    super::MAX_BODY
                ))
            } else {
                ApiError::BadRequest(format!("cannot read request body: {e}"))
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// An optional JSON body: none at all, or `null`, means `T::default()`.
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(format!(
                    "request body is larger than {} bytes",
                    super::MAX_BODY
                ))
            } else {
                ApiError::BadRequest(format!("cannot read request body: {e}"))
            }
        })?;
        optional_body(&bytes).map(OptionalJson)
    }
}

/// A body that may be left out: none at all (zero bytes) or JSON `null` is the default; any
/// other body must be a JSON object. Whitespace alone is not JSON, and is refused like any
/// other malformed body.
fn optional_body<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() || bytes.trim_ascii() == b"null" {
        return Ok(T::default());
    }
    if bytes.trim_ascii().is_empty() {
        return Err(ApiError::BadRequest(
            "request body is only whitespace: send no body, or a JSON object".into(),
        ));
    }
    parse_json(bytes)
}

/// Every request body is a JSON object. serde would also take a struct from an array of its
/// fields in order (`["demo","busybox"]` as a pool spec): that is refused here.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match bytes.trim_ascii_start().first() {
        None => {
            return Err(ApiError::BadRequest(
                "request body is empty; expected JSON".into(),
            ))
        }
        Some(b'{') => {}
        Some(_) => {
            return Err(ApiError::BadRequest(
                "invalid JSON body: expected a JSON object".into(),
            ))
        }
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// A query string; unknown or malformed parameters answer 400.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded_from_str(query).map(ApiQuery)
    }
}

fn serde_urlencoded_from_str<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))
}

#[cfg(test)]
mod tests {
    use warmpool_proto::api::EventQuery;

    use super::*;

    #[test]
    fn query_parses_numbers_strings_and_escapes() {
        let q: EventQuery = serde_urlencoded_from_str(
            "after=5&limit=10&pool=demo&kind=container_warm%2Ccontainer_allocated",
        )
        .unwrap();
        assert_eq!(q.after, Some(5));
        assert_eq!(q.limit, Some(10));
        assert_eq!(
            q.kind.as_deref(),
            Some("container_warm,container_allocated")
        );
    }

    #[test]
    fn bodies_are_objects() {
        use warmpool_proto::api::{CreateAllocation, RenewAllocation};
        let parse = parse_json::<RenewAllocation>;
        assert_eq!(
            parse(br#" {"lease_seconds":5}"#).unwrap().lease_seconds,
            Some(5)
        );
        assert!(parse(br#"{"lease":5}"#).is_err());
        assert!(
            parse(b"[]").is_err(),
            "serde alone takes an array for a struct"
        );
        assert!(parse(b"[5]").is_err());
        assert!(parse(b"").is_err());
        assert!(parse_json::<CreateAllocation>(br#"["demo"]"#).is_err());
    }

    #[test]
    fn an_optional_body_is_absent_or_an_object() {
        use warmpool_proto::api::RenewAllocation;
        let parse = optional_body::<RenewAllocation>;
        assert_eq!(parse(b"").unwrap(), RenewAllocation::default());
        assert_eq!(parse(b" null ").unwrap(), RenewAllocation::default());
        assert_eq!(
            parse(br#"{"lease_seconds":5}"#).unwrap().lease_seconds,
            Some(5)
        );
        // Whitespace alone is not a JSON document (the API fuzzer sent "\n").
        for bad in [&b"\n"[..], b"  ", b"{", b"[]", b"5"] {
            assert!(
                matches!(parse(bad), Err(ApiError::BadRequest(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn bad_queries_are_400_not_panics() {
        assert!(serde_urlencoded_from_str::<EventQuery>("after=x").is_err());
        assert!(serde_urlencoded_from_str::<EventQuery>("bogus=1").is_err());
        assert!(serde_urlencoded_from_str::<EventQuery>("limit=-1").is_err());
        let q: EventQuery = serde_urlencoded_from_str("session=123").unwrap();
        assert_eq!(
            q.session.as_deref(),
            Some("123"),
            "digits stay a string where a string is wanted"
        );
    }
}
