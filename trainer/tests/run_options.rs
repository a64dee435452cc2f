//! Run options that had no test of their own, each checked end to end on a tiny model (CPU):
//! - a learning rate that blows the model up: the NaN/inf steps are skipped (not applied),
//!   counted in `metrics.jsonl`, and `train.max_bad_steps` in a row stop the run with an error;
//! - `checkpoint.async_save = false` writes the same checkpoint, byte for byte, as the
//!   background writer;
//! - `checkpoint.interval_minutes` saves by time when no step interval is set;
//! - `train.grad_accum_dtype = "param"` (fp32 parameters) trains as the fp32 buffer does;
//! - separate `data.valid` files are validated on, tokenized into `<cache>-valid`;
//! - JSONL input (`data.format = "jsonl"`, `data.text_key`) trains on the named field.

mod common;

use common::{run, run_ok};
use std::path::Path;

const TINY: &str = "--set model.hidden_size=32 --set model.intermediate_size=64 --set model.num_hidden_layers=2 \
    --set data.seq_len=16 --set train.device=cpu --set train.micro_batch_size=2 --set train.global_batch_size=4 \
    --set data.valid_fraction=0.0 --set train.log_interval=100 --set train.warmup_steps=2";

fn args(run_dir: &Path, extra: &str) -> Vec<String> {
    common::tiny_train_args(run_dir, TINY, extra)
}

