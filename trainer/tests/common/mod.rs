//! Helpers shared by the trainer's integration tests: the repository root, the `baichuan`
//! binary and its output, the oracle Python, temporary directories, a run's metrics, and a
//! reader of TensorBoard event files ([`tensorboard`]).
#![allow(dead_code)]

pub mod tensorboard;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `train --config config/tiny.toml --set job.run_dir=<run_dir>`, then the whitespace-separated
/// words of `settings` and of `extra`.
pub fn tiny_train_args(run_dir: &Path, settings: &str, extra: &str) -> Vec<String> {
    tiny_args("train", run_dir, settings, extra)
}

/// The words of `head` (`train`, or `launch --nproc N ...`), then `--config config/tiny.toml`
/// with `job.run_dir=<run>`, then the words of `settings` and of `extra`.
pub fn tiny_args(head: &str, run: &Path, settings: &str, extra: &str) -> Vec<String> {
    let mut v: Vec<String> = head.split_whitespace().map(String::from).collect();
    v.extend([
        "--config".into(),
        "config/tiny.toml".into(),
        "--set".into(),
        format!("job.run_dir={}", run.display()),
    ]);
    v.extend(settings.split_whitespace().map(String::from));
    v.extend(extra.split_whitespace().map(String::from));
    v
}

/// The repository root: `$BAICHUAN_ROOT` (for test binaries carried to another machine by
/// scripts/gpu_check.sh) or the source tree they were built from.
pub fn root() -> PathBuf {
    std::env::var_os("BAICHUAN_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."))
}

/// The `baichuan` binary under test, run from the repository root.
pub fn baichuan() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_baichuan"));
    c.current_dir(root());
    c
}

/// A finished command's stdout and stderr, together.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `cmd`, which must succeed; returns its output.
pub fn output_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run baichuan");
    let text = text(&out);
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// Runs `baichuan args`: whether it succeeded, and its output.
pub fn run<S: AsRef<OsStr>>(args: &[S]) -> (bool, String) {
    let out = baichuan().args(args).output().expect("run baichuan");
    (out.status.success(), text(&out))
}

/// Runs `baichuan args`, which must succeed; returns its output.
pub fn run_ok<S: AsRef<OsStr>>(args: &[S]) -> String {
    output_ok(baichuan().args(args))
}

/// The Python of `.venv` (or `$BAICHUAN_PYTHON`) that runs the independent oracles.
pub fn python() -> PathBuf {
    let p = std::env::var_os("BAICHUAN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "{} not found: run scripts/setup.sh first (it creates .venv)",
        p.display()
    );
    p
}

/// Runs a reference script and returns the JSON object of its last stdout line.
pub fn run_oracle(script: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(python())
        .arg(root().join(script))
        .args(args)
        .output()
        .expect("start the oracle");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().expect("oracle printed a result");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{script}: {e}: {last}"))
}

/// The tokenizer built by scripts/setup.sh.
pub fn tokenizer() -> PathBuf {
    let p = root().join("assets/tokenizer.model");
    assert!(p.exists(), "{} not found: run scripts/setup.sh first", p.display());
    p
}

/// A fresh temporary directory `target/test-tmp/<name>`, removed when the guard drops at the end
/// of a passing test (runs of the tiny model write tens of MB per checkpoint, and the suite
/// together would fill gigabytes); a failing test leaves it for inspection, and the next run
/// empties it first.
pub fn temp_dir(name: &str) -> TempDir {
    let dir = root().join("target/test-tmp").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// See [`temp_dir`]: derefs to the directory's path.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<OsStr> for TempDir {
    fn as_ref(&self) -> &OsStr {
        self.0.as_os_str()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The per-step rows of `<run>/metrics.jsonl`.
pub fn metrics(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The per-step losses of `<run>/metrics.jsonl`.
pub fn losses(run: &Path) -> Vec<f64> {
    metrics(run).iter().map(|r| r["loss"].as_f64().unwrap()).collect()
}

/// A one-layer model of width 32 and short sequences on the CPU: a few steps run in seconds.
pub const SMALL: [&str; 14] = [
    "--set",
    "model.hidden_size=32",
    "--set",
    "model.intermediate_size=64",
    "--set",
    "model.num_hidden_layers=1",
    "--set",
    "train.micro_batch_size=4",
    "--set",
    "train.global_batch_size=8",
    "--set",
    "data.seq_len=32",
    "--set",
    "train.device=cpu",
];
