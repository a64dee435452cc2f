//! `tokenizer stats` counts against Python: the same tokens per file through a Hugging Face
//! `tokenizer.json` (converted from Baichuan's model by transformers, counted by Python
//! `tokenizers`) and through the SentencePiece model (counted by Python `sentencepiece`).

mod common;

use std::path::PathBuf;
use std::process::Command;

use baichuan_data::tokenizer_stats::{measure, AnyTokenizer};

#[test]
fn token_counts_equal_pythons_for_both_kinds_of_tokenizer() {
    let dir = common::temp_dir("tokenizer-stats");
    let python = common::python();
    assert!(
        python.exists(),
        "{} not found: run scripts/setup.sh first",
        python.display()
    );
    let model = common::root().join("assets/tokenizer.model");
    let files: Vec<PathBuf> = ["kjv.txt", "tang300.txt", "song100.txt"]
        .iter()
        .map(|f| common::root().join("data/sample").join(f))
        .collect();
    let out = Command::new(python)
        .arg(common::root().join("scripts/reference/spm_to_tokenizer_json.py"))
        .arg(&model)
        .arg(&dir)
        .args(&files)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let hf = measure(
        &AnyTokenizer::open(&dir.join("tokenizer.json")).unwrap(),
        &files,
        "text",
    )
    .unwrap();
    let sp = measure(&AnyTokenizer::open(&model).unwrap(), &files, "text").unwrap();
    assert_eq!((hf.vocab_size, sp.vocab_size), (64000, 64000));
    for (i, f) in files.iter().enumerate() {
        let want = &v["files"][f.to_str().unwrap()];
        println!(
            "{}: tokenizer.json {} tokens (Python tokenizers {}), tokenizer.model {} (Python sentencepiece {})",
            f.display(),
            hf.files[i].tokens,
            want["hf_tokens"],
            sp.files[i].tokens,
            want["spm_tokens"]
        );
        assert_eq!(hf.files[i].tokens, want["hf_tokens"].as_u64().unwrap());
        assert_eq!(sp.files[i].tokens, want["spm_tokens"].as_u64().unwrap());
    }
    assert_eq!(sp.total.unk_tokens, 0);
}
