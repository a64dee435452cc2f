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
    let (m, d) = (model.to_str().unwrap(), fixtures(data));
    let mut args = vec![
        "eval",
        "mc",
        "--model",
        m,
        "--data",
        d.to_str().unwrap(),
        "--format",
        format,
    ];
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
