//! Few-shot multiple choice (C-Eval, MMLU) scored by the logits of the option letters.
//!
//! It follows the reference's evaluation scripts (Baichuan-7B's
//! `evaluation/evaluate_*.py`, which follow C-Eval's and Hendrycks' MMLU code): the public file
//! layouts (`<dir>/<split>/<subject>_<split>.csv`; C-Eval with a `id,question,A,B,C,D,answer`
//! header, MMLU without one), the same prompt text, shots taken from the `dev` split and dropped
//! one at a time while the prompt is longer than the context, and the prediction being the
//! largest of the logits of the first tokens of "A", "B", "C", "D" at the last position.
//! Averages as the reference reports them: C-Eval unweighted over subjects (and per category),
//! MMLU weighted by questions.
//!
//! Two prompt conventions ([`PromptStyle`]): `baichuan` (the default) is Baichuan-7B's scripts'
//! text: for C-Eval (`evaluate_zh.py`) the instruction ends with one `\n`, every example is
//! joined with a single `\n` (no blank line) and the shots are a fresh shuffle of dev for each
//! question (seeded here by `--seed`, question and subject; the reference's is unseeded); for
//! MMLU (`evaluate_mmlu.py`) shots are dropped while the prompt exceeds 2048 tokens. `official`
//! is C-Eval's own evaluator (blank lines between examples, the first k dev rows) and MMLU with
//! the model's whole context. Prompts are batched by length (right-padded: with causal
//! attention the padding never reaches the last real position, whose logits are gathered).

use std::collections::BTreeMap;
use std::path::Path;

use baichuan_data::hash::{splitmix64, GOLDEN};
use baichuan_data::Tokenizer;
use baichuan_model::Baichuan;
use serde::Serialize;
use tch::{Kind, Tensor};

use super::subjects::{CEVAL_SUBJECTS, MMLU_SUBJECTS};
use super::{data_err, EvalError};

/// The benchmark's file layout and prompt format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum McFormat {
    Ceval,
    Mmlu,
    /// GAOKAO-Bench's objective questions ([`super::exams`]): options inside the question text.
    Gaokao,
    /// AGIEval's four-option single-choice subsets ([`super::exams`]).
    Agieval,
}

impl McFormat {
    /// The name in reports and file names.
    pub fn name(self) -> &'static str {
        match self {
            McFormat::Ceval => "ceval",
            McFormat::Mmlu => "mmlu",
            McFormat::Gaokao => "gaokao",
            McFormat::Agieval => "agieval",
        }
    }

    /// The split scored when none is named: C-Eval's `val` (its test answers are not public),
    /// MMLU's `test`; the exams have none (each file is split by the seed).
    pub fn default_split(self) -> &'static str {
        match self {
            McFormat::Ceval => "val",
            McFormat::Mmlu => "test",
            McFormat::Gaokao | McFormat::Agieval => "seeded",
        }
    }

    /// The longest prompt when none is asked for: the model's `context`, or for MMLU in
    /// Baichuan's style the reference script's 2048 tokens.
    pub fn default_max_len(self, style: PromptStyle, context: usize) -> usize {
        if self == McFormat::Mmlu && style == PromptStyle::Baichuan {
            BAICHUAN_MMLU_MAX_LEN.min(context)
        } else {
            context
        }
    }

    /// The prompts of `subject` are Chinese, in the layout of Baichuan-7B's C-Eval script: an
    /// instruction ending with one newline, examples joined by single newlines, "答案：".
    fn chinese(self, subject: &McSubject) -> bool {
        match self {
            McFormat::Ceval | McFormat::Gaokao => true,
            McFormat::Mmlu => false,
            McFormat::Agieval => subject.category != "English",
        }
    }
}

pub const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

/// Whose prompt convention to follow (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptStyle {
    /// Baichuan-7B's `evaluation/evaluate_zh.py` and `evaluate_mmlu.py`.
    Baichuan,
    /// C-Eval's own evaluator; Hendrycks' MMLU with the model's whole context.
    Official,
}

/// The longest MMLU prompt Baichuan-7B's `evaluate_mmlu.py` lets through (it drops shots above).
pub const BAICHUAN_MMLU_MAX_LEN: usize = 2048;

