//! The client's one error type.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use warmpool_proto::api::ErrorCode;

/// Everything that can go wrong talking to the control plane.
///
/// The variants keep apart what a caller treats differently: an answer from the server
/// ([`ClientError::Api`]), no server reachable at all ([`ClientError::Unreachable`]), a request
/// that was sent but got no complete answer ([`ClientError::Timeout`],
/// [`ClientError::Transport`]), an answer that is not what the API promises
/// ([`ClientError::Decode`]), and a client that was set up wrongly ([`ClientError::Config`]).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status and (usually) an `ErrorBody`.
    #[error("{}: {message}", shown_code(*code, *status))]
    Api {
        /// HTTP status.
        status: u16,
        /// The body's `error.code`; [`ErrorCode::Unknown`] when the body was not an
        /// `ErrorBody` (shown as `http_<status>`) or names a code this client does not know.
        code: ErrorCode,
        /// The body's `error.message`, or the start of the raw body.
        message: String,
        /// The `Retry-After` header, when it held a number of seconds.
        retry_after: Option<Duration>,
    },
    /// No configured URL accepted a connection; the request was never sent.
    #[error("{}", Unreachable(attempts))]
    Unreachable {
        /// Each URL tried, with why connecting failed.
        attempts: Vec<(String, String)>,
    },
    /// The request was sent but no complete answer came within the time allowed.
    #[error("request to {url} timed out{}", after.map(|d| format!(" after {}", fmt_duration(d))).unwrap_or_default())]
    Timeout {
        /// The URL asked.
        url: String,
        /// The time allowed, when known.
        after: Option<Duration>,
    },
    /// The connection failed after the request may have reached the server.
    #[error("request to {url} failed: {reason}")]
    Transport {
        /// The URL asked.
        url: String,
        /// What failed, innermost cause first.
        reason: String,
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered, but not with what the API promises.
    #[error("unexpected answer from {url} (HTTP {status}): {reason}")]
    Decode {
        /// The URL asked.
        url: String,
        /// HTTP status of the answer.
        status: u16,
        /// What did not match.
        reason: String,
    },
    /// The client was configured with something unusable (a bad URL or token).
    #[error("{0}")]
    Config(String),
}

impl ClientError {
    /// HTTP status of an [`ClientError::Api`] error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// API error code (`not_found`, `no_capacity`, ...) of an [`ClientError::Api`] error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The server's `Retry-After`, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// True for a 404.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// True when the same request may succeed later unchanged: nothing reachable, a dropped
    /// connection, a timeout, a 5xx or a 429. False for answers that will not change by
    /// themselves (4xx) and for decode and configuration errors.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Api { status, .. } => *status >= 500 || *status == 429,
            ClientError::Unreachable { .. }
            | ClientError::Timeout { .. }
            | ClientError::Transport { .. } => true,
            ClientError::Decode { .. } | ClientError::Config(_) => false,
        }
    }
}

/// How an error code is shown: its name, or `http_<status>` when the server's answer did not
/// say.
fn shown_code(code: ErrorCode, status: u16) -> String {
    match code {
        ErrorCode::Unknown => format!("http_{status}"),
        known => known.as_str().to_string(),
    }
}

/// Display helper: `at URL (reason)`, grouping URLs that failed for the same reason.
struct Unreachable<'a>(&'a [(String, String)]);

impl fmt::Display for Unreachable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cannot reach the control plane at ")?;
        if self.0.is_empty() {
            return f.write_str("any URL (none configured)");
        }
        let same_reason = self.0.iter().all(|(_, r)| *r == self.0[0].1);
        if same_reason {
            let urls: Vec<&str> = self.0.iter().map(|(u, _)| u.as_str()).collect();
            write!(f, "{} ({})", urls.join(", "), self.0[0].1)
        } else {
            let parts: Vec<String> = self.0.iter().map(|(u, r)| format!("{u} ({r})")).collect();
            f.write_str(&parts.join(", "))
        }
    }
}

