//! End-to-end: `baichuan train` on the bundled sample (a shrunken tiny model) learns, writes
//! its metrics and a model directory that `generate`, `export` and transformers can use (the
//! exports read back by Python safetensors and transformers, the greedy tokens equal to
//! transformers' with the same repetition penalty);
//! `info` plans the 7B model without allocating it; bad configs fail with a clear message.

mod common;

use common::{baichuan, output_ok as run_ok, SMALL};

#[test]
fn train_on_the_sample_then_generate_and_export() {
    let run = common::temp_dir("train-tiny");
    let run_dir = format!("job.run_dir={}", run.display());
    let text = run_ok(baichuan().args(["train", "--config", "config/tiny.toml"]).args([
        "--set",
        &run_dir,
        "--set",
        "train.steps=40",
        "--set",
        "train.micro_batch_size=4",
        "--set",
        "train.global_batch_size=8",
        "--set",
        "data.seq_len=64",
        "--set",
        "model.hidden_size=64",
        "--set",
        "model.intermediate_size=160",
        "--set",
        "model.num_hidden_layers=2",
        "--set",
        "train.warmup_steps=5",
        "--set",
        "train.device=cpu",
    ]));
    // the main job's config is a two-source mixture: each source tokenized into its own cache
    assert!(
        text.contains("data: source \"bible\"")
            && text.contains("data: source \"poems\"")
            && text.contains("data: 2 files"),
        "{text}"
    );

    // metrics: one JSON line per step with the documented fields; the loss falls clearly
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 40);
    for key in [
        "step",
        "tokens",
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "mfu",
        "step_time_s",
        "peak_memory_mb",
    ] {
        assert!(rows[0].get(key).is_some(), "metrics lack {key}");
    }
    assert_eq!(rows[39]["tokens"].as_u64(), Some(40 * 8 * 64));
    let loss = |i: usize| rows[i]["loss"].as_f64().unwrap();
    let first: f64 = (0..5).map(loss).sum::<f64>() / 5.0;
    let last: f64 = (35..40).map(loss).sum::<f64>() / 5.0;
    // from ln(64000) = 11.07 at initialisation
    assert!((first - 11.07).abs() < 0.5, "first losses {first}");
    assert!(last < first - 2.0, "loss did not fall: {first} -> {last}");
    assert!(run.join("config.toml").exists());

    // the saved model generates, streams text, and exports in LLaMA layout
    let model = run.join("model");
    let out = run_ok(baichuan().args([
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "And God said",
        "--max-new-tokens",
        "8",
        "--device",
        "cpu",
    ]));
    assert!(
        out.starts_with("And God said") && out.len() > "And God said".len() + 3,
        "{out}"
    );
    let llama = run.join("llama");
    run_ok(baichuan().args([
        "export",
        "--model",
        model.to_str().unwrap(),
        "--out",
        llama.to_str().unwrap(),
        "--format",
        "llama",
        "--dtype",
        "bf16",
        "--max-shard-size",
        "4MB",
    ]));
    assert!(llama.join("model.safetensors.index.json").exists());
    assert!(llama.join("tokenizer.model").exists());
    let config = std::fs::read_to_string(llama.join("config.json")).unwrap();
    assert!(config.contains("LlamaForCausalLM"));

    // an independent reader: Python safetensors + torch cut each W_pack of the Baichuan-layout
    // model into q/k/v, and transformers reads the sharded bf16 LLaMA export: every weight equal
    // (after rounding to bf16); transformers' greedy generation with its repetition-penalty
    // processor from an fp32 export gives our `generate --ids` tokens
    let fp32 = run.join("llama-fp32");
    run_ok(
        baichuan()
            .args([
                "export",
                "--model",
                model.to_str().unwrap(),
                "--out",
                fp32.to_str().unwrap(),
            ])
            .args(["--format", "llama", "--dtype", "fp32"]),
    );
    let tok = baichuan_data::Tokenizer::open(&model.join("tokenizer.model")).unwrap();
    let prompt: Vec<String> = tok
        .encode("And God said")
        .unwrap()
        .iter()
        .map(|t| t.to_string())
        .collect();
    let ids_out = run_ok(baichuan().args([
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "And God said",
        "--max-new-tokens",
        "8",
        "--repetition-penalty",
        "1.1",
        "--ids",
        "--device",
        "cpu",
    ]));
    let ours: Vec<i64> = ids_out
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("And God said")
        .split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect();
    let r = common::run_oracle(
        "scripts/reference/check_export.py",
        &[
            model.to_str().unwrap(),
            llama.to_str().unwrap(),
            fp32.to_str().unwrap(),
            &prompt.join(","),
            "8",
            "1.1",
        ],
    );
    println!("export and generation oracle: {r}");
    assert_eq!(r["mismatched"], serde_json::json!([]), "{r}");
    assert_eq!(r["missing"], serde_json::json!([]), "{r}");
    assert_eq!(r["llama_dtype"], "torch.bfloat16", "{r}");
    // 2 layers x 9 weights, the embedding, the final norm and the head
    assert_eq!(r["weights_compared"].as_u64(), Some(2 * 9 + 3), "{r}");
    let theirs: Vec<i64> = r["generated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(theirs.len(), 8, "{r}");
    // ours stops at EOS (id 2); transformers here does not: compare up to ours
    assert!(!ours.is_empty() && ours.len() <= 8, "{ids_out}");
    assert_eq!(
        ours[..],
        theirs[..ours.len()],
        "greedy generation differs from transformers'"
    );
    if ours.len() < 8 {
        assert_eq!(ours.last(), Some(&2), "stopped early without EOS: {ours:?}");
    }
}

