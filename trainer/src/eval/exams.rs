//! GAOKAO-Bench and AGIEval in their published layouts, as the Baichuan-7B report scores them:
//! single-answer, four-option questions only, split at random with a fixed seed into the few-shot
//! examples and the scored questions.
//!
//! - GAOKAO-Bench (`Data/Objective_Questions/*.json`): one JSON object per file, `{"keywords",
//!   "example": [{"year", "category", "question", "answer": ["D"], "analysis", "index",
//!   "score"}]}`, the options written inside the question text ("A．…  B．…"). A question is kept
//!   when its answer is one letter A-D and its text labels exactly the options A, B, C and D (a
//!   label is the letter, ASCII or full-width, after the start, a space or an opening bracket, and
//!   before one of `. ． 、 : ：`).
//! - AGIEval (`data/v1/*.jsonl`): one JSON object per line, `{"passage", "question", "options":
//!   ["(A)…", …], "label": "A"}`; kept when it has four options and one label A-D. The passage,
//!   when there is one, goes before the question. Subsets are English or Chinese by name (their
//!   prompts are in their language), an unknown one by whether its questions hold CJK characters.
//!
//! Questions of other shapes (several answers, five or seven options, cloze) are counted per file
//! and reported, not errors; malformed records are errors naming the file and the line or example.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::mc::{shot_order, McFormat, McQuestion, McSubject};
use super::{data_err, EvalError};

/// What one file held: its questions, those kept, and why the others were left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileCount {
    pub file: String,
    pub questions: usize,
    pub kept: usize,
    /// Answers that are not one letter A-D (several answers, cloze answers).
    pub not_single_answer: usize,
    /// Questions whose options are not exactly A-D.
    pub not_four_options: usize,
    /// The file gave no scored question (none kept, or no more than the shots).
    pub skipped: bool,
}

/// AGIEval's English subsets (the rest are Chinese).
const AGIEVAL_ENGLISH: [&str; 10] = [
    "lsat-ar",
    "lsat-lr",
    "lsat-rc",
    "logiqa-en",
    "sat-math",
    "sat-en",
    "sat-en-without-passage",
    "aqua-rat",
    "gaokao-english",
    "math",
];

/// The prompt's name of an AGIEval subset.
fn agieval_name(key: &str) -> String {
    let known = [
        ("lsat-ar", "LSAT analytical reasoning"),
        ("lsat-lr", "LSAT logical reasoning"),
        ("lsat-rc", "LSAT reading comprehension"),
        ("logiqa-en", "logical reasoning"),
        ("sat-math", "SAT math"),
        ("sat-en", "SAT English"),
        ("sat-en-without-passage", "SAT English"),
        ("aqua-rat", "algebra word problems"),
        ("gaokao-english", "Gaokao English"),
        ("logiqa-zh", "逻辑推理"),
        ("jec-qa-kd", "司法考试"),
        ("jec-qa-ca", "司法考试"),
        ("gaokao-chinese", "高考语文"),
        ("gaokao-geography", "高考地理"),
        ("gaokao-history", "高考历史"),
        ("gaokao-biology", "高考生物"),
        ("gaokao-chemistry", "高考化学"),
        ("gaokao-physics", "高考物理"),
        ("gaokao-mathqa", "高考数学"),
    ];
    known
        .iter()
        .find(|(k, _)| *k == key)
        .map_or_else(|| key.replace(['-', '_'], " "), |(_, n)| n.to_string())
}

/// The prompt's name of a GAOKAO-Bench file, from the subject in its key
/// (`2010-2022_Math_II_MCQs` is 高考数学).
fn gaokao_name(key: &str) -> String {
    let subjects = [
        ("Math", "数学"),
        ("Physics", "物理"),
        ("Chemistry", "化学"),
        ("Biology", "生物"),
        ("History", "历史"),
        ("Geography", "地理"),
        ("Political", "政治"),
        ("English", "英语"),
        ("Chinese", "语文"),
    ];
    let words: Vec<&str> = key.split(['_', '-', ' ']).collect();
    subjects
        .iter()
        .find(|(en, _)| words.contains(en))
        .map_or_else(|| "高考".to_string(), |(_, zh)| format!("高考{zh}"))
}