#[test]
fn bad_steps_are_skipped_counted_and_stop_the_run() {
    let dir = common::temp_dir("opt-bad-steps");
    // an absurd learning rate: the first update throws the weights far enough for the loss to
    // overflow from then on
    let (ok, out) = run(&args(
        &dir,
        "--set train.lr=1e30 --set train.min_lr=0 --set train.warmup_steps=0 --set train.max_bad_steps=3 \
         --set train.steps=20 --set checkpoint.interval_steps=1 --set checkpoint.keep_last=0",
    ));
    assert!(!ok, "{out}");
    assert!(
        out.contains("3 bad steps in a row") && out.contains("skipped a bad step"),
        "{out}"
    );
    let rows = common::metrics(&dir);
    let skipped: Vec<u64> = rows.iter().map(|r| r["skipped_steps"].as_u64().unwrap()).collect();
    println!("skipped steps per step: {skipped:?}");
    // the counter climbs by one per skipped step; the third in a row stops the run before its
    // line is written
    let first_bad = skipped.iter().position(|&s| s == 1).expect("a skipped step");
    assert_eq!(&skipped[first_bad..], &[1, 2], "{skipped:?}");
    assert!(out.contains(&format!("at step {}", first_bad + 3)), "{out}");
    // a skipped step is not applied: the optimizer state of the checkpoints after the first
    // bad step equals the one before it
    let state = |step: usize| {
        let p = dir.join(format!(
            "checkpoints/step-{step:08}/optim/shard-00000-of-00001.safetensors"
        ));
        let mut t = baichuan_model::hf::read_safetensors(&p).unwrap();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    if first_bad >= 1 {
        let before = state(first_bad); // saved after step `first_bad`, the last applied one
        let after = state(first_bad + 2); // two skipped steps later
        assert_eq!(before.len(), after.len());
        assert!(before.iter().zip(&after).all(|((n, a), (m, b))| n == m && a.equal(b)));
    }
}

#[test]
fn a_synchronous_save_writes_the_same_checkpoint() {
    let dir = common::temp_dir("opt-sync-save");
    for (name, mode) in [("async", "true"), ("sync", "false")] {
        run_ok(&args(
            &dir.join(name),
            &format!("--set train.steps=6 --set checkpoint.interval_steps=3 --set checkpoint.async_save={mode}"),
        ));
    }
    for step in ["step-00000003", "step-00000006"] {
        for file in ["model.safetensors", "optim/shard-00000-of-00001.safetensors"] {
            let a = std::fs::read(dir.join("async/checkpoints").join(step).join(file)).unwrap();
            let b = std::fs::read(dir.join("sync/checkpoints").join(step).join(file)).unwrap();
            assert!(!a.is_empty() && a == b, "{step}/{file} differs");
        }
        baichuan_trainer::checkpoint::verify(&dir.join("sync/checkpoints").join(step)).unwrap();
    }
}

#[test]
fn interval_minutes_saves_by_time() {
    let dir = common::temp_dir("opt-minutes");
    // 0.0001 minutes = 6 ms: due after every step; no step interval
    run_ok(&args(
        &dir,
        "--set train.steps=4 --set checkpoint.interval_steps=0 --set checkpoint.interval_minutes=0.0001 \
         --set checkpoint.keep_last=0",
    ));
    let mut saved: Vec<String> = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("step-"))
        .collect();
    saved.sort();
    assert_eq!(
        saved,
        ["step-00000001", "step-00000002", "step-00000003", "step-00000004"]
    );
    // and without it, only the end
    let end = dir.join("end-only");
    run_ok(&args(&end, "--set train.steps=4 --set checkpoint.interval_steps=0"));
    let n = std::fs::read_dir(end.join("checkpoints"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("step-"))
        .count();
    assert_eq!(n, 1);
}

#[test]
fn accumulating_in_the_parameters_dtype_trains_as_the_fp32_buffer() {
    let dir = common::temp_dir("opt-accum");
    // 4 micro-batches of 1 per step: the accumulation matters
    let common_args = "--set train.steps=8 --set train.micro_batch_size=1 --set train.global_batch_size=4";
    run_ok(&args(
        &dir.join("fp32"),
        &format!("{common_args} --set train.grad_accum_dtype=\"fp32\""),
    ));
    run_ok(&args(
        &dir.join("param"),
        &format!("{common_args} --set train.grad_accum_dtype=\"param\""),
    ));
    let (a, b) = (common::losses(&dir.join("fp32")), common::losses(&dir.join("param")));
    assert_eq!(a.len(), 8);
    assert_eq!(b.len(), 8);
    for (s, (x, y)) in a.iter().zip(&b).enumerate() {
        // fp32 parameters: both sum in fp32, in another order at most
        assert!(((x - y) / x).abs() <= 1e-5, "step {}: {x} vs {y}", s + 1);
    }
}

#[test]
fn separate_validation_files_and_jsonl_input() {
    let dir = common::temp_dir("opt-data");
    // JSONL with the document under "content", and another field that must not be read
    let kjv = std::fs::read_to_string(common::root().join("data/sample/kjv.txt")).unwrap();
    let jsonl: String = kjv
        .lines()
        .take(2000)
        .map(|l| serde_json::json!({ "content": l, "meta": "NOT-TEXT ".repeat(8) }).to_string() + "\n")
        .collect();
    let train_file = dir.join("train.jsonl");
    std::fs::write(&train_file, jsonl).unwrap();
    let run_dir = dir.join("run");
    let out = run_ok(&args(
        &run_dir,
        &format!(
            "--set data.format=\"jsonl\" --set data.text_key=\"content\" --set data.path=[{:?}] --set data.sources=[] \
             --set data.valid=[\"data/sample/tang300.txt\"] --set eval.interval=3 --set eval.batches=2 \
             --set train.steps=6",
            train_file.to_str().unwrap()
        ),
    ));
    assert!(out.contains("data: 1 files"), "{out}");
    let rows = common::metrics(&run_dir);
    let with_valid: Vec<u64> = rows
        .iter()
        .filter(|r| r.get("valid_loss").is_some())
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(with_valid, [3, 6]);
    // the validation text was tokenized into its own cache beside the training one
    let valid_cache = run_dir.join("token-cache-valid/manifest.json");
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&valid_cache).unwrap()).unwrap();
    assert!(
        manifest["inputs"][0]["path"].as_str().unwrap().ends_with("tang300.txt"),
        "{manifest}"
    );
    // the training cache holds the "content" field only: as many documents as lines written
    let train_manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("token-cache/manifest.json")).unwrap()).unwrap();
    let docs = train_manifest["stats"]["documents"].as_u64().unwrap();
    let nonempty = kjv.lines().take(2000).filter(|l| !l.trim().is_empty()).count() as u64;
    assert_eq!(docs, nonempty);
    let tok = baichuan_data::Tokenizer::open(&common::tokenizer()).unwrap();
    let want: u64 = kjv
        .lines()
        .take(2000)
        .filter(|l| !l.trim().is_empty())
        .map(|l| tok.encode_document(l).unwrap().len() as u64)
        .sum();
    assert_eq!(
        train_manifest["stats"]["tokens"].as_u64(),
        Some(want),
        "the meta field was read"
    );
}

