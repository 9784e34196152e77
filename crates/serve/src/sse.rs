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

/// Incremental parser: bytes in (split anywhere), complete events out.
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    events.push(SseEvent { event: self.event.take(), data: self.data.join("\n") });
                }
                self.data.clear();
                self.event = None;
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "data" => self.data.push(value.to_owned()),
                "event" => self.event = Some(value.to_owned()),
                // Comments (`: keep-alive`), `id` and `retry` carry nothing stopwise needs.
                _ => {}
            }
        }
        events
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
        assert!(p.push(b"data: {\"a\"").is_empty());
        let events = p.push(b":1}\r\n\r\n: keep-alive\n\nevent: error\ndata: x\ndata: y\n\ndata: [DONE]\n\n");
        assert_eq!(
            events,
            vec![
                SseEvent { event: None, data: "{\"a\":1}".into() },
                SseEvent { event: Some("error".into()), data: "x\ny".into() },
                SseEvent { event: None, data: "[DONE]".into() },
            ]
        );
    }
}
