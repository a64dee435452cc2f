//! `tokenizer train` against Python sentencepiece's trainer (scripts/reference/spm_train.py) on
//! the same sample and options: the same pieces, scores and types. The trained model round-trips
//! every line of the bundled sample, splits digits, and turns unseen characters into bytes.

mod common;

use std::process::Command;

use baichuan_data::spm_train::{self, Reservoir, TrainerOptions};
use baichuan_data::Tokenizer;

#[test]
fn trained_model_equals_sentencepieces_own_and_round_trips_the_sample() {
    let dir = common::temp_dir("spm-train");
    let files = baichuan_data::text::list_files(&[common::root().join("data/sample")]).unwrap();
    let opts = TrainerOptions {
        vocab_size: 3000,
        num_threads: 1,
        input_documents: 100_000,
        ..TrainerOptions::default()
    };
    let mut r = Reservoir::new(opts.input_documents, opts.seed);
    spm_train::for_each_document(&files, "text", |d| r.offer(d), |_| {}).unwrap();
    let docs = r.into_docs();
    assert_eq!(
        docs.len(),
        12282 + 95 + 313,
        "a reservoir larger than the corpus keeps it all"
    );
    let sample = dir.join("sample.txt");
    spm_train::write_sample(&docs, &sample).unwrap();
    let started = std::time::Instant::now();
    spm_train::train(&opts, &sample, &dir.join("ours")).unwrap();
    println!("trained 3000 pieces in {:.2} s", started.elapsed().as_secs_f64());

    let mut flags: Vec<(String, String)> = opts.flags(&sample, &dir.join("ours"));
    flags.push(("seed".into(), opts.seed.to_string()));
    let flags_path = dir.join("flags.json");
    std::fs::write(&flags_path, serde_json::to_string(&flags).unwrap()).unwrap();
    let out = Command::new(common::python())
        .arg(common::root().join("scripts/reference/spm_train.py"))
        .arg(&flags_path)
        .arg(dir.join("theirs"))
        .arg(dir.join("ours.model"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value =
        serde_json::from_slice(out.stdout.split(|&b| b == b'\n').find(|l| l.starts_with(b"{")).unwrap()).unwrap();
    assert_eq!(v["ours_normalizer"], v["theirs_normalizer"]);
    let (ours, theirs) = (v["ours"].as_array().unwrap(), v["theirs"].as_array().unwrap());
    assert_eq!(ours.len(), 3000);
    let differ = ours.iter().zip(theirs).filter(|(a, b)| a != b).count();
    println!(
        "{} pieces; {differ} differ from Python sentencepiece {}'s trainer",
        ours.len(),
        v["version"]
    );
    assert_eq!(ours, theirs, "pieces, scores and types");

    let tok = Tokenizer::open(&dir.join("ours.model")).unwrap();
    for doc in &docs {
        for line in doc.lines() {
            let ids = tok.encode(line).unwrap();
            assert_eq!(tok.decode(&ids).unwrap(), line);
            assert!(!ids.contains(&tok.unk_id()), "{line}");
        }
    }
    // Every digit is a token of its own: a digit piece, or its byte piece when the sample has no
    // such digit (the KJV has none; the poems' dates use fullwidth digits).
    for text in ["In 2024, 31415 years", "（９４６－９９９）"] {
        let pieces = tok.encode_pieces(text).unwrap();
        for (_, p) in &pieces {
            let is_byte = p.starts_with("<0x");
            let digits = p.chars().filter(|c| c.is_numeric()).count();
            assert!(is_byte || digits <= 1, "{p:?} in {pieces:?}");
        }
        let digit_count = text.chars().filter(|c| c.is_numeric()).count();
        let digit_tokens = pieces
            .iter()
            .filter(|(_, p)| p.chars().any(|c| c.is_numeric()) || p.starts_with("<0x3"))
            .count();
        assert_eq!(digit_tokens, digit_count, "{pieces:?}");
    }
    // Characters the sample never shows become byte pieces, never <unk>.
    let ids = tok.encode("🦀 鱻").unwrap();
    let bytes = tok.byte_piece_ids();
    assert!(
        !ids.contains(&tok.unk_id()) && ids.iter().filter(|i| bytes.contains(i)).count() >= 4 + 3,
        "{ids:?}"
    );
    assert_eq!(tok.decode(&ids).unwrap(), "🦀 鱻");
}