/// `train.spike_zscore`: on a corpus of one repeated sentence with rare lines of random Chinese
/// characters, the batches holding those lines spike once the loss has settled. The steps the
/// run skipped are exactly those the documented rule picks when recomputed here from the logged
/// losses: more than `z` population standard deviations above the mean of the last (up to 100,
/// at least 20) applied steps' losses.
#[test]
fn loss_spikes_are_skipped_by_the_zscore_rule() {
    let dir = common::temp_dir("opt-spikes");
    let mut lines: Vec<String> = vec!["the quick brown fox jumps over the lazy dog".to_string(); 3000];
    let mut x = 12345u64;
    let mut next = |m: u64| {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) % m
    };
    for _ in 0..60 {
        let noise: String = (0..40)
            .map(|_| char::from_u32(0x4e00 + next(0x51ff) as u32).unwrap())
            .collect();
        let at = next(lines.len() as u64) as usize;
        lines.insert(at, noise);
    }
    let data = dir.join("data.txt");
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let z = 3.0;
    let out = run_ok(&args(
        &dir.join("run"),
        &format!(
            "--set train.micro_batch_size=4 --set train.steps=250 --set train.spike_zscore={z} \
             --set data.path=[{:?}] --set checkpoint.interval_steps=0 --set data.sources=[]",
            data.to_str().unwrap()
        ),
    ));
    let rows = common::metrics(&dir.join("run"));
    assert_eq!(rows.len(), 250);
    let mut skipped_at = Vec::new();
    let mut prev = 0;
    for r in &rows {
        let n = r["skipped_steps"].as_u64().unwrap();
        if n > prev {
            skipped_at.push(r["step"].as_u64().unwrap());
        }
        prev = n;
    }
    // the rule, recomputed from the logged losses
    let mut recent: std::collections::VecDeque<f64> = Default::default();
    let mut want = Vec::new();
    for r in &rows {
        let loss = r["loss"].as_f64().unwrap();
        let spike = recent.len() >= 20 && {
            let n = recent.len() as f64;
            let mean = recent.iter().sum::<f64>() / n;
            let sd = (recent.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
            sd > 0.0 && (loss - mean) / sd > z
        };
        if spike {
            want.push(r["step"].as_u64().unwrap());
        } else {
            recent.push_back(loss);
            if recent.len() > 100 {
                recent.pop_front();
            }
        }
    }
    println!("spikes skipped at steps {skipped_at:?}");
    assert!(!want.is_empty(), "the corpus made no spike");
    assert_eq!(skipped_at, want);
    assert_eq!(out.matches("a loss spike").count(), want.len(), "{out}");
}

#[test]
fn document_masking_trains_each_document_alone() {
    // the step's equality with the per-document autograd reference is step.rs's unit test and
    // the model's with transformers model/tests/documents.rs; here the option reaches the step
    let dir = common::temp_dir("opts-docmask");
    let run_with = |name: &str, extra: &str| {
        let run_dir = dir.join(name);
        let text = run_ok(&args(&run_dir, &format!("--set train.steps=3 {extra}")));
        (text, common::losses(&run_dir))
    };
    let (_, plain) = run_with("plain", "");
    let (text, masked) = run_with("masked", "--set data.document_masking=true");
    assert!(
        text.contains("attention: within each document (Dense; loss on the token after EOS: yes)"),
        "{text}"
    );
    let (_, no_first) = run_with(
        "no-first",
        "--set data.document_masking=true --set data.loss_after_eos=false",
    );
    // the first step's weights are the same initialisation: the losses differ only by masking
    assert!((plain[0] - masked[0]).abs() > 1e-6, "{plain:?} {masked:?}");
    assert!((masked[0] - no_first[0]).abs() > 1e-6, "{masked:?} {no_first:?}");
    assert!(masked.iter().chain(&no_first).all(|l| l.is_finite()));
}
