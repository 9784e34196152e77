//! Turns the byte pieces of generated tokens into text that is safe to emit.
//!
//! Two things delay text: a UTF-8 character split across tokens (its first bytes wait for the
//! rest), and text that might be the beginning of a stop string (it waits until it either
//! completes the stop string, which is then cut, or can no longer do so).

/// Text released by one token.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Released {
    pub(crate) text: String,
    /// A stop string appeared; `text` ends right before it and generation must stop.
    pub(crate) stopped: bool,
}

pub(crate) struct TextStream {
    stops: Vec<String>,
    /// Bytes of a character whose remaining bytes have not arrived yet.
    partial_char: Vec<u8>,
    /// Decoded text that could still be the beginning of a stop string.
    held: String,
}

impl TextStream {
    pub(crate) fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|stop| !stop.is_empty()).collect(),
            partial_char: Vec::new(),
            held: String::new(),
        }
    }

    /// Adds the bytes of one token and returns the text that can be emitted now.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Released {
        self.partial_char.extend_from_slice(bytes);
        self.decode_complete_chars();

        let first_stop = self.stops.iter().filter_map(|stop| self.held.find(stop.as_str())).min();
        if let Some(stop_at) = first_stop {
            self.held.truncate(stop_at);
            self.partial_char.clear();
            return Released { text: std::mem::take(&mut self.held), stopped: true };
        }

        let keep = self.longest_stop_prefix_suffix();
        let release_len = self.held.len() - keep;
        let rest = self.held.split_off(release_len);
        Released { text: std::mem::replace(&mut self.held, rest), stopped: false }
    }

    /// Releases everything still held at the end of generation; a character left incomplete
    /// becomes U+FFFD.
    pub(crate) fn finish(&mut self) -> String {
        let mut text = std::mem::take(&mut self.held);
        text.push_str(&String::from_utf8_lossy(&self.partial_char));
        self.partial_char.clear();
        text
    }

    /// Moves every complete character from `partial_char` to `held`; invalid bytes become U+FFFD.
    fn decode_complete_chars(&mut self) {
        let mut consumed = 0;
        loop {
            let rest = &self.partial_char[consumed..];
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    self.held.push_str(valid);
                    consumed = self.partial_char.len();
                    break;
                }
                Err(error) => {
                    let valid_len = error.valid_up_to();
                    self.held.push_str(&String::from_utf8_lossy(&rest[..valid_len]));
                    match error.error_len() {
                        Some(invalid_len) => {
                            self.held.push(char::REPLACEMENT_CHARACTER);
                            consumed += valid_len + invalid_len;
                        }
                        // The tail is the start of a character: wait for its other bytes.
                        None => {
                            consumed += valid_len;
                            break;
                        }
                    }
                }
            }
        }
        self.partial_char.drain(..consumed);
    }

    /// Length in bytes of the longest end of `held` that is the beginning of some stop string.
    fn longest_stop_prefix_suffix(&self) -> usize {
        let held = self.held.as_str();
        self.stops
            .iter()
            .map(|stop| {
                (1..=stop.len().min(held.len()))
                    .rev()
                    .find(|&len| {
                        let start = held.len() - len;
                        held.is_char_boundary(start) && stop.starts_with(&held[start..])
                    })
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn stream(stops: &[&str]) -> TextStream {
        TextStream::new(stops.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn split_utf8_waits_for_its_last_byte() {
        let mut text = stream(&[]);
        let euro = "€".as_bytes();
        assert_eq!(text.push(&euro[..1]).text, "");
        assert_eq!(text.push(&euro[1..2]).text, "");
        assert_eq!(text.push(&[euro[2], b'!']).text, "€!");
        assert_eq!(text.finish(), "");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut text = stream(&[]);
        assert_eq!(text.push(b"a\xffb").text, "a\u{fffd}b");
        assert_eq!(text.push(b"\xe2\x82").text, "");
        assert_eq!(text.finish(), "\u{fffd}");
    }

    #[test]
    fn stop_string_is_cut_and_prefix_held_back() {
        let mut text = stream(&["###"]);
        assert_eq!(text.push(b"answer #"), Released { text: "answer ".into(), stopped: false });
        assert_eq!(text.push(b"#"), Released { text: String::new(), stopped: false });
        assert_eq!(text.push(b"# 42"), Released { text: String::new(), stopped: true });
    }

    #[test]
    fn held_prefix_is_released_when_it_cannot_start_a_stop() {
        let mut text = stream(&["Question:"]);
        assert_eq!(text.push(b"Ques").text, "");
        assert_eq!(text.push(b"ts").text, "Quests");
        assert_eq!(text.push(b" Q").text, " ");
        assert_eq!(text.finish(), "Q");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let mut text = stream(&["END", "N"]);
        let released = text.push(b"xENDy");
        assert_eq!(released.text, "x");
        assert!(released.stopped);
    }
}