/// Parses RFC 4180 CSV: commas, double-quoted fields with `""` escapes and embedded newlines,
/// CRLF or LF line ends, a UTF-8 byte-order mark. Returns the rows (blank lines skipped).
/// Like pandas (which the reference's scripts read these files with), a stray quote inside an
/// unquoted field and text after a closing quote are kept as text; only a quoted field left
/// open at the end of the file is an error.
pub fn parse_csv(text: &str, path: &Path) -> Result<Vec<Vec<String>>, EvalError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rows = Vec::new();
    let mut row: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut line = 1usize;
    let mut quoted = false;
    let mut was_quoted = false;
    let mut opened_on = 0usize;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                _ => {
                    if c == '\n' {
                        line += 1;
                    }
                    field.push(c);
                }
            }
            continue;
        }
        match c {
            '"' if field.is_empty() && !was_quoted => {
                quoted = true;
                was_quoted = true;
                opened_on = line;
            }
            '"' => field.push('"'),
            ',' => {
                row.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' | '\r' => {
                line += 1;
                if !(row.is_empty() && field.is_empty() && !was_quoted) {
                    row.push(std::mem::take(&mut field));
                    rows.push(std::mem::take(&mut row));
                }
                was_quoted = false;
            }
            _ => field.push(c),
        }
    }
    if quoted {
        return Err(data_err(
            path,
            format!("the quoted field opened on line {opened_on} is never closed (the file is truncated?)"),
        ));
    }
    if !(row.is_empty() && field.is_empty() && !was_quoted) {
        row.push(field);
        rows.push(row);
    }
    Ok(rows)
}

/// One question; `answer` indexes `LETTERS`.
#[derive(Debug, Clone, PartialEq)]
pub struct McQuestion {
    pub question: String,
    pub options: [String; 4],
    pub answer: usize,
}

/// A subject: its questions to score and its pool of few-shot examples.
#[derive(Debug, Clone)]
pub struct McSubject {
    /// The file-name key, e.g. `computer_network`.
    pub key: String,
    /// The name the prompt uses (C-Eval: Chinese; MMLU: the key with spaces).
    pub name: String,
    /// C-Eval's category (STEM, Social Science, Humanities, Other) or MMLU's (STEM, Humanities,
    /// Social Sciences, Other); a subject neither benchmark lists is under Other.
    pub category: String,
    pub dev: Vec<McQuestion>,
    pub questions: Vec<McQuestion>,
}

fn parse_answer(text: &str, path: &Path, row: usize) -> Result<usize, EvalError> {
    LETTERS.iter().position(|l| *l == text.trim()).ok_or_else(|| {
        let hint = if text.trim().is_empty() {
            " (C-Eval's test split has no public answers; HINT: score --split val)"
        } else {
            ""
        };
        data_err(
            path,
            format!("row {row}: answer {text:?} is not one of A, B, C, D{hint}"),
        )
    })
}

/// Reads one subject file of `format`.
pub fn read_questions(path: &Path, format: McFormat) -> Result<Vec<McQuestion>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let rows = parse_csv(&text, path)?;
    let (columns, body) = match format {
        McFormat::Ceval => {
            let header = rows
                .first()
                .ok_or_else(|| data_err(path, "empty file (C-Eval files start with a header row)"))?;
            let find = |name: &str| {
                header.iter().position(|h| h.trim() == name).ok_or_else(|| {
                    data_err(
                        path,
                        format!(
                            "no `{name}` column in the header {header:?}; HINT: C-Eval files have \
                             id,question,A,B,C,D,answer (use --format mmlu for header-less files)"
                        ),
                    )
                })
            };
            let cols = [
                find("question")?,
                find("A")?,
                find("B")?,
                find("C")?,
                find("D")?,
                find("answer")?,
            ];
            (cols, &rows[1..])
        }
        McFormat::Mmlu => ([0, 1, 2, 3, 4, 5], &rows[..]),
        McFormat::Gaokao | McFormat::Agieval => {
            return Err(data_err(
                path,
                "GAOKAO-Bench and AGIEval are JSON files, read by exams::load_exam",
            ))
        }
    };
    let first_row = if format == McFormat::Ceval { 2 } else { 1 };
    body.iter()
        .enumerate()
        .map(|(i, r)| {
            let row = i + first_row;
            if r.len() <= columns.iter().copied().max().unwrap_or(0) {
                return Err(data_err(
                    path,
                    format!(
                        "row {row} has {} fields; expected question, A, B, C, D, answer{}",
                        r.len(),
                        if format == McFormat::Mmlu { " (no header)" } else { "" }
                    ),
                ));
            }
            Ok(McQuestion {
                question: r[columns[0]].clone(),
                options: [
                    r[columns[1]].clone(),
                    r[columns[2]].clone(),
                    r[columns[3]].clone(),
                    r[columns[4]].clone(),
                ],
                answer: parse_answer(&r[columns[5]], path, row)?,
            })
        })
        .collect()
}

