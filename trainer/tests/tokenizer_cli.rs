//! `baichuan tokenizer train` and `tokenizer stats` through the binary: a small vocabulary on
//! the sample, the printed default options parse back, a bad key is named, stats as JSON.

mod common;

use common::{baichuan, output_ok, run, temp_dir};

#[test]
fn train_then_stats_and_options_round_trip() {
    let dir = temp_dir("tokenizer-cli");
    let defaults = output_ok(baichuan().args(["tokenizer", "train", "--print-config"]));
    assert!(
        defaults.contains("split_digits = true") && defaults.contains("vocab_size = 64000"),
        "{defaults}"
    );
    let config = dir.join("tok.toml");
    std::fs::write(&config, defaults.replace("vocab_size = 64000", "vocab_size = 3000")).unwrap();
    let out_dir = dir.join("tok");
    let out = output_ok(
        baichuan()
            .args([
                "tokenizer",
                "train",
                "--input",
                "data/sample/tang300.txt",
                "data/sample/kjv.txt",
                "--config",
            ])
            .arg(&config)
            .args(["--user-defined-symbols", "<|im_start|>", "--out"])
            .arg(&out_dir),
    );
    assert!(out.contains("3000 pieces"), "{out}");
    let vocab = std::fs::read_to_string(out_dir.join("tokenizer.vocab")).unwrap();
    assert!(
        vocab.lines().any(|l| l.starts_with("<|im_start|>\t")),
        "the reserved symbol is a piece"
    );
    let json = output_ok(
        baichuan()
            .args([
                "tokenizer",
                "stats",
                "--json",
                "--input",
                "data/sample/song100.txt",
                "--tokenizer",
            ])
            .arg(out_dir.join("tokenizer.model")),
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["vocab_size"], 3000);
    assert_eq!(v[0]["total"]["documents"], 95);
    assert_eq!(v[0]["total"]["unk_tokens"], 0, "byte fallback: nothing is unknown");

    std::fs::write(&config, "vocab_sise = 10\n").unwrap();
    let (ok, err) = run(&[
        "tokenizer",
        "train",
        "--input",
        "data/sample/song100.txt",
        "--out",
        out_dir.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("tok.toml") && err.contains("vocab_sise"), "{err}");
}
