//! API errors: one enum, one mapping to HTTP status and the design's JSON error body.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use warmpool_proto::api::{ErrorBody, ErrorCode, ErrorDetail};

use crate::cluster::ClusterError;
use crate::state::{RejectCode, Rejection};

/// Everything a handler can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no key, or a wrong one.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the key's role may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404: nothing by that name.
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists, the method does not.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 409: it exists, or its state forbids the change.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is too large.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415: not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 409: no ready node matches the allocation's `location`.
    #[error("{0}")]
    NoMatchingNode(String),
    /// 503 with Retry-After: no warm container came free in time.
    #[error("{message}")]
    NoCapacity {
        /// For a person.
        message: String,
        /// Seconds to wait before retrying.
        retry_after: u64,
    },
    /// 429 with Retry-After: the tenant is over one of its limits.
    #[error("{message}")]
    TooManyRequests {
        /// `over_quota` or `rate_limited`.
        code: ErrorCode,
        /// For a person.
        message: String,
        /// Seconds to wait before retrying.
        retry_after: u64,
    },
    /// 503: no quorum; writes are not possible now.
    #[error("{0}")]
    NoQuorum(String),
    /// 503: the leader's write queue is full; try again after Retry-After.
    #[error("{0}")]
    Overloaded(String),
    /// 500: a bug or a broken part.
    #[error("{0}")]
    Internal(String),
    /// 410: the allocation has ended; its container is gone.
    #[error("{0}")]
    Ended(String),
    /// 502: the container's agent did not answer, or its runtime failed.
    #[error("{0}")]
    AgentUnavailable(String),
}

impl ApiError {
    /// The code, which decides the status ([`ErrorCode::status`]).
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::BadRequest(_) => ErrorCode::BadRequest,
            ApiError::Unauthorized(_) => ErrorCode::Unauthorized,
            ApiError::Forbidden(_) => ErrorCode::Forbidden,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::MethodNotAllowed(_) => ErrorCode::MethodNotAllowed,
            ApiError::Conflict(_) => ErrorCode::Conflict,
            ApiError::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            ApiError::UnsupportedMediaType(_) => ErrorCode::UnsupportedMediaType,
            ApiError::NoCapacity { .. } => ErrorCode::NoCapacity,
            ApiError::NoMatchingNode(_) => ErrorCode::NoMatchingNode,
            ApiError::TooManyRequests { code, .. } => *code,
            ApiError::NoQuorum(_) => ErrorCode::NoQuorum,
            ApiError::Overloaded(_) => ErrorCode::Overloaded,
            ApiError::Internal(_) => ErrorCode::Internal,
            ApiError::Ended(_) => ErrorCode::Ended,
            ApiError::AgentUnavailable(_) => ErrorCode::AgentUnavailable,
        }
    }

    fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code().status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = (self.status(), self.code());
        let retry_after = match &self {
            ApiError::NoCapacity { retry_after, .. }
            | ApiError::TooManyRequests { retry_after, .. } => Some(*retry_after),
            ApiError::NoQuorum(_) | ApiError::Overloaded(_) => Some(1),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message: self.to_string(),
            },
        };
        let mut resp = (status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        match r.code {
            RejectCode::NotFound => ApiError::NotFound(r.message),
            RejectCode::Conflict => ApiError::Conflict(r.message),
            RejectCode::Invalid => ApiError::BadRequest(r.message),
            RejectCode::NoMatchingNode => ApiError::NoMatchingNode(r.message),
            RejectCode::NoCapacity => ApiError::NoCapacity {
                message: r.message,
                retry_after: 1,
            },
            RejectCode::OverQuota => ApiError::TooManyRequests {
                code: ErrorCode::OverQuota,
                message: r.message,
                retry_after: 1,
            },
            RejectCode::RateLimited => ApiError::TooManyRequests {
                code: ErrorCode::RateLimited,
                message: r.message,
                retry_after: r.retry_after_ms.unwrap_or(1000).div_ceil(1000).max(1),
            },
        }
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::NoQuorum(m) => ApiError::NoQuorum(m),
            ClusterError::NotLeader => ApiError::NoQuorum("no leader".into()),
            ClusterError::Membership(m) => ApiError::Conflict(m),
            ClusterError::Fatal(m) => ApiError::Internal(m),
            e @ ClusterError::Overloaded(_) => ApiError::Overloaded(e.to_string()),
        }
    }
}