fn has_cjk(s: &str) -> bool {
    s.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c))
}

/// The option letters a GAOKAO-Bench question labels in its text (A-G, ASCII or full-width).
pub fn option_labels(text: &str) -> Vec<char> {
    let chars: Vec<char> = text.chars().collect();
    let mut found = Vec::new();
    for i in 0..chars.len() {
        let letter = match chars[i] {
            c @ 'A'..='G' => c,
            c @ 'Ａ'..='Ｇ' => char::from(b'A' + (c as u32 - 'Ａ' as u32) as u8),
            _ => continue,
        };
        let before = i == 0 || chars[i - 1].is_whitespace() || matches!(chars[i - 1], '(' | '（' | '[' | '【');
        let after = chars
            .get(i + 1)
            .is_some_and(|c| matches!(c, '.' | '．' | '、' | ':' | '：'));
        if before && after && !found.contains(&letter) {
            found.push(letter);
        }
    }
    found.sort_unstable();
    found
}

/// A single answer letter A-D: a string, or a list of one string.
fn single_letter(v: &serde_json::Value) -> Option<usize> {
    let s = match v {
        serde_json::Value::String(s) => s.as_str(),
        serde_json::Value::Array(a) if a.len() == 1 => a[0].as_str()?,
        _ => return None,
    };
    ["A", "B", "C", "D"].iter().position(|l| *l == s.trim())
}

fn read(path: &Path) -> Result<String, EvalError> {
    std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The kept questions of a GAOKAO-Bench file, and its counts.
pub fn read_gaokao(path: &Path) -> Result<(Vec<McQuestion>, FileCount), EvalError> {
    let doc: serde_json::Value = serde_json::from_str(&read(path)?).map_err(|e| {
        data_err(
            path,
            format!("not JSON ({e}); HINT: GAOKAO-Bench files are one object with an `example` list"),
        )
    })?;
    let examples = doc["example"].as_array().ok_or_else(|| {
        data_err(
            path,
            "no `example` list; HINT: --data is GAOKAO-Bench's Data/Objective_Questions (or the repository)",
        )
    })?;
    let mut count = count_for(path, examples.len());
    let mut kept = Vec::new();
    for (i, ex) in examples.iter().enumerate() {
        let question = ex["question"].as_str().ok_or_else(|| {
            data_err(
                path,
                format!("example {} (index {}): no `question` string", i + 1, ex["index"]),
            )
        })?;
        if ex.get("answer").is_none() {
            return Err(data_err(
                path,
                format!("example {} (index {}): no `answer`", i + 1, ex["index"]),
            ));
        }
        // options first: a single answer E of a five-option question counts as not four options
        if option_labels(question) != ['A', 'B', 'C', 'D'] {
            count.not_four_options += 1;
            continue;
        }
        let Some(answer) = single_letter(&ex["answer"]) else {
            count.not_single_answer += 1;
            continue;
        };
        kept.push(McQuestion {
            question: question.trim().to_string(),
            options: Default::default(),
            answer,
        });
    }
    count.kept = kept.len();
    Ok((kept, count))
}

/// "(A)text" or "(A) text" without its label.
fn strip_label(option: &str) -> String {
    let t = option.trim();
    for (open, close) in [('(', ')'), ('（', '）')] {
        let mut cs = t.chars();
        if cs.next() == Some(open) && cs.next().is_some_and(|c| c.is_ascii_uppercase()) && cs.next() == Some(close) {
            return cs.as_str().trim().to_string();
        }
    }
    t.to_string()
}

/// The kept questions of an AGIEval file, and its counts.
pub fn read_agieval(path: &Path) -> Result<(Vec<McQuestion>, FileCount), EvalError> {
    let text = read(path)?;
    let lines: Vec<(usize, &str)> = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).collect();
    let mut count = count_for(path, lines.len());
    let mut kept = Vec::new();
    for (i, line) in lines {
        let at = |what: &str| data_err(path, format!("line {}: {what}", i + 1));
        let rec: serde_json::Value = serde_json::from_str(line).map_err(|e| at(&format!("not a JSON object ({e})")))?;
        let question = rec["question"].as_str().ok_or_else(|| at("no `question` string"))?;
        let label = match (rec.get("label"), rec.get("answer")) {
            (Some(l), _) if !l.is_null() => l,
            (_, Some(a)) if !a.is_null() => a,
            _ => return Err(at("neither `label` nor `answer`")),
        };
        let options: Vec<String> = match &rec["options"] {
            serde_json::Value::Array(a) => a
                .iter()
                .map(|o| {
                    o.as_str()
                        .map(strip_label)
                        .ok_or_else(|| at("an option is not a string"))
                })
                .collect::<Result<_, _>>()?,
            serde_json::Value::Null => Vec::new(),
            _ => return Err(at("`options` is not a list")),
        };
        // options first: a label E of a five-option question counts as not four options
        let Ok(options) = <[String; 4]>::try_from(options) else {
            count.not_four_options += 1;
            continue;
        };
        let Some(answer) = single_letter(label) else {
            count.not_single_answer += 1;
            continue;
        };
        let passage = rec["passage"].as_str().map(str::trim).unwrap_or("");
        let question = if passage.is_empty() {
            question.trim().to_string()
        } else {
            format!("{passage}\n{}", question.trim())
        };
        kept.push(McQuestion {
            question,
            options,
            answer,
        });
    }
    count.kept = kept.len();
    Ok((kept, count))
}