/// The subjects under `dir` for `split` (all of them, or those named in `only`), with their
/// `dev` examples when `shots > 0`.
pub fn load_subjects(
    dir: &Path,
    format: McFormat,
    split: &str,
    only: &[String],
    shots: usize,
) -> Result<Vec<McSubject>, EvalError> {
    let split_dir = dir.join(split);
    let suffix = format!("_{split}.csv");
    if !split_dir.is_dir() {
        return Err(data_err(
            &split_dir,
            format!(
                "no such directory; HINT: --data is the benchmark directory holding dev/ and the split to score \
                 (C-Eval scores val by default, MMLU test; choose with --split){}",
                if dir.is_dir() { "" } else { " and it does not exist" }
            ),
        ));
    }
    let entries = std::fs::read_dir(&split_dir).map_err(|source| EvalError::Io {
        path: split_dir.clone(),
        source,
    })?;
    let mut keys: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(&suffix).map(String::from))
        .collect();
    keys.sort();
    if !only.is_empty() {
        for s in only {
            if !keys.contains(s) {
                return Err(data_err(
                    &split_dir.join(format!("{s}{suffix}")),
                    format!("no such subject file; subjects here: {}", keys.join(", ")),
                ));
            }
        }
        keys.retain(|k| only.contains(k));
    }
    if keys.is_empty() {
        return Err(data_err(
            &split_dir,
            format!("no `<subject>{suffix}` files; HINT: --data is the directory holding dev/, val/ and test/"),
        ));
    }
    keys.into_iter()
        .map(|key| {
            let path = split_dir.join(format!("{key}{suffix}"));
            let questions = read_questions(&path, format)?;
            if questions.is_empty() {
                return Err(data_err(
                    &path,
                    "holds no questions (it would count as 0% in the average); HINT: remove it or use --subjects",
                ));
            }
            let dev = if shots > 0 {
                let p = dir.join("dev").join(format!("{key}_dev.csv"));
                if !p.exists() {
                    return Err(data_err(
                        &p,
                        "missing: few-shot examples come from the dev split; HINT: add it, or use --shots 0",
                    ));
                }
                read_questions(&p, format)?
            } else {
                Vec::new()
            };
            let (name, category) = match format {
                McFormat::Ceval => CEVAL_SUBJECTS
                    .iter()
                    .find(|(k, _, _)| *k == key)
                    .map(|(_, n, c)| (n.to_string(), c.to_string()))
                    .unwrap_or_else(|| (key.replace('_', " "), "Other".into())),
                McFormat::Mmlu | McFormat::Gaokao | McFormat::Agieval => {
                    let category = MMLU_SUBJECTS
                        .iter()
                        .find(|(k, _)| *k == key)
                        .map_or("Other", |(_, c)| c);
                    (key.replace('_', " "), category.to_string())
                }
            };
            Ok(McSubject {
                key,
                name,
                category,
                dev,
                questions,
            })
        })
        .collect()
}

/// One question's text in the prompt, with its answer (a shot) or ending where the answer goes.
/// In the official C-Eval convention a shot ends with a blank line; see [`assemble`] for the
/// Baichuan one.
pub fn format_question(format: McFormat, q: &McQuestion, with_answer: bool) -> String {
    format_question_in(format, PromptStyle::Official, q, with_answer)
}

/// [`format_question`] in `style`: Baichuan's C-Eval shots end right after the answer letter.
pub fn format_question_in(format: McFormat, style: PromptStyle, q: &McQuestion, with_answer: bool) -> String {
    let mut s = q.question.clone();
    if format != McFormat::Gaokao {
        // GAOKAO-Bench's questions hold their options
        for (l, o) in LETTERS.iter().zip(&q.options) {
            s.push_str(&format!("\n{l}. {o}"));
        }
    }
    match (format, with_answer) {
        // the exams: in their subject's language, Chinese ones as Baichuan's C-Eval
        (McFormat::Gaokao, true) => s.push_str(&format!("\n答案：{}", LETTERS[q.answer])),
        (McFormat::Gaokao, false) => s.push_str("\n答案："),
        // (an AGIEval subset's language is its subject's: see format_for; this is the Chinese)
        (McFormat::Agieval, true) => s.push_str(&format!("\n答案：{}", LETTERS[q.answer])),
        (McFormat::Agieval, false) => s.push_str("\n答案："),
        (McFormat::Ceval, true) if style == PromptStyle::Baichuan => {
            s.push_str(&format!("\n答案：{}", LETTERS[q.answer]))
        }
        (McFormat::Ceval, true) => s.push_str(&format!("\n答案：{}\n\n", LETTERS[q.answer])),
        (McFormat::Ceval, false) => s.push_str("\n答案："),
        (McFormat::Mmlu, true) => s.push_str(&format!("\nAnswer: {}\n\n", LETTERS[q.answer])),
        (McFormat::Mmlu, false) => s.push_str("\nAnswer:"),
    }
    s
}

/// An AGIEval question in its subset's language: Chinese ones as Baichuan's C-Eval ("答案："),
/// English ones as MMLU ("Answer:", shots ending with a blank line).
pub fn format_exam_question(chinese: bool, q: &McQuestion, with_answer: bool) -> String {
    let mut s = q.question.clone();
    for (l, o) in LETTERS.iter().zip(&q.options) {
        s.push_str(&format!("\n{l}. {o}"));
    }
    match (chinese, with_answer) {
        (true, true) => s.push_str(&format!("\n答案：{}", LETTERS[q.answer])),
        (true, false) => s.push_str("\n答案："),
        (false, true) => s.push_str(&format!("\nAnswer: {}\n\n", LETTERS[q.answer])),
        (false, false) => s.push_str("\nAnswer:"),
    }
    s
}

