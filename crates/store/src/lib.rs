//! stopwise-store: where traces live.
//!
//! Trace files are JSONL, optionally compressed (`.jsonl.gz`, `.jsonl.zst`). Reading streams line
//! by line with a bounded line length, so a file of any size (or a corrupt file with one huge
//! line) never has to fit in memory. Writing appends one flushed line per trace, so an
//! interrupted recording leaves a valid file that a resumed run continues.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use stopwise_core::trace::{self, Trace, TraceError, MAX_LINE_BYTES};

/// A trace file could not be read; the message names the file and line.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}:{line}: {source}")]
    Trace { path: PathBuf, line: u64, source: TraceError },
    #[error("{path}: the file holds no traces")]
    Empty { path: PathBuf },
    #[error("{path}:{line}: id `{id}` appears twice")]
    DuplicateId { path: PathBuf, line: u64, id: String },
}

/// Streams the traces of a file, one `Result` per non-empty line.
pub struct TraceReader {
    path: PathBuf,
    input: Box<dyn BufRead>,
    line: u64,
    buffer: Vec<u8>,
    done: bool,
}

impl TraceReader {
    /// Opens `path`, decompressing by extension (`.gz`, `.zst`).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let io_err = |source| StoreError::Io { path: path.to_owned(), source };
        let file = File::open(path).map_err(io_err)?;
        let name = path.to_string_lossy();
        let raw: Box<dyn Read> = if name.ends_with(".gz") {
            Box::new(flate2::read::MultiGzDecoder::new(file))
        } else if name.ends_with(".zst") {
            Box::new(zstd::stream::read::Decoder::new(file).map_err(io_err)?)
        } else {
            Box::new(file)
        };
        Ok(TraceReader {
            path: path.to_owned(),
            input: Box::new(BufReader::with_capacity(1 << 16, raw)),
            line: 0,
            buffer: Vec::new(),
            done: false,
        })
    }

    fn error(&mut self, source: TraceError) -> Option<Result<Trace, StoreError>> {
        self.done = true;
        Some(Err(StoreError::Trace { path: self.path.clone(), line: self.line, source }))
    }
}

impl Iterator for TraceReader {
    type Item = Result<Trace, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            self.line += 1;
            self.buffer.clear();
            // Read at most one byte past the limit: enough to know the line is too long.
            let limit = (MAX_LINE_BYTES + 2) as u64;
            let read = (&mut self.input).take(limit).read_until(b'\n', &mut self.buffer);
            match read {
                Err(source) => {
                    self.done = true;
                    return Some(Err(StoreError::Io { path: self.path.clone(), source }));
                }
                Ok(0) => self.done = true,
                Ok(_) => {
                    let text = match std::str::from_utf8(&self.buffer) {
                        Ok(text) => text,
                        Err(e) => return self.error(TraceError::Json(format!("not UTF-8: {e}"))),
                    };
                    if text.trim().is_empty() {
                        continue;
                    }
                    if self.buffer.len() > MAX_LINE_BYTES + 1 {
                        let len = self.buffer.len();
                        return self.error(TraceError::TooLong(len));
                    }
                    return match trace::parse_line(text) {
                        Ok(trace) => Some(Ok(trace)),
                        Err(e) => self.error(e),
                    };
                }
            }
        }
        None
    }
}

/// Reads every trace of a file, rejecting an empty file and duplicate ids.
pub fn read_all(path: &Path) -> Result<Vec<Trace>, StoreError> {
    let mut seen = HashSet::new();
    let mut traces = Vec::new();
    for (index, trace) in TraceReader::open(path)?.enumerate() {
        let trace = trace?;
        if !seen.insert(trace.id.clone()) {
            return Err(StoreError::DuplicateId { path: path.to_owned(), line: index as u64 + 1, id: trace.id });
        }
        traces.push(trace);
    }
    if traces.is_empty() {
        return Err(StoreError::Empty { path: path.to_owned() });
    }
    Ok(traces)
}

/// Ids already recorded in `path` (none if it does not exist). A truncated last line, left by a
/// crash mid-write, is ignored so that its item is recorded again.
pub fn recorded_ids(path: &Path) -> Result<HashSet<String>, StoreError> {
    if !path.exists() {
        return Ok(HashSet::new());
    }
    let mut ids = HashSet::new();
    let mut reader = TraceReader::open(path)?;
    while let Some(item) = reader.next() {
        match item {
            Ok(trace) => {
                ids.insert(trace.id);
            }
            Err(StoreError::Trace { source: TraceError::Json(_), .. }) if reader.next().is_none() => break,
            Err(e) => return Err(e),
        }
    }
    Ok(ids)
}

/// Appends traces to a plain JSONL file, one flushed line each.
pub struct TraceWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl TraceWriter {
    /// Opens `path` for appending, creating it if needed. If the file ends in a partial line
    /// (a crash mid-write), that line is cut off: it was never counted as recorded (see
    /// [`recorded_ids`]), and left in place it would become a corrupt line mid-file.
    pub fn append(path: &Path) -> Result<Self, StoreError> {
        let io_err = |source| StoreError::Io { path: path.to_owned(), source };
        if path.to_string_lossy().ends_with(".gz") || path.to_string_lossy().ends_with(".zst") {
            return Err(io_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "recording writes plain .jsonl (append-safe); compress the finished file",
            )));
        }
        let complete_length = match std::fs::read(path) {
            Ok(bytes) if bytes.last().is_some_and(|&b| b != b'\n') => {
                Some(bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) as u64)
            }
            _ => None,
        };
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(io_err)?;
        if let Some(length) = complete_length {
            file.set_len(length).map_err(io_err)?;
        }
        Ok(TraceWriter { path: path.to_owned(), out: BufWriter::new(file) })
    }

    pub fn write(&mut self, trace: &Trace) -> Result<(), StoreError> {
        let io_err = |source| StoreError::Io { path: self.path.clone(), source };
        self.out.write_all(trace.to_line().as_bytes()).map_err(io_err)?;
        self.out.write_all(b"\n").map_err(io_err)?;
        self.out.flush().map_err(io_err)
    }
}

/// The text of the file at `path`, or `None` when there is no file there: how the CLI and the
/// server let core's policy loader read the files a policy names
/// (`stopwise_core::policy::Files`).
pub fn read_if_file(path: &Path) -> io::Result<Option<String>> {
    if !path.is_file() {
        return Ok(None);
    }
    std::fs::read_to_string(path).map(Some)
}