fn count_for(path: &Path, questions: usize) -> FileCount {
    FileCount {
        file: path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        questions,
        kept: 0,
        not_single_answer: 0,
        not_four_options: 0,
        skipped: false,
    }
}

/// Where the files of `format` are under `dir`: `dir` itself when it holds them, else the
/// benchmark's own folder inside a checkout of its repository.
fn exam_files(dir: &Path, format: McFormat) -> Result<(PathBuf, Vec<(String, PathBuf)>), EvalError> {
    let (ext, inner) = match format {
        McFormat::Gaokao => ("json", "Data/Objective_Questions"),
        McFormat::Agieval => ("jsonl", "data/v1"),
        _ => unreachable!("exam_files is for GAOKAO-Bench and AGIEval"),
    };
    let list = |d: &Path| -> Vec<(String, PathBuf)> {
        let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(d)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == ext))
                    .filter_map(|p| Some((p.file_stem()?.to_string_lossy().into_owned(), p)))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    for d in [dir.to_path_buf(), dir.join(inner)] {
        let files = list(&d);
        if !files.is_empty() {
            return Ok((d, files));
        }
    }
    Err(data_err(
        dir,
        format!(
            "no *.{ext} files here or in {inner}/; HINT: --data is {} (or a checkout of its repository)",
            match format {
                McFormat::Gaokao => "GAOKAO-Bench's Data/Objective_Questions",
                _ => "AGIEval's data/v1",
            }
        ),
    ))
}

