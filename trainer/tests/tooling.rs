//! The tools around a run, end to end: training `tiny` (shrunk) with validation writes the
//! expected series to metrics.jsonl and to TensorBoard event files (read back by our reader and
//! by TensorBoard's own, in .venv); `plot` draws two runs into a PNG that Pillow decodes; the
//! trained model goes through `eval mc` (both layouts; each question's prediction compared with
//! transformers' on the same prompts) and `eval ppl` (equal to transformers' on the same tokens).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use baichuan_trainer::metrics::tensorboard::{event_files, EventWriter};
use common::run_ok;
use common::tensorboard::read_scalars;

fn train(run: &Path, lr: &str) {
    let run_dir = format!("job.run_dir={}", run.display());
    let lr = format!("train.lr={lr}");
    let mut args = vec!["train", "--config", "config/tiny.toml", "--set", &run_dir, "--set", &lr];
    for s in [
        "train.steps=30",
        "train.micro_batch_size=4",
        "train.global_batch_size=8",
        "data.seq_len=64",
        "model.hidden_size=64",
        "model.intermediate_size=160",
        "model.num_hidden_layers=2",
        "train.warmup_steps=5",
        "train.device=cpu",
        "eval.interval=10",
        "eval.batches=2",
        "checkpoint.interval_steps=10",
    ] {
        args.push("--set");
        args.push(s);
    }
    run_ok(&args);
}

