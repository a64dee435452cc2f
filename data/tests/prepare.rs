//! `prepare` end to end on a small corpus with awkward content (JSONL, invalid UTF-8, empty
//! lines, a line longer than a chunk, no final newline), cut into tiny chunks and shards so
//! every path of the pipeline runs: the shards hold exactly the tokens of a plain sequential
//! line-by-line encoding, the manifest makes re-runs no-ops until an input changes, and the
//! sample loader over the shards sees every sample once per epoch on 1 to 4 ranks.

mod common;

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use baichuan_data::prepare::{prepare, Manifest, PrepareOptions};
use baichuan_data::shard::ShardSet;
use baichuan_data::{Loader, TokenSource, Tokenizer};

/// The corpus and the ids a plain sequential encoding gives (files in sorted order).
fn corpus(dir: &Path, tok: &Tokenizer) -> (Vec<u32>, u64) {
    let kjv = fs::read_to_string(common::root().join("data/sample/kjv.txt")).unwrap();
    let poems = fs::read_to_string(common::root().join("data/sample/tang300.txt")).unwrap();
    let a: String = kjv.lines().take(400).map(|l| format!("{l}\n")).collect();
    let mut b: Vec<u8> = Vec::new();
    b.extend_from_slice("第一行\n\n   \n".as_bytes());
    b.extend_from_slice(b"broken \xff\xfe utf8 line\n");
    b.extend_from_slice(poems.lines().take(30).collect::<Vec<_>>().join("\n").as_bytes()); // no final newline
    let long_line = "长".repeat(20_000) + "\n"; // 60 KB, longer than a chunk
    let jsonl = format!(
        "{}\n{}\n",
        serde_json::json!({"text": "JSON document one", "id": 1}),
        serde_json::json!({"text": long_line.trim_end()})
    );
    fs::write(dir.join("a.txt"), &a).unwrap();
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("sub/b.txt"), &b).unwrap();
    fs::write(dir.join("c.jsonl"), &jsonl).unwrap();
    fs::write(dir.join("ignored.csv"), "not,text\n").unwrap();

    let mut ids = Vec::new();
    let mut docs = 0;
    let b_text = String::from_utf8_lossy(&b).to_string();
    let docs_a: Vec<String> = a.lines().map(String::from).collect();
    let docs_c = vec!["JSON document one".to_string(), long_line.trim_end().to_string()];
    let docs_b: Vec<String> = b_text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect();
    // sorted path order: a.txt, c.jsonl, sub/b.txt
    for doc in docs_a.iter().chain(&docs_c).chain(&docs_b) {
        ids.extend(tok.encode_document(doc).unwrap());
        docs += 1;
    }
    (ids, docs)
}

#[test]
fn shards_hold_exactly_the_sequential_encoding_and_reruns_are_no_ops() {
    let tok = common::tokenizer();
    let dir = common::temp_dir("exact");
    let input = dir.join("in");
    fs::create_dir_all(&input).unwrap();
    let (want, docs) = corpus(&input, &tok);
    let out = dir.join("out");
    let mut opts = PrepareOptions::new(vec![input.clone()], out.clone());
    opts.jobs = 3;
    opts.chunk_bytes = 4096;
    opts.shard_tokens = 5000;
    let s = prepare(&tok, &opts, &|_, _| {}).unwrap();
    assert!(!s.up_to_date);
    let m = &s.manifest;
    assert_eq!(m.stats.files, 3);
    assert_eq!(m.stats.documents, docs);
    assert_eq!(m.stats.tokens, want.len() as u64);
    assert_eq!(m.stats.empty_lines, 2);
    assert_eq!(m.stats.invalid_utf8_lines, 1);
    assert!(m.shards.len() > 2, "expected several shards, got {}", m.shards.len());

    let set = ShardSet::open(&m.shard_paths(&out)).unwrap();
    assert_eq!(set.num_tokens(), want.len() as u64);
    assert_eq!(set.num_documents(), docs);
    let mut got = vec![0u32; want.len()];
    set.read(0, &mut got);
    assert_eq!(got, want, "the shards hold the sequential encoding, in order");
    assert_eq!(
        fs::metadata(out.join(&m.shards[0].file)).unwrap().len(),
        64 + 2 * m.shards[0].tokens,
        "u16 ids"
    );

    // unchanged input: nothing to do; a touched input: redone
    let again = prepare(&tok, &opts, &|_, _| {}).unwrap();
    assert!(again.up_to_date);
    assert_eq!(Manifest::read(&out).unwrap(), again.manifest);
    fs::write(input.join("a.txt"), "a changed file\n").unwrap();
    let redone = prepare(&tok, &opts, &|_, _| {}).unwrap();
    assert!(!redone.up_to_date);
    assert!(redone.manifest.stats.tokens < m.stats.tokens);

    // a damaged shard is noticed and rewritten
    let first = out.join(&redone.manifest.shards[0].file);
    let bytes = fs::read(&first).unwrap();
    fs::write(&first, &bytes[..bytes.len() - 2]).unwrap();
    let repaired = prepare(&tok, &opts, &|_, _| {}).unwrap();
    assert!(!repaired.up_to_date);
    assert!(ShardSet::open(&repaired.manifest.shard_paths(&out)).is_ok());
}

