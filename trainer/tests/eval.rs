//! `eval mc` and `eval ppl` against models whose answers are known by construction: fixture
//! files in the C-Eval and MMLU layouts (tests/fixtures), a model that always prefers one
//! letter (hand-computed accuracies), a scorer that knows every answer (100%), the exact
//! prompt text, batched against one-by-one scoring, and a model with a zero head (perplexity
//! equal to the vocabulary size).

mod common;

use std::path::{Path, PathBuf};

use baichuan_data::Tokenizer;
use baichuan_model::{hf, Baichuan, Layout, ModelConfig};
use baichuan_trainer::eval::{self, McFormat, McOptions, PromptStyle};
use common::run;
use tch::{Device, Kind, Tensor};

fn fixtures(name: &str) -> PathBuf {
    common::root().join("trainer/tests/fixtures").join(name)
}

fn tiny_config(layers: i64) -> ModelConfig {
    ModelConfig {
        hidden_size: 16,
        intermediate_size: 24,
        num_hidden_layers: layers,
        num_attention_heads: 2,
        max_position_embeddings: 1024,
        ..ModelConfig::tiny()
    }
}

/// Writes `model` with the real tokenizer into `dir`.
fn save(model: &Baichuan, dir: &Path) {
    hf::save_pretrained(model, dir, Layout::Baichuan, Kind::Float, None).unwrap();
    hf::copy_tokenizer(&common::tokenizer(), dir).unwrap();
}

/// A model whose blocks are identities (zero output projections) and whose head scores only
/// `token`: every prompt's last-position logits prefer it.
fn always(token: i64, dir: &Path) {
    let model = Baichuan::new(&tiny_config(1), Device::Cpu).unwrap();
    tch::no_grad(|| {
        for (name, p) in model.named_parameters() {
            let mut p = p.shallow_clone();
            if name.ends_with("embed_tokens.weight") || name.ends_with("norm.weight") {
                let _ = p.fill_(1.0);
            } else if name == "lm_head.weight" {
                let _ = p.zero_();
                let _ = p.get(token).fill_(1.0);
            } else {
                let _ = p.zero_();
            }
        }
    });
    save(&model, dir);
}