#[test]
fn metrics_tensorboard_plot_and_evaluation_of_a_trained_run() {
    let dir = common::temp_dir("tooling");
    let (a, b) = (dir.join("lr-3e-3"), dir.join("lr-1e-3"));
    train(&a, "3e-3");
    train(&b, "1e-3");

    // metrics.jsonl: every step, validation (loss and perplexity) on steps 10, 20, 30 only
    let rows = common::metrics(&a);
    assert_eq!(rows.len(), 30);
    let with_valid: Vec<u64> = rows
        .iter()
        .filter(|r| r.get("valid_loss").is_some())
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(with_valid, [10, 20, 30]);
    for r in &rows {
        for key in [
            "loss",
            "lr",
            "grad_norm",
            "tokens_per_s",
            "mfu",
            "peak_memory_mb",
            "loss_scale",
            "skipped_steps",
        ] {
            assert!(r[key].is_number(), "step {}: no {key}", r["step"]);
        }
        if let Some(v) = r["valid_loss"].as_f64() {
            assert!((r["valid_ppl"].as_f64().unwrap() - v.exp()).abs() < 1e-6 * v.exp());
            assert!(v > 0.0 && v < 11.5, "{r}");
        }
    }

    // TensorBoard: our reader (CRCs checked) and TensorBoard's reader agree with the JSONL
    let files = event_files(&a);
    assert_eq!(files.len(), 1, "{files:?}");
    let mut ours: BTreeMap<String, Vec<(i64, f32)>> = BTreeMap::new();
    for s in read_scalars(&files[0]).unwrap() {
        ours.entry(s.tag).or_default().push((s.step, s.value));
    }
    let theirs = common::run_oracle("scripts/reference/read_run.py", &[a.to_str().unwrap()]);
    let theirs = theirs["scalars"].as_object().unwrap();
    for (tag, key) in [
        ("train/loss", "loss"),
        ("train/lr", "lr"),
        ("train/grad_norm", "grad_norm"),
        ("valid/loss", "valid_loss"),
    ] {
        let want: Vec<(i64, f32)> = rows
            .iter()
            .filter_map(|r| Some((r["step"].as_i64()?, r[key].as_f64()? as f32)))
            .collect();
        assert_eq!(ours[tag], want, "{tag}");
        let tb: Vec<(i64, f32)> = theirs[tag]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap() as f32))
            .collect();
        assert_eq!(tb, want, "TensorBoard's reading of {tag}");
    }
    for tag in [
        "valid/ppl",
        "train/tokens_per_s",
        "train/mfu",
        "train/peak_memory_mb",
        "train/loss_scale",
    ] {
        assert!(theirs.contains_key(tag), "TensorBoard lacks {tag}: {:?}", theirs.keys());
    }

    // plot: two runs overlaid; a valid PNG of the asked size with the series' colours
    let png = dir.join("curves.png");
    let text = run_ok(&[
        "plot",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
        "--size",
        "1200x800",
    ]);
    assert!(text.contains("2 runs"), "{text}");
    let seen = common::run_oracle(
        "scripts/reference/read_run.py",
        &[a.to_str().unwrap(), png.to_str().unwrap()],
    );
    assert_eq!(seen["png"]["size"], serde_json::json!([1200, 800]), "{seen}");
    assert!(seen["png"]["colors"].as_u64().unwrap() >= 4, "a blank image: {seen}");
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = common::baichuan()
        .args([
            "plot",
            empty.to_str().unwrap(),
            "--out",
            dir.join("x.png").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("metrics.jsonl"), "{err}");

    // resumed from an older checkpoint, steps 11-30 are trained again: the JSONL keeps one line
    // per step, and TensorBoard (reading both event files) drops the first run's steps 11-30
    let step10 = a.join("checkpoints/step-00000010");
    let run_dir = format!("job.run_dir={}", a.display());
    run_ok(&[
        "train",
        "--config",
        &a.join("config.toml").to_string_lossy(),
        "--set",
        &run_dir,
        "--resume",
        step10.to_str().unwrap(),
    ]);
    let rows = common::metrics(&a);
    let steps: Vec<u64> = rows.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=30).collect::<Vec<_>>());
    assert_eq!(event_files(&a).len(), 2);
    let theirs = common::run_oracle("scripts/reference/read_run.py", &[a.to_str().unwrap()]);
    let loss: Vec<(i64, f32)> = theirs["scalars"]["train/loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap() as f32))
        .collect();
    let want: Vec<(i64, f32)> = rows
        .iter()
        .map(|r| (r["step"].as_i64().unwrap(), r["loss"].as_f64().unwrap() as f32))
        .collect();
    assert_eq!(loss, want, "TensorBoard after the resume");

    // the trained model through both evaluations
    let model = a.join("model");
    let fixtures = common::root().join("trainer/tests/fixtures");
    for (format, data) in [("ceval", "ceval"), ("mmlu", "mmlu")] {
        let out = dir.join(format!("{format}.json"));
        let text = run_ok(&[
            "eval",
            "mc",
            "--model",
            model.to_str().unwrap(),
            "--data",
            fixtures.join(data).to_str().unwrap(),
            "--format",
            format,
            "--device",
            "cpu",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(text.contains("average"), "{text}");
        let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        let acc = r["average"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{r}");
        mc_against_transformers(&model, &dir, format, &fixtures.join(data), &r);
    }
    let (ppl, text) = eval_ppl(&model, Path::new("data/sample"));
    // trained for 30 steps: far better than uniform over 64000 pieces, far from perfect
    assert!(ppl > 5.0 && ppl < 20000.0, "{text}");

    // the same figure from an independent implementation: transformers on an fp32 LLaMA export,
    // the same tokens (a prepared shard of the sample) and the same windows
    let shards = dir.join("sample-shards");
    run_ok(&[
        "prepare",
        "--input",
        "data/sample",
        "--tokenizer",
        model.join("tokenizer.model").to_str().unwrap(),
        "--out",
        shards.to_str().unwrap(),
    ]);
    let (ppl2, _) = eval_ppl(&model, &shards);
    assert_eq!(ppl2, ppl, "text and its prepared shards are the same tokens");
    let llama = llama_export(&model, &dir);
    let oracle = common::run_oracle(
        "scripts/reference/ppl_oracle.py",
        &[
            llama.to_str().unwrap(),
            shards.join("shard-00000.bin").to_str().unwrap(),
            "4000",
            "64",
        ],
    );
    println!("eval ppl {ppl} against transformers {oracle}");
    let want = oracle["ppl"].as_f64().unwrap();
    assert_eq!(oracle["predicted_tokens"].as_u64(), Some(3999), "{oracle}");
    // ours prints 4 decimals; both compute in fp32
    assert!(
        ((ppl - want) / want).abs() <= 1e-4,
        "ppl {ppl} against transformers' {want}"
    );
}

/// `eval ppl` of `model` on `data` (windows of 64, the first 4000 tokens, CPU): the printed
/// perplexity and the whole output.
fn eval_ppl(model: &Path, data: &Path) -> (f64, String) {
    let text = run_ok(&[
        "eval",
        "ppl",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--seq-len",
        "64",
        "--max-tokens",
        "4000",
        "--device",
        "cpu",
    ]);
    let ppl = text
        .split("perplexity ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    (ppl, text)
}

/// `model` exported once in LLaMA layout, fp32, for transformers (`dir/llama-fp32`).
fn llama_export(model: &Path, dir: &Path) -> std::path::PathBuf {
    let llama = dir.join("llama-fp32");
    if !llama.exists() {
        run_ok(&[
            "export",
            "--model",
            model.to_str().unwrap(),
            "--out",
            llama.to_str().unwrap(),
            "--format",
            "llama",
        ]);
    }
    llama
}

/// `eval mc`'s predictions against transformers reading the same prompts (dumped by
/// `--dump-prompts`, tokenized by Python sentencepiece) from an fp32 LLaMA export: the same
/// letter for every question whose top two letter logits are not within 1e-4 (a near tie may
/// fall either way between two fp32 implementations), and those are most questions.
fn mc_against_transformers(model: &Path, dir: &Path, format: &str, data: &Path, ours: &serde_json::Value) {
    let dump = dir.join(format!("{format}-prompts.jsonl"));
    run_ok(&[
        "eval",
        "mc",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--format",
        format,
        "--device",
        "cpu",
        "--out",
        dir.join(format!("{format}-again.json")).to_str().unwrap(),
        "--dump-prompts",
        dump.to_str().unwrap(),
    ]);
    let llama = llama_export(model, dir);
    let r = common::run_oracle(
        "scripts/reference/mc_oracle.py",
        &[
            llama.to_str().unwrap(),
            model.join("tokenizer.model").to_str().unwrap(),
            dump.to_str().unwrap(),
        ],
    );
    let (mut compared, mut total) = (0, 0);
    for (subject, theirs) in r["predictions"].as_object().unwrap() {
        let theirs = theirs.as_str().unwrap();
        let mine = ours["predictions"][subject]
            .as_str()
            .unwrap_or_else(|| panic!("{subject}: {ours}"));
        assert_eq!(mine.len(), theirs.len(), "{format} {subject}");
        let margins = r["margins"][subject].as_array().unwrap();
        for (i, (a, b)) in mine.chars().zip(theirs.chars()).enumerate() {
            total += 1;
            if margins[i].as_f64().unwrap() > 1e-4 {
                compared += 1;
                assert_eq!(a, b, "{format} {subject} question {i}: ours {a}, transformers {b}");
            }
        }
    }
    println!("{format}: {compared} of {total} predictions compared with transformers', all equal");
    assert!(total > 0 && compared * 4 >= total * 3, "{compared} of {total} compared");
}

/// The event writer's records decode back to the scalars written; a torn tail is ignored and a
/// flipped byte inside is reported.
#[test]
fn scalars_round_trip_and_damage_is_detected() {
    let dir = std::env::temp_dir().join(format!("baichuan-tb-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let mut w = EventWriter::create(&dir, 0).unwrap();
    w.scalars(1, &[("train/loss", 10.5), ("train/lr", 3e-4)]).unwrap();
    w.scalars(300, &[("train/loss", 2.25)]).unwrap();
    w.flush().unwrap();
    let path = w.path().to_path_buf();
    drop(w);
    assert_eq!(event_files(&dir), vec![path.clone()]);
    let got = read_scalars(&path).unwrap();
    let want = [
        (1, "train/loss", 10.5f32),
        (1, "train/lr", 3e-4),
        (300, "train/loss", 2.25),
    ];
    assert_eq!(got.len(), want.len());
    for (g, (s, t, v)) in got.iter().zip(want) {
        assert_eq!((g.step, g.tag.as_str(), g.value), (s, t, v));
    }
    // a torn tail is ignored; a flipped byte inside is an error
    let mut bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    assert_eq!(read_scalars(&path).unwrap().len(), 2);
    let n = bytes.len();
    bytes[n - 10] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    assert!(read_scalars(&path).is_err_and(|e| e.contains("damaged")));
    std::fs::remove_dir_all(&dir).unwrap();
}
