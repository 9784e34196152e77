//! Server-sent events, both ways: splitting an upstream's byte stream into events, and writing
//! the frames the client receives.

use bytes::Bytes;

use crate::error::ApiError;

/// One event read from an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Default cap on one SSE line and on one event's data: far above any chunk an engine sends, far
/// below what would hurt the proxy.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 4 << 20;

/// An upstream sent a line (or an event) longer than the cap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the upstream sent an SSE line or event of more than {limit} bytes (the route's max_event_bytes)")]
pub struct EventTooLong {
    pub limit: usize,
}

/// Incremental parser: bytes in (split anywhere), complete events out. Linear in the bytes pushed
/// however they are split: each byte is searched for a newline once and moved once.
#[derive(Debug)]
pub struct SseParser {
    buffer: Vec<u8>,
    /// Bytes of `buffer` already searched: none of them is a newline.
    scanned: usize,
    limit: usize,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl Default for SseParser {
    fn default() -> Self {
        SseParser::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseParser {
    /// A parser refusing lines and events longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        SseParser { buffer: Vec::new(), scanned: 0, limit, event: None, data: String::new(), has_data: false }
    }

    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, EventTooLong> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(offset) = self.buffer[self.scanned..].iter().position(|&b| b == b'\n') {
            let end = self.scanned + offset;
            let line = std::mem::take(&mut self.buffer);
            let result = self.line(&line[start..end], &mut events);
            self.buffer = line;
            result?;
            start = end + 1;
            self.scanned = start;
        }
        // One move of the unfinished line to the front per push, not one per line.
        self.buffer.drain(..start);
        self.scanned = self.buffer.len();
        if self.buffer.len() > self.limit {
            return Err(EventTooLong { limit: self.limit });
        }
        Ok(events)
    }

    fn line(&mut self, line: &[u8], events: &mut Vec<SseEvent>) -> Result<(), EventTooLong> {
        if line.len() > self.limit {
            return Err(EventTooLong { limit: self.limit });
        }
        let line = String::from_utf8_lossy(line);
        let line = line.strip_suffix('\r').unwrap_or(&line);
        if line.is_empty() {
            // An event without data (or with only empty `data:` lines) carries nothing to relay;
            // some servers send them as keep-alives.
            if self.has_data && !self.data.trim().is_empty() {
                events.push(SseEvent { event: self.event.take(), data: std::mem::take(&mut self.data) });
            }
            self.data.clear();
            self.has_data = false;
            self.event = None;
            return Ok(());
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
                if self.data.len() > self.limit {
                    return Err(EventTooLong { limit: self.limit });
                }
            }
            "event" => self.event = Some(value.to_owned()),
            // Comments (`: keep-alive`), `id` and `retry` carry nothing stopwise needs.
            _ => {}
        }
        Ok(())
    }
}

/// What the client's stream carries, in order: data frames, then `[DONE]` or an error.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A chunk's JSON text, relayed byte for byte when it came from the upstream.
    Data(String),
    Done,
    Error(ApiError),
}

impl Frame {
    pub fn to_bytes(&self) -> Bytes {
        match self {
            Frame::Data(data) => Bytes::from(format!("data: {data}\n\n")),
            Frame::Done => Bytes::from_static(b"data: [DONE]\n\n"),
            // The OpenAI SDKs raise an APIError for an `error` event whose data has `error`.
            Frame::Error(e) => Bytes::from(format!("event: error\ndata: {}\n\n", e.body())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_pushes_and_crlf() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: {\"a\"").unwrap().is_empty());
        let events = p.push(b":1}\r\n\r\n: keep-alive\n\nevent: error\ndata: x\ndata: y\n\ndata: [DONE]\n\n").unwrap();
        assert_eq!(
            events,
            vec![
                SseEvent { event: None, data: "{\"a\":1}".into() },
                SseEvent { event: Some("error".into()), data: "x\ny".into() },
                SseEvent { event: None, data: "[DONE]".into() },
            ]
        );
    }

    #[test]
    fn empty_events_are_skipped_not_fatal() {
        let mut p = SseParser::default();
        let events = p.push(b"data:\n\ndata: \n\nevent: ping\n\ndata: {\"b\":2}\n\n").unwrap();
        assert_eq!(events, vec![SseEvent { event: None, data: "{\"b\":2}".into() }]);
    }

    #[test]
    fn a_line_or_event_over_the_limit_is_refused_however_it_arrives() {
        let mut p = SseParser::new(64);
        assert!(p.push(&[b'x'; 40]).unwrap().is_empty());
        assert_eq!(p.push(&[b'x'; 40]), Err(EventTooLong { limit: 64 }));
        let mut p = SseParser::new(64);
        let long = format!("data: {}\n\n", "y".repeat(100));
        assert_eq!(p.push(long.as_bytes()), Err(EventTooLong { limit: 64 }));
        let mut p = SseParser::new(64);
        let many = "data: 0123456789\n".repeat(8);
        assert_eq!(p.push(many.as_bytes()), Err(EventTooLong { limit: 64 }));
    }

    #[test]
    fn splitting_anywhere_gives_the_same_events() {
        let text = b"data: {\"a\":1}\n\nevent: error\r\ndata: x\ndata: y\r\n\r\ndata:\n\ndata: [DONE]\n\n";
        let whole = SseParser::default().push(text).unwrap();
        for split in 0..text.len() {
            let mut p = SseParser::default();
            let mut events = p.push(&text[..split]).unwrap();
            events.extend(p.push(&text[split..]).unwrap());
            assert_eq!(events, whole, "split at {split}");
        }
        let mut p = SseParser::default();
        let bytewise: Vec<SseEvent> = text.iter().flat_map(|b| p.push(&[*b]).unwrap()).collect();
        assert_eq!(bytewise, whole);
    }
}
