//! A Server-Sent Events parser, pure and incremental.
//!
//! It follows the WHATWG "event stream interpretation" rules, because the bytes of one event
//! arrive split at arbitrary places by TCP and HTTP chunking:
//!
//! - lines end in `\n`, `\r\n` or a lone `\r`, and a `\r\n` split across two chunks is still
//!   one line ending;
//! - a line starting with `:` is a comment (`: keepalive`) and is ignored;
//! - `field: value` loses exactly one space after the colon; a line with no colon is a field
//!   with an empty value;
//! - `data` lines accumulate, joined by `\n`; a blank line dispatches the event, unless no
//!   `data` line came, in which case nothing is dispatched;
//! - `id` sets the last event id (kept across events and reconnections; an `id` holding NUL is
//!   ignored), `retry` sets the reconnection delay when it is all digits;
//! - a UTF-8 byte order mark at the very start is skipped; an event cut off by the end of the
//!   stream is discarded, never dispatched half-read.
//!
//! Bytes are buffered until a line ends, so a multi-byte UTF-8 character split across chunks
//! decodes correctly; invalid UTF-8 becomes U+FFFD instead of an error.

use std::time::Duration;

/// One dispatched event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseMessage {
    /// The `event` field, `message` when absent.
    pub event: String,
    /// The `data` lines, joined by `\n`.
    pub data: String,
    /// The last event id when this event was dispatched (empty if none was ever set).
    pub id: String,
}