fn letter_id(letter: &str) -> i64 {
    let tok = Tokenizer::open(&common::tokenizer()).unwrap();
    i64::from(tok.encode(letter).unwrap()[0])
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn accuracy(r: &serde_json::Value, subject: &str) -> f64 {
    r["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subject"] == subject)
        .unwrap_or_else(|| panic!("no {subject} in {r}"))["accuracy"]
        .as_f64()
        .unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn a_model_that_always_answers_one_letter_gets_the_hand_computed_accuracies() {
    let dir = common::temp_dir("eval-always");
    // fixture answers: C-Eval val computer_network B,B,A,C and logic B,B,A;
    // MMLU test astronomy B,C,B,B and virology A,B
    for (letter, cn, logic, astro, viro) in [
        ("B", 2.0 / 4.0, 2.0 / 3.0, 3.0 / 4.0, 1.0 / 2.0),
        ("A", 1.0 / 4.0, 1.0 / 3.0, 0.0, 1.0 / 2.0),
    ] {
        let model = dir.join(format!("always-{letter}"));
        always(letter_id(letter), &model);
        let out = dir.join(format!("ceval-{letter}.json"));
        let (ok, text) = mc(&model, "ceval", "ceval", &["--out", out.to_str().unwrap()]);
        assert!(ok, "{text}");
        let r = report(&out);
        assert!(close(accuracy(&r, "computer_network"), cn), "{r}");
        assert!(close(accuracy(&r, "logic"), logic), "{r}");
        assert!(
            close(r["average"].as_f64().unwrap(), (cn + logic) / 2.0),
            "unweighted: {r}"
        );
        assert!(close(r["categories"]["STEM"].as_f64().unwrap(), cn), "{r}");
        assert!(close(r["categories"]["Humanities"].as_f64().unwrap(), logic), "{r}");
        assert_eq!(r["predictions"]["logic"], letter.repeat(3));
        assert_eq!(r["questions"], 7);
        assert!(text.contains("average"), "{text}");

        let out = dir.join(format!("mmlu-{letter}.json"));
        let (ok, text) = mc(
            &model,
            "mmlu",
            "mmlu",
            &["--out", out.to_str().unwrap(), "--batch-tokens", "300"],
        );
        assert!(ok, "{text}");
        let r = report(&out);
        assert!(close(accuracy(&r, "astronomy"), astro), "{r}");
        assert!(close(accuracy(&r, "virology"), viro), "{r}");
        assert!(
            close(r["average"].as_f64().unwrap(), (astro * 4.0 + viro * 2.0) / 6.0),
            "weighted: {r}"
        );
        assert!(close(r["categories"]["STEM"].as_f64().unwrap(), astro), "{r}");
        assert!(close(r["categories"]["Other"].as_f64().unwrap(), viro), "{r}");
        assert!(text.contains("[STEM]"), "{text}");
    }

    // bad input, each named with its fix: C-Eval's test split has no answers; header-less
    // files read as C-Eval; a split that is not there; an unknown subject
    let m = dir.join("always-B");
    for (data, extra, wants) in [
        (
            "ceval",
            &["--split", "test"][..],
            &["logic_test.csv", "--split val"][..],
        ),
        ("mmlu", &["--split", "test"], &["no `question` column"]),
        ("mmlu", &[], &["mmlu/val: no such directory", "--split"]),
        ("ceval", &["--subjects", "law"], &["law_val.csv", "computer_network"]),
    ] {
        let (ok, text) = mc(&m, data, "ceval", extra);
        assert!(!ok && wants.iter().all(|w| text.contains(w)), "{text}");
    }
    let (ok, text) = mc(&m, "ceval", "ceval", &["--max-len", "0"]);
    assert!(!ok && text.contains("--max-len 0: must be 1..="), "{text}");
    // a subject file with a header and no questions would count as 0%: an error naming it
    let empty = dir.join("empty-subject");
    std::fs::create_dir_all(empty.join("val")).unwrap();
    std::fs::write(empty.join("val/law_val.csv"), "id,question,A,B,C,D,answer\n").unwrap();
    let (ok, text) = run(&[
        "eval",
        "mc",
        "--model",
        m.to_str().unwrap(),
        "--data",
        empty.to_str().unwrap(),
        "--format",
        "ceval",
        "--shots",
        "0",
        "--device",
        "cpu",
    ]);
    assert!(!ok && text.contains("law_val.csv: holds no questions"), "{text}");
}

/// `eval mc` of `model` on fixture set `data` read as `format`, on CPU.
fn mc(model: &Path, data: &str, format: &str, extra: &[&str]) -> (bool, String) {
    mc_at(model, &fixtures(data), format, extra)
}

/// `eval mc` of `model` on the benchmark directory `data` read as `format`, on CPU.
fn mc_at(model: &Path, data: &Path, format: &str, extra: &[&str]) -> (bool, String) {
    let (m, d) = (model.to_str().unwrap(), data.to_str().unwrap());
    let mut args = vec!["eval", "mc", "--model", m, "--data", d, "--format", format];
    args.extend(["--device", "cpu"]);
    args.extend(extra);
    run(&args)
}

#[test]
fn prompts_are_the_reference_text_and_a_scorer_that_knows_the_answers_gets_100_percent() {
    let tok = Tokenizer::open(&common::tokenizer()).unwrap();
    let subjects = eval::load_subjects(&fixtures("ceval"), McFormat::Ceval, "val", &[], 2).unwrap();
    assert_eq!(subjects.len(), 2);
    assert_eq!(subjects[0].name, "计算机网络");
    let opts = McOptions {
        format: McFormat::Ceval,
        style: PromptStyle::Official,
        shots: 2,
        seed: None,
        max_len: 4096,
        bos: None,
    };
    let items = eval::build_items(&subjects, &tok, &opts).unwrap();
    let decode = |ids: &[i64]| tok.decode(&ids.iter().map(|&i| i as u32).collect::<Vec<_>>()).unwrap();
    // the second computer_network question, whose text holds a newline (a quoted CSV field)
    let want = "以下是中国关于计算机网络考试的单项选择题，请选出其中的正确答案。\n\n\
        使用位填充方法，以01111110为位首flag，数据为011011111111111111110010，求问传送时要添加几个0____\n\
        A. 1\nB. 2\nC. 3\nD. 4\n答案：C\n\n\
        TCP协议使用____次握手建立连接\nA. 一\nB. 二\nC. 三\nD. 四\n答案：C\n\n\
        IPv4地址长度是\n多少位？\nA. 16\nB. 32\nC. 64\nD. 128\n答案：";
    assert_eq!(decode(&items[1].ids), want);
    assert_eq!(
        items[1].ids,
        tok.encode(want)
            .unwrap()
            .iter()
            .map(|&i| i64::from(i))
            .collect::<Vec<_>>()
    );

    // a scorer that reads each prompt's last question and answers it from the files
    let mut answer_of = std::collections::HashMap::new();
    for s in &subjects {
        for q in &s.questions {
            answer_of.insert(eval::format_question(McFormat::Ceval, q, false), q.answer);
        }
    }
    let logits = eval::score_items(&items, 512, |batch| {
        batch
            .iter()
            .map(|ids| {
                let text = decode(ids);
                let (_, last) = text.rsplit_once("\n\n").unwrap();
                let mut l = [0f32; 4];
                l[answer_of[last]] = 1.0;
                l
            })
            .collect()
    });
    let r = eval::summarize(&subjects, &items, &logits, McFormat::Ceval, "val", 2);
    assert_eq!(r.average, 1.0);
    assert_eq!(r.prompts_with_fewer_shots, 0);
    assert!(r.subjects.iter().all(|s| s.accuracy == 1.0 && s.correct == s.questions));

    // 5 shots asked, logic's dev split holds 2: that is not counted as dropping shots to fit
    let five = McOptions {
        shots: 5,
        ..opts.clone()
    };
    let all5 = eval::load_subjects(&fixtures("ceval"), McFormat::Ceval, "val", &[], 5).unwrap();
    let items5 = eval::build_items(&all5, &tok, &five).unwrap();
    assert_eq!(
        items5.iter().map(|i| i.shots).collect::<Vec<_>>(),
        [5, 5, 5, 5, 2, 2, 2]
    );
    let r5 = eval::summarize(&all5, &items5, &vec![[0.0; 4]; items5.len()], McFormat::Ceval, "val", 5);
    assert_eq!(r5.prompts_with_fewer_shots, 0);

    // a short context drops shots one at a time, then cuts the prompt's beginning
    let full = items[1].ids.len();
    let opts1 = McOptions {
        max_len: full - 1,
        ..opts.clone()
    };
    let fewer = eval::build_items(&subjects, &tok, &opts1).unwrap();
    assert!(fewer[1].shots < 2 && fewer[1].ids.len() < full && !fewer[1].truncated);
    let tiny = McOptions { max_len: 8, ..opts };
    let cut = eval::build_items(&subjects, &tok, &tiny).unwrap();
    assert!(cut.iter().all(|i| i.shots == 0 && i.truncated && i.ids.len() == 8));
    assert!(decode(&cut[1].ids).ends_with("答案："));
}

#[test]
fn batched_scoring_equals_one_prompt_at_a_time() {
    tch::manual_seed(7);
    let model = Baichuan::new(
        &ModelConfig {
            vocab_size: 300,
            ..tiny_config(2)
        },
        Device::Cpu,
    )
    .unwrap();
    let prompts: Vec<Vec<i64>> = (0..5)
        .map(|i| (0..(7 + 13 * i)).map(|t| (t * 31 + i) % 300).collect())
        .collect();
    let refs: Vec<&[i64]> = prompts.iter().map(|p| &p[..]).collect();
    let letters = [10, 20, 30, 40];
    let batched = eval::model_letter_logits(&model, &refs, letters);
    assert_eq!(batched.len(), refs.len());
    for (p, b) in refs.iter().zip(&batched) {
        let one = eval::model_letter_logits(&model, &[p], letters);
        // and against the full forward's last position
        let full = tch::no_grad(|| model.forward(&Tensor::from_slice(p).view([1, -1])));
        let last = full.get(0).get(p.len() as i64 - 1);
        for k in 0..4 {
            assert!((one[0][k] - b[k]).abs() < 1e-4, "{one:?} vs {b:?}");
            assert!((last.double_value(&[letters[k]]) as f32 - b[k]).abs() < 1e-4);
        }
    }
}

#[test]
fn a_zero_head_has_the_vocabulary_as_perplexity() {
    let dir = common::temp_dir("eval-ppl");
    tch::manual_seed(3);
    let model = Baichuan::new(&tiny_config(2), Device::Cpu).unwrap();
    tch::no_grad(|| {
        for (name, p) in model.named_parameters() {
            if name == "lm_head.weight" {
                let _ = p.shallow_clone().zero_();
            }
        }
    });
    let m = dir.join("model");
    save(&model, &m);
    let text = dir.join("text.txt");
    std::fs::write(&text, "第一行的文字。\nThe second line, in English.\n\n最后一行\n").unwrap();
    let tok = Tokenizer::open(&common::tokenizer()).unwrap();
    let n: usize = ["第一行的文字。", "The second line, in English.", "最后一行"]
        .iter()
        .map(|l| tok.encode_document(l).unwrap().len())
        .sum();
    let out = dir.join("ppl.json");
    let (ok, stdout) = run(&[
        "eval",
        "ppl",
        "--model",
        m.to_str().unwrap(),
        "--data",
        text.to_str().unwrap(),
        "--seq-len",
        "8",
        "--batch",
        "2",
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stdout}");
    let r = report(&out);
    assert_eq!(r["tokens"].as_u64(), Some(n as u64));
    assert_eq!(r["predicted_tokens"].as_u64(), Some(n as u64 - 1));
    assert_eq!(r["windows"].as_u64(), Some((n as u64 - 1).div_ceil(8)));
    let ppl = r["ppl"].as_f64().unwrap();
    assert!((ppl / 64000.0 - 1.0).abs() < 1e-4, "{r}");
    assert!(stdout.contains("perplexity"), "{stdout}");
    let (ok, stdout) = run(&[
        "eval",
        "ppl",
        "--model",
        m.to_str().unwrap(),
        "--data",
        "/nonexistent.txt",
    ]);
    assert!(!ok && stdout.contains("/nonexistent.txt"), "{stdout}");
}

/// Both prompt conventions of both benchmarks against the text an oracle script builds from the
/// CSV files the way the reference scripts do (scripts/reference/mc_prompts.py); the ids scored
/// are the prompt's encoding; Baichuan-style C-Eval draws its shots anew for each question.
#[test]
fn prompts_of_both_styles_equal_the_reference_scripts_text() {
    let tok = Tokenizer::open(&common::tokenizer()).unwrap();
    let dir = common::temp_dir("eval-prompt-styles");
    for (format, data, split, name) in [
        (McFormat::Ceval, "ceval", "val", "ceval"),
        (McFormat::Mmlu, "mmlu", "test", "mmlu"),
    ] {
        for (style, style_name) in [(PromptStyle::Baichuan, "baichuan"), (PromptStyle::Official, "official")] {
            let shots = 3;
            let subjects = eval::load_subjects(&fixtures(data), format, split, &[], shots).unwrap();
            let opts = McOptions {
                format,
                style,
                shots,
                seed: Some(7),
                max_len: 100_000,
                bos: None,
            };
            // the reference's own draws: a per-question shuffle for Baichuan's C-Eval (seeded
            // here), the first rows otherwise (a --seed would shuffle them: not the reference)
            let per_question = format == McFormat::Ceval && style == PromptStyle::Baichuan;
            let opts = if per_question {
                opts
            } else {
                McOptions { seed: None, ..opts }
            };
            let prompts = eval::build_prompts(&subjects, &opts);
            assert_eq!(prompts.len(), subjects.iter().map(|s| s.questions.len()).sum::<usize>());
            let dump = dir.join(format!("{name}-{style_name}.jsonl"));
            let lines: String = prompts
                .iter()
                .map(|p| serde_json::to_string(p).unwrap() + "\n")
                .collect();
            std::fs::write(&dump, lines).unwrap();
            let r = common::run_oracle(
                "scripts/reference/mc_prompts.py",
                &[
                    fixtures(data).to_str().unwrap(),
                    name,
                    split,
                    &shots.to_string(),
                    style_name,
                    dump.to_str().unwrap(),
                ],
            );
            assert_eq!(
                r["checked"].as_u64(),
                Some(prompts.len() as u64),
                "{name} {style_name}: {r}"
            );
            assert_eq!(r["mismatches"], serde_json::json!([]), "{name} {style_name}");
            // what is scored is exactly the prompt's encoding (every shot fits here)
            let items = eval::build_items(&subjects, &tok, &opts).unwrap();
            for (item, p) in items.iter().zip(&prompts) {
                let ids: Vec<i64> = tok.encode(&p.text).unwrap().into_iter().map(i64::from).collect();
                assert_eq!(item.ids, ids, "{name} {style_name} {} {}", p.subject, p.question);
            }
            if format == McFormat::Ceval && style == PromptStyle::Baichuan {
                let orders: std::collections::HashSet<&Vec<usize>> = prompts
                    .iter()
                    .filter(|p| p.subject == "computer_network")
                    .map(|p| &p.shots)
                    .collect();
                assert!(orders.len() > 1, "one shuffle for every question: {orders:?}");
            }
        }
    }
}

/// GAOKAO-Bench and AGIEval fixtures in their real layouts (tests/fixtures/gaokao, agieval):
/// with no shots every kept question is scored, so the accuracies of models that always answer
/// one letter are counted by hand; the kept counts per file; the summary over two models and
/// two benchmarks; malformed records named by file and line.
#[test]
fn gaokao_and_agieval_keep_single_answer_four_option_questions() {
    let dir = common::temp_dir("eval-exams");
    let (a, b) = (dir.join("always-A"), dir.join("always-B"));
    always(letter_id("A"), &a);
    always(letter_id("B"), &b);
    let summary = dir.join("summary.md");
    let (gaokao, agieval) = (fixtures("gaokao"), fixtures("agieval/data/v1"));
    let (ok, text) = run(&[
        "eval",
        "mc",
        "--model",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--bench",
        &format!("gaokao={}", gaokao.display()),
        &format!("agieval={}", agieval.display()),
        "--shots",
        "0",
        "--device",
        "cpu",
        "--summary",
        summary.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    // kept answers by hand: Math B,B,A,B,D,B (of 8: one with two answers, one with an E);
    // History A,C,B; the fill-in-blanks file labels no options; lsat-lr B,A,B,C (of 6: one with
    // five options, one with two labels); logiqa-zh A,A,B (of 4: one cloze, without options)
    for line in [
        "2010-2022_Math_II_MCQs.json                          8      6             1             1",
        "2010-2022_English_Fill_in_Blanks.json                2      0             0             2  skipped",
        "lsat-lr.jsonl                                        6      4             1             1",
        "logiqa-zh.jsonl                                      4      3             0             1",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
    let want = |m: &str| -> [(&str, f64); 5] {
        let (math, hist, lsat, logiqa) = if m == "A" {
            (1.0 / 6.0, 1.0 / 3.0, 1.0 / 4.0, 2.0 / 3.0)
        } else {
            (4.0 / 6.0, 1.0 / 3.0, 2.0 / 4.0, 1.0 / 3.0)
        };
        [
            ("Gaokao", (math + hist) / 2.0),
            ("AGIEval", (lsat + logiqa) / 2.0),
            ("AGIEval English", lsat),
            ("AGIEval Chinese", logiqa),
            ("math", math),
        ]
    };
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(summary.with_extension("json")).unwrap()).unwrap();
    let md = std::fs::read_to_string(&summary).unwrap();
    assert!(
        md.starts_with("| model | Gaokao | AGIEval | AGIEval Chinese | AGIEval English |"),
        "{md}"
    );
    for (i, m) in ["A", "B"].iter().enumerate() {
        let row = &json["rows"][i];
        assert_eq!(row["model"], format!("always-{m}"));
        for (col, v) in &want(m)[..4] {
            let got = row["scores"][col].as_f64().unwrap();
            assert!(close(got, 100.0 * v), "{m} {col}: {got} vs {}", 100.0 * v);
        }
        let report = report(&dir.join(format!("always-{m}/eval-gaokao-seeded-0shot.json")));
        assert!(
            close(accuracy(&report, "2010-2022_Math_II_MCQs"), want(m)[4].1),
            "{report}"
        );
        assert_eq!(report["files"].as_array().unwrap().len(), 3);
        assert!(
            md.contains(&format!("| always-{m} | {:.2} |", 100.0 * want(m)[0].1)),
            "{md}"
        );
    }

    // malformed records: the file and the line or example, and the fix
    let bad = dir.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(
        bad.join("sat-math.jsonl"),
        "{\"question\": \"q\", \"options\": [\"(A)1\", \"(B)2\", \"(C)3\", \"(D)4\"], \"label\": \"A\"}\n{\"question\": oops}\n",
    )
    .unwrap();
    let (ok, text) = mc_at(&b, &bad, "agieval", &[]);
    assert!(
        !ok && text.contains("sat-math.jsonl: line 2: not a JSON object"),
        "{text}"
    );
    std::fs::write(
        bad.join("x.json"),
        "{\"keywords\": \"x\", \"example\": [{\"answer\": [\"A\"], \"index\": 0}]}",
    )
    .unwrap();
    let (ok, text) = mc_at(&b, &bad, "gaokao", &[]);
    assert!(
        !ok && text.contains("x.json: example 1 (index 0): no `question` string"),
        "{text}"
    );
    let (ok, text) = mc_at(&b, &gaokao, "gaokao", &["--split", "val"]);
    assert!(!ok && text.contains("--split: gaokao has no splits"), "{text}");
}

/// With shots, each file's kept questions are split by the seed into examples and scored
/// questions: every prompt is the header, two examples and one other question, character for
/// character as README gives the templates (English as MMLU, Chinese as Baichuan's C-Eval).
#[test]
fn exam_prompts_hold_the_seeded_shots_in_their_language() {
    let dir = common::temp_dir("eval-exam-prompts");
    let model = dir.join("always-B");
    always(letter_id("B"), &model);
    let en = [
        (
            "Every cat in the house sleeps after dinner.\nWhich one of the following must be true?",
            [
                "No cat sleeps",
                "The house cat sleeps after dinner",
                "Dogs sleep",
                "None of the above",
            ],
            "B",
        ),
        (
            "If all squares are rectangles, which follows?",
            [
                "Some rectangles are squares",
                "All rectangles are squares",
                "No square is a rectangle",
                "Nothing follows",
            ],
            "A",
        ),
        (
            "Ann is taller than Bo. Bo is taller than Cy.\nWho is the shortest?",
            ["Ann", "Cy", "Bo", "Dee"],
            "B",
        ),
        (
            "Red is a colour.\nWhat is red?",
            ["A shape", "A sound", "A colour", "A taste"],
            "C",
        ),
    ];
    let zh = [
        (
            "所有的鸟都会飞。企鹅是鸟。\n由此可以推出：",
            ["企鹅会飞", "企鹅不会飞", "鸟不会飞", "以上都不对"],
            "A",
        ),
        ("甲比乙高，乙比丙高，最矮的是：", ["丙", "甲", "乙", "无法确定"], "A"),
        ("一周有几天？", ["五天", "七天", "十天", "三天"], "B"),
    ];
    let body = |q: &str, o: &[&str; 4]| format!("{q}\nA. {}\nB. {}\nC. {}\nD. {}", o[0], o[1], o[2], o[3]);
    let prompts = dir.join("prompts.jsonl");
    for seed in ["0", "7"] {
        let (ok, text) = mc(
            &model,
            "agieval",
            "agieval",
            &[
                "--shots",
                "2",
                "--seed",
                seed,
                "--dump-prompts",
                prompts.to_str().unwrap(),
            ],
        );
        assert!(ok, "{text}");
        let rows: Vec<serde_json::Value> = std::fs::read_to_string(&prompts)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            rows.len(),
            2 + 1,
            "lsat-lr keeps 4, logiqa-zh 3; 2 shots each: {rows:?}"
        );
        for r in &rows {
            let text = r["text"].as_str().unwrap();
            let english = r["subject"] == "lsat-lr";
            let mut matched = false;
            let n = if english { en.len() } else { zh.len() };
            for i in 0..n {
                for j in 0..n {
                    for k in 0..n {
                        if i == j || j == k || i == k {
                            continue;
                        }
                        let want = if english {
                            let shot = |x: usize| format!("{}\nAnswer: {}\n\n", body(en[x].0, &en[x].1), en[x].2);
                            format!(
                                "The following are multiple choice questions (with answers) about LSAT logical reasoning.\n\n{}{}{}\nAnswer:",
                                shot(i),
                                shot(j),
                                body(en[k].0, &en[k].1)
                            )
                        } else {
                            let shot = |x: usize| format!("{}\n答案：{}", body(zh[x].0, &zh[x].1), zh[x].2);
                            format!(
                                "以下是中国关于逻辑推理考试的单项选择题，请选出其中的正确答案。\n\n{}\n{}\n{}\n答案：",
                                shot(i),
                                shot(j),
                                body(zh[k].0, &zh[k].1)
                            )
                        };
                        matched |= text == want;
                    }
                }
            }
            assert!(matched, "seed {seed}: no template matches {text:?}");
        }
    }
}

/// `eval ppl --by-position`: a zero head predicts every token with probability 1/64000 at every
/// position, also past the model's context (rotary tables extended from 32 to 64 positions); a
/// random model's per-position losses average to the overall perplexity of the same windows.
#[test]
fn loss_by_position_extrapolates_past_the_trained_context() {
    let dir = common::temp_dir("eval-by-position");
    tch::manual_seed(5);
    let config = ModelConfig {
        max_position_embeddings: 32,
        ..tiny_config(2)
    };
    let zero = Baichuan::new(&config, Device::Cpu).unwrap();
    let random = Baichuan::new(&config, Device::Cpu).unwrap();
    tch::no_grad(|| {
        let _ = zero.lm_head.shallow_clone().zero_();
    });
    let (zm, rm) = (dir.join("zero"), dir.join("random"));
    save(&zero, &zm);
    save(&random, &rm);
    let data = common::root().join("data/sample/kjv.txt");
    let (out, png) = (dir.join("pos.json"), dir.join("pos.png"));
    let args = |m: &Path, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "eval",
            "ppl",
            "--model",
            m.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(["--device", "cpu", "--max-tokens", "641"].iter().map(|s| s.to_string()));
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let (ok, text) = run(&args(
        &zm,
        &[
            "--by-position",
            "--seq-len",
            "64",
            "--bucket",
            "16",
            "--out",
            out.to_str().unwrap(),
            "--plot",
            png.to_str().unwrap(),
        ],
    ));
    assert!(ok, "{text}");
    let r = report(&out);
    assert_eq!(r["windows"], 10, "640 predicted tokens in windows of 64: {r}");
    let buckets = r["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 4);
    for b in buckets {
        assert_eq!(b["tokens"], 160);
        assert!((b["loss"].as_f64().unwrap() - 64000f64.ln()).abs() < 1e-4, "{b}");
    }
    assert!(
        text.contains("rotary tables extended from the model's 32 positions (max_position_embeddings) to 64"),
        "{text}"
    );
    assert_eq!(text.matches("past the model's context").count(), 2, "{text}");
    assert_eq!(&std::fs::read(&png).unwrap()[1..4], b"PNG");
    // without --by-position the context is the limit
    let (ok, text) = run(&args(&zm, &["--seq-len", "64"]));
    assert!(!ok && text.contains("--by-position"), "{text}");

    // a random model within its context: per-position losses average to eval ppl's loss
    let (ok, text) = run(&args(
        &rm,
        &[
            "--by-position",
            "--seq-len",
            "32",
            "--bucket",
            "8",
            "--out",
            out.to_str().unwrap(),
        ],
    ));
    assert!(ok, "{text}");
    let by = report(&out);
    let ppl_out = dir.join("ppl.json");
    let (ok, text) = run(&args(&rm, &["--seq-len", "32", "--out", ppl_out.to_str().unwrap()]));
    assert!(ok, "{text}");
    let whole = report(&ppl_out);
    assert_eq!(by["windows"], whole["windows"]);
    let mean: f64 = by["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["loss"].as_f64().unwrap())
        .sum::<f64>()
        / 4.0;
    let want = whole["loss"].as_f64().unwrap();
    assert!((mean / want - 1.0).abs() < 1e-5, "{mean} vs {want}");
    assert!((by["loss"].as_f64().unwrap() / want - 1.0).abs() < 1e-5);
}

/// `[[eval.mc]]` during training, on 1 rank and split over 2: the accuracy logged at the last
/// step is the share of questions `eval mc` gets right with the trained model (its per-subject
/// counts summed), and it is logged at every evaluation.
#[test]
fn multiple_choice_during_training_matches_eval_mc_on_the_trained_model() {
    let dir = common::temp_dir("eval-during-training");
    let ceval = fixtures("ceval");
    let probe = format!(
        "eval.mc=[{{format=\"ceval\", data={:?}, shots=0}}]",
        ceval.to_str().unwrap()
    );
    for (name, head) in [("1", "train"), ("2", "launch --nproc 2 --master-port 0")] {
        let run_dir = dir.join(format!("run-{name}"));
        let mut args: Vec<String> = head.split_whitespace().map(String::from).collect();
        args.extend(
            [
                "--config",
                "config/tiny.toml",
                "--set",
                &format!("job.run_dir={}", run_dir.display()),
                "--set",
                &probe,
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        args.extend(
            "--set model.hidden_size=32 --set model.intermediate_size=64 --set model.num_hidden_layers=2 \
             --set data.seq_len=16 --set train.device=cpu --set train.micro_batch_size=1 \
             --set train.global_batch_size=4 --set train.steps=6 --set eval.interval=3"
                .split_whitespace()
                .map(String::from),
        );
        let (ok, text) = run(&args);
        assert!(
            ok && text.contains("eval: ceval multiple choice, 7 questions"),
            "{text}"
        );
        let rows = common::metrics(&run_dir);
        let logged: Vec<(u64, f64)> = rows
            .iter()
            .filter_map(|r| Some((r["step"].as_u64()?, r["mc"]["ceval"].as_f64()?)))
            .collect();
        assert_eq!(
            logged.iter().map(|x| x.0).collect::<Vec<_>>(),
            [3, 6],
            "{name}: {logged:?}"
        );
        let out = dir.join(format!("mc-{name}.json"));
        let (ok, text) = mc(
            &run_dir.join("model"),
            "ceval",
            "ceval",
            &["--shots", "0", "--out", out.to_str().unwrap()],
        );
        assert!(ok, "{text}");
        let r = report(&out);
        let (right, all) = r["subjects"].as_array().unwrap().iter().fold((0, 0), |(a, b), s| {
            (a + s["correct"].as_u64().unwrap(), b + s["questions"].as_u64().unwrap())
        });
        assert_eq!(all, 7);
        assert!(
            close(logged[1].1, right as f64 / 7.0),
            "{name}: logged {logged:?}, eval mc {right}/7"
        );
    }
}