/// The subjects (one per file) of GAOKAO-Bench or AGIEval under `dir` (all, or the file stems in
/// `only`): each file's kept questions shuffled by `seed` (and the file's name), the first
/// `shots` as its examples and the rest scored. Returns them with every file's counts.
pub fn load_exam(
    dir: &Path,
    format: McFormat,
    only: &[String],
    shots: usize,
    seed: u64,
) -> Result<(Vec<McSubject>, Vec<FileCount>), EvalError> {
    let (root, mut files) = exam_files(dir, format)?;
    if !only.is_empty() {
        for s in only {
            if !files.iter().any(|(k, _)| k == s) {
                let names: Vec<&str> = files.iter().map(|(k, _)| k.as_str()).collect();
                return Err(data_err(
                    &root.join(s),
                    format!("no such file; files here: {}", names.join(", ")),
                ));
            }
        }
        files.retain(|(k, _)| only.contains(k));
    }
    let mut subjects = Vec::new();
    let mut counts = Vec::new();
    for (key, path) in files {
        let (questions, mut count) = match format {
            McFormat::Gaokao => read_gaokao(&path)?,
            _ => read_agieval(&path)?,
        };
        if questions.len() <= shots {
            count.skipped = true;
            counts.push(count);
            continue;
        }
        let file_seed = key.bytes().fold(seed ^ 0x6a09_e667_f3bc_c908, |h, b| {
            baichuan_data::hash::splitmix64(h ^ u64::from(b))
        });
        let order = shot_order(questions.len(), questions.len(), Some(file_seed));
        let (dev, scored): (Vec<usize>, Vec<usize>) = (order[..shots].to_vec(), order[shots..].to_vec());
        let take = |idx: &[usize]| idx.iter().map(|&i| questions[i].clone()).collect::<Vec<_>>();
        let (name, category) = match format {
            McFormat::Gaokao => (gaokao_name(&key), String::new()),
            _ => {
                let english = AGIEVAL_ENGLISH.contains(&key.as_str())
                    || (!key.contains("gaokao")
                        && !key.contains("logiqa-zh")
                        && !key.contains("jec-qa")
                        && !questions.iter().any(|q| has_cjk(&q.question)));
                (
                    agieval_name(&key),
                    if english { "English" } else { "Chinese" }.to_string(),
                )
            }
        };
        counts.push(count);
        subjects.push(McSubject {
            key,
            name,
            category,
            dev: take(&dev),
            questions: take(&scored),
        });
    }
    if subjects.is_empty() {
        return Err(data_err(
            &root,
            format!(
                "no file gave a question to score ({} file(s), none with more than {shots} single-answer four-option \
                 questions)",
                counts.len()
            ),
        ));
    }
    Ok((subjects, counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_labels_are_read_from_the_question_text() {
        assert_eq!(
            option_labels("1. 已知集合 A={1,2}，则\nA．{1}  B．{2}\nC．{1,2}  D．∅"),
            ['A', 'B', 'C', 'D']
        );
        assert_eq!(option_labels("A. x B. y C. z D. w E. v"), ['A', 'B', 'C', 'D', 'E']);
        // full-width letters, brackets and 、 as separators; DNA. and pH: are no labels
        assert_eq!(
            option_labels("DNA. 是 pH: 7 （Ａ、甲 Ｂ、乙 （C）丙 [D]：丁"),
            ['A', 'B']
        );
        assert_eq!(option_labels("(A)、甲 (B)、乙 C: 丙\tD：丁"), ['C', 'D']);
        assert!(option_labels("no options").is_empty());
    }

    #[test]
    fn answers_and_labels_are_parsed() {
        use serde_json::json;
        assert_eq!(single_letter(&json!(["C"])), Some(2));
        assert_eq!(single_letter(&json!("D")), Some(3));
        assert_eq!(single_letter(&json!(["A", "B"])), None);
        assert_eq!(single_letter(&json!("E")), None);
        assert_eq!(single_letter(&json!(3)), None);
        assert_eq!(strip_label("(A)12"), "12");
        assert_eq!(strip_label(" (B) twelve "), "twelve");
        assert_eq!(strip_label("（C）十二"), "十二");
        assert_eq!(strip_label("plain"), "plain");
        assert_eq!(gaokao_name("2010-2022_Math_II_MCQs"), "高考数学");
        assert_eq!(gaokao_name("2010-2022_Political_Science_MCQs"), "高考政治");
        assert_eq!(agieval_name("lsat-lr"), "LSAT logical reasoning");
        assert_eq!(agieval_name("new-set"), "new set");
    }
}
