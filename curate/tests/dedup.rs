//! `dedup` end to end on small corpora: outputs independent of task and thread counts, exact and
//! near duplicates with their representatives, sentence level, re-runs, and the LSH S-curve
//! checked against exact Jaccard computed by brute force.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use baichuan_curate::dedup::minhash::{jaccard, units, LshParams, MinHasher};
use baichuan_curate::dedup::{self, DedupOptions, Level, Stage};
use baichuan_curate::{Progress, Task};
use common::{edit_words, sample_lines, temp_dir, Rng};

/// English documents of 40..80 verses joined, with `copies` planted near duplicates each.
fn corpus(dir: &Path, docs: usize, rng: &mut Rng) -> Vec<String> {
    let verses = sample_lines("kjv.txt");
    let mut out = Vec::new();
    for d in 0..docs {
        let start = (d * 97) % (verses.len() - 100);
        let n = 5 + rng.below(10);
        out.push(verses[start..start + n].join(" "));
    }
    fs::create_dir_all(dir).unwrap();
    out
}

fn read_all(dir: &Path) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if !p.ends_with("work") {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "txt" || x == "jsonl") {
                m.insert(
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    fs::read_to_string(&p).unwrap(),
                );
            }
        }
    }
    m
}

/// Three files: originals, exact copies (with case and punctuation changes), near copies.
fn planted(dir: &Path) -> PathBuf {
    let mut rng = Rng(7);
    let docs = corpus(dir, 60, &mut rng);
    let input = dir.join("in");
    fs::create_dir_all(&input).unwrap();
    let mut a = String::new();
    let mut b = String::new();
    let mut c = String::new();
    for (i, d) in docs.iter().enumerate() {
        a.push_str(d);
        a.push('\n');
        if i % 5 == 0 {
            b.push_str(&d.to_uppercase().replace(',', " ,"));
            b.push('\n');
        } else {
            b.push_str(&format!(
                "Unique filler line number {i} about nothing in particular at all.\n"
            ));
        }
        if i % 7 == 0 {
            // One word in a hundred replaced (at least one): never an exact copy.
            let words: Vec<&str> = d
                .split(' ')
                .enumerate()
                .map(|(k, w)| if k % 100 == 3 { "altered" } else { w })
                .collect();
            c.push_str(&words.join(" "));
            c.push('\n');
        }
    }
    fs::write(input.join("a.txt"), a).unwrap();
    fs::write(input.join("b.txt"), b).unwrap();
    fs::write(
        input.join("c.jsonl"),
        c.lines()
            .map(|l| format!("{{\"text\":{:?},\"id\":1}}\n", l))
            .collect::<String>(),
    )
    .unwrap();
    input
}

fn staged(opts: &DedupOptions, input: &Path, out: &Path, tasks: usize) {
    let work = out.join("work");
    let p = Progress::default();
    for stage in [Stage::Signatures, Stage::Buckets, Stage::Clusters, Stage::Write] {
        // Tasks in reverse order: nothing may depend on task 0 running first.
        for index in (0..tasks).rev() {
            dedup::run_stage(
                opts,
                stage,
                Task { index, count: tasks },
                &[input.to_path_buf()],
                out,
                &work,
                &p,
            )
            .unwrap();
        }
    }
    fs::remove_dir_all(work).unwrap();
}

