//! Agreement with datatrove: ~500 English documents (random runs of KJV verses and crafted bad
//! documents) go through `FilterConfig::apply` and through `scripts/reference/oracle_filters.py`, which
//! runs datatrove's own filters with the same word and sentence splitters. Keep/drop, reason
//! and output text must agree on every document.
//!
//! The oracle needs `.venv` with datatrove (scripts/setup.sh installs it); without it the test
//! fails with a hint rather than passing.

mod common;

use baichuan_curate::filter::FilterConfig;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

fn run_of(rng: &mut Rng, verses: &[&str], min: usize, max: usize) -> Vec<String> {
    let n = min + rng.below(max - min + 1);
    let start = rng.below(verses.len() - n);
    verses[start..start + n].iter().map(|s| s.to_string()).collect()
}

fn random_doc(rng: &mut Rng, verses: &[&str]) -> String {
    let run = run_of(rng, verses, 1, 60);
    let seps = ["\n", " ", "\n\n"];
    if rng.below(4) == 0 {
        // a separator drawn per join
        let mut doc = run[0].clone();
        for v in &run[1..] {
            doc.push_str(rng.pick(&seps));
            doc.push_str(v);
        }
        doc
    } else {
        run.join(rng.pick(&seps))
    }
}

/// Crafted bad documents: each kind built on a few random KJV runs.
fn crafted_docs(rng: &mut Rng, verses: &[&str]) -> Vec<String> {
    let mut docs = Vec::new();
    for round in 0..3 {
        let base = |rng: &mut Rng| run_of(rng, verses, 12, 40);
        let map = |rng: &mut Rng, f: &dyn Fn(usize, &str) -> String| {
            base(rng)
                .iter()
                .enumerate()
                .map(|(i, v)| f(i, v))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let strip_end = |v: &str| v.trim_end_matches(['.', '?', '!', ':', ';', ',']).to_string();
        docs.push(map(rng, &|_, v| format!("• {v}")));
        docs.push(map(rng, &|i, v| {
            if i % 2 == 0 {
                format!("- {v}")
            } else {
                v.to_string()
            }
        }));
        docs.push(map(rng, &|i, v| {
            if i % 3 == 0 {
                format!("{}...", strip_end(v))
            } else {
                v.to_string()
            }
        }));
        docs.push(map(rng, &|i, v| {
            if i % 2 == 0 {
                format!("{} …", strip_end(v))
            } else {
                v.to_string()
            }
        }));
        docs.push(map(rng, &|i, v| {
            if i % 2 == 0 {
                format!("#verse #{i} {v}")
            } else {
                v.to_string()
            }
        }));
        docs.push(map(rng, &|i, v| {
            if round == 0 {
                format!("{v} ###")
            } else {
                format!("{v} #{i}")
            }
        }));
        // duplicated lines and paragraphs
        let b = base(rng);
        let mut lines = b.clone();
        lines.extend(b.iter().take(4 + round * 4).cloned());
        docs.push(lines.join("\n"));
        let mut paras = b.clone();
        paras.extend(b.iter().take(2 + round * 3).cloned());
        docs.push(paras.join("\n\n"));
        docs.push(format!("{}\n\n{}", b[..6].join("\n"), b[..6].join("\n")));
        // repeated n-grams
        let spam = [
            "buy cheap pills now",
            "click here to win a prize today",
            "the LORD of hosts",
        ][round];
        docs.push(format!(
            "{} {}.",
            base(rng).join(" "),
            vec![spam; 10 + round * 10].join(" ")
        ));
        docs.push(map(rng, &|i, v| {
            if i % 4 == 0 {
                format!("{v} And it came to pass in those days.")
            } else {
                v.to_string()
            }
        }));
        // C4 page and line rules
        let b = base(rng);
        let mid = b.len() / 2;
        let insert = |line: &str| format!("{}\n{line}\n{}", b[..mid].join("\n"), b[mid..].join("\n"));
        docs.push(insert("Lorem ipsum dolor sit amet, consectetur adipiscing elit."));
        docs.push(insert("lorem ipsum"));
        docs.push(insert(
            "Please enable JavaScript to view the comments powered by Disqus.",
        ));
        docs.push(insert("function f(x) { return x + 1; }."));
        docs.push(insert("config = {a: 1}"));
        docs.push(insert(
            "By using this site you agree to our Terms of Use and Privacy Policy.",
        ));
        docs.push(insert("This website uses cookies to improve your experience."));
        docs.push(insert(&format!("A very long word {} here.", "x".repeat(1001))));
        docs.push(map(rng, &|i, v| match i % 4 {
            0 => format!("{} [1]", v),
            1 => format!("{}[{}]", v, i),
            2 => format!("{v}[edit]"),
            _ => format!("{} [citation needed]", strip_end(v)),
        }));
        docs.push(map(rng, &|i, v| {
            if i % 2 == 0 {
                format!("{v}[١٢]")
            } else {
                format!("{v} [x]")
            }
        }));
        // short lines, no terminal punctuation, list-like text
        docs.push(map(rng, &|i, v| {
            if i % 3 == 0 {
                v.to_string()
            } else {
                ["Home", "About us", "Contact"][i % 3].into()
            }
        }));
        docs.push(map(rng, &|_, v| strip_end(v)));
        docs.push(map(rng, &|i, v| if i % 5 == 0 { v.to_string() } else { strip_end(v) }));
        docs.push(base(rng).join(" ").split(' ').collect::<Vec<_>>().join("\n"));
        docs.push(map(rng, &|i, v| {
            if i % 2 == 0 {
                format!("He said, \"{v}\"")
            } else {
                format!("'{v}'")
            }
        }));
        // line endings and Python's whitespace
        docs.push(base(rng).join("\r\n"));
        docs.push(base(rng).join(["\u{2028}", "\u{1c}", "\r", "\u{b}"][round]));
        docs.push(map(rng, &|i, v| {
            if i % 2 == 0 {
                format!("\t  {v} \u{a0}")
            } else {
                format!("{v}\u{3000}")
            }
        }));
        // word statistics
        docs.push(base(rng).join(" ").replace(' ', ""));
        docs.push(vec!["a b c d e f g h i j k l m n o p."; 20].join("\n"));
        docs.push(
            base(rng)
                .iter()
                .map(|v| v.replace("the ", "").replace("and ", "").replace("of ", ""))
                .collect::<Vec<_>>()
                .join("\n"),
        );
        docs.push(
            (0..80)
                .map(|i| format!("{} {}.", i * 37 % 1000, i * 91 % 1000))
                .collect::<Vec<_>>()
                .join("\n"),
        );
        docs.push(base(rng).join(" ").replace("'", "’").replace(" and ", " and-so "));
        docs.push(map(rng, &|_, v| format!("#1 #2 #3 #4 {v}")));
        docs.push(map(rng, &|_, v| {
            let bare: Vec<String> = v
                .split(' ')
                .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_string())
                .collect();
            bare.chunks(6)
                .map(|c| c.join(" "))
                .collect::<Vec<_>>()
                .join([" … ", "... "][round % 2])
                + "."
        }));
        let stop = ["the", "be", "to", "of", "and", "that", "have", "with"];
        let no_stop: Vec<String> = base(rng)
            .iter()
            .map(|v| {
                v.split(' ')
                    .filter(|w| !stop.contains(&w.to_lowercase().trim_end_matches([',', ';', ':'])))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        docs.push(no_stop.join("\n"));
        // short lines of four words each, unique, ending in a period
        let words: Vec<String> = base(rng)
            .join(" ")
            .split(' ')
            .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_string())
            .collect();
        docs.push(
            words
                .chunks(4)
                .map(|c| format!("{}.", c.join(" ")))
                .collect::<Vec<_>>()
                .join("\n"),
        );
        // one repeated verse: FineWeb's char_dup_ratio, below Gopher's thresholds
        let mut b = base(rng);
        let again = b[b.len() / 3].clone();
        b.push(again);
        docs.push(b.join("\n"));
    }
    // over 100000 words, none repeated in n-grams: random lowercase words in 8-word sentences
    let long: Vec<String> = (0..100_400)
        .map(|i| {
            let w: String = (0..3 + rng.below(6))
                .map(|_| (b'a' + rng.below(26) as u8) as char)
                .collect();
            if i % 8 == 7 {
                w + "."
            } else {
                w
            }
        })
        .collect();
    docs.push(long.join(" "));
    // Mixed scripts, still mostly Latin: Python's notions of letters, digits and spaces.
    let pool = [
        "中文",
        "Ελληνικά",
        "русский",
        "😀",
        "①",
        "Ⅳ",
        "x²",
        "e\u{301}",
        "٣٤",
        "\u{200b}",
        "ｆｕｌｌ",
        "№5",
        "—",
        "«»",
        "·",
    ];
    for _ in 0..6 {
        let mut words: Vec<String> = run_of(rng, verses, 10, 30)
            .join("\n")
            .split(' ')
            .map(str::to_string)
            .collect();
        for w in words.iter_mut() {
            if rng.below(8) == 0 {
                *w = format!("{w} {}", rng.pick(&pool));
            }
        }
        docs.push(words.join(" "));
    }
    docs.extend([
        "".to_string(),
        " \n\t ".to_string(),
        "Amen.".to_string(),
        "\n\nAmen.\n".to_string(),
    ]);
    docs
}

#[test]
fn rust_filters_agree_with_datatrove() {
    let root = common::root();
    let (kjv, oracle, python) = (
        root.join("data/sample/kjv.txt"),
        root.join("scripts/reference/oracle_filters.py"),
        common::python(),
    );
    let text = std::fs::read_to_string(&kjv).expect("read kjv.txt");
    let verses: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut docs = crafted_docs(&mut rng, &verses);
    while docs.len() < 500 {
        docs.push(random_doc(&mut rng, &verses));
    }

    let input = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("agreement_docs.jsonl");
    let jsonl: String = docs
        .iter()
        .map(|d| serde_json::json!({ "text": d }).to_string() + "\n")
        .collect();
    std::fs::write(&input, jsonl).expect("write docs");
    let out = Command::new(&python)
        .arg(&oracle)
        .arg(&input)
        .output()
        .expect("run the oracle");
    assert!(
        out.status.success(),
        "oracle failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("oracle JSON"))
        .collect();
    assert_eq!(expected.len(), docs.len());

    let config = FilterConfig::default();
    let (mut agree, mut report, mut by_reason) = (0, String::new(), BTreeMap::<String, usize>::new());
    for (i, (doc, want)) in docs.iter().zip(&expected).enumerate() {
        let got = config.apply(doc);
        let reason = got.dropped.as_ref().map(|r| r.rule.clone());
        let want_reason = want["reason"].as_str().map(str::to_string);
        *by_reason
            .entry(reason.clone().unwrap_or_else(|| "kept".into()))
            .or_default() += 1;
        let same = got.kept() == want["keep"].as_bool().unwrap_or(false)
            && reason == want_reason
            && got.text == want["text"].as_str().unwrap_or_default();
        if same {
            agree += 1;
        } else {
            let _ = writeln!(
                report,
                "doc {i}: rust {:?} ({}), datatrove {:?}, texts equal: {}\n  {:?}",
                reason,
                got.dropped.as_ref().map_or(String::new(), |r| r.to_string()),
                want_reason,
                got.text == want["text"].as_str().unwrap_or_default(),
                doc.chars().take(160).collect::<String>()
            );
        }
    }
    println!(
        "agreement: {agree}/{} documents (keep/drop, reason and output text)",
        docs.len()
    );
    println!("outcomes: {by_reason:?}");
    print!("{report}");
    assert_eq!(agree, docs.len(), "disagreements:\n{report}");
}