/// Incremental parser state for one event stream.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the line being read.
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: a `\n` at the start of the next one is part of the
    /// same line ending.
    after_cr: bool,
    /// Still at the start of the stream, where a byte order mark may be.
    at_start: bool,
    data: String,
    has_data: bool,
    event: String,
    last_event_id: String,
    retry: Option<Duration>,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        SseParser {
            at_start: true,
            ..Default::default()
        }
    }

    /// The last event id seen, to send as `Last-Event-ID` when reconnecting.
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// The reconnection delay the server asked for with `retry:`, if it did.
    pub fn retry(&self) -> Option<Duration> {
        self.retry
    }

    /// Starts over on a new connection: a half-read line or event is dropped, while the last
    /// event id and the retry delay are kept, as the spec asks.
    pub fn reconnected(&mut self) {
        self.line.clear();
        self.after_cr = false;
        self.at_start = true;
        self.data.clear();
        self.has_data = false;
        self.event.clear();
    }

    /// Feeds the next bytes of the stream and returns the events they complete, in order.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Vec<SseMessage> {
        let out = Vec::new();
        if self.at_start {
            // The BOM itself may be split across chunks: hold back a prefix of it.
            self.line.extend_from_slice(chunk);
            if self.line.len() < BOM.len() && BOM.starts_with(&self.line) {
                return out;
            }
            self.at_start = false;
            let held = std::mem::take(&mut self.line);
            let rest = held.strip_prefix(BOM).unwrap_or(&held);
            return self.feed_lines(rest, out);
        }
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        self.feed_lines(chunk, out)
    }

    fn feed_lines(&mut self, chunk: &[u8], mut out: Vec<SseMessage>) -> Vec<SseMessage> {
        let mut start = 0;
        let mut i = 0;
        while i < chunk.len() {
            match chunk[i] {
                b'\n' => {
                    self.line.extend_from_slice(&chunk[start..i]);
                    self.end_line(&mut out);
                    i += 1;
                    start = i;
                }
                b'\r' => {
                    self.line.extend_from_slice(&chunk[start..i]);
                    self.end_line(&mut out);
                    i += 1;
                    if i == chunk.len() {
                        self.after_cr = true;
                    } else if chunk[i] == b'\n' {
                        i += 1;
                    }
                    start = i;
                }
                _ => i += 1,
            }
        }
        self.line.extend_from_slice(&chunk[start..]);
        out
    }

    fn end_line(&mut self, out: &mut Vec<SseMessage>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (&line[..], &[][..]),
        };
        let value = String::from_utf8_lossy(value);
        match name {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&value);
                self.has_data = true;
            }
            b"event" => self.event = value.into_owned(),
            b"id" if !value.contains('\0') => self.last_event_id = value.into_owned(),
            b"retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                // All digits, yet it may not fit: then it is ignored like any bad value.
                if let Ok(ms) = value.parse::<u64>() {
                    self.retry = Some(Duration::from_millis(ms));
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseMessage>) {
        let event = std::mem::take(&mut self.event);
        if !self.has_data {
            return;
        }
        self.has_data = false;
        out.push(SseMessage {
            event: if event.is_empty() {
                "message".into()
            } else {
                event
            },
            data: std::mem::take(&mut self.data),
            id: self.last_event_id.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(event: &str, data: &str, id: &str) -> SseMessage {
        SseMessage {
            event: event.into(),
            data: data.into(),
            id: id.into(),
        }
    }

    /// Feeds `input` cut at every given offset and returns everything dispatched.
    fn feed_split(input: &[u8], cuts: &[usize]) -> Vec<SseMessage> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        let mut prev = 0;
        for &c in cuts.iter().chain(std::iter::once(&input.len())) {
            out.extend(p.feed(&input[prev..c]));
            prev = c;
        }
        out
    }

    const STREAM: &[u8] = b": keepalive\r\n\
        id: 7\r\nevent: container_warm\r\ndata: {\"a\":\r\ndata:  1}\r\n\r\n\
        :another comment\n\
        id: 8\nevent: pool_created\ndata: {\"\xc3\xa9\":2}\n\n";

    #[test]
    fn parses_ids_kinds_multiline_data_and_comments() {
        let got = feed_split(STREAM, &[]);
        assert_eq!(
            got,
            vec![
                msg("container_warm", "{\"a\":\n 1}", "7"),
                msg("pool_created", "{\"é\":2}", "8"),
            ]
        );
    }

    #[test]
    fn every_single_split_point_gives_the_same_events() {
        let whole = feed_split(STREAM, &[]);
        for cut in 0..=STREAM.len() {
            assert_eq!(feed_split(STREAM, &[cut]), whole, "cut at {cut}");
        }
    }

    #[test]
    fn byte_by_byte_gives_the_same_events() {
        let cuts: Vec<usize> = (1..STREAM.len()).collect();
        assert_eq!(feed_split(STREAM, &cuts), feed_split(STREAM, &[]));
    }

    #[test]
    fn crlf_split_between_chunks_is_one_line_end() {
        // "data: x\r" | "\n\r\n": had the \n been taken for a second line end, the blank
        // line would come one line early and `data: y` would start a new event.
        let got = feed_split(b"data: x\r\ndata: y\r\n\r\n", &[7, 8]);
        assert_eq!(got, vec![msg("message", "x\ny", "")]);
    }

    #[test]
    fn lone_cr_ends_lines() {
        let got = feed_split(b"id: 3\revent: e\rdata: d\r\r", &[]);
        assert_eq!(got, vec![msg("e", "d", "3")]);
    }

    #[test]
    fn blank_line_without_data_dispatches_nothing_but_keeps_the_id() {
        let got = feed_split(b"id: 5\nevent: x\n\ndata: d\n\n", &[]);
        // The event type is reset by the empty dispatch; the id is not.
        assert_eq!(got, vec![msg("message", "d", "5")]);
    }

    #[test]
    fn field_without_colon_and_value_without_space() {
        let got = feed_split(b"data\ndata:x\nevent:k\n\n", &[]);
        assert_eq!(got, vec![msg("k", "\nx", "")]);
    }

    #[test]
    fn retry_only_when_all_digits_and_nul_ids_are_ignored() {
        let mut p = SseParser::new();
        p.feed(b"retry: 2500\nretry: 1s\nid: 9\nid: a\0b\n\n");
        assert_eq!(p.retry(), Some(Duration::from_millis(2500)));
        assert_eq!(p.last_event_id(), "9");
    }

    #[test]
    fn bom_is_skipped_even_when_split() {
        let input = b"\xEF\xBB\xBFdata: x\n\n";
        for cut in 0..input.len() {
            assert_eq!(
                feed_split(input, &[cut]),
                vec![msg("message", "x", "")],
                "cut {cut}"
            );
        }
        // Only at the start: a later BOM is part of a field name.
        let mut p = SseParser::new();
        assert_eq!(p.feed(b"data: a\n\n").len(), 1);
        assert!(p.feed(b"\xEF\xBB\xBFdata: b\n\n").is_empty());
    }

    #[test]
    fn unterminated_event_is_not_dispatched_and_reconnect_drops_it() {
        let mut p = SseParser::new();
        let first = p.feed(b"id: 4\ndata: complete\n\nid: 5\ndata: half");
        assert_eq!(first, vec![msg("message", "complete", "4")]);
        p.reconnected();
        assert_eq!(p.last_event_id(), "5");
        let got = p.feed(b"data: fresh\n\n");
        assert_eq!(got, vec![msg("message", "fresh", "5")]);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        let got = feed_split(b"data: a\xffb\n\n", &[]);
        assert_eq!(got, vec![msg("message", "a\u{fffd}b", "")]);
    }
}
