//! The data-curation commands end to end through the binary: the bundled sample through
//! `filter`, `dedup` and `prepare` into a short training run; `quality train/score` and
//! `quality perplexity`; bad input reported with the file and a hint.

mod common;

use common::{baichuan, output_ok as run_ok, run, temp_dir, SMALL};

/// Thresholds for the sample: verses and quatrains are far shorter than web pages, so the
/// document-length rules are scaled down; every other rule keeps its default.
const SAMPLE_FILTERS: &str = r#"
[gopher_quality]
min_doc_words = 8

[c4]
min_num_sentences = 1

[boilerplate]
min_documents = 3
"#;

fn stats(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("stats.json")).unwrap()).unwrap()
}

#[test]
fn the_sample_goes_through_filter_dedup_and_prepare_into_training() {
    let dir = temp_dir("curate-e2e");
    let config = dir.join("filters.toml");
    std::fs::write(&config, SAMPLE_FILTERS).unwrap();
    let filtered = dir.join("filtered");
    let out = run_ok(
        baichuan()
            .args(["filter", "--input", "data/sample", "--out"])
            .arg(&filtered)
            .arg("--config")
            .arg(&config)
            .args(["--jobs", "2"]),
    );
    assert!(out.contains("kept") && out.contains("documents"), "{out}");
    let s = stats(&filtered);
    let (read, kept) = (s["documents"].as_u64().unwrap(), s["kept_documents"].as_u64().unwrap());
    assert_eq!(read, 12282 + 95 + 313, "{out}");
    assert!(kept > read / 3 && kept < read, "{out}");
    assert!(filtered.join("kjv.txt").exists() && filtered.join("removed/kjv.jsonl").exists());
    // Every removal has its reason; removed + kept = read.
    assert_eq!(s["removed_documents"].as_u64().unwrap() + kept, read);
    let again = run_ok(
        baichuan()
            .args(["filter", "--input", "data/sample", "--out"])
            .arg(&filtered)
            .arg("--config")
            .arg(&config),
    );
    assert!(again.contains("up to date"), "{again}");

    let deduped = dir.join("deduped");
    let out = run_ok(
        baichuan()
            .args(["dedup", "--level", "both", "--input"])
            .arg(&filtered)
            .arg("--out")
            .arg(&deduped),
    );
    assert!(out.contains("exact_duplicate"), "{out}");
    let d = stats(&deduped);
    assert_eq!(
        d["documents"].as_u64().unwrap(),
        kept,
        "dedup reads what filter kept, not its side outputs"
    );

    let shards = dir.join("shards");
    let out = run_ok(
        baichuan()
            .args(["prepare", "--tokenizer", "assets/tokenizer.model", "--input"])
            .arg(&deduped)
            .arg("--out")
            .arg(&shards),
    );
    assert!(out.contains(&format!("{} documents", d["kept_documents"])), "{out}");
    let text = run_ok(
        baichuan()
            .args(["train", "--config", "config/tiny.toml", "--set"])
            .arg(format!("job.run_dir={}", dir.join("run").display()))
            .arg("--set")
            .arg(format!("data.path=[{:?}]", shards.to_str().unwrap()))
            .args([
                "--set",
                "data.format=shards",
                "--set",
                "train.steps=3",
                "--set",
                "data.sources=[]",
            ])
            .args(SMALL),
    );
    assert!(text.contains("training tokens"), "{text}");
}