#[test]
fn info_reports_the_7b_parameter_count_and_a_memory_plan() {
    let out = run_ok(baichuan().args([
        "info",
        "--config",
        "config/baichuan-7b.toml",
        "--world-size",
        "8",
        "--zero-stage",
        "1",
        "--activation-checkpointing",
    ]));
    assert!(out.contains("parameters: 7000559616"), "{out}");
    assert!(out.contains("FLOPs per token at seq 4096"), "{out}");
    assert!(out.contains("total"), "{out}");
}

/// `info --gpu`: the compute terms by hand (7B, 4096 tokens per GPU, single-GPU MFU 0.5 on an
/// H100's 989 TFLOP/s: 46,872,944,640 FLOPs per token x 4096 / 4.945e14 = 388.25 ms, a third
/// forward), a node sweep with its PNG, and errors that name the flag and the fix.
#[test]
fn info_models_a_cluster_step() {
    let dir = common::temp_dir("info-cluster");
    let png = dir.join("sweep.png");
    let out = run_ok(baichuan().args([
        "info",
        "--config",
        "config/baichuan-7b.toml",
        "--gpu",
        "H100",
        "--nodes",
        "2",
        "--zero-stage",
        "2",
        "--set",
        "train.global_batch_size=16",
        "--single-gpu-mfu",
        "0.5",
        "--sweep-nodes",
        "4",
        "--buckets",
        "--plot",
        png.to_str().unwrap(),
    ]));
    assert!(out.contains("16 x H100"), "{out}");
    let ms = |term: &str| -> f64 {
        let line = out.lines().find(|l| l.trim_start().starts_with(term)).unwrap();
        line.split_whitespace().rev().nth(2).unwrap().parse().unwrap()
    };
    assert_eq!((ms("forward"), ms("backward")), (129.4, 258.8), "{out}");
    let rows: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("node sweep"))
        .skip(2)
        .take_while(|l| !l.starts_with("wrote"))
        .collect();
    assert_eq!(rows.len(), 3, "1, 2 and 4 nodes: {out}");
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    // ZeRO 2's per-bucket reduce-scatters: 34 buckets of the 7B at 25 MB (one per block, the
    // head's and the embedding's)
    assert!(out.contains("34 buckets"), "{out}");

    let (ok, text) = common::run(&["info", "--config", "config/baichuan-7b.toml", "--gpu", "V100"]);
    assert!(
        !ok && text.contains("--gpu V100") && text.contains("HINT: one of A800"),
        "{text}"
    );
    let (ok, text) = common::run(&[
        "info",
        "--config",
        "config/baichuan-7b.toml",
        "--gpu",
        "H100",
        "--nodes",
        "3",
        "--set",
        "train.global_batch_size=16",
    ]);
    assert!(
        !ok && text.contains("global_batch_size") && text.contains("HINT"),
        "{text}"
    );
    let (ok, text) = common::run(&["info", "--config", "config/baichuan-7b.toml", "--sweep-nodes", "4"]);
    assert!(!ok && text.contains("--gpu"), "{text}");
}

#[test]
fn init_writes_a_loadable_seed_checkpoint() {
    let dir = common::temp_dir("init");
    let out_dir = dir.join("seed");
    run_ok(baichuan().args([
        "init",
        "--config",
        "config/tiny.toml",
        "--out",
        out_dir.to_str().unwrap(),
        "--set",
        "model.num_hidden_layers=1",
    ]));
    for f in ["config.json", "model.safetensors", "tokenizer.model"] {
        assert!(out_dir.join(f).exists(), "{f} missing");
    }
    let m = baichuan_model::hf::load_pretrained(&out_dir, tch::Device::Cpu).unwrap();
    assert_eq!(m.config.num_hidden_layers, 1);
    // normal(0, 0.02) init
    let std = m.layers[0].mlp.up_proj.std(true).double_value(&[]);
    assert!((std - 0.02).abs() < 1e-3, "{std}");
}

