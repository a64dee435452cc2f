//! Compiles `csrc/spm_train.cc`, the shim over SentencePiece's trainer, against the headers of the
//! SentencePiece source that the `sentencepiece-sys` crate builds (and whose
//! `libsentencepiece_train.a` it leaves on the link path). The headers are found in Cargo's
//! registry, or under `SENTENCEPIECE_SRC` (a directory holding `sentencepiece_trainer.h`).

use std::path::PathBuf;

fn sentencepiece_headers() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SENTENCEPIECE_SRC") {
        return Some(PathBuf::from(dir));
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let registry = home.join("registry").join("src");
    for index in std::fs::read_dir(registry).ok()?.flatten() {
        let dir = index.path().join("sentencepiece-sys-0.14.0").join("source").join("src");
        if dir.join("sentencepiece_trainer.h").exists() {
            return Some(dir);
        }
    }
    None
}

fn main() {
    println!("cargo:rerun-if-changed=csrc/spm_train.cc");
    println!("cargo:rerun-if-env-changed=SENTENCEPIECE_SRC");
    let headers = sentencepiece_headers().unwrap_or_else(|| {
        panic!(
            "sentencepiece-sys 0.14.0's source (sentencepiece_trainer.h) was not found in Cargo's registry; \
             HINT: set SENTENCEPIECE_SRC to its source/src directory"
        )
    });
    cc::Build::new()
        .cpp(true)
        .flag("-std=c++17")
        .include(&headers)
        .file("csrc/spm_train.cc")
        .compile("baichuan_spm_train");
    println!("cargo:rustc-link-lib=static=sentencepiece_train");
}
