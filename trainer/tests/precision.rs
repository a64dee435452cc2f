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
            format!("data.path=[{:?}]", path.to_str().unwrap())
        })
        .clone()
}

fn train(name: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let run = common::temp_dir(&format!("precision-{name}"));
    let rd = format!("job.run_dir={}", run.display());
    let data = shard();
    let mut args = vec!["train", "--config", "config/tiny.toml", "--set", &rd, "--set", &data];
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
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn losses(rows: &[serde_json::Value]) -> Vec<f64> {
    rows.iter().map(|r| r["loss"].as_f64().unwrap()).collect()
}

/// Mean absolute difference of two loss curves, and the largest difference.
fn gap(a: &[f64], b: &[f64]) -> (f64, f64) {
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| (x - y).abs()).collect();
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
    assert!(l[49] < l[0] - 1.0, "training went on after the skipped steps");
    // a skipped step leaves the weights alone: the loss of the next step is computed from the
    // same weights on new data, so no jump beyond the data's own spread
    assert!(rows.iter().all(|r| r["loss"].as_f64().unwrap().is_finite()));
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
