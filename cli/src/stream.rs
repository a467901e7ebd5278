//! The reconnecting event stream behind [`Client::event_stream`](crate::Client::event_stream).

use std::collections::VecDeque;
use std::time::Duration;

use futures::Stream;
use reqwest::header::{self, HeaderName, HeaderValue};
use warmpool_proto::api::EventQuery;
use warmpool_proto::Event;

use crate::client::{api_error, transport_error, Call, Client};
use crate::error::ClientError;
use crate::sse::{SseMessage, SseParser};

/// Delay before reconnecting when the server never sent `retry:`.
const DEFAULT_RETRY: Duration = Duration::from_secs(1);
/// Longest delay between reconnection attempts (unless the server asks for more).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub(crate) fn event_stream(
    client: Client,
    query: EventQuery,
) -> impl Stream<Item = Result<Event, ClientError>> + Send + 'static {
    let state = StreamState {
        client,
        last_seq: query.after,
        query,
        parser: SseParser::new(),
        response: None,
        queue: VecDeque::new(),
        failures: 0,
        done: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        let item = st.next().await?;
        Some((item, st))
    })
}

struct StreamState {
    client: Client,
    query: EventQuery,
    parser: SseParser,
    /// The open connection and the URL it came from.
    response: Option<(reqwest::Response, String)>,
    /// Items parsed but not yet handed out.
    queue: VecDeque<Result<Event, ClientError>>,
    /// Highest `seq` delivered: where a reconnection resumes, and below which replays are
    /// dropped.
    last_seq: Option<u64>,
    /// Disconnections and failed attempts since the last successful connection.
    failures: u32,
    /// A fatal error was yielded.
    done: bool,
}

impl StreamState {
    async fn next(&mut self) -> Option<Result<Event, ClientError>> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                return Some(item);
            }
            if self.done {
                return None;
            }
            let Some((resp, url)) = self.response.as_mut() else {
                if self.failures > 0 {
                    tokio::time::sleep(backoff(self.parser.retry(), self.failures)).await;
                }
                match self.connect().await {
                    Ok(conn) => {
                        self.response = Some(conn);
                        self.parser.reconnected();
                        self.failures = 0;
                    }
                    Err(e) => {
                        self.failures = self.failures.saturating_add(1);
                        if !e.is_retryable() {
                            self.done = true;
                        }
                        return Some(Err(e));
                    }
                }
                continue;
            };
            match tokio::time::timeout(self.client.stream_idle_timeout(), resp.chunk()).await {
                // Silence: the connection may be dead without either side knowing.
                Err(_elapsed) => self.disconnected(),
                // The server ended the stream (restart, leader change): resume quietly.
                Ok(Ok(None)) => self.disconnected(),
                Ok(Err(e)) => {
                    let err = transport_error(url, e);
                    self.disconnected();
                    return Some(Err(err));
                }
                Ok(Ok(Some(chunk))) => {
                    let url = url.clone();
                    for msg in self.parser.feed(&chunk) {
                        if let Some(item) = accept(&msg, &url, &mut self.last_seq) {
                            self.queue.push_back(item);
                        }
                    }
                }
            }
        }
    }

    fn disconnected(&mut self) {
        self.response = None;
        self.failures = self.failures.saturating_add(1);
    }

    /// Opens the stream from the last delivered event on.
    async fn connect(&mut self) -> Result<(reqwest::Response, String), ClientError> {
        let mut query = self.query.clone();
        if self.last_seq.is_some() {
            query.after = self.last_seq;
        }
        let mut call = Call::get(&["v1", "events", "stream"])
            .query(&query)?
            .streaming()
            .header(
                header::ACCEPT,
                HeaderValue::from_static("text/event-stream"),
            )
            .header(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        let last_id = match self.last_seq {
            Some(seq) => seq.to_string(),
            None => self.parser.last_event_id().to_string(),
        };
        if !last_id.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&last_id) {
                call = call.header(HeaderName::from_static("last-event-id"), v);
            }
        }
        // The stream has no total deadline; getting its headers does.
        let limit = self.client.request_timeout();
        let (resp, url) = match tokio::time::timeout(limit, self.client.send(call)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(ClientError::Timeout {
                    url: self.client.current_url(),
                    after: Some(limit),
                })
            }
        };
        let status = resp.status();
        if !status.is_success() {
            return Err(api_error(resp, &url).await);
        }
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if !content_type.starts_with("text/event-stream") {
            return Err(ClientError::Decode {
                url,
                status: status.as_u16(),
                reason: format!("expected an event stream, got content type {content_type:?}"),
            });
        }
        Ok((resp, url))
    }
}