#[test]
fn quality_classifier_trains_scores_and_gates_filter() {
    let dir = temp_dir("curate-quality");
    let model = dir.join("q.bin");
    let out = run_ok(
        baichuan()
            .args([
                "quality",
                "train",
                "--positive",
                "data/sample/tang300.txt",
                "--negative",
                "data/sample/song100.txt",
                "data/sample/kjv.txt",
                "--max-docs",
                "400",
                "--epoch",
                "10",
                "--out",
            ])
            .arg(&model),
    );
    let acc: f64 = out
        .split("held-out accuracy ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(acc > 0.8, "{out}");
    let scores = dir.join("scores");
    let out = run_ok(
        baichuan()
            .args(["quality", "score", "--input", "data/sample/tang300.txt", "--model"])
            .arg(&model)
            .arg("--out")
            .arg(&scores),
    );
    assert!(out.contains("313 documents"), "{out}");
    let first = std::fs::read_to_string(scores.join("tang300.scores.jsonl")).unwrap();
    let v: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    assert!(v["score"].as_f64().unwrap() > 0.5, "{v}");

    let gated = dir.join("gated");
    let out = run_ok(
        baichuan()
            .args(["filter", "--input", "data/sample/tang300.txt", "--quality-model"])
            .arg(&model)
            .args(["--min-score", "0.999999", "--out"])
            .arg(&gated),
    );
    assert!(out.contains("quality_score") || out.contains("gopher"), "{out}");
    let (ok, err) = run(&[
        "filter",
        "--input",
        "data/sample/tang300.txt",
        "--min-score",
        "0.5",
        "--out",
        gated.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("HINT"), "{err}");
    let (ok, err) = run(&[
        "quality",
        "score",
        "--model",
        "data/sample/kjv.txt",
        "--input",
        "data/sample/tang300.txt",
        "--out",
        "/tmp/x",
    ]);
    assert!(!ok && err.contains("kjv.txt") && err.contains("HINT"), "{err}");
}

#[test]
fn perplexity_scores_documents_with_a_model_directory() {
    let dir = temp_dir("curate-ppl");
    let model = dir.join("model");
    run_ok(
        baichuan()
            .args(["init", "--config", "config/tiny.toml", "--out"])
            .arg(&model)
            .args(&SMALL[..12]),
    );
    let scores = dir.join("ppl");
    let out = run_ok(
        baichuan()
            .args([
                "quality",
                "perplexity",
                "--input",
                "data/sample/song100.txt",
                "--device",
                "cpu",
                "--max-tokens",
                "64",
                "--model",
            ])
            .arg(&model)
            .arg("--out")
            .arg(&scores),
    );
    assert!(out.contains("95 documents"), "{out}");
    // An untrained model over a 64000-token vocabulary: perplexity near the vocabulary size.
    let text = std::fs::read_to_string(scores.join("song100.scores.jsonl")).unwrap();
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let p = v["score"].as_f64().unwrap();
        assert!(p > 1000.0 && p < 1e6, "{l}");
    }
}

#[test]
fn bad_filter_config_names_the_key() {
    let dir = temp_dir("curate-badcfg");
    let config = dir.join("f.toml");
    std::fs::write(&config, "[gopher_quality]\nmin_doc_wrds = 3\n").unwrap();
    let (ok, err) = run(&[
        "filter",
        "--input",
        "data/sample/song100.txt",
        "--out",
        dir.join("o").to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("f.toml") && err.contains("min_doc_wrds"), "{err}");
    let default = run_ok(baichuan().args(["filter", "--print-config"]));
    assert_eq!(
        default,
        std::fs::read_to_string(common::root().join("config/curation/filters.toml")).unwrap(),
        "config/curation/filters.toml is the default config"
    );
}

/// Every file under `dir` except the work directory, by relative path.
fn outputs(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            if p.is_dir() {
                if rel != "work" {
                    stack.push(p);
                }
            } else if rel != "manifest.json" {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn stages_as_a_slurm_array_give_the_one_machine_result() {
    let dir = temp_dir("curate-slurm");
    let config = dir.join("filters.toml");
    std::fs::write(&config, SAMPLE_FILTERS).unwrap();
    let one = dir.join("one");
    run_ok(
        baichuan()
            .args(["filter", "--input", "data/sample", "--out"])
            .arg(&one)
            .arg("--config")
            .arg(&config),
    );
    let staged = dir.join("staged");
    let work = dir.join("work");
    for (stage, tasks) in [("lines", 2), ("boilerplate", 1), ("filter", 2)] {
        for id in 0..tasks {
            // SLURM numbers this array 5..=6: the index is ID - MIN.
            run_ok(
                baichuan()
                    .args(["filter", "--input", "data/sample", "--stage", stage, "--out"])
                    .arg(&staged)
                    .arg("--config")
                    .arg(&config)
                    .arg("--work")
                    .arg(&work)
                    .env("SLURM_ARRAY_TASK_ID", (5 + id).to_string())
                    .env("SLURM_ARRAY_TASK_MIN", "5")
                    .env("SLURM_ARRAY_TASK_COUNT", tasks.to_string()),
            );
        }
    }
    assert_eq!(
        outputs(&staged),
        outputs(&one),
        "filter: staged over a SLURM array = one machine"
    );

    let dedup_one = dir.join("dedup-one");
    run_ok(
        baichuan()
            .args(["dedup", "--input"])
            .arg(&one)
            .arg("--out")
            .arg(&dedup_one),
    );
    let dedup_staged = dir.join("dedup-staged");
    let work = dir.join("dedup-work");
    for (stage, tasks) in [("signatures", 3), ("buckets", 3), ("clusters", 1), ("write", 2)] {
        for id in 0..tasks {
            let out = run_ok(
                baichuan()
                    .args(["dedup", "--input"])
                    .arg(&one)
                    .args(["--stage", stage, "--out"])
                    .arg(&dedup_staged)
                    .arg("--work")
                    .arg(&work)
                    .env("RANK", id.to_string())
                    .env("WORLD_SIZE", tasks.to_string()),
            );
            assert!(out.contains(&format!("task {id} of {tasks}")), "{out}");
        }
    }
    assert_eq!(
        outputs(&dedup_staged),
        outputs(&dedup_one),
        "dedup: staged over RANK/WORLD_SIZE = one machine"
    );
    // A stage whose predecessor is incomplete names the missing task.
    let (ok, err) = run(&[
        "dedup",
        "--input",
        one.to_str().unwrap(),
        "--stage",
        "buckets",
        "--out",
        dir.join("x").to_str().unwrap(),
        "--work",
        dir.join("empty-work").to_str().unwrap(),
        "--task",
        "0",
        "--tasks",
        "1",
    ]);
    assert!(!ok && err.contains("HINT"), "{err}");
}