#[test]
fn exact_and_near_duplicates_go_with_their_representative_whatever_the_task_count() {
    let dir = temp_dir("dedup-tasks");
    let input = planted(&dir);
    let opts = DedupOptions::default();
    let p = Progress::default();
    let one = dedup::run(&opts, std::slice::from_ref(&input), &dir.join("one"), false, false, &p).unwrap();
    assert!(!one.up_to_date);
    // 12 exact copies in b.txt, 9 near copies (1% of words edited: Jaccard about 0.9, where the
    // S-curve of 14 x 8 finds a pair with probability 0.9996) in c.jsonl.
    assert_eq!(
        one.stats.rules["exact_duplicate"].documents,
        12,
        "{}",
        one.stats.summary()
    );
    assert_eq!(
        one.stats.rules["near_duplicate"].documents,
        9,
        "{}",
        one.stats.summary()
    );
    assert_eq!(one.stats.kept_documents, 60 + 48);
    let removed = fs::read_to_string(dir.join("one/removed/b.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(removed.lines().next().unwrap()).unwrap();
    assert_eq!(first["duplicate_of"], serde_json::json!({"file": "a.txt", "line": 0}));
    assert_eq!(first["rule"], "exact_duplicate");
    let near = fs::read_to_string(dir.join("one/removed/c.jsonl")).unwrap();
    assert!(near.lines().all(|l| l.contains("\"near_duplicate\"")), "{near}");
    // c.jsonl keeps its other fields and has no survivors.
    assert_eq!(fs::read_to_string(dir.join("one/c.jsonl")).unwrap(), "");

    staged(&opts, &input, &dir.join("three"), 3);
    staged(&opts, &input, &dir.join("two"), 2);
    let reference = read_all(&dir.join("one"));
    assert_eq!(reference.len(), 5, "{:?}", reference.keys());
    assert_eq!(read_all(&dir.join("three")), reference);
    assert_eq!(read_all(&dir.join("two")), reference);
    let threads = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    threads.install(|| {
        dedup::run(
            &opts,
            std::slice::from_ref(&input),
            &dir.join("serial"),
            false,
            false,
            &p,
        )
        .unwrap()
    });
    assert_eq!(read_all(&dir.join("serial")), reference);

    // Unchanged input and settings: nothing to do.
    let again = dedup::run(&opts, std::slice::from_ref(&input), &dir.join("one"), false, false, &p).unwrap();
    assert!(again.up_to_date);
    assert_eq!(again.stats, one.stats);
}

#[test]
fn sentence_level_keeps_the_first_occurrence() {
    let dir = temp_dir("dedup-sent");
    let input = dir.join("in");
    fs::create_dir_all(&input).unwrap();
    let boiler = "Copyright the example company, all rights reserved, do not copy this page.";
    let cn = "床前明月光，疑是地上霜，举头望明月，低头思故乡。";
    fs::write(
        input.join("a.txt"),
        format!(
            "First document says hello to the reader today. {boiler}\n\
             Second one talks about something else entirely here. {boiler} Short one.\n\
             {boiler}\n\
             一首诗：{cn}后来的人都会背。\n\
             {cn}\n"
        ),
    )
    .unwrap();
    let opts = DedupOptions {
        level: Level::Sentence,
        ..DedupOptions::default()
    };
    let out = dir.join("out");
    let r = dedup::run(&opts, &[input], &out, false, false, &Progress::default()).unwrap();
    let kept = fs::read_to_string(out.join("a.txt")).unwrap();
    assert_eq!(
        kept,
        format!(
            "First document says hello to the reader today. {boiler}\n\
             Second one talks about something else entirely here. Short one.\n\
             一首诗：{cn}后来的人都会背。\n"
        )
    );
    // The boilerplate twice; the bare poem is a near duplicate of the sentence that quotes it.
    assert_eq!(
        r.stats.rules["exact_duplicate_sentence"].parts,
        2,
        "{}",
        r.stats.summary()
    );
    assert_eq!(
        r.stats.rules["near_duplicate_sentence"].parts,
        1,
        "{}",
        r.stats.summary()
    );
    assert_eq!(r.stats.rules["only_duplicate_sentences"].documents, 2);
    // "Short one." has fewer than 10 units and is never a duplicate candidate.
    let side = fs::read_to_string(out.join("removed/a.jsonl")).unwrap();
    assert!(
        side.contains("\"sentence\":1")
            && side.contains("\"duplicate_of\":{\"file\":\"a.txt\",\"line\":0,\"sentence\":1}"),
        "{side}"
    );
}

#[test]
fn both_levels_chain_documents_then_sentences() {
    let dir = temp_dir("dedup-both");
    let input = planted(&dir);
    let opts = DedupOptions {
        level: Level::Both,
        ..DedupOptions::default()
    };
    let r = dedup::run(&opts, &[input], &dir.join("out"), false, false, &Progress::default()).unwrap();
    assert_eq!(r.stats.rules["exact_duplicate"].documents, 12);
    assert!(dir.join("out/removed/document/b.jsonl").exists());
    assert!(!dir.join("out/work").exists());
    assert!(dedup::run_stage(
        &opts,
        Stage::Signatures,
        Task::ALL,
        &[dir.join("in")],
        &dir.join("x"),
        &dir.join("w"),
        &Progress::default()
    )
    .is_err());
}

#[test]
fn a_missing_task_is_reported_not_skipped() {
    let dir = temp_dir("dedup-missing");
    let input = planted(&dir);
    let opts = DedupOptions::default();
    let work = dir.join("work");
    let p = Progress::default();
    dedup::run_stage(
        &opts,
        Stage::Signatures,
        Task { index: 0, count: 2 },
        std::slice::from_ref(&input),
        &dir.join("out"),
        &work,
        &p,
    )
    .unwrap();
    let err = dedup::run_stage(
        &opts,
        Stage::Buckets,
        Task::ALL,
        std::slice::from_ref(&input),
        &dir.join("out"),
        &work,
        &p,
    )
    .unwrap_err();
    assert!(err.to_string().contains("[1] of 2 have not finished"), "{err}");
    fs::write(input.join("a.txt"), "changed\n").unwrap();
    let err = dedup::run_stage(&opts, Stage::Buckets, Task::ALL, &[input], &dir.join("out"), &work, &p).unwrap_err();
    assert!(err.to_string().contains("inputs changed"), "{err}");
}

/// Pairs at known edit rates: the fraction found at each exact Jaccard follows the S-curve
/// `1 - (1 - s^r)^b`, and precision and recall at the threshold are reported.
#[test]
fn detection_follows_the_lsh_s_curve() {
    let dir = temp_dir("dedup-scurve");
    let verses = sample_lines("kjv.txt");
    let vocab: Vec<&str> = verses.iter().flat_map(|v| v.split(' ')).take(5000).collect();
    let mut rng = Rng(11);
    let mut lines = Vec::new();
    let mut pairs = Vec::new();
    for d in 0..400 {
        let start = (d * 29) % (verses.len() - 20);
        let doc = verses[start..start + 8].join(" ");
        let words: Vec<&str> = doc.split(' ').collect();
        let rate = [0.01, 0.03, 0.05, 0.08, 0.12, 0.2][d % 6];
        lines.push(doc.clone());
        lines.push(edit_words(&words, rate, &vocab, &mut rng));
        pairs.push((2 * d, 2 * d + 1));
    }
    let input = dir.join("in");
    fs::create_dir_all(&input).unwrap();
    fs::write(input.join("pairs.txt"), lines.join("\n") + "\n").unwrap();
    let opts = DedupOptions {
        lsh: LshParams {
            bands: 14,
            rows: 8,
            ..LshParams::DEFAULT
        },
        ..DedupOptions::default()
    };
    dedup::run(&opts, &[input], &dir.join("out"), false, true, &Progress::default()).unwrap();
    let mut found: HashMap<u32, u32> = HashMap::new();
    if let Ok(text) = fs::read_to_string(dir.join("out/removed/pairs.jsonl")) {
        for l in text.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            found.insert(
                v["line"].as_u64().unwrap() as u32,
                v["duplicate_of"]["line"].as_u64().unwrap() as u32,
            );
        }
    }
    let hasher = MinHasher::new(opts.lsh);
    let shingles = |t: &str| hasher.shingle_hashes(&units(t));
    // Bucket pairs by exact Jaccard; compare the found fraction with the S-curve's mean.
    let mut buckets: BTreeMap<usize, (f64, f64, f64, usize)> = BTreeMap::new();
    let (mut tp, mut fp, mut fn_) = (0, 0, 0);
    let threshold = 0.7;
    for &(a, b) in &pairs {
        let j = jaccard(&shingles(&lines[a]), &shingles(&lines[b]));
        let hit = found.get(&(b as u32)) == Some(&(a as u32));
        let p = opts.lsh.s_curve(j);
        let e = buckets.entry((j * 10.0) as usize).or_default();
        e.0 += p;
        e.1 += p * (1.0 - p);
        e.2 += hit as u8 as f64;
        e.3 += 1;
        match (hit, j >= threshold) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            _ => {}
        }
    }
    // No pair other than the planted ones may be found.
    assert!(found.iter().all(|(&b, &a)| b == a + 1 && a % 2 == 0), "{found:?}");
    for (bucket, (expected, var, hits, n)) in &buckets {
        // The found count is a sum of Bernoulli(s_curve(J)) draws: allow 4 standard deviations.
        let tolerance = 4.0 * var.sqrt() + 1.0;
        println!(
            "J in [{:.1}, {:.1}): {n} pairs, found {hits}, S-curve expects {expected:.1} +- {tolerance:.1}",
            *bucket as f64 / 10.0,
            (*bucket + 1) as f64 / 10.0
        );
        assert!(
            (hits - expected).abs() <= tolerance,
            "bucket {bucket}: found {hits}, expected {expected:.1}"
        );
    }
    let precision = tp as f64 / (tp + fp).max(1) as f64;
    let recall = tp as f64 / (tp + fn_).max(1) as f64;
    println!("threshold {threshold}: precision {precision:.3}, recall {recall:.3} (tp {tp}, fp {fp}, fn {fn_})");
}