#[test]
fn bad_configs_fail_with_the_key_and_a_hint() {
    let dir = common::temp_dir("bad-config");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[train]\nlearning_rate = 0.1\n").unwrap();
    let out = baichuan()
        .args(["train", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("learning_rate") && err.contains("bad.toml"), "{err}");

    let out = baichuan()
        .args([
            "train",
            "--config",
            "config/tiny.toml",
            "--set",
            "train.global_batch_size=12",
            "--set",
            "train.micro_batch_size=8",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("global_batch_size") && err.contains("HINT"), "{err}");

    let out = baichuan()
        .args([
            "train",
            "--config",
            "config/tiny.toml",
            "--set",
            "data.path=[\"/nonexistent/corpus\"]",
            "--set",
            "data.sources=[]",
            "--set",
            "train.device=cpu",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/corpus"), "{err}");
}

/// Shrinks the tiny preset further so a run takes seconds.

#[test]
fn text_is_tokenized_into_a_reused_cache_and_validation_is_logged() {
    let run = common::temp_dir("train-valid");
    let run_dir = format!("job.run_dir={}", run.display());
    let args = [
        "train",
        "--config",
        "config/tiny.toml",
        "--set",
        &run_dir,
        "--set",
        "train.steps=12",
        "--set",
        "data.valid_fraction=0.02",
        "--set",
        "eval.interval=5",
        "--set",
        "eval.batches=2",
        "--set",
        "data.sources=[]", // one stream of data.path's three files
    ];
    let first = run_ok(baichuan().args(args).args(SMALL));
    assert!(
        first.contains("data: 3 files") && first.contains("validation tokens"),
        "{first}"
    );
    assert!(run.join("token-cache/manifest.json").exists());
    let second = run_ok(baichuan().args(args).args(SMALL));
    assert!(second.contains("up to date"), "the token cache is reused: {second}");

    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let with_valid: Vec<u64> = rows
        .iter()
        .filter(|r| r.get("valid_loss").is_some())
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(
        with_valid,
        vec![5, 10, 12],
        "validation at every eval.interval and after the last step"
    );
    let v = rows[4]["valid_loss"].as_f64().unwrap();
    assert!(v.is_finite() && v > 5.0 && v < 11.5, "{v}");
}

#[test]
fn prepared_shards_train_and_bad_data_is_reported() {
    let dir = common::temp_dir("train-shards");
    let shards = dir.join("shards");
    let out = run_ok(baichuan().args([
        "prepare",
        "--input",
        "data/sample/tang300.txt",
        "data/sample/song100.txt",
        "--tokenizer",
        "assets/tokenizer.model",
        "--out",
        shards.to_str().unwrap(),
        "--jobs",
        "2",
    ]));
    assert!(out.contains("2 files") && out.contains("408 documents"), "{out}");
    let again = run_ok(baichuan().args([
        "prepare",
        "--input",
        "data/sample/tang300.txt",
        "data/sample/song100.txt",
        "--tokenizer",
        "assets/tokenizer.model",
        "--out",
        shards.to_str().unwrap(),
    ]));
    assert!(again.contains("up to date"), "{again}");

    let run_dir = format!("job.run_dir={}", dir.join("run").display());
    let path = format!("data.path=[{:?}]", shards.to_str().unwrap());
    let text = run_ok(
        baichuan()
            .args([
                "train",
                "--config",
                "config/tiny.toml",
                "--set",
                &run_dir,
                "--set",
                &path,
                "--set",
                "data.sources=[]",
                "--set",
                "data.format=shards",
                "--set",
                "train.steps=3",
            ])
            .args(SMALL),
    );
    assert!(text.contains("training tokens"), "{text}");

    // a model whose vocabulary cannot hold the tokenizer's ids
    let out = baichuan()
        .args([
            "train",
            "--config",
            "config/tiny.toml",
            "--set",
            &run_dir,
            "--set",
            &path,
            "--set",
            "data.sources=[]",
            "--set",
            "data.format=shards",
            "--set",
            "model.vocab_size=1000",
        ])
        .args(SMALL)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("vocab_size") && err.contains("HINT"),
        "{err}"
    );

    // a sequence longer than the data
    let tiny = dir.join("tiny.txt");
    std::fs::write(&tiny, "just a few words\n").unwrap();
    let tiny_path = format!("data.path=[{:?}]", tiny.to_str().unwrap());
    let out = baichuan()
        .args([
            "train",
            "--config",
            "config/tiny.toml",
            "--set",
            &run_dir,
            "--set",
            &tiny_path,
            "--set",
            "data.sources=[]",
        ])
        .args(SMALL)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("seq_len"), "{err}");

    // a damaged shard names the file and the fix
    let shard = shards.join("shard-00000.bin");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 1]).unwrap();
    let out = baichuan()
        .args([
            "train",
            "--config",
            "config/tiny.toml",
            "--set",
            &run_dir,
            "--set",
            &path,
            "--set",
            "data.sources=[]",
            "--set",
            "data.format=shards",
        ])
        .args(SMALL)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("shard-00000.bin") && err.contains("truncated"),
        "{err}"
    );
}

#[test]
fn tokenize_round_trips_through_the_cli() {
    let mut child = baichuan()
        .args(["tokenize", "--tokenizer", "assets/tokenizer.model"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all("Hello world 12345\n".as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "24568 1275 31106 53 54 55 56 57"
    );
    let mut child = baichuan()
        .args(["tokenize", "--tokenizer", "assets/tokenizer.model", "--decode"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"24568 1275 31106 53 54 55 56 57")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Hello world 12345");
}