/// [`format_question_in`] for a question of `subject` (AGIEval's language is the subject's).
pub fn format_for(
    format: McFormat,
    style: PromptStyle,
    subject: &McSubject,
    q: &McQuestion,
    with_answer: bool,
) -> String {
    if format == McFormat::Agieval {
        format_exam_question(format.chinese(subject), q, with_answer)
    } else {
        format_question_in(format, style, q, with_answer)
    }
}

/// The prompt's opening line (official convention). MMLU's keeps the reference's spelling: every
/// word of the subject is preceded by a space, so the text reads "about  college biology." (two
/// spaces).
pub fn header(format: McFormat, subject: &McSubject) -> String {
    header_in(format, PromptStyle::Official, subject)
}

/// [`header`] in `style`: Baichuan's C-Eval instruction ends with a single newline.
pub fn header_in(format: McFormat, style: PromptStyle, subject: &McSubject) -> String {
    match format {
        McFormat::Ceval if style == PromptStyle::Baichuan => format!(
            "以下是中国关于{}考试的单项选择题，请选出其中的正确答案。\n",
            subject.name
        ),
        McFormat::Ceval => format!(
            "以下是中国关于{}考试的单项选择题，请选出其中的正确答案。\n\n",
            subject.name
        ),
        McFormat::Mmlu => {
            let words: String = subject.key.split('_').map(|w| format!(" {w}")).collect();
            format!("The following are multiple choice questions (with answers) about {words}.\n\n")
        }
        McFormat::Gaokao | McFormat::Agieval if format.chinese(subject) => {
            format!(
                "以下是中国关于{}考试的单项选择题，请选出其中的正确答案。\n",
                subject.name
            )
        }
        McFormat::Gaokao | McFormat::Agieval => format!(
            "The following are multiple choice questions (with answers) about {}.\n\n",
            subject.name
        ),
    }
}

/// Which dev examples serve as shots, in order: the first `k` (the reference), or with a seed
/// a seeded shuffle's first `k` (the same for every question of the subject).
pub fn shot_order(dev_len: usize, k: usize, seed: Option<u64>) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..dev_len).collect();
    if let Some(seed) = seed {
        let mut state = seed;
        let mut next = || {
            let z = splitmix64(state);
            state = state.wrapping_add(GOLDEN);
            z
        };
        for i in (1..dev_len).rev() {
            let j = (next() % (i as u64 + 1)) as usize;
            idx.swap(i, j);
        }
    }
    idx.truncate(k.min(dev_len));
    idx
}

/// Joins a prompt: Baichuan's C-Eval (and the Chinese exams, `newlines`) puts a newline before
/// every example and before the question; otherwise the parts follow each other (shots end with
/// their blank line).
pub fn assemble(format: McFormat, style: PromptStyle, head: &str, shots: &[String], end: &str) -> String {
    assemble_joined(
        format == McFormat::Ceval && style == PromptStyle::Baichuan,
        head,
        shots,
        end,
    )
}

/// [`assemble`] with the joining chosen: `newlines` for Baichuan's C-Eval layout.
pub fn assemble_joined(newlines: bool, head: &str, shots: &[String], end: &str) -> String {
    if newlines {
        let mut p = head.to_string();
        for s in shots {
            p.push('\n');
            p.push_str(s);
        }
        p.push('\n');
        p.push_str(end);
        p
    } else {
        format!("{head}{}{end}", shots.concat())
    }
}

/// The dev examples of question `question` of subject `subject` in `style`: Baichuan's C-Eval
/// draws a fresh shuffle for each question (seeded by `seed`, the subject and the question);
/// otherwise [`shot_order`] (the first k, or one seeded shuffle per subject).
pub fn shots_for(
    format: McFormat,
    style: PromptStyle,
    dev_len: usize,
    k: usize,
    seed: Option<u64>,
    subject: usize,
    question: usize,
) -> Vec<usize> {
    if matches!(format, McFormat::Gaokao | McFormat::Agieval) {
        // the exams' examples were drawn when the file was split: all of them, in that order
        (0..k.min(dev_len)).collect()
    } else if format == McFormat::Ceval && style == PromptStyle::Baichuan {
        let mixed =
            splitmix64(splitmix64(seed.unwrap_or(0) ^ (subject as u64).wrapping_mul(GOLDEN)) ^ (question as u64));
        shot_order(dev_len, k, Some(mixed))
    } else {
        shot_order(dev_len, k, seed)
    }
}

/// One question's prompt text and the dev examples it holds (before any are dropped to fit).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct McPrompt {
    pub subject: String,
    pub question: usize,
    pub shots: Vec<usize>,
    pub text: String,
}

