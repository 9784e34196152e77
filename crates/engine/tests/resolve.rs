//! `resolve_model` errors say what is wrong and what to do. A separate test binary because it
//! points `STOPWISE_HOME` at an empty directory, which would hide the model from other tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use stopwise_engine::{resolve_model, FetchError};

#[test]
fn missing_explicit_path_is_an_error_that_says_what_to_do() {
    let err = resolve_model(Some(Path::new("/nonexistent/model.gguf"))).unwrap_err();
    assert!(matches!(err, FetchError::Missing { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("/nonexistent/model.gguf"), "{message}");
    assert!(message.contains("stopwise model fetch"), "{message}");
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
fn default_model_must_be_fetched_first() {
    let home = tempfile::tempdir().unwrap();
    // Only this test in this binary reads STOPWISE_HOME.
    std::env::set_var("STOPWISE_HOME", home.path());
    let err = resolve_model(None).unwrap_err();
    assert!(matches!(err, FetchError::Missing { .. }), "{err:?}");
    assert!(err.to_string().contains("stopwise model fetch"), "{err}");

    // A truncated default model is caught by its size, with the same advice.
    let models = home.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(models.join("SmolLM2-135M-Instruct.Q4_1.gguf"), b"GGUF\x03\0\0\0").unwrap();
    let err = resolve_model(None).unwrap_err();
    assert!(matches!(err, FetchError::WrongSize { .. }), "{err:?}");
    assert!(err.to_string().contains("stopwise model fetch"), "{err}");
}
