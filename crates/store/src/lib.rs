//! stopwise-store: where traces live.
//!
//! Trace files are JSONL, optionally compressed (`.jsonl.gz`, `.jsonl.zst`). Reading streams line
//! by line with a bounded line length, so a file of any size (or a corrupt file with one huge
//! line) never has to fit in memory. Writing appends each trace as one complete line in a single
//! write, so an interrupted recording leaves a valid file (at worst a torn last line) that a resumed
//! run continues.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
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
    #[error("{path}:{line}: id `{id}` appears twice (first at {first_path}:{first_line}); ids must be unique")]
    DuplicateId { path: PathBuf, line: u64, id: String, first_path: PathBuf, first_line: u64 },
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
        Ok(Self::from_reader(path, raw))
    }

    /// Reads traces from `input`; `path` names it in errors.
    fn from_reader(path: &Path, input: impl Read + 'static) -> Self {
        TraceReader {
            path: path.to_owned(),
            input: Box::new(BufReader::with_capacity(1 << 16, input)),
            line: 0,
            buffer: Vec::new(),
            done: false,
        }
    }

    /// The line number of the trace (or error) the iterator returned last.
    pub fn line(&self) -> u64 {
        self.line
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

/// Streams the traces of several files in order, refusing an id seen before (in any of them) with
/// an error that names both places, and a file with no traces. Only the ids are kept, so files of
/// any size stream.
pub struct TraceFiles {
    paths: std::collections::VecDeque<PathBuf>,
    current: Option<TraceReader>,
    /// Whether the current file has yielded a trace yet.
    current_has_traces: bool,
    seen: HashMap<String, (usize, u64)>,
    opened: Vec<PathBuf>,
    failed: bool,
}

impl TraceFiles {
    pub fn open(paths: &[PathBuf]) -> Self {
        TraceFiles {
            paths: paths.iter().cloned().collect(),
            current: None,
            current_has_traces: false,
            seen: HashMap::new(),
            opened: Vec::new(),
            failed: false,
        }
    }

    fn fail(&mut self, error: StoreError) -> Option<Result<Trace, StoreError>> {
        self.failed = true;
        Some(Err(error))
    }
}

impl Iterator for TraceFiles {
    type Item = Result<Trace, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.failed {
            let Some(reader) = self.current.as_mut() else {
                let path = self.paths.pop_front()?;
                match TraceReader::open(&path) {
                    Ok(reader) => self.current = Some(reader),
                    Err(e) => return self.fail(e),
                }
                self.opened.push(path);
                self.current_has_traces = false;
                continue;
            };
            let Some(item) = reader.next() else {
                self.current = None;
                if !self.current_has_traces {
                    let path = self.opened[self.opened.len() - 1].clone();
                    return self.fail(StoreError::Empty { path });
                }
                continue;
            };
            self.current_has_traces = true;
            let line = reader.line();
            let trace = match item {
                Ok(trace) => trace,
                Err(e) => return self.fail(e),
            };
            let file = self.opened.len() - 1;
            if let Some(&(first_file, first_line)) = self.seen.get(&trace.id) {
                let error = StoreError::DuplicateId {
                    path: self.opened[file].clone(),
                    line,
                    id: trace.id,
                    first_path: self.opened[first_file].clone(),
                    first_line,
                };
                return self.fail(error);
            }
            self.seen.insert(trace.id.clone(), (file, line));
            return Some(Ok(trace));
        }
        None
    }
}

/// Reads every trace of a file, rejecting an empty file and duplicate ids.
pub fn read_all(path: &Path) -> Result<Vec<Trace>, StoreError> {
    TraceFiles::open(&[path.to_owned()]).collect()
}

/// The length of `bytes` up to and including its last newline: what is left after it is a line
/// torn by a crash mid-write (every line is written whole, newline included, in one write).
fn complete_length(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
}

