//! Helpers shared by the data crate's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use baichuan_data::Tokenizer;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Baichuan tokenizer built by scripts/setup.sh.
pub fn tokenizer() -> Tokenizer {
    let path = root().join("assets/tokenizer.model");
    assert!(path.exists(), "{} missing: run scripts/setup.sh", path.display());
    Tokenizer::open(&path).unwrap()
}

/// The Python of `.venv` (or `$BAICHUAN_PYTHON`) that runs the independent oracles.
pub fn python() -> PathBuf {
    std::env::var_os("BAICHUAN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"))
}

/// A fresh directory `target/test-tmp/prepare/<name>` (emptied if a previous run left it).
pub fn temp_dir(name: &str) -> PathBuf {
    let d = root().join("target/test-tmp/prepare").join(name);
    if d.exists() {
        std::fs::remove_dir_all(&d).unwrap();
    }
    std::fs::create_dir_all(&d).unwrap();
    d
}