/// Turns one SSE message into the item to deliver: the event, a decode error, or nothing for a
/// replayed event at or below `last_seq`.
fn accept(
    msg: &SseMessage,
    url: &str,
    last_seq: &mut Option<u64>,
) -> Option<Result<Event, ClientError>> {
    match serde_json::from_str::<Event>(&msg.data) {
        Ok(event) => {
            if last_seq.is_some_and(|last| event.seq <= last) {
                return None;
            }
            *last_seq = Some(event.seq);
            Some(Ok(event))
        }
        Err(e) => Some(Err(ClientError::Decode {
            url: url.to_string(),
            status: 200,
            reason: format!(
                "event {:?} (id {:?}) does not decode: {e}",
                msg.event, msg.id
            ),
        })),
    }
}

/// The wait before reconnection attempt number `failures` (1, 2, ...): the server's `retry`
/// (or 1 s), doubled per failure beyond the first, at most [`MAX_BACKOFF`] unless the server
/// itself asked for longer.
fn backoff(retry: Option<Duration>, failures: u32) -> Duration {
    let base = retry.unwrap_or(DEFAULT_RETRY);
    let doubled = base.saturating_mul(1 << failures.saturating_sub(1).min(6));
    doubled.min(MAX_BACKOFF.max(base))
}

#[cfg(test)]
mod tests {
    use super::*;
    use warmpool_proto::{EventKind, Timestamp};

    fn event_json(seq: u64) -> String {
        let e = Event {
            seq,
            log_index: seq + 10,
            at: Timestamp(1_790_000_000_000),
            kind: EventKind::ContainerWarm,
            pool: None,
            container: None,
            node: None,
            session: None,
            allocation: None,
            reason: None,
            detail: None,
        };
        serde_json::to_string(&e).unwrap()
    }

    fn msg(data: String) -> SseMessage {
        SseMessage {
            event: "container_warm".into(),
            data,
            id: String::new(),
        }
    }

    #[test]
    fn replayed_events_are_dropped_and_order_kept() {
        let mut last = Some(5);
        assert!(accept(&msg(event_json(5)), "u", &mut last).is_none());
        assert!(accept(&msg(event_json(3)), "u", &mut last).is_none());
        let got = accept(&msg(event_json(6)), "u", &mut last)
            .unwrap()
            .unwrap();
        assert_eq!(got.seq, 6);
        assert_eq!(last, Some(6));
        let mut none = None;
        assert_eq!(
            accept(&msg(event_json(1)), "u", &mut none)
                .unwrap()
                .unwrap()
                .seq,
            1
        );
    }

    #[test]
    fn undecodable_event_is_an_error_item_not_the_end() {
        let mut last = Some(1);
        let item = accept(
            &msg("{\"seq\":".into()),
            "http://cp/v1/events/stream",
            &mut last,
        )
        .unwrap();
        assert!(matches!(item, Err(ClientError::Decode { status: 200, .. })));
        assert_eq!(last, Some(1));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(None, 1), Duration::from_secs(1));
        assert_eq!(backoff(None, 2), Duration::from_secs(2));
        assert_eq!(backoff(None, 4), Duration::from_secs(8));
        assert_eq!(backoff(None, 50), MAX_BACKOFF);
        assert_eq!(
            backoff(Some(Duration::from_millis(200)), 1),
            Duration::from_millis(200)
        );
        assert_eq!(
            backoff(Some(Duration::from_secs(45)), 3),
            Duration::from_secs(45)
        );
    }
}