/// Ids already recorded in `path` (none if it does not exist). Only a torn last line (no newline
/// after it: a crash mid-write) is not counted, whether or not it happens to parse, so that its
/// item is recorded again; [`TraceWriter::append`] cuts it off. Any other bad line is an error
/// naming it, and a duplicate id too: resuming past either would hide the damage.
pub fn recorded_ids(path: &Path) -> Result<HashSet<String>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(source) => return Err(StoreError::Io { path: path.to_owned(), source }),
    };
    let complete = bytes[..complete_length(&bytes)].to_vec();
    // Each id with the line it was first read on, to name both lines of a duplicate.
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut reader = TraceReader::from_reader(path, io::Cursor::new(complete));
    while let Some(item) = reader.next() {
        let trace = item?;
        if let Some(&first_line) = seen.get(&trace.id) {
            return Err(StoreError::DuplicateId {
                path: path.to_owned(),
                line: reader.line(),
                id: trace.id,
                first_path: path.to_owned(),
                first_line,
            });
        }
        seen.insert(trace.id, reader.line());
    }
    Ok(seen.into_keys().collect())
}

/// Appends traces to a plain JSONL file, each as one complete line in a single write.
pub struct TraceWriter {
    path: PathBuf,
    out: File,
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
        let torn_at = match std::fs::read(path) {
            Ok(bytes) if bytes.last().is_some_and(|&b| b != b'\n') => Some(complete_length(&bytes) as u64),
            _ => None,
        };
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(io_err)?;
        if let Some(length) = torn_at {
            file.set_len(length).map_err(io_err)?;
        }
        Ok(TraceWriter { path: path.to_owned(), out: file })
    }

    /// Appends one line. The line and its newline go out in one `write_all` on an unbuffered file,
    /// so a crash leaves either the whole line or a torn one without its newline, never a
    /// complete-looking line that the next append would cut.
    pub fn write(&mut self, trace: &Trace) -> Result<(), StoreError> {
        let mut line = trace.to_line();
        line.push('\n');
        self.out.write_all(line.as_bytes()).map_err(|source| StoreError::Io { path: self.path.clone(), source })
    }
}

/// Replaces `path` with what `fill` writes, atomically: into a temporary file beside it, synced,
/// then renamed over it (and the folder synced), so a crash at any point leaves either the old
/// file or the whole new one, never a truncated one. Every output file of stopwise (certificates,
/// models, reports, exports) is written this way.
pub fn replace_file(path: &Path, fill: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<(), StoreError> {
    let io_err = |source| StoreError::Io { path: path.to_owned(), source };
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut temporary =
        tempfile::Builder::new().prefix(".stopwise-").suffix(".tmp").tempfile_in(folder).map_err(io_err)?;
    {
        let mut out = io::BufWriter::new(temporary.as_file_mut());
        fill(&mut out).map_err(io_err)?;
        out.flush().map_err(io_err)?;
    }
    temporary.as_file().sync_all().map_err(io_err)?;
    temporary.persist(path).map_err(|e| io_err(e.error))?;
    // The rename is durable only once the folder's entry is on disk too.
    File::open(folder).and_then(|dir| dir.sync_all()).map_err(io_err)
}

/// [`replace_file`] with the whole content at hand.
pub fn write_file(path: &Path, content: &[u8]) -> Result<(), StoreError> {
    replace_file(path, |out| out.write_all(content))
}

/// Largest policy, certificate or model file read: far above any real one (a learned model is a
/// few hundred kilobytes), so `/dev/zero`-like inputs cannot exhaust memory.
pub const MAX_POLICY_FILE_BYTES: u64 = 64 << 20;

/// The text of the file at `path`, or `None` when there is no regular file there (a folder, a
/// device, a FIFO: never read, so nothing hangs): how the CLI and the server let core's policy
/// loader read the files a policy names (`stopwise_core::policy::Files`). A file over
/// [`MAX_POLICY_FILE_BYTES`] is an error, not read.
pub fn read_if_file(path: &Path) -> io::Result<Option<String>> {
    let Ok(metadata) = std::fs::metadata(path) else { return Ok(None) };
    if !metadata.is_file() {
        return Ok(None);
    }
    let too_large = || {
        io::Error::new(io::ErrorKind::InvalidData, format!("larger than the limit of {MAX_POLICY_FILE_BYTES} bytes"))
    };
    if metadata.len() > MAX_POLICY_FILE_BYTES {
        return Err(too_large());
    }
    let mut text = String::new();
    File::open(path)?.take(MAX_POLICY_FILE_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_POLICY_FILE_BYTES {
        return Err(too_large());
    }
    Ok(Some(text))
}
