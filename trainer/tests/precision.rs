//! Precision policies on CPU (tiny model, 50 steps, same seed and data): bf16 and fp16 track
//! the fp32 loss curve; fp16's dynamic loss scaler skips overflowing steps (an initial scale
//! of 2^24 makes the first steps overflow in fp16), backs off, then grows again; activation
//! checkpointing trains identically to none.
//!
//! The data are the sample's Baichuan token ids folded into a 512-token vocabulary (written as
//! a shard), because libtorch's CPU fp16 matrix products are slow and a 64000-wide head would
//! make the fp16 runs take minutes.

mod common;

/// A shard of the sample's ids folded into 512 tokens (made once per test binary).
fn shard() -> String {
    static SHARD: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SHARD
        .get_or_init(|| {
            let dir = common::temp_dir("precision-shard");
            let tok = baichuan_data::Tokenizer::open(&common::tokenizer()).unwrap();
            let text = std::fs::read_to_string(common::root().join("data/sample/kjv.txt")).unwrap();
            let mut ids = Vec::new();
            for line in text.lines().take(3000) {
                ids.extend(tok.encode_document(line).unwrap().into_iter().map(|t| t % 512));
            }
            let path = dir.join("folded.bin");
            let mut w = baichuan_data::shard::ShardWriter::create(&path, 512).unwrap();
            w.write(&ids, 3000).unwrap();
            w.finish().unwrap();
            let setting = format!("data.path=[{:?}]", path.to_str().unwrap());
            std::mem::forget(dir); // the binary's other tests read the shard: left on disk
            setting
        })
        .clone()
}

fn train(name: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    train_in(name, extra).1
}

/// [`train`], keeping the run directory until the caller drops it.
fn train_in(name: &str, extra: &[&str]) -> (common::TempDir, Vec<serde_json::Value>) {
    let run = common::temp_dir(&format!("precision-{name}"));
    let rd = format!("job.run_dir={}", run.display());
    let data = shard();
    let mut args = vec!["train", "--config", "config/tiny.toml", "--set", &rd, "--set", &data];
    args.extend(["--set", "data.sources=[]"]); // one stream, not the config's mixture
    args.extend(
        "--set data.format=shards --set model.vocab_size=512 --set model.hidden_size=64 \
         --set model.intermediate_size=160 --set model.num_hidden_layers=2 --set data.seq_len=32 \
         --set train.micro_batch_size=4 --set train.global_batch_size=8 --set train.steps=50 \
         --set train.warmup_steps=5 --set train.lr=2e-3 --set data.valid_fraction=0.0 --set train.device=cpu"
            .split_whitespace(),
    );
    args.extend(extra);
    let out = common::baichuan().args(&args).output().unwrap();
    assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let rows = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (run, rows)
}

fn losses(rows: &[serde_json::Value]) -> Vec<f64> {
    rows.iter().map(|r| r["loss"].as_f64().unwrap()).collect()
}

/// Mean absolute difference of two loss curves of the same, non-zero length, and the largest
/// difference (infinite when either curve holds a non-finite loss, so no bound can pass it).
fn gap(a: &[f64], b: &[f64]) -> (f64, f64) {
    assert!(
        !a.is_empty() && a.len() == b.len(),
        "curves of {} and {} steps",
        a.len(),
        b.len()
    );
    let d: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(x, y)| {
            if x.is_finite() && y.is_finite() {
                (x - y).abs()
            } else {
                f64::INFINITY
            }
        })
        .collect();
    (
        d.iter().sum::<f64>() / d.len() as f64,
        d.iter().copied().fold(0.0, f64::max),
    )
}

#[test]
fn bf16_and_fp16_track_fp32_and_the_scaler_recovers() {
    let fp32 = losses(&train("fp32", &[]));
    assert!(fp32[49] < fp32[0] - 1.0, "fp32 learns: {} -> {}", fp32[0], fp32[49]);
    for p in ["bf16", "fp16"] {
        let set = format!("train.precision={p}");
        let rows = train(p, &["--set", &set]);
        let (mean, max) = gap(&losses(&rows), &fp32);
        println!("{p}: loss curve vs fp32 over 50 steps: mean |diff| {mean:.4}, max {max:.4}");
        // stated tolerance: within 0.05 nats on average and 0.15 at any step
        assert!(mean <= 0.05 && max <= 0.15, "{p}: mean {mean}, max {max}");
    }

    // fp16 with a scale that overflows: steps are skipped, the scale backs off, then grows
    let rows = train(
        "fp16-overflow",
        &[
            "--set",
            "train.precision=fp16",
            "--set",
            "train.loss_scale=16777216",
            "--set",
            "train.loss_scale_window=5",
        ],
    );
    let skipped = rows.last().unwrap()["skipped_steps"].as_u64().unwrap();
    let scales: Vec<f64> = rows.iter().map(|r| r["loss_scale"].as_f64().unwrap()).collect();
    let lowest = scales.iter().copied().fold(f64::INFINITY, f64::min);
    // after it first reaches its lowest, the scale must grow again at some step (it may back
    // off again later: a grown scale can overflow anew)
    let at = scales.iter().position(|&s| s == lowest).unwrap();
    let regrown = scales[at..].iter().copied().fold(lowest, f64::max);
    println!(
        "fp16 overflow run: {skipped} skipped steps, scale 2^24 -> lowest {lowest} (step {}) -> {regrown} later, final {}",
        at + 1,
        scales[49]
    );
    assert!(skipped >= 1, "the overflowing steps were skipped");
    assert!(
        lowest < 16777216.0 && regrown > lowest,
        "the scale backed off, then grew again"
    );
    let l = losses(&rows);
    assert_eq!(l.len(), 50);
    assert!(l[49] < l[0] - 1.0, "training went on after the skipped steps");
    assert!(rows.iter().all(|r| r["loss"].as_f64().unwrap().is_finite()));
}