/// The parts of question `qi` of subject `si`'s prompt: the dev examples it draws (in order),
/// their texts with answers, and the question's text ending where the answer goes.
fn question_parts(s: &McSubject, si: usize, qi: usize, o: &McOptions) -> (Vec<usize>, Vec<String>, String) {
    let order = shots_for(o.format, o.style, s.dev.len(), o.shots, o.seed, si, qi);
    let shots = order
        .iter()
        .map(|&i| format_for(o.format, o.style, s, &s.dev[i], true))
        .collect();
    (order, shots, format_for(o.format, o.style, s, &s.questions[qi], false))
}

/// Whether `s`'s prompts join their parts with newlines (Baichuan's C-Eval layout).
fn newlines(o: &McOptions, s: &McSubject) -> bool {
    match o.format {
        McFormat::Ceval => o.style == PromptStyle::Baichuan,
        McFormat::Mmlu => false,
        McFormat::Gaokao | McFormat::Agieval => o.format.chinese(s),
    }
}

/// Every question's full prompt in `o.style`, with all its shots.
pub fn build_prompts(subjects: &[McSubject], o: &McOptions) -> Vec<McPrompt> {
    let mut out = Vec::new();
    for (si, s) in subjects.iter().enumerate() {
        let head = header_in(o.format, o.style, s);
        for qi in 0..s.questions.len() {
            let (order, shots, end) = question_parts(s, si, qi, o);
            out.push(McPrompt {
                subject: s.key.clone(),
                question: qi,
                shots: order,
                text: assemble_joined(newlines(o, s), &head, &shots, &end),
            });
        }
    }
    out
}

/// Options of `eval mc`.
#[derive(Debug, Clone)]
pub struct McOptions {
    pub format: McFormat,
    pub style: PromptStyle,
    pub shots: usize,
    pub seed: Option<u64>,
    /// Longest prompt in tokens; shots are dropped until the prompt fits.
    pub max_len: usize,
    /// Prepend this id (BOS) to every prompt.
    pub bos: Option<u32>,
}

/// A tokenized prompt ready to score.
#[derive(Debug, Clone)]
pub struct McItem {
    pub subject: usize,
    pub ids: Vec<i64>,
    pub answer: usize,
    pub shots: usize,
    /// The prompt did not fit even with no shots and lost its beginning.
    pub truncated: bool,
}

/// Builds every question's prompt, dropping shots while it exceeds `max_len` tokens.
pub fn build_items(subjects: &[McSubject], tok: &Tokenizer, o: &McOptions) -> Result<Vec<McItem>, EvalError> {
    let mut items = Vec::new();
    for (si, s) in subjects.iter().enumerate() {
        let head = header_in(o.format, o.style, s);
        for (qi, q) in s.questions.iter().enumerate() {
            let (_, shots, end) = question_parts(s, si, qi, o);
            let mut k = shots.len();
            let mut ids = loop {
                let prompt = assemble_joined(newlines(o, s), &head, &shots[..k], &end);
                let mut ids: Vec<i64> = o.bos.map(i64::from).into_iter().collect();
                ids.extend(tok.encode(&prompt)?.into_iter().map(i64::from));
                if ids.len() <= o.max_len || k == 0 {
                    break ids;
                }
                k -= 1;
            };
            let truncated = ids.len() > o.max_len;
            if truncated {
                ids.drain(..ids.len() - o.max_len);
            }
            items.push(McItem {
                subject: si,
                ids,
                answer: q.answer,
                shots: k,
                truncated,
            });
        }
    }
    Ok(items)
}

/// The ids whose logits score the letters: the first token of each letter alone, as the
/// reference takes `tokenizer(letter).input_ids[0]`.
pub fn letter_ids(tok: &Tokenizer) -> Result<[i64; 4], EvalError> {
    let mut out = [0i64; 4];
    for (o, l) in out.iter_mut().zip(LETTERS) {
        *o = i64::from(*tok.encode(l)?.first().expect("a letter encodes to at least one token"));
    }
    Ok(out)
}

/// Scores items in batches of at most `batch_tokens` padded tokens (longest first), calling
/// `score` with each batch's prompts; returns the letter logits in item order.
pub fn score_items(
    items: &[McItem],
    batch_tokens: usize,
    mut score: impl FnMut(&[&[i64]]) -> Vec<[f32; 4]>,
) -> Vec<[f32; 4]> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(items[i].ids.len()));
    let mut out = vec![[0f32; 4]; items.len()];
    let mut start = 0;
    while start < order.len() {
        let longest = items[order[start]].ids.len().max(1);
        let n = (batch_tokens / longest).max(1).min(order.len() - start);
        let batch: Vec<&[i64]> = order[start..start + n].iter().map(|&i| &items[i].ids[..]).collect();
        let scores = score(&batch);
        assert_eq!(scores.len(), n, "one score row per prompt");
        for (&i, s) in order[start..start + n].iter().zip(scores) {
            out[i] = s;
        }
        start += n;
    }
    out
}

