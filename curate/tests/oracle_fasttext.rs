//! The fastText-format classifier against fastText 0.9.2 itself (scripts/reference/oracle_fasttext.py):
//! a model trained by fastText loads here and gives its probabilities, and a model trained and
//! saved here loads in fastText and gives ours. Bilingual data: character n-grams carry Chinese.

mod common;

use baichuan_curate::quality::fasttext::{FastText, TrainArgs};
use common::{oracle, sample_lines, temp_dir, Rng};

/// The oracle's `predict` output: per document, label -> probability.
fn oracle_probs(model: &std::path::Path, docs: &std::path::Path) -> Vec<Vec<(String, f64)>> {
    oracle(
        "oracle_fasttext.py",
        &[
            "predict",
            "--model",
            model.to_str().unwrap(),
            "--input",
            docs.to_str().unwrap(),
        ],
    )
    .lines()
    .map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let labels: Vec<String> = serde_json::from_value(v["labels"].clone()).unwrap();
        let probs: Vec<f64> = serde_json::from_value(v["probs"].clone()).unwrap();
        labels.into_iter().zip(probs).collect()
    })
    .collect()
}

/// Largest |ours - fastText's| over every label of every document.
fn max_diff(ours: &FastText, docs: &[String], theirs: &[Vec<(String, f64)>]) -> f64 {
    assert_eq!(docs.len(), theirs.len());
    let mut worst = 0.0f64;
    for (doc, t) in docs.iter().zip(theirs) {
        assert_eq!(t.len(), ours.labels().len(), "all labels for {doc:?}");
        for (label, p) in t {
            let q = ours.prob(doc, label).expect("label known") as f64;
            worst = worst.max((q - p).abs());
        }
    }
    worst
}

#[test]
fn probabilities_equal_fasttext_in_both_directions() {
    let dir = temp_dir("oracle-fasttext");
    let mut rng = Rng(3);
    let mut examples: Vec<(usize, String)> = Vec::new();
    for l in sample_lines("tang300.txt")
        .into_iter()
        .chain(sample_lines("song100.txt"))
    {
        examples.push((0, l));
    }
    for l in sample_lines("kjv.txt").into_iter().step_by(25) {
        examples.push((1, l));
    }
    for i in 0..150 {
        examples.push((
            2,
            format!(
                "点击 http://example.com/{i} 登录 Login | Home | 版权所有 © 20{:02} all rights reserved",
                i % 30
            ),
        ));
    }
    for i in (1..examples.len()).rev() {
        examples.swap(i, rng.below(i + 1));
    }
    let held: Vec<String> = examples.iter().step_by(5).map(|(_, t)| t.clone()).collect();
    let train: Vec<(usize, String)> = examples
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 5 != 0)
        .map(|(_, e)| e.clone())
        .collect();
    let labels = ["__label__poem", "__label__verse", "__label__boilerplate"].map(String::from);
    let train_txt: String = train.iter().map(|(l, t)| format!("{} {t}\n", labels[*l])).collect();
    std::fs::write(dir.join("train.txt"), train_txt).unwrap();
    let docs_path = dir.join("held.txt");
    std::fs::write(&docs_path, held.join("\n") + "\n").unwrap();

    // (a) fastText trains; we load its file and predict.
    let theirs_model = dir.join("fasttext.bin");
    oracle(
        "oracle_fasttext.py",
        &[
            "train",
            "--input",
            dir.join("train.txt").to_str().unwrap(),
            "--out",
            theirs_model.to_str().unwrap(),
            "--dim",
            "16",
            "--epoch",
            "5",
            "--minn",
            "2",
            "--maxn",
            "4",
            "--wordNgrams",
            "2",
            "--bucket",
            "50000",
            "--lr",
            "0.5",
        ],
    );
    let loaded = FastText::load(&theirs_model).unwrap();
    let a = max_diff(&loaded, &held, &oracle_probs(&theirs_model, &docs_path));
    println!(
        "fastText-trained model: max |P_ours - P_fastText| = {a:e} over {} documents x 3 labels",
        held.len()
    );
    assert!(a <= 1e-6, "{a}");
    // Loading and saving rewrites the same bytes.
    let resaved = dir.join("resaved.bin");
    loaded.save(&resaved).unwrap();
    assert_eq!(std::fs::read(&resaved).unwrap(), std::fs::read(&theirs_model).unwrap());

    // (b) We train and save; fastText loads our file and predicts.
    let args = TrainArgs {
        dim: 16,
        bucket: 50_000,
        ..TrainArgs::default()
    };
    let pairs: Vec<(usize, &str)> = train.iter().map(|(l, t)| (*l, t.as_str())).collect();
    let ours = FastText::train(&pairs, &labels, &args).unwrap();
    let ours_path = dir.join("ours.bin");
    ours.save(&ours_path).unwrap();
    let b = max_diff(&ours, &held, &oracle_probs(&ours_path, &docs_path));
    println!("our model in fastText: max |P_ours - P_fastText| = {b:e}");
    assert!(b <= 1e-6, "{b}");
    // And it learned the task about as well as fastText's own training.
    let truth: Vec<usize> = examples.iter().step_by(5).map(|(l, _)| *l).collect();
    let accuracy = |m: &FastText| {
        held.iter()
            .zip(&truth)
            .filter(|(d, &t)| m.predict(d, 1)[0].0 == labels[t])
            .count() as f64
            / held.len() as f64
    };
    let (acc_ours, acc_theirs) = (accuracy(&ours), accuracy(&loaded));
    println!("held-out accuracy: ours {acc_ours:.3}, fastText {acc_theirs:.3}");
    assert!(acc_ours >= acc_theirs - 0.03, "ours {acc_ours}, fastText {acc_theirs}");
}
