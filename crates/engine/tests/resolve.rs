//! `resolve_model` errors say what is wrong and what to do. A separate test binary because it
//! points `STOPWISE_HOME` at an empty directory, which would hide the model from other tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use stopwise_engine::{resolve_model, FetchError};

#[test]
fn missing_path_is_an_error_that_lists_the_names() {
    let err = resolve_model(Some(Path::new("/nonexistent/model.gguf"))).unwrap_err();
    assert!(matches!(err, FetchError::Unknown { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("/nonexistent/model.gguf"), "{message}");
    assert!(message.contains("smollm2-135m, qwen2.5-coder-1.5b, qwen2.5-coder-0.5b"), "{message}");
    assert!(message.contains("stopwise model fetch NAME"), "{message}");
}

#[test]
fn non_gguf_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, "this is not a model, just some text").unwrap();
    let err = resolve_model(Some(&path)).unwrap_err();
    assert!(matches!(err, FetchError::NotGguf { .. }), "{err:?}");
    assert!(err.to_string().contains("stopwise model fetch"), "{err}");
}

#[test]
fn named_models_must_be_fetched_first() {
    let home = tempfile::tempdir().unwrap();
    // Only this test in this binary reads STOPWISE_HOME.
    std::env::set_var("STOPWISE_HOME", home.path());
    let err = resolve_model(None).unwrap_err();
    assert!(matches!(err, FetchError::NotFetched { .. }), "{err:?}");
    assert!(err.to_string().contains("stopwise model fetch smollm2-135m"), "{err}");
    let err = resolve_model(Some(Path::new("qwen2.5-coder-1.5b"))).unwrap_err();
    assert!(err.to_string().contains("run `stopwise model fetch qwen2.5-coder-1.5b`"), "{err}");

    // A truncated model is caught by its size, with the same advice.
    let models = home.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(models.join("SmolLM2-135M-Instruct.Q4_1.gguf"), b"GGUF\x03\0\0\0").unwrap();
    let err = resolve_model(None).unwrap_err();
    assert!(matches!(err, FetchError::WrongSize { .. }), "{err:?}");
    assert!(err.to_string().contains("stopwise model fetch smollm2-135m"), "{err}");

    // With the pinned size it resolves, by name or by default, to the file under the home.
    let file = std::fs::OpenOptions::new().write(true).open(models.join("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    file.set_len(98_362_432).unwrap();
    let path = models.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(resolve_model(None).unwrap(), path);
    assert_eq!(resolve_model(Some(Path::new("smollm2-135m"))).unwrap(), path);
}