/// The fp32 master weights and AdamW moments of a checkpoint, by name (the optimizer shard of a
/// one-rank run).
fn optimizer_state(step_dir: &std::path::Path) -> Vec<(String, tch::Tensor)> {
    let mut t = baichuan_model::hf::read_safetensors(&step_dir.join("optim/shard-00000-of-00001.safetensors")).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

/// A step skipped for inf/NaN gradients leaves the master weights and both moments bitwise
/// alone, and an applied step changes them: fp16 with an initial loss scale of 2^24 (the first
/// steps overflow until the scale has backed off), a checkpoint after every step, each step's
/// state from step 2 on compared with the one before it.
#[test]
fn a_skipped_step_leaves_the_weights_and_moments_alone() {
    let steps = 14;
    let (run, rows) = train_in(
        "fp16-skip-state",
        &[
            "--set",
            "train.precision=fp16",
            "--set",
            "train.loss_scale=16777216",
            "--set",
            "train.loss_scale_window=1000",
            "--set",
            "train.steps=14",
            "--set",
            "checkpoint.interval_steps=1",
            "--set",
            "checkpoint.keep_last=0",
        ],
    );
    assert_eq!(rows.len(), steps);
    let ckpt = run.join("checkpoints");
    let skipped: Vec<u64> = rows.iter().map(|r| r["skipped_steps"].as_u64().unwrap()).collect();
    let (mut checked_skip, mut checked_update) = (0, 0);
    for s in 2..=steps {
        let before = optimizer_state(&ckpt.join(format!("step-{:08}", s - 1)));
        let after = optimizer_state(&ckpt.join(format!("step-{s:08}")));
        assert_eq!(before.len(), after.len());
        assert!(!before.is_empty());
        let same = before.iter().zip(&after).all(|((n, a), (m, b))| n == m && a.equal(b));
        if skipped[s - 1] > skipped[s - 2] {
            assert!(same, "step {s} was skipped but changed the optimizer state");
            checked_skip += 1;
        } else {
            assert!(!same, "step {s} was applied but left the optimizer state as it was");
            checked_update += 1;
        }
    }
    println!("skipped steps per step: {skipped:?}; {checked_skip} skipped and {checked_update} applied steps checked");
    assert!(checked_skip >= 1 && checked_update >= 1, "skipped: {skipped:?}");
}

#[test]
fn activation_checkpointing_trains_identically() {
    let none = losses(&train("ac-none", &["--set", "train.steps=8"]));
    for mode in ["full", "every_n"] {
        let set = format!("train.activation_checkpointing={mode}");
        let ckpt = losses(&train(
            &format!("ac-{mode}"),
            &["--set", "train.steps=8", "--set", &set],
        ));
        let (_, max) = gap(&none[..8], &ckpt);
        assert!(max <= 1e-5, "{mode}: max loss difference {max}");
    }
}

/// Optimizer offload in 16 bits at ZeRO 1: the parameters are the host master
/// weights rounded by the same libtorch conversion, and fp16's unscaling is folded into the
/// host update's gradient scale (a power of two, so exact): on the CPU the losses and the
/// final weights equal those of the run without offload, bit for bit.
#[test]
fn offload_in_bf16_and_fp16_gives_the_same_bits() {
    for p in ["bf16", "fp16"] {
        let set = format!("train.precision={p}");
        let common = ["--set", &set, "--set", "train.steps=12", "--set", "train.zero_stage=1"];
        let (plain_dir, plain) = train_in(&format!("{p}-plain"), &common);
        let mut with = common.to_vec();
        with.extend(["--set", "train.optimizer_offload=cpu"]);
        let (off_dir, off) = train_in(&format!("{p}-offload"), &with);
        assert_eq!(losses(&off), losses(&plain), "{p}: per-step losses");
        let w = |d: &std::path::Path| std::fs::read(d.join("model/model.safetensors")).unwrap();
        assert!(w(&off_dir) == w(&plain_dir), "{p}: final weights differ");
    }
}
