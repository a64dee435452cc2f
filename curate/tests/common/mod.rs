//! Helpers shared by the curation integration tests: temp dirs, the oracle Python, small corpora.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("curate-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

/// The Python of `.venv` (or `$BAICHUAN_PYTHON`) that runs the independent oracles.
pub fn python() -> PathBuf {
    let p = std::env::var_os("BAICHUAN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "{} not found: run scripts/setup.sh first (it creates .venv with the oracles)",
        p.display()
    );
    p
}

/// Runs `scripts/reference/<script>` with `args`; returns stdout, panicking with stderr on failure.
pub fn oracle(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(root().join("scripts/reference").join(script))
        .args(args)
        .output()
        .expect("start the oracle");
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 oracle output")
}

/// A small deterministic RNG for building corpora (splitmix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Lines of a bundled sample file.
pub fn sample_lines(name: &str) -> Vec<String> {
    std::fs::read_to_string(root().join("data/sample").join(name))
        .expect("bundled sample")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// `words` with a fraction `rate` of them replaced by random vocabulary words.
pub fn edit_words(words: &[&str], rate: f64, vocab: &[&str], rng: &mut Rng) -> String {
    words
        .iter()
        .map(|w| {
            if rng.unit() < rate {
                vocab[rng.below(vocab.len())]
            } else {
                *w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