#[test]
fn every_sample_appears_once_per_epoch_over_shards_for_1_to_4_ranks() {
    let tok = common::tokenizer();
    let dir = common::temp_dir("epoch");
    let input = dir.join("in");
    fs::create_dir_all(&input).unwrap();
    corpus(&input, &tok);
    let out = dir.join("out");
    let mut opts = PrepareOptions::new(vec![input], out.clone());
    opts.shard_tokens = 3000;
    opts.chunk_bytes = 8192;
    let m = prepare(&tok, &opts, &|_, _| {}).unwrap().manifest;
    let seq = 32u64;
    for world in 1..=4u64 {
        let global = 12u64; // divisible by 1..=4 ranks, not by the sample count
        let mut rows: Vec<Vec<u32>> = Vec::new();
        let mut ids = Vec::new();
        let mut num_samples = 0;
        for rank in 0..world {
            let set = ShardSet::open(&m.shard_paths(&out)).unwrap();
            let mut l = Loader::new(set, seq, global, 5, rank, world).unwrap();
            num_samples = l.order().num_samples();
            for _ in 0..num_samples / global {
                let b = l.next_batch();
                rows.extend(b.tokens.chunks(seq as usize + 1).map(|r| r.to_vec()));
                ids.extend(b.sample_ids);
            }
        }
        let unique: HashSet<u64> = ids.iter().copied().collect();
        assert_eq!(
            unique.len() as u64,
            (num_samples / global) * global,
            "world {world}: a sample repeated"
        );
        // and the rows are the stream's tokens at those samples
        let set = ShardSet::open(&m.shard_paths(&out)).unwrap();
        for (row, id) in rows.iter().zip(&ids) {
            let mut want = vec![0u32; seq as usize + 1];
            set.read(id * seq, &mut want);
            assert_eq!(row, &want);
        }
    }
}

#[test]
fn missing_and_empty_inputs_are_clear_errors() {
    let tok = common::tokenizer();
    let dir = common::temp_dir("bad");
    let e = prepare(
        &tok,
        &PrepareOptions::new(vec![dir.join("nope")], dir.join("o")),
        &|_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("nope"), "{e}");
    let empty = dir.join("empty");
    fs::create_dir_all(&empty).unwrap();
    let e = prepare(
        &tok,
        &PrepareOptions::new(vec![empty.clone()], dir.join("o")),
        &|_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no .txt or .jsonl"), "{e}");
    fs::write(empty.join("blank.txt"), "\n\n  \n").unwrap();
    let e = prepare(&tok, &PrepareOptions::new(vec![empty], dir.join("o")), &|_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("no documents"), "{e}");
    let j = dir.join("j");
    fs::create_dir_all(&j).unwrap();
    fs::write(j.join("x.jsonl"), "{\"body\": \"hi\"}\n").unwrap();
    let e = prepare(&tok, &PrepareOptions::new(vec![j], dir.join("o2")), &|_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("x.jsonl:1") && e.contains("text"), "{e}");
}

/// A re-run whose input now has a broken JSONL line fails and leaves the previous shards and
/// manifest exactly as they were, with no temporary directory behind.
#[test]
fn a_failed_rerun_leaves_the_previous_output_intact() {
    let tok = common::tokenizer();
    let dir = common::temp_dir("failed-rerun");
    let input = dir.join("docs.jsonl");
    let line = |t: &str| serde_json::json!({ "text": t }).to_string() + "\n";
    fs::write(&input, line("the first document") + &line("the second document")).unwrap();
    let out = dir.join("out");
    let opts = PrepareOptions::new(vec![input.clone()], out.clone());
    let first = prepare(&tok, &opts, &|_, _| {}).unwrap();
    let snapshot = |out: &Path| {
        let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(out)
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().to_string(),
                    fs::read(e.path()).unwrap_or_default(),
                )
            })
            .collect();
        files.sort();
        files
    };
    let before = snapshot(&out);
    assert!(
        before.iter().any(|(n, _)| n == "shard-00000.bin"),
        "{:?}",
        before.iter().map(|f| &f.0).collect::<Vec<_>>()
    );

    fs::write(
        &input,
        line("the first document") + "{\"text\": \"cut off\n" + &line("third"),
    )
    .unwrap();
    let e = prepare(&tok, &opts, &|_, _| {}).unwrap_err().to_string();
    assert!(e.contains("docs.jsonl:2"), "{e}");
    assert_eq!(snapshot(&out), before, "the failed run changed the previous output");
    let set = ShardSet::open(&first.manifest.shard_paths(&out)).unwrap();
    set.check(tok.vocab_size() as u64, true).unwrap();
    assert_eq!(set.num_documents(), 2);
}

/// Random bytes are not text: above `max_invalid_fraction` of invalid UTF-8 lines prepare
/// stops, naming the input and the limit; raising the limit lets it through.
#[test]
fn random_bytes_are_refused_as_text() {
    let tok = common::tokenizer();
    let dir = common::temp_dir("garbage");
    let input = dir.join("noise.txt");
    // a fixed xorshift stream: 64 KB of bytes, a newline every 64
    let mut x = 0x9e3779b97f4a7c15u64;
    let bytes: Vec<u8> = (0..65536)
        .map(|i| {
            if i % 64 == 63 {
                return b'\n';
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = (x >> 24) as u8;
            if b == b'\n' {
                0xff
            } else {
                b
            }
        })
        .collect();
    fs::write(&input, &bytes).unwrap();
    let mut opts = PrepareOptions::new(vec![input], dir.join("out"));
    let e = prepare(&tok, &opts, &|_, _| {}).unwrap_err().to_string();
    assert!(
        e.contains("noise.txt") && e.contains("not valid UTF-8") && e.contains("10.0%"),
        "{e}"
    );
    assert!(!dir.join("out/manifest.json").exists());
    let leftovers: Vec<_> = fs::read_dir(dir.join("out"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    opts.max_invalid_fraction = 1.0;
    let s = prepare(&tok, &opts, &|_, _| {}).unwrap();
    assert!(s.manifest.stats.invalid_utf8_lines > 1000);
}
