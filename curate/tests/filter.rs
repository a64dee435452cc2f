//! `filter` end to end on a small JSONL corpus: a footer line shared by many documents is cut
//! from each (its side record gives how many documents hold it), a rare line stays, documents the
//! rules drop go to the side output with their reason, and the stages give the one-run result.

mod common;

use std::fs;

use baichuan_curate::filter::{self, FilterConfig, FilterOptions, Stage};
use baichuan_curate::{Progress, Task};
use common::{sample_lines, temp_dir};

#[test]
fn boilerplate_lines_are_cut_with_their_document_count() {
    let dir = temp_dir("filter-boilerplate");
    let input = dir.join("in");
    fs::create_dir_all(&input).unwrap();
    let verses = sample_lines("kjv.txt");
    let footer = "Copyright 2024 Example Press. All rights reserved.";
    let mut jsonl = String::new();
    for d in 0..25 {
        let body = verses[d * 40..d * 40 + 30].join(" ") + " Amen.";
        let quote = if d < 2 {
            "\nA line that two documents share, which is not boilerplate at all."
        } else {
            ""
        };
        jsonl.push_str(&serde_json::json!({ "text": format!("{body}{quote}\n{footer}"), "id": d }).to_string());
        jsonl.push('\n');
    }
    jsonl.push_str(&serde_json::json!({ "text": "too short\nlorem ipsum dolor sit amet" }).to_string());
    jsonl.push('\n');
    fs::write(input.join("pages.jsonl"), jsonl).unwrap();
    let mut config = FilterConfig::default();
    config.boilerplate.min_documents = 10;
    // Only C4 besides boilerplate: the verses pass it, the lorem-ipsum page does not.
    config.gopher_repetition.enabled = false;
    config.gopher_quality.enabled = false;
    config.fineweb.enabled = false;
    config.c4.min_num_sentences = 1;
    let opts = FilterOptions {
        config,
        text_key: "text".into(),
        memory_mb: 1,
    };
    let out = dir.join("out");
    let r = filter::run(&opts, std::slice::from_ref(&input), &out, false, &Progress::default()).unwrap();
    assert_eq!(r.boilerplate_lines, 1);
    assert_eq!(r.stats.rules["boilerplate"].parts, 25, "{}", r.stats.summary());
    assert_eq!(r.stats.kept_documents, 25, "{}", r.stats.summary());
    let kept = fs::read_to_string(out.join("pages.jsonl")).unwrap();
    assert!(!kept.contains("Copyright 2024"), "the footer is gone");
    assert_eq!(
        kept.matches("which is not boilerplate").count(),
        2,
        "a line in 2 documents stays"
    );
    let first: serde_json::Value = serde_json::from_str(kept.lines().next().unwrap()).unwrap();
    assert_eq!(first["id"], 0, "other fields are kept");
    let side = fs::read_to_string(out.join("removed/pages.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = side.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let cut = records.iter().find(|r| r["rule"] == "boilerplate").unwrap();
    assert_eq!(
        (cut["value"].as_f64(), cut["threshold"].as_f64(), cut["level"].as_str()),
        (Some(25.0), Some(10.0), Some("line"))
    );
    assert!(
        records.iter().any(|r| r["level"] == "document" && r["line"] == 25),
        "the short page is dropped: {side}"
    );

    // The same through the stages, two tasks each.
    let staged = dir.join("staged");
    let work = dir.join("work");
    for stage in [Stage::Lines, Stage::Boilerplate, Stage::Filter] {
        for index in 0..2 {
            filter::run_stage(
                &opts,
                stage,
                Task { index, count: 2 },
                std::slice::from_ref(&input),
                &staged,
                &work,
                &Progress::default(),
            )
            .unwrap();
        }
    }
    assert_eq!(fs::read_to_string(staged.join("pages.jsonl")).unwrap(), kept);
    assert_eq!(fs::read_to_string(staged.join("removed/pages.jsonl")).unwrap(), side);
}