impl From<crate::session::SessionError> for ApiError {
    fn from(e: crate::session::SessionError) -> Self {
        use crate::session::SessionError;
        use warmpool_proto::session::SessionErrorKind as K;
        match e {
            SessionError::Refused { kind, message } => match kind {
                K::NotFound => ApiError::NotFound(message),
                K::IsADirectory | K::Invalid => ApiError::BadRequest(message),
                K::TooLarge => ApiError::PayloadTooLarge(message),
                K::NoSuchContainer => {
                    ApiError::Ended(format!("the allocation's container is gone ({message})"))
                }
                K::Busy | K::Runtime | K::NoSuchStream | K::StreamExists => {
                    ApiError::AgentUnavailable(message)
                }
            },
            SessionError::Agent(e) => ApiError::AgentUnavailable(e.to_string()),
            SessionError::Unexpected(m) => ApiError::AgentUnavailable(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of every answer the API can give besides success.
    fn every_error() -> Vec<ApiError> {
        let m = || "m".to_string();
        vec![
            ApiError::BadRequest(m()),
            ApiError::Unauthorized(m()),
            ApiError::Forbidden(m()),
            ApiError::NotFound(m()),
            ApiError::MethodNotAllowed(m()),
            ApiError::Conflict(m()),
            ApiError::PayloadTooLarge(m()),
            ApiError::UnsupportedMediaType(m()),
            ApiError::NoMatchingNode(m()),
            ApiError::NoCapacity {
                message: m(),
                retry_after: 1,
            },
            ApiError::TooManyRequests {
                code: ErrorCode::OverQuota,
                message: m(),
                retry_after: 1,
            },
            ApiError::TooManyRequests {
                code: ErrorCode::RateLimited,
                message: m(),
                retry_after: 1,
            },
            ApiError::NoQuorum(m()),
            ApiError::Overloaded(m()),
            ApiError::Ended(m()),
            ApiError::AgentUnavailable(m()),
            ApiError::Internal(m()),
        ]
    }

    #[test]
    fn every_code_the_server_sends_is_one_the_client_knows_with_its_one_status() {
        let mut sent = Vec::new();
        for e in every_error() {
            let code = e.code();
            // The client reads the body's code back as the same variant, never `unknown`.
            let wire = serde_json::to_string(&code).unwrap();
            assert_eq!(serde_json::from_str::<ErrorCode>(&wire).unwrap(), code);
            assert_ne!(code, ErrorCode::Unknown, "the server never sends unknown");
            let resp = e.into_response();
            assert_eq!(resp.status().as_u16(), code.status(), "{code}");
            sent.push(code);
        }
        // And every code but the client's own `unknown` is one the server sends.
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::Conflict,
            ErrorCode::PayloadTooLarge,
            ErrorCode::UnsupportedMediaType,
            ErrorCode::OverQuota,
            ErrorCode::RateLimited,
            ErrorCode::NoCapacity,
            ErrorCode::NoQuorum,
            ErrorCode::Internal,
        ] {
            assert!(sent.contains(&code), "{code} is never sent");
        }
    }

    #[test]
    fn rejections_of_the_state_machine_map_to_their_codes() {
        let reject = |code| Rejection {
            code,
            message: "m".into(),
            retry_after_ms: Some(1500),
        };
        for (rc, want) in [
            (RejectCode::NotFound, ErrorCode::NotFound),
            (RejectCode::Conflict, ErrorCode::Conflict),
            (RejectCode::Invalid, ErrorCode::BadRequest),
            (RejectCode::NoCapacity, ErrorCode::NoCapacity),
            (RejectCode::OverQuota, ErrorCode::OverQuota),
            (RejectCode::RateLimited, ErrorCode::RateLimited),
        ] {
            assert_eq!(ApiError::from(reject(rc)).code(), want);
        }
    }
}
