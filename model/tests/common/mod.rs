//! Helpers shared by the model's integration tests: temporary directories under target/ and
//! the Python of `.venv` that runs the independent oracles in scripts/reference/.
#![allow(dead_code)]

use std::path::PathBuf;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A fresh `target/test-tmp/<group>/<name>` directory.
pub fn temp(group: &str, name: &str) -> PathBuf {
    let dir = root().join("target/test-tmp").join(group).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The Python of `.venv` (or `$BAICHUAN_PYTHON`).
pub fn python() -> PathBuf {
    std::env::var_os("BAICHUAN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"))
}

/// Runs `scripts/reference/<script>` with `args` in that Python; it must succeed. Returns stdout.
pub fn oracle(script: &str, args: &[&std::ffi::OsStr]) -> Vec<u8> {
    let out = std::process::Command::new(python())
        .arg(root().join("scripts/reference").join(script))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