/// The letter logits of `model` at the last position of each prompt (right-padded batch).
pub fn model_letter_logits(model: &Baichuan, prompts: &[&[i64]], letters: [i64; 4]) -> Vec<[f32; 4]> {
    tch::no_grad(|| {
        let t = prompts.iter().map(|p| p.len()).max().unwrap_or(1);
        let pad = model.config.pad_token_id.unwrap_or(0).max(0);
        let mut flat = Vec::with_capacity(prompts.len() * t);
        for p in prompts {
            flat.extend_from_slice(p);
            flat.extend(std::iter::repeat_n(pad, t - p.len()));
        }
        let device = model.device();
        let ids = Tensor::from_slice(&flat)
            .view([prompts.len() as i64, t as i64])
            .to_device(device);
        let mut h = model.embed(&ids);
        for i in 0..model.layers.len() {
            h = model.block(i, &h);
        }
        let last: Vec<i64> = prompts.iter().map(|p| p.len() as i64 - 1).collect();
        let index = Tensor::from_slice(&last)
            .to_device(device)
            .view([-1, 1, 1])
            .expand([prompts.len() as i64, 1, h.size()[2]], false);
        let h_last = h.gather(1, &index, false); // (B, 1, d)
        let logits = model
            .head(&h_last)
            .squeeze_dim(1)
            .index_select(1, &Tensor::from_slice(&letters).to_device(device))
            .to_kind(Kind::Float)
            .to_device(tch::Device::Cpu);
        let v: Vec<f32> = Vec::try_from(logits.flatten(0, -1)).expect("float logits");
        v.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect()
    })
}

/// The index of the largest logit (the first on ties, as numpy's argmax).
pub fn predict(logits: &[f32; 4]) -> usize {
    let mut best = 0;
    for i in 1..4 {
        if logits[i] > logits[best] {
            best = i;
        }
    }
    best
}

#[derive(Debug, Clone, Serialize)]
pub struct SubjectResult {
    pub subject: String,
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub category: String,
    pub questions: usize,
    pub correct: usize,
    pub accuracy: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct McReport {
    pub format: McFormat,
    pub split: String,
    pub shots: usize,
    pub subjects: Vec<SubjectResult>,
    /// Each category's accuracy, averaged as the whole is: C-Eval unweighted over its subjects,
    /// MMLU weighted by questions.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub categories: BTreeMap<String, f64>,
    /// C-Eval: unweighted over subjects; MMLU: weighted by questions.
    pub average: f64,
    pub average_kind: &'static str,
    pub questions: usize,
    /// Prompts that had to lose shots to fit the context (beyond a dev split with fewer rows than
    /// `shots`), and that lost their beginning.
    pub prompts_with_fewer_shots: usize,
    pub prompts_truncated: usize,
    /// The predicted letter of every question, per subject in file order.
    pub predictions: BTreeMap<String, String>,
    /// GAOKAO-Bench and AGIEval: each file's questions, those kept and why others were not.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<super::exams::FileCount>,
}

/// Accuracy per subject and the reference's averages.
pub fn summarize(
    subjects: &[McSubject],
    items: &[McItem],
    logits: &[[f32; 4]],
    format: McFormat,
    split: &str,
    shots: usize,
) -> McReport {
    let mut correct = vec![0usize; subjects.len()];
    let mut total = vec![0usize; subjects.len()];
    let mut predictions: BTreeMap<String, String> = BTreeMap::new();
    for (item, l) in items.iter().zip(logits) {
        let p = predict(l);
        total[item.subject] += 1;
        correct[item.subject] += usize::from(p == item.answer);
        predictions
            .entry(subjects[item.subject].key.clone())
            .or_default()
            .push_str(LETTERS[p]);
    }
    let results: Vec<SubjectResult> = subjects
        .iter()
        .enumerate()
        .map(|(i, s)| SubjectResult {
            subject: s.key.clone(),
            name: s.name.clone(),
            category: s.category.clone(),
            questions: total[i],
            correct: correct[i],
            accuracy: if total[i] == 0 {
                0.0
            } else {
                correct[i] as f64 / total[i] as f64
            },
        })
        .collect();
    let questions: usize = total.iter().sum();
    let unweighted = |rs: &[&SubjectResult]| rs.iter().map(|r| r.accuracy).sum::<f64>() / rs.len().max(1) as f64;
    let (average, average_kind, categories) = match format {
        McFormat::Ceval | McFormat::Gaokao | McFormat::Agieval => {
            let mut by: BTreeMap<String, Vec<&SubjectResult>> = BTreeMap::new();
            for r in results.iter().filter(|r| !r.category.is_empty()) {
                by.entry(r.category.clone()).or_default().push(r);
            }
            let cats = by.into_iter().map(|(c, rs)| (c, unweighted(&rs))).collect();
            let all: Vec<&SubjectResult> = results.iter().collect();
            (unweighted(&all), "unweighted mean over subjects", cats)
        }
        McFormat::Mmlu => {
            // (correct, questions) per category
            let mut by: BTreeMap<String, (usize, usize)> = BTreeMap::new();
            for r in &results {
                let e = by.entry(r.category.clone()).or_default();
                e.0 += r.correct;
                e.1 += r.questions;
            }
            let cats = by
                .into_iter()
                .map(|(c, (right, n))| (c, right as f64 / n.max(1) as f64))
                .collect();
            (
                correct.iter().sum::<usize>() as f64 / questions.max(1) as f64,
                "weighted by questions",
                cats,
            )
        }
    };
    McReport {
        format,
        split: split.to_string(),
        shots,
        subjects: results,
        categories,
        average,
        average_kind,
        questions,
        prompts_with_fewer_shots: items
            .iter()
            .filter(|i| i.shots < shots.min(subjects[i.subject].dev.len()))
            .count(),
        prompts_truncated: items.iter().filter(|i| i.truncated).count(),
        predictions,
        files: Vec::new(),
    }
}

/// The summary of several models on several benchmarks, in the report's shape.
#[derive(Debug, Clone)]
pub struct Summary {
    /// A Markdown table: a row per model, a column per benchmark's average and per category.
    pub markdown: String,
    /// `{"columns": [...], "rows": [{"model", "path", "scores": {column: accuracy}}]}`.
    pub json: serde_json::Value,
}

/// A benchmark's name as the report writes it.
fn display_name(format: McFormat) -> &'static str {
    match format {
        McFormat::Ceval => "C-Eval",
        McFormat::Mmlu => "MMLU",
        McFormat::Gaokao => "Gaokao",
        McFormat::Agieval => "AGIEval",
    }
}