/// `1.5s`, `250ms`, `2m0s`: short and exact enough for error messages.
pub(crate) fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let secs = format!("{:.1}", ms as f64 / 1000.0);
        format!("{}s", secs.trim_end_matches(".0"))
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// The innermost cause of a transport error, in words a person reads: `connection refused`,
/// `dns error: failed to lookup address information: ...`. reqwest's own message ("error
/// sending request for url (...)") says nothing the caller does not already know.
pub(crate) fn root_cause(err: &(dyn StdError + 'static)) -> String {
    let mut cur: &(dyn StdError + 'static) = err;
    let mut io_kind = None;
    while let Some(next) = cur.source() {
        if let Some(io) = next.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        cur = next;
    }
    use std::io::ErrorKind as K;
    match io_kind {
        Some(K::ConnectionRefused) => return "connection refused".into(),
        Some(K::ConnectionReset) => return "connection reset".into(),
        Some(K::ConnectionAborted) => return "connection aborted".into(),
        Some(K::TimedOut) => return "timed out".into(),
        Some(K::HostUnreachable) => return "host unreachable".into(),
        Some(K::NetworkUnreachable) => return "network unreachable".into(),
        Some(K::AddrNotAvailable) => return "address not available".into(),
        _ => {}
    }
    let text = cur.to_string();
    // "Connection refused (os error 111)" -> "Connection refused"
    let text = match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text,
    };
    if text.is_empty() {
        "unknown error".into()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_groups_urls_with_one_reason() {
        let one = ClientError::Unreachable {
            attempts: vec![("http://127.0.0.1:7070".into(), "connection refused".into())],
        };
        assert_eq!(
            one.to_string(),
            "cannot reach the control plane at http://127.0.0.1:7070 (connection refused)"
        );
        let two = ClientError::Unreachable {
            attempts: vec![
                ("http://a:1".into(), "connection refused".into()),
                ("http://b:1".into(), "connection refused".into()),
            ],
        };
        assert_eq!(
            two.to_string(),
            "cannot reach the control plane at http://a:1, http://b:1 (connection refused)"
        );
        let mixed = ClientError::Unreachable {
            attempts: vec![
                ("http://a:1".into(), "connection refused".into()),
                ("http://b:1".into(), "timed out".into()),
            ],
        };
        assert_eq!(
            mixed.to_string(),
            "cannot reach the control plane at http://a:1 (connection refused), http://b:1 (timed out)"
        );
    }

    #[test]
    fn api_error_shows_code_and_message() {
        let e = ClientError::Api {
            status: 404,
            code: ErrorCode::NotFound,
            message: "no pool named \"x\"".into(),
            retry_after: None,
        };
        assert_eq!(e.to_string(), "not_found: no pool named \"x\"");
        assert!(e.is_not_found());
        assert!(!e.is_retryable());
        assert_eq!(e.code(), Some(ErrorCode::NotFound));
    }

    #[test]
    fn retryable_classification() {
        let busy = ClientError::Api {
            status: 503,
            code: ErrorCode::NoCapacity,
            message: "m".into(),
            retry_after: Some(Duration::from_secs(2)),
        };
        assert!(busy.is_retryable());
        assert_eq!(busy.retry_after(), Some(Duration::from_secs(2)));
        assert!(ClientError::Unreachable { attempts: vec![] }.is_retryable());
        let decode = ClientError::Decode {
            url: "u".into(),
            status: 200,
            reason: "r".into(),
        };
        assert!(!decode.is_retryable());
        assert!(!ClientError::Config("x".into()).is_retryable());
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(fmt_duration(Duration::from_secs(10)), "10s");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(fmt_duration(Duration::from_secs(70)), "1m10s");
    }

    #[test]
    fn root_cause_names_refused_connections() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("error sending request")
            }
        }
        impl StdError for Outer {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let refused = Outer(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(root_cause(&refused), "connection refused");
        let other = Outer(std::io::Error::other(
            "failed to lookup address (os error 2)",
        ));
        assert_eq!(root_cause(&other), "failed to lookup address");
    }
}
