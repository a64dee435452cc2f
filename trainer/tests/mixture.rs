//! Data mixtures end to end on CPU (tiny model, the bundled sample's two sources):
//! - per-source accounting: every step's `sources` tokens in `metrics.jsonl` add up to the
//!   step's tokens, the checkpoint manifest holds each source's draws, per-source validation
//!   losses are logged and `valid_loss` is their mean;
//! - a phase that moves all weight to one source at step 5: the other's tokens stop growing
//!   there, and a run stopped at step 4 resumes across the change to the same losses;
//! - a capped source stops the run where it runs out, saying so, and a longer run is refused;
//! - config errors name the key;
//! - DoReMi on a synthetic mixture of one learnable domain (one sentence repeated) and one of
//!   random letters: the learnable domain's learned weight rises above its uniform 1/2.
//!
//! Exact continuation at other world sizes runs in checkpoint.rs (config/tiny.toml is a mixture).

mod common;

use std::path::{Path, PathBuf};

use common::{run, run_ok};

/// A config file in `dir` for a one-layer model on `sources` (TOML `[[data.sources]]` tables).
fn config(dir: &Path, name: &str, sources: &str, train: &str) -> PathBuf {
    let run = dir.join(name);
    let text = format!(
        r#"[job]
run_dir = "{}"
seed = 7

[model]
preset = "tiny"
hidden_size = 32
intermediate_size = 64
num_hidden_layers = 1

[data]
tokenizer = "assets/tokenizer.model"
seq_len = 32
valid_fraction = 0.05

{sources}

[train]
steps = 8
micro_batch_size = 4
global_batch_size = 8
device = "cpu"
warmup_steps = 2
lr = 3e-3
log_interval = 1
{train}

[eval]
interval = 4
batches = 1
"#,
        run.display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

const BIBLE_AND_POEMS: &str = r#"
[[data.sources]]
name = "bible"
path = ["data/sample/kjv.txt"]
weight = 3

[[data.sources]]
name = "poems"
path = ["data/sample/tang300.txt", "data/sample/song100.txt"]
weight = 1
"#;

fn train(config: &Path, extra: &[&str]) -> String {
    let mut args = vec!["train", "--config", config.to_str().unwrap()];
    args.extend(extra);
    run_ok(&args)
}

fn source_tokens(row: &serde_json::Value, name: &str) -> u64 {
    row["sources"][name]["tokens"].as_u64().unwrap()
}

#[test]
fn sources_are_counted_and_a_phase_change_resumes_exactly() {
    let dir = common::temp_dir("mixture-phases");
    let sources = format!("{BIBLE_AND_POEMS}\n[[data.phases]]\nstart_step = 5\nweights = {{ poems = 1.0 }}\n");
    let straight = config(&dir, "straight", &sources, "");
    train(&straight, &[]);
    let run_dir = dir.join("straight");
    let rows = common::metrics(&run_dir);
    assert_eq!(rows.len(), 8);
    for r in &rows {
        let total = source_tokens(r, "bible") + source_tokens(r, "poems");
        assert_eq!(total, r["tokens"].as_u64().unwrap(), "{r}");
    }
    // 3:1 before step 5: 32 samples, bible's share within 4 standard deviations of 24
    let bible_at_4 = source_tokens(&rows[3], "bible") / 32;
    assert!((24 - 4 * 3..=24 + 4 * 3).contains(&(bible_at_4 as i64)), "{bible_at_4}");
    // from step 5 (the 5th batch) only poems
    for r in &rows[4..] {
        assert_eq!(source_tokens(r, "bible"), source_tokens(&rows[3], "bible"), "{r}");
    }
    // evaluation steps: one validation loss per source, valid_loss their mean
    for r in [&rows[3], &rows[7]] {
        let (b, p) = (
            r["sources"]["bible"]["valid_loss"].as_f64().unwrap(),
            r["sources"]["poems"]["valid_loss"].as_f64().unwrap(),
        );
        assert!((r["valid_loss"].as_f64().unwrap() - (b + p) / 2.0).abs() < 1e-9, "{r}");
    }
    assert!(rows[0]["sources"]["poems"].get("valid_loss").is_none());
    // TensorBoard has the same series
    let events = baichuan_trainer::metrics::tensorboard::event_files(&run_dir);
    let scalars = common::tensorboard::read_scalars(&events[0]).unwrap();
    let tb: Vec<f32> = scalars
        .iter()
        .filter(|s| s.tag == "sources/poems/tokens")
        .map(|s| s.value)
        .collect();
    let jsonl: Vec<f32> = rows.iter().map(|r| source_tokens(r, "poems") as f32).collect();
    assert_eq!(tb, jsonl);
    assert_eq!(scalars.iter().filter(|s| s.tag == "valid/loss/bible").count(), 2);
    // the manifest holds the draws of each source
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run_dir.join("checkpoints/step-00000008/manifest.json")).unwrap(),
    )
    .unwrap();
    let loader = &manifest["loader"];
    assert_eq!(loader["next_sample"], 64);
    let drawn: Vec<u64> = loader["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["drawn"].as_u64().unwrap())
        .collect();
    assert_eq!(drawn.iter().sum::<u64>(), 64);
    assert_eq!(drawn[0] * 32, source_tokens(&rows[7], "bible"));
    // stopped before the change and resumed across it: the same losses
    let resumed = config(&dir, "resumed", &sources, "");
    train(&resumed, &["--stop-after", "4"]);
    let text = train(&resumed, &[]);
    assert!(text.contains("resumed from"), "{text}");
    assert_eq!(common::losses(&dir.join("resumed")), common::losses(&run_dir));
}

#[test]
fn a_capped_source_stops_the_run_where_it_runs_out() {
    let dir = common::temp_dir("mixture-cap");
    let sources = r#"
[[data.sources]]
name = "bible"
path = ["data/sample/kjv.txt"]

[[data.sources]]
name = "poems"
path = ["data/sample/tang300.txt", "data/sample/song100.txt"]
max_tokens = 640
"#;
    let cfg = config(&dir, "run", sources, "");
    let text = train(&cfg, &["--set", "train.steps=40"]);
    // 640 tokens = 20 samples of 32; about 4 poems a step: it runs out near step 5
    assert!(text.contains("reaches its cap of 20 samples"), "{text}");
    let rows = common::metrics(&dir.join("run"));
    let last = rows.last().unwrap();
    assert!(
        rows.len() < 40 && text.contains(&format!("stopped after step {} of 40", rows.len())),
        "{text}"
    );
    assert!(source_tokens(last, "poems") <= 640, "{last}");
    assert!(
        dir.join("run/model/model.safetensors").exists(),
        "the run ends normally"
    );
    // the cap would be passed by the very next step: a resume cannot go on
    let (ok, text) = run(&["train", "--config", cfg.to_str().unwrap(), "--set", "train.steps=40"]);
    assert!(!ok && text.contains("cannot go on") && text.contains("HINT"), "{text}");
}

#[test]
fn mixture_config_errors_name_the_key() {
    let dir = common::temp_dir("mixture-errors");
    for (sources, extra, want) in [
        (
            format!("{BIBLE_AND_POEMS}\n[[data.phases]]\nstart_step = 3\nweights = {{ poem = 1.0 }}\n"),
            vec![],
            "\"poem\", which is not a source",
        ),
        (
            BIBLE_AND_POEMS.to_string(),
            vec!["--set", "data.path=[\"x\"]"],
            "both data.path and [[data.sources]]",
        ),
        (
            BIBLE_AND_POEMS.replace("weight = 1", "weight = -1"),
            vec![],
            "weight -1",
        ),
        (BIBLE_AND_POEMS.replace("\"poems\"", "\"bible\""), vec![], "used twice"),
    ] {
        let cfg = config(&dir, "run", &sources, "");
        let mut args = vec!["train", "--config", cfg.to_str().unwrap()];
        args.extend(extra);
        let (ok, text) = run(&args);
        assert!(!ok && text.contains(want), "want {want:?}:\n{text}");
    }
}

#[test]
fn doremi_raises_the_weight_of_the_learnable_domain() {
    let dir = common::temp_dir("mixture-doremi");
    // one sentence repeated (learnable) against random letters (noise)
    let learnable = "the quick brown fox jumps over the lazy dog and the cat sleeps on the warm mat\n".repeat(600);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut noise = String::new();
    for _ in 0..600 {
        for i in 0..80 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            noise.push(if i % 6 == 5 {
                ' '
            } else {
                (b'a' + (state % 26) as u8) as char
            });
        }
        noise.push('\n');
    }
    std::fs::write(dir.join("learnable.txt"), learnable).unwrap();
    std::fs::write(dir.join("noise.txt"), noise).unwrap();
    let sources = format!(
        "[[data.sources]]\nname = \"noise\"\npath = [{:?}]\n\n[[data.sources]]\nname = \"learnable\"\npath = [{:?}]\n",
        dir.join("noise.txt"),
        dir.join("learnable.txt")
    );
    let cfg = config(&dir, "ref", &sources, "");
    train(&cfg, &["--set", "train.steps=40", "--set", "eval.interval=0"]);
    let text = run_ok(&["mixture", "doremi", "--config", cfg.to_str().unwrap(), "--steps", "30"]);
    let weights = std::fs::read_to_string(dir.join("ref/doremi/weights.toml")).unwrap();
    let parsed: toml::Value = toml::from_str(&weights).unwrap();
    let sources = parsed["data"]["sources"].as_array().unwrap();
    let weight = |name: &str| {
        sources.iter().find(|s| s["name"].as_str() == Some(name)).unwrap()["weight"]
            .as_float()
            .unwrap()
    };
    assert!(weight("learnable") > 0.6, "{weights}\n{text}");
    assert!((weight("learnable") + weight("noise") - 1.0).abs() < 1e-5, "{weights}");
    // the block is a ready config: the paths are kept, and every step was logged
    assert!(
        weights.contains("learnable.txt") && weights.starts_with("# DoReMi"),
        "{weights}"
    );
    let log = std::fs::read_to_string(dir.join("ref/doremi/doremi.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 30);
}