/// One row per model (its directory's name, or its path where two names agree), a column per
/// benchmark's average (percent) followed by one per category, in the order the first model's
/// reports give them; a cell a model lacks is empty.
pub fn summary_table(rows: &[(std::path::PathBuf, Vec<McReport>)]) -> Summary {
    let mut columns: Vec<String> = Vec::new();
    let mut cells: Vec<BTreeMap<String, f64>> = Vec::new();
    for (_, reports) in rows {
        let mut row = BTreeMap::new();
        for r in reports {
            let name = display_name(r.format);
            let mut add = |col: String, v: f64| {
                if !columns.contains(&col) {
                    columns.push(col.clone());
                }
                row.insert(col, 100.0 * v);
            };
            add(name.to_string(), r.average);
            for (c, v) in &r.categories {
                add(format!("{name} {c}"), *v);
            }
        }
        cells.push(row);
    }
    let label = |path: &std::path::Path| {
        path.file_name()
            .map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
    };
    let labels: Vec<String> = rows
        .iter()
        .map(|(p, _)| {
            let l = label(p);
            if rows.iter().filter(|(q, _)| label(q) == l).count() > 1 {
                p.display().to_string()
            } else {
                l
            }
        })
        .collect();
    let mut md = format!(
        "| model | {} |\n|---|{}\n",
        columns.join(" | "),
        "---:|".repeat(columns.len())
    );
    for (l, row) in labels.iter().zip(&cells) {
        let vals: Vec<String> = columns
            .iter()
            .map(|c| row.get(c).map_or_else(String::new, |v| format!("{v:.2}")))
            .collect();
        md.push_str(&format!("| {l} | {} |\n", vals.join(" | ")));
    }
    let json = serde_json::json!({
        "columns": columns,
        "rows": rows.iter().zip(&labels).zip(&cells).map(|(((p, _), l), row)| serde_json::json!({
            "model": l,
            "path": p,
            "scores": row,
        })).collect::<Vec<_>>(),
    });
    Summary { markdown: md, json }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> std::path::PathBuf {
        std::path::PathBuf::from("x.csv")
    }

    #[test]
    fn csv_handles_quotes_newlines_and_crlf() {
        let text = "\u{feff}id,question,A\r\n1,\"a, \"\"quoted\"\"\nline\",x\r\n\r\n2,plain,\"\"\n3,last,end";
        let rows = parse_csv(text, &p()).unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0], ["id", "question", "A"]);
        assert_eq!(rows[1], ["1", "a, \"quoted\"\nline", "x"]);
        assert_eq!(rows[2], ["2", "plain", ""]);
        assert_eq!(rows[3], ["3", "last", "end"]);
        assert!(parse_csv("a,\"open\n", &p()).is_err());
        // as pandas reads them: stray quotes stay, text after a closing quote is appended
        assert_eq!(parse_csv("a,b\"c, \"d\"\n", &p()).unwrap(), [["a", "b\"c", " \"d\""]]);
        assert_eq!(parse_csv("\"b\"c,x\n", &p()).unwrap(), [["bc", "x"]]);
    }

    fn q(text: &str, answer: usize) -> McQuestion {
        McQuestion {
            question: text.into(),
            options: ["w".into(), "x".into(), "y".into(), "z".into()],
            answer,
        }
    }

    #[test]
    fn prompts_follow_the_reference_text() {
        let s = McSubject {
            key: "high_school_biology".into(),
            name: "高中生物".into(),
            category: "STEM".into(),
            dev: vec![],
            questions: vec![],
        };
        assert_eq!(
            header(McFormat::Ceval, &s),
            "以下是中国关于高中生物考试的单项选择题，请选出其中的正确答案。\n\n"
        );
        assert_eq!(
            header(McFormat::Mmlu, &s),
            "The following are multiple choice questions (with answers) about  high school biology.\n\n"
        );
        assert_eq!(
            format_question(McFormat::Ceval, &q("问", 1), true),
            "问\nA. w\nB. x\nC. y\nD. z\n答案：B\n\n"
        );
        assert_eq!(
            format_question(McFormat::Ceval, &q("问", 1), false),
            "问\nA. w\nB. x\nC. y\nD. z\n答案："
        );
        assert_eq!(
            format_question(McFormat::Mmlu, &q("Q?", 3), true),
            "Q?\nA. w\nB. x\nC. y\nD. z\nAnswer: D\n\n"
        );
        assert_eq!(
            format_question(McFormat::Mmlu, &q("Q?", 3), false),
            "Q?\nA. w\nB. x\nC. y\nD. z\nAnswer:"
        );
    }

    #[test]
    fn shots_are_the_first_k_or_a_seeded_choice() {
        assert_eq!(shot_order(5, 3, None), [0, 1, 2]);
        assert_eq!(shot_order(2, 5, None), [0, 1]);
        let a = shot_order(10, 5, Some(7));
        assert_eq!(a, shot_order(10, 5, Some(7)));
        assert_ne!(a, shot_order(10, 5, Some(8)));
        let mut sorted = a.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 5);
        assert!(a.iter().all(|&i| i < 10));
    }

    #[test]
    fn batches_respect_the_token_budget_and_keep_item_order() {
        let items: Vec<McItem> = [3usize, 9, 5, 9, 1]
            .iter()
            .enumerate()
            .map(|(i, &n)| McItem {
                subject: 0,
                ids: vec![i as i64; n],
                answer: 0,
                shots: 0,
                truncated: false,
            })
            .collect();
        let mut batches = Vec::new();
        let out = score_items(&items, 20, |b| {
            batches.push(b.iter().map(|p| p.len()).collect::<Vec<_>>());
            b.iter().map(|p| [p[0] as f32, 0.0, 0.0, 0.0]).collect()
        });
        assert_eq!(batches, vec![vec![9, 9], vec![5, 3, 1]]);
        for (i, o) in out.iter().enumerate() {
            assert_eq!(o[0], i as f32);
        }
    }

    #[test]
    fn mmlu_subjects_fall_into_its_four_categories() {
        let count = |c: &str| MMLU_SUBJECTS.iter().filter(|(_, x)| *x == c).count();
        assert_eq!(
            [
                count("STEM"),
                count("Humanities"),
                count("Social Sciences"),
                count("Other")
            ],
            [18, 13, 12, 14]
        );
        let keys: std::collections::BTreeSet<&str> = MMLU_SUBJECTS.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys.len(), 57);
    }

    #[test]
    fn averages_are_unweighted_for_ceval_and_weighted_for_mmlu() {
        let subj = |k: &str, cat: &str| McSubject {
            key: k.into(),
            name: k.into(),
            category: cat.into(),
            dev: vec![],
            questions: vec![],
        };
        let subjects = vec![subj("a", "STEM"), subj("b", "Other")];
        // subject a: 1 of 1 right; subject b: 1 of 3 right
        let items: Vec<McItem> = [(0, 2), (1, 0), (1, 1), (1, 2)]
            .iter()
            .map(|&(s, answer)| McItem {
                subject: s,
                ids: vec![1],
                answer,
                shots: 0,
                truncated: false,
            })
            .collect();
        let logits = vec![
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
        ];
        let c = summarize(&subjects, &items, &logits, McFormat::Ceval, "val", 5);
        assert!((c.average - (1.0 + 1.0 / 3.0) / 2.0).abs() < 1e-12);
        assert_eq!(c.categories["STEM"], 1.0);
        let m = summarize(&subjects, &items, &logits, McFormat::Mmlu, "test", 5);
        assert!((m.average - 0.5).abs() < 1e-12);
        assert_eq!(m.categories["STEM"], 1.0);
        assert!((m.categories["Other"] - 1.0 / 3.0).abs() < 1e-12);
        // MMLU weights a category by questions: 2 of 4 here, where C-Eval's mean would be 2/3
        let mut one = subjects.clone();
        one[1].category = "STEM".into();
        let m = summarize(&one, &items, &logits, McFormat::Mmlu, "test", 5);
        assert!((m.categories["STEM"] - 0.5).abs() < 1e-12);
        let c = summarize(&one, &items, &logits, McFormat::Ceval, "val", 5);
        assert!((c.categories["STEM"] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.predictions["b"], "CCC");
        assert_eq!(predict(&[1.0, 3.0, 3.0, 0.0]), 1);
    }
}
