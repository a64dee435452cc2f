//! Heuristic document filters for pretraining text: the Gopher quality and repetition rules
//! (Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from Training
//! Gopher", appendix A, table A1), the C4 line and page rules (Raffel et al. 2020, "Exploring
//! the Limits of Transfer Learning with a Unified Text-to-Text Transformer", section 2.2) and
//! the FineWeb quality rules (Penedo et al. 2024, "The FineWeb Datasets", section 3.5).
//!
//! The semantics (order of checks, thresholds, reason names, how lines and paragraphs are split,
//! lengths in characters as Python's `len`) follow datatrove 0.10.1's `GopherRepetitionFilter`,
//! `GopherQualityFilter`, `C4QualityFilter` and `FineWebQualityFilter`, run in that order as in
//! FineWeb's pipeline. Two documented departures: words come from `script::words` instead of
//! NLTK's `word_tokenize`, and sentences from `script::sentences` instead of NLTK's punkt.
//! `scripts/reference/oracle_filters.py` runs datatrove itself with those two swapped in; on English text
//! this module and the oracle agree on every keep/drop decision, reason and output text.
//!
//! CJK forms. A document whose letters are mostly CJK (`[cjk] min_share`) is measured in CJK
//! form: each CJK character is one token of `words`, and counts as 1/`chars_per_word` of a word
//! wherever a rule counts words (1.5 characters per word: the token-weighted mean word length
//! of segmented Chinese corpora such as the PKU People's Daily and MSR bake-off corpora is
//! 1.5-1.7, and the usual translation ratio of 1.5-1.7 Chinese characters per English word
//! agrees). Gopher's n-gram sizes are scaled by the same factor; the mean word length bound
//! applies to the non-CJK words only (when there are `min_doc_words` of them); the alphabetic
//! share is taken over non-punctuation words; Chinese, Japanese and Korean function words join
//! the stop words; 。！？」』” end lines for C4 and FineWeb; C4 counts a line's words and word
//! lengths with `words`; FineWeb's short line is 10 characters; · ● ▪ ◦ ■ ◆ ・ are bullets; a
//! run of … (as in ……) is one ellipsis. Documents not mostly CJK get datatrove's rules unchanged.

pub use crate::script::{self, is_cjk, sentences, words};

use script::{
    cjk_share, in_punctuation_set, is_alpha, is_cjk_token, is_decimal, is_punct, is_space, is_terminal, len, py_split,
    py_strip, split_newline_runs, splitlines,
};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;

/// Why a document was dropped or a line removed: the rule (datatrove's reason name), the measured
/// value and the threshold it crossed.
#[derive(Debug, Clone, PartialEq)]
pub struct Reason {
    /// datatrove's reason name: `gopher_short_doc`, `dup_line_frac`, `top_2_gram`, `lorem_ipsum`,
    /// `line_punct_ratio`, ...; for removed lines its statistic name (`line-filter-javascript`, ...).
    pub rule: String,
    /// The measured quantity (a ratio, a count, a mean length); 1 for a phrase that was found.
    pub value: f64,
    /// The configured threshold; 0 for a rule without one.
    pub threshold: f64,
}

impl Reason {
    fn new(rule: impl Into<String>, value: f64, threshold: f64) -> Self {
        Reason {
            rule: rule.into(),
            value,
            threshold,
        }
    }

    /// How `value` compared with `threshold` to trigger the rule: `<`, `>`, or `None` for rules
    /// that fire on a phrase or a property (lorem ipsum, no terminal punctuation, ...).
    pub fn comparison(&self) -> Option<&'static str> {
        match self.rule.as_str() {
            "gopher_short_doc"
            | "gopher_below_avg_threshold"
            | "gopher_below_alpha_threshold"
            | "gopher_enough_stop_words"
            | "too_few_sentences"
            | "line-filter-too_few_words"
            | "line_punct_ratio" => Some("<"),
            "empty"
            | "lorem_ipsum"
            | "curly_bracket"
            | "line-filter-no_terminal_punc"
            | "line-filter-javascript"
            | "line-filter-policy" => None,
            _ => Some(">"),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.comparison() {
            Some(op) => write!(f, "{}: {} {op} {}", self.rule, self.value, self.threshold),
            None => write!(f, "{}", self.rule),
        }
    }
}

/// The result of `FilterConfig::apply` on one document.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The document after C4's line removal (unchanged when C4 is off or dropped it).
    pub text: String,
    /// Lines C4 removed, as they were when removed (stripped), with the rule that removed each.
    pub removed_lines: Vec<(String, Reason)>,
    /// The rule that dropped the document; `None` when it is kept.
    pub dropped: Option<Reason>,
}

impl Outcome {
    pub fn kept(&self) -> bool {
        self.dropped.is_none()
    }
}

/// A configuration file that does not parse or holds a bad value.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

/// All four filters and the CJK measure they share. Every section and field may be omitted;
/// the default enables all four filters with datatrove's defaults. See `DEFAULT_TOML`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    pub cjk: Cjk,
    pub gopher_repetition: GopherRepetition,
    pub gopher_quality: GopherQuality,
    pub c4: C4,
    pub fineweb: FineWeb,
    /// Cross-document boilerplate lines (`crate::filter::boilerplate`).
    pub boilerplate: crate::filter::boilerplate::Boilerplate,
    /// The fastText quality gate (`crate::filter::QualityGate`).
    pub quality: crate::filter::QualityGate,
}

/// When and how a document is measured in CJK form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cjk {
    /// A document is CJK when CJK characters are more than this share of its letters. Default 0.5.
    pub min_share: f64,
    /// CJK characters per word: a CJK character counts as 1/this of a word. Default 1.5, the mean
    /// word length of segmented Chinese text (see the module header).
    pub chars_per_word: f64,
}

impl Default for Cjk {
    fn default() -> Self {
        Cjk {
            min_share: 0.5,
            chars_per_word: 1.5,
        }
    }
}

/// Gopher repetition rules (Rae et al. 2021, table A1; datatrove `GopherRepetitionFilter`).
/// A ratio of 0 turns its rule off, as in datatrove.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GopherRepetition {
    /// Run this filter. Default true.
    pub enabled: bool,
    /// Max share of lines (split on runs of \n) that repeat an earlier line. Default 0.3 (table A1).
    pub dup_line_frac: f64,
    /// Max share of paragraphs (split on \n\n+) that repeat an earlier one. Default 0.3 (table A1).
    pub dup_para_frac: f64,
    /// Max characters in repeated lines / characters in the document. Default 0.2 (table A1).
    pub dup_line_char_frac: f64,
    /// Max characters in repeated paragraphs / characters in the document. Default 0.2 (table A1).
    pub dup_para_char_frac: f64,
    /// (n, max): characters covered by the most frequent word n-gram / document characters.
    /// Default [[2, 0.2], [3, 0.18], [4, 0.16]] (table A1).
    pub top_n_grams: Vec<(usize, f64)>,
    /// (n, max): characters in n-grams that repeat an earlier one / document characters.
    /// Default [[5, 0.15], [6, 0.14], [7, 0.13], [8, 0.12], [9, 0.11], [10, 0.1]] (table A1).
    pub dup_n_grams: Vec<(usize, f64)>,
}

impl Default for GopherRepetition {
    fn default() -> Self {
        GopherRepetition {
            enabled: true,
            dup_line_frac: 0.3,
            dup_para_frac: 0.3,
            dup_line_char_frac: 0.2,
            dup_para_char_frac: 0.2,
            top_n_grams: vec![(2, 0.2), (3, 0.18), (4, 0.16)],
            dup_n_grams: vec![(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.1)],
        }
    }
}

/// Gopher quality rules (Rae et al. 2021, appendix A; datatrove `GopherQualityFilter`).
/// A threshold of 0 turns its rule off, as in datatrove.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GopherQuality {
    /// Run this filter. Default true.
    pub enabled: bool,
    /// Min words that are not all punctuation. Default 50 (Gopher).
    pub min_doc_words: usize,
    /// Max words that are not all punctuation. Default 100000 (Gopher).
    pub max_doc_words: usize,
    /// Min mean word length in characters. Default 3 (Gopher).
    pub min_avg_word_length: f64,
    /// Max mean word length in characters. Default 10 (Gopher).
    pub max_avg_word_length: f64,
    /// Max count of # and of ellipses (... and …), each, per word. Default 0.1 (Gopher).
    pub max_symbol_word_ratio: f64,
    /// Max share of lines starting with a bullet (• or -). Default 0.9 (Gopher).
    pub max_bullet_lines_ratio: f64,
    /// Max share of lines ending with an ellipsis. Default 0.3 (Gopher).
    pub max_ellipsis_lines_ratio: f64,
    /// Min share of words holding a letter (datatrove's name for it). Default 0.8 (Gopher).
    pub max_non_alpha_words_ratio: f64,
    /// Min number of distinct stop words present. Default 2 (Gopher).
    pub min_stop_words: usize,
    /// Stop words. Default Gopher's: the be to of and that have with.
    pub stop_words: Vec<String>,
    /// Stop words added for CJK documents, single characters since `words` splits CJK text into
    /// characters: the most frequent Chinese function words, Japanese particles, Korean particles.
    pub cjk_stop_words: Vec<String>,
}

const STOP_WORDS: [&str; 8] = ["the", "be", "to", "of", "and", "that", "have", "with"];
const CJK_STOP_WORDS: [&str; 40] = [
    "的", "了", "是", "在", "和", "有", "我", "不", "人", "这", "也", "就", "都", "他", "你", "一", "上", "个", "们",
    "到", "说", "要", "会", "着", "对", "与", "为", "の", "は", "を", "に", "が", "で", "と", "이", "가", "은", "는",
    "을", "를",
];

impl Default for GopherQuality {
    fn default() -> Self {
        GopherQuality {
            enabled: true,
            min_doc_words: 50,
            max_doc_words: 100_000,
            min_avg_word_length: 3.0,
            max_avg_word_length: 10.0,
            max_symbol_word_ratio: 0.1,
            max_bullet_lines_ratio: 0.9,
            max_ellipsis_lines_ratio: 0.3,
            max_non_alpha_words_ratio: 0.8,
            min_stop_words: 2,
            stop_words: STOP_WORDS.iter().map(|s| s.to_string()).collect(),
            cjk_stop_words: CJK_STOP_WORDS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// C4 rules (Raffel et al. 2020, section 2.2; datatrove `C4QualityFilter` with `split_paragraph`):
/// lines are removed, then the page is dropped if fewer than `min_num_sentences` remain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct C4 {
    /// Run this filter. Default true.
    pub enabled: bool,
    /// Remove Wikipedia citations [1], [edit], [citation needed] from lines. Default true (datatrove).
    pub remove_citations: bool,
    /// Remove lines not ending in . ? ! " ' (or ending in ...). Default true (C4).
    pub filter_no_terminal_punct: bool,
    /// Drop the page if the kept lines hold fewer sentences; -1 turns it off. Default 5 (C4).
    pub min_num_sentences: i64,
    /// Remove lines with fewer words; -1 turns it off. Default 3 (C4).
    pub min_words_per_line: i64,
    /// Remove lines with a longer word (in characters); -1 turns it off. Default 1000 (C4 code).
    pub max_word_length: i64,
    /// Drop the page if a kept line holds "lorem ipsum". Default true (C4).
    pub filter_lorem_ipsum: bool,
    /// Remove lines mentioning "javascript". Default true (C4).
    pub filter_javascript: bool,
    /// Drop the page if a kept line holds "{". Default true (C4).
    pub filter_curly_bracket: bool,
    /// Remove lines with "terms of use", "privacy policy", cookie phrases. Default true (C4 code).
    pub filter_policy: bool,
}

impl Default for C4 {
    fn default() -> Self {
        C4 {
            enabled: true,
            remove_citations: true,
            filter_no_terminal_punct: true,
            min_num_sentences: 5,
            min_words_per_line: 3,
            max_word_length: 1000,
            filter_lorem_ipsum: true,
            filter_javascript: true,
            filter_curly_bracket: true,
            filter_policy: true,
        }
    }
}

/// FineWeb rules (Penedo et al. 2024, section 3.5; datatrove `FineWebQualityFilter`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FineWeb {
    /// Run this filter. Default true.
    pub enabled: bool,
    /// Min share of lines ending in a stop character. Default 0.12 (FineWeb).
    pub line_punct_thr: f64,
    /// Let documents with no such line through. Default false (FineWeb).
    pub line_punct_exclude_zero: bool,
    /// Stop characters; unset means datatrove's TERMINAL_PUNCTUATION (. ! ? 。！？ and the
    /// sentence-final marks of other scripts). Default unset.
    pub stop_chars: Option<Vec<char>>,
    /// Max share of short lines. Default 0.67 (FineWeb).
    pub short_line_thr: f64,
    /// A line of at most this many characters is short. Default 30 (FineWeb).
    pub short_line_length: usize,
    /// The same for CJK documents. Default 10: 30 English characters are 5-6 words, which is
    /// 8-9 CJK characters at 1.5 characters per word; rounded up.
    pub cjk_short_line_length: usize,
    /// Max characters in repeated lines / characters other than \n. Default 0.01 (FineWeb).
    pub char_duplicates_ratio: f64,
    /// Max newlines per word. Default 0.3 (FineWeb).
    pub new_line_ratio: f64,
}

impl Default for FineWeb {
    fn default() -> Self {
        FineWeb {
            enabled: true,
            line_punct_thr: 0.12,
            line_punct_exclude_zero: false,
            stop_chars: None,
            short_line_thr: 0.67,
            short_line_length: 30,
            cjk_short_line_length: 10,
            char_duplicates_ratio: 0.01,
            new_line_ratio: 0.3,
        }
    }
}

/// The default configuration as documented TOML; it parses to `FilterConfig::default()`.
pub const DEFAULT_TOML: &str = r#"# Heuristic filters: Gopher repetition, Gopher quality, C4, FineWeb (datatrove's defaults).
# In Gopher sections a threshold of 0 turns its rule off; in [c4], -1 does.

[cjk]
min_share = 0.5        # a document is CJK when CJK characters are > this share of its letters
chars_per_word = 1.5   # a CJK character counts as 1/1.5 word (mean Chinese word length)

[gopher_repetition]    # Rae et al. 2021, table A1
enabled = true
dup_line_frac = 0.3         # repeated lines / lines
dup_para_frac = 0.3         # repeated paragraphs / paragraphs
dup_line_char_frac = 0.2    # characters in repeated lines / characters
dup_para_char_frac = 0.2    # characters in repeated paragraphs / characters
top_n_grams = [[2, 0.2], [3, 0.18], [4, 0.16]]      # [n, max] most frequent n-gram's characters
dup_n_grams = [[5, 0.15], [6, 0.14], [7, 0.13], [8, 0.12], [9, 0.11], [10, 0.1]]   # repeated n-grams

[gopher_quality]       # Rae et al. 2021, appendix A
enabled = true
min_doc_words = 50
max_doc_words = 100000
min_avg_word_length = 3.0
max_avg_word_length = 10.0
max_symbol_word_ratio = 0.1       # '#' per word, and ellipses per word
max_bullet_lines_ratio = 0.9      # lines starting with a bullet
max_ellipsis_lines_ratio = 0.3    # lines ending with an ellipsis
max_non_alpha_words_ratio = 0.8   # min share of words with a letter
min_stop_words = 2
stop_words = ["the", "be", "to", "of", "and", "that", "have", "with"]
cjk_stop_words = ["的", "了", "是", "在", "和", "有", "我", "不", "人", "这", "也", "就", "都", "他", "你",
    "一", "上", "个", "们", "到", "说", "要", "会", "着", "对", "与", "为", "の", "は", "を", "に", "が",
    "で", "と", "이", "가", "은", "는", "을", "를"]

[c4]                   # Raffel et al. 2020, section 2.2
enabled = true
remove_citations = true
filter_no_terminal_punct = true
min_num_sentences = 5
min_words_per_line = 3
max_word_length = 1000
filter_lorem_ipsum = true
filter_javascript = true
filter_curly_bracket = true
filter_policy = true

[fineweb]              # Penedo et al. 2024, section 3.5
enabled = true
line_punct_thr = 0.12
line_punct_exclude_zero = false
# stop_chars = [".", "!", "?"]    # unset: datatrove's TERMINAL_PUNCTUATION
short_line_thr = 0.67
short_line_length = 30
cjk_short_line_length = 10
char_duplicates_ratio = 0.01
new_line_ratio = 0.3

[boilerplate]          # lines in many documents (site templates), cut from multi-line documents
enabled = true
min_documents = 20     # distinct documents a line must appear in

[quality]              # fastText quality gate (baichuan quality train); off without a model
# model = "quality.bin"
label = "__label__hq"  # the label whose probability is the score
min_score = 0.5        # documents scoring below are dropped
"#;

/// The default configuration as documented TOML.
pub fn default_toml() -> String {
    DEFAULT_TOML.to_string()
}

impl FilterConfig {
    /// Parses and checks a TOML configuration; errors name `path` and the line, table and key.
    pub fn from_toml_str(text: &str, path: impl AsRef<std::path::Path>) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError {
            path: path.as_ref().display().to_string(),
            message,
        };
        let config: FilterConfig = toml::from_str(text).map_err(|e| err(describe_toml_error(text, &e)))?;
        config.validate().map_err(err)?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let ratios = [
            ("cjk.min_share", self.cjk.min_share),
            ("gopher_repetition.dup_line_frac", self.gopher_repetition.dup_line_frac),
            ("gopher_repetition.dup_para_frac", self.gopher_repetition.dup_para_frac),
            (
                "gopher_repetition.dup_line_char_frac",
                self.gopher_repetition.dup_line_char_frac,
            ),
            (
                "gopher_repetition.dup_para_char_frac",
                self.gopher_repetition.dup_para_char_frac,
            ),
            (
                "gopher_quality.min_avg_word_length",
                self.gopher_quality.min_avg_word_length,
            ),
            (
                "gopher_quality.max_avg_word_length",
                self.gopher_quality.max_avg_word_length,
            ),
            (
                "gopher_quality.max_symbol_word_ratio",
                self.gopher_quality.max_symbol_word_ratio,
            ),
            (
                "gopher_quality.max_bullet_lines_ratio",
                self.gopher_quality.max_bullet_lines_ratio,
            ),
            (
                "gopher_quality.max_ellipsis_lines_ratio",
                self.gopher_quality.max_ellipsis_lines_ratio,
            ),
            (
                "gopher_quality.max_non_alpha_words_ratio",
                self.gopher_quality.max_non_alpha_words_ratio,
            ),
            ("fineweb.line_punct_thr", self.fineweb.line_punct_thr),
            ("fineweb.short_line_thr", self.fineweb.short_line_thr),
            ("fineweb.char_duplicates_ratio", self.fineweb.char_duplicates_ratio),
            ("fineweb.new_line_ratio", self.fineweb.new_line_ratio),
        ];
        if let Some((key, v)) = ratios.iter().find(|(_, v)| !v.is_finite() || *v < 0.0) {
            return Err(format!("`{key}` = {v}: must be a finite number >= 0"));
        }
        if !(self.cjk.chars_per_word.is_finite() && self.cjk.chars_per_word > 0.0) {
            return Err(format!(
                "`cjk.chars_per_word` = {}: must be > 0",
                self.cjk.chars_per_word
            ));
        }
        let grams = [
            ("top_n_grams", &self.gopher_repetition.top_n_grams),
            ("dup_n_grams", &self.gopher_repetition.dup_n_grams),
        ];
        for (key, list) in grams {
            if let Some((n, f)) = list.iter().find(|(n, f)| *n == 0 || !f.is_finite()) {
                return Err(format!(
                    "`gopher_repetition.{key}` holds [{n}, {f}]: n must be >= 1 and the ratio finite"
                ));
            }
        }
        Ok(())
    }

    /// Runs the enabled filters in FineWeb's order: Gopher repetition, Gopher quality, C4 (which
    /// removes lines, then may drop the page), FineWeb. Stops at the first drop.
    pub fn apply(&self, text: &str) -> Outcome {
        let drop = |text: &str, reason| Outcome {
            text: text.to_string(),
            removed_lines: Vec::new(),
            dropped: Some(reason),
        };
        if self.gopher_repetition.enabled {
            if let Err(r) = self.gopher_repetition.check(text, &self.cjk) {
                return drop(text, r);
            }
        }
        if self.gopher_quality.enabled {
            if let Err(r) = self.gopher_quality.check(text, &self.cjk) {
                return drop(text, r);
            }
        }
        let (text, removed_lines) = if self.c4.enabled {
            match self.c4.apply(text, &self.cjk) {
                Ok(kept) => kept,
                Err(r) => return drop(text, r),
            }
        } else {
            (text.to_string(), Vec::new())
        };
        let dropped = if self.fineweb.enabled {
            self.fineweb.check(&text, &self.cjk).err()
        } else {
            None
        };
        Outcome {
            text,
            removed_lines,
            dropped,
        }
    }
}

/// "line N `key = value`, in [table]: message" from a toml error: where the bad key is.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim();
    let Some(before) = e.span().and_then(|s| text.get(..s.start)) else {
        return message.to_string();
    };
    let line = before.matches('\n').count() + 1;
    let table = before
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix('[')?.split(']').next());
    let src = text.lines().nth(line - 1).map_or("", str::trim);
    match table {
        Some(t) => format!("line {line} `{src}`, in [{t}]: {message}"),
        None => format!("line {line} `{src}`: {message}"),
    }
}

/// How a document is measured: `Some(chars_per_word)` in CJK form.
#[derive(Clone, Copy)]
struct Mode(Option<f64>);

impl Cjk {
    fn mode(&self, text: &str) -> Mode {
        Mode((cjk_share(text) > self.min_share).then_some(self.chars_per_word))
    }
}

impl Mode {
    fn cjk(self) -> bool {
        self.0.is_some()
    }

    /// Number of words among `tokens`: in CJK form a CJK character counts 1/chars_per_word.
    fn count<'a>(self, tokens: impl IntoIterator<Item = &'a str>) -> f64 {
        let (mut cjk, mut other) = (0usize, 0usize);
        for t in tokens {
            if self.cjk() && is_cjk_token(t) {
                cjk += 1;
            } else {
                other += 1;
            }
        }
        other as f64 + self.0.map_or(0.0, |cpw| cjk as f64 / cpw)
    }

    /// Tokens in an n-word n-gram: n, or n * chars_per_word rounded in CJK form.
    fn ngram(self, n: usize) -> usize {
        self.0.map_or(n, |cpw| (n as f64 * cpw).round() as usize).max(1)
    }
}

/// A ratio threshold where 0 (Python's falsy value) turns the rule off.
fn on(threshold: f64) -> bool {
    threshold != 0.0
}

fn over(rule: &str, value: f64, threshold: f64) -> Result<(), Reason> {
    if on(threshold) && value > threshold {
        return Err(Reason::new(rule, value, threshold));
    }
    Ok(())
}

fn under(rule: &str, value: f64, threshold: f64) -> Result<(), Reason> {
    if on(threshold) && value < threshold {
        return Err(Reason::new(rule, value, threshold));
    }
    Ok(())
}

/// datatrove's `find_duplicates`: (elements equal to an earlier one, their characters).
fn find_duplicates(items: &[&str]) -> (usize, usize) {
    let mut seen = HashSet::new();
    let (mut dup, mut chars) = (0, 0);
    for &x in items {
        if !seen.insert(x) {
            dup += 1;
            chars += len(x);
        }
    }
    (dup, chars)
}

/// datatrove's `find_top_duplicate`: characters of the most frequent n-gram (the first seen
/// among equals, as `Counter.most_common`) times its count. An n-gram's characters are its
/// words joined by spaces; in CJK form no space is counted next to a CJK character.
fn top_ngram_chars(words: &[&str], n: usize, mode: Mode) -> usize {
    let mut counts: HashMap<&[&str], (usize, usize)> = HashMap::new();
    for (i, g) in words.windows(n).enumerate() {
        counts.entry(g).or_insert((0, i)).0 += 1;
    }
    let top = counts
        .into_iter()
        .max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.1 .1.cmp(&a.1 .1)));
    top.map_or(0, |(g, (count, _))| {
        let chars: usize = g.iter().map(|w| len(w)).sum();
        let spaces = g
            .windows(2)
            .filter(|p| !(mode.cjk() && (is_cjk_token(p[0]) || is_cjk_token(p[1]))))
            .count();
        (chars + spaces) * count
    })
}

/// datatrove's `find_all_duplicate`: characters of the n-grams (words concatenated without
/// spaces) equal to an earlier one, skipping past each repeat.
fn dup_ngram_chars(words: &[&str], n: usize) -> usize {
    let mut seen = HashSet::new();
    let (mut repeated, mut i) = (0, 0);
    while i + n <= words.len() {
        let g = words[i..i + n].concat();
        if seen.contains(&g) {
            repeated += len(&g);
            i += n;
        } else {
            seen.insert(g);
            i += 1;
        }
    }
    repeated
}

impl GopherRepetition {
    /// datatrove `GopherRepetitionFilter.filter`; `Err` names the first rule the text fails.
    pub fn check(&self, text: &str, cjk: &Cjk) -> Result<(), Reason> {
        if text.is_empty() {
            return Err(Reason::new("empty", 0.0, 0.0));
        }
        let chars = len(text) as f64;
        let paragraphs = split_newline_runs(py_strip(text), 2);
        let (dup, dup_chars) = find_duplicates(&paragraphs);
        over(
            "dup_para_frac",
            dup as f64 / paragraphs.len() as f64,
            self.dup_para_frac,
        )?;
        over("dup_para_char_frac", dup_chars as f64 / chars, self.dup_para_char_frac)?;
        let lines = split_newline_runs(text, 1);
        let (dup, dup_chars) = find_duplicates(&lines);
        over("dup_line_frac", dup as f64 / lines.len() as f64, self.dup_line_frac)?;
        over("dup_line_char_frac", dup_chars as f64 / chars, self.dup_line_char_frac)?;
        let mode = cjk.mode(text);
        let words = words(text);
        for &(n, max) in &self.top_n_grams {
            let k = mode.ngram(n);
            if words.len() >= k {
                let ratio = top_ngram_chars(&words, k, mode) as f64 / chars;
                if ratio > max {
                    return Err(Reason::new(format!("top_{n}_gram"), ratio, max));
                }
            }
        }
        for &(n, max) in &self.dup_n_grams {
            let ratio = dup_ngram_chars(&words, mode.ngram(n)) as f64 / chars;
            if ratio > max {
                return Err(Reason::new(format!("duplicated_{n}_n_grams"), ratio, max));
            }
        }
        Ok(())
    }
}

const CJK_BULLETS: [char; 9] = ['•', '-', '·', '●', '▪', '◦', '■', '◆', '・'];

impl GopherQuality {
    /// datatrove `GopherQualityFilter.filter`; `Err` names the first rule the text fails.
    pub fn check(&self, text: &str, cjk: &Cjk) -> Result<(), Reason> {
        let mode = cjk.mode(text);
        let words = words(text);
        let symbol = |c: char| in_punctuation_set(c) || (mode.cjk() && is_punct(c));
        let non_symbol: Vec<&str> = words
            .iter()
            .copied()
            .filter(|w| w.chars().any(|c| !symbol(c)))
            .collect();
        let n_words = mode.count(words.iter().copied());
        let n_non_symbol = mode.count(non_symbol.iter().copied());
        under("gopher_short_doc", n_non_symbol, self.min_doc_words as f64)?;
        over("gopher_long_doc", n_non_symbol, self.max_doc_words as f64)?;

        // Mean word length; in CJK form over the non-CJK words, if there are enough of them.
        let measured: Vec<usize> = non_symbol
            .iter()
            .filter(|w| !(mode.cjk() && is_cjk_token(w)))
            .map(|w| len(w))
            .collect();
        if !mode.cjk() || measured.len() as f64 >= (self.min_doc_words as f64).max(1.0) {
            let mean = measured.iter().sum::<usize>() as f64 / measured.len() as f64;
            under("gopher_below_avg_threshold", mean, self.min_avg_word_length)?;
            over("gopher_above_avg_threshold", mean, self.max_avg_word_length)?;
        }

        let mut hashes = text.matches('#').count();
        let mut ellipses = text.matches("...").count();
        if mode.cjk() {
            hashes += text.matches('＃').count();
            // A run of … (the Chinese ellipsis …… is two) counts once.
            ellipses += text
                .match_indices('…')
                .filter(|&(i, _)| !text[..i].ends_with('…'))
                .count();
        } else {
            ellipses += text.matches('…').count();
        }
        over(
            "gopher_too_many_hashes",
            hashes as f64 / n_words,
            self.max_symbol_word_ratio,
        )?;
        over(
            "gopher_too_many_ellipsis",
            ellipses as f64 / n_words,
            self.max_symbol_word_ratio,
        )?;

        let lines = splitlines(text);
        let bullets: &[char] = if mode.cjk() { &CJK_BULLETS } else { &['•', '-'] };
        let n_bullets = lines
            .iter()
            .filter(|l| l.trim_start_matches(is_space).starts_with(bullets))
            .count();
        over(
            "gopher_too_many_bullets",
            n_bullets as f64 / lines.len() as f64,
            self.max_bullet_lines_ratio,
        )?;
        let ends_ellipsis = |l: &&&str| {
            let l = l.trim_end_matches(is_space);
            l.ends_with("...") || l.ends_with('…')
        };
        let n_ellipsis = lines.iter().filter(ends_ellipsis).count();
        let ratio = n_ellipsis as f64 / lines.len() as f64;
        over("gopher_too_many_end_ellipsis", ratio, self.max_ellipsis_lines_ratio)?;

        // In CJK form over the words that are not punctuation: Chinese has a punctuation mark
        // every 6-10 characters (4-7 words), which alone would push ordinary prose under 0.8.
        let counted = if mode.cjk() { &non_symbol } else { &words };
        let alpha = mode.count(counted.iter().copied().filter(|w| w.chars().any(is_alpha)));
        let ratio = alpha / mode.count(counted.iter().copied());
        under("gopher_below_alpha_threshold", ratio, self.max_non_alpha_words_ratio)?;

        let cjk_stop = if mode.cjk() { &self.cjk_stop_words[..] } else { &[] };
        let stop: HashSet<&str> = self.stop_words.iter().chain(cjk_stop).map(String::as_str).collect();
        let found: HashSet<&str> = words.iter().copied().filter(|w| stop.contains(w)).collect();
        under(
            "gopher_enough_stop_words",
            found.len() as f64,
            self.min_stop_words as f64,
        )
    }
}

const END_PUNCTUATION: [char; 5] = ['.', '?', '!', '"', '\''];
const CJK_END_PUNCTUATION: [char; 14] = [
    '.', '?', '!', '"', '\'', '。', '！', '？', '｡', '．', '」', '』', '”', '’',
];
const POLICY_SUBSTRINGS: [&str; 6] = [
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
];

/// datatrove's CITATION_REGEX `\[\d*]|\[edit]|\[citation needed]`, removed.
fn remove_citations(line: &str) -> Cow<'_, str> {
    if !line.contains('[') {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(p) = rest.find('[') {
        out.push_str(&rest[..p]);
        let tail = &rest[p..];
        let digits: usize = tail[1..]
            .chars()
            .take_while(|&c| is_decimal(c))
            .map(char::len_utf8)
            .sum();
        let matched = if tail[1 + digits..].starts_with(']') {
            2 + digits
        } else {
            ["[edit]", "[citation needed]"]
                .iter()
                .find(|lit| tail.starts_with(*lit))
                .map_or(0, |lit| lit.len())
        };
        if matched == 0 {
            out.push('[');
            rest = &tail[1..];
        } else {
            rest = &tail[matched..];
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

impl C4 {
    /// datatrove `C4QualityFilter.filter`: the kept text and the removed lines, or the reason
    /// the page is dropped.
    pub fn apply(&self, text: &str, cjk: &Cjk) -> Result<(String, Vec<(String, Reason)>), Reason> {
        let mode = cjk.mode(text);
        let end_punct: &[char] = if mode.cjk() {
            &CJK_END_PUNCTUATION
        } else {
            &END_PUNCTUATION
        };
        let mut removed = Vec::new();
        let mut kept: Vec<String> = Vec::new();
        let mut num_sentences = 0i64;
        for line in splitlines(text) {
            let line = py_strip(line);
            // English: whitespace-separated words (datatrove's line.split()); CJK form: `words`.
            let line_words: Vec<&str> = if mode.cjk() {
                words(line)
            } else {
                py_split(line).collect()
            };
            let longest = line_words.iter().map(|w| len(w)).max().unwrap_or(0);
            if self.max_word_length != -1 && longest as i64 > self.max_word_length {
                let reason = Reason::new("line-filter-too_long_word", longest as f64, self.max_word_length as f64);
                removed.push((line.to_string(), reason));
                continue;
            }
            let line = if self.remove_citations {
                remove_citations(line)
            } else {
                Cow::Borrowed(line)
            };
            if self.filter_no_terminal_punct && (!line.ends_with(end_punct) || line.ends_with("...")) {
                removed.push((line.into_owned(), Reason::new("line-filter-no_terminal_punc", 0.0, 0.0)));
                continue;
            }
            let n_words = if mode.cjk() {
                mode.count(line_words.iter().copied().filter(|w| !w.chars().all(is_punct)))
            } else {
                line_words.len() as f64
            };
            if n_words < self.min_words_per_line as f64 {
                let reason = Reason::new("line-filter-too_few_words", n_words, self.min_words_per_line as f64);
                removed.push((line.into_owned(), reason));
                continue;
            }
            let lower = line.to_lowercase();
            if self.filter_lorem_ipsum && lower.contains("lorem ipsum") {
                return Err(Reason::new("lorem_ipsum", 1.0, 0.0));
            }
            if self.filter_javascript && lower.contains("javascript") {
                removed.push((line.into_owned(), Reason::new("line-filter-javascript", 1.0, 0.0)));
                continue;
            }
            if self.filter_curly_bracket && line.contains('{') {
                return Err(Reason::new("curly_bracket", 1.0, 0.0));
            }
            if self.filter_policy && POLICY_SUBSTRINGS.iter().any(|p| lower.contains(p)) {
                removed.push((line.into_owned(), Reason::new("line-filter-policy", 1.0, 0.0)));
                continue;
            }
            if self.min_num_sentences != -1 {
                num_sentences += sentences(&line).len().max(1) as i64;
            }
            kept.push(line.into_owned());
        }
        if num_sentences < self.min_num_sentences {
            return Err(Reason::new(
                "too_few_sentences",
                num_sentences as f64,
                self.min_num_sentences as f64,
            ));
        }
        Ok((py_strip(&kept.join("\n")).to_string(), removed))
    }
}

/// Closing marks that also end a line of a CJK document for FineWeb.
const CJK_LINE_END: [char; 5] = ['」', '』', '”', '’', '…'];

impl FineWeb {
    /// datatrove `FineWebQualityFilter.filter`; `Err` names the first rule the text fails.
    pub fn check(&self, text: &str, cjk: &Cjk) -> Result<(), Reason> {
        let lines: Vec<&str> = text.split('\n').filter(|l| !py_strip(l).is_empty()).collect();
        if lines.is_empty() {
            return Err(Reason::new("empty", 0.0, 0.0));
        }
        let mode = cjk.mode(text);
        let n_lines = lines.len() as f64;
        let is_stop = |c: char| {
            self.stop_chars
                .as_ref()
                .map_or_else(|| is_terminal(c), |s| s.contains(&c))
                || (mode.cjk() && CJK_LINE_END.contains(&c))
        };
        let ratio = lines
            .iter()
            .filter(|l| l.chars().next_back().is_some_and(is_stop))
            .count() as f64
            / n_lines;
        if ratio < self.line_punct_thr && !(ratio == 0.0 && self.line_punct_exclude_zero) {
            return Err(Reason::new("line_punct_ratio", ratio, self.line_punct_thr));
        }
        let short = if mode.cjk() {
            self.cjk_short_line_length
        } else {
            self.short_line_length
        };
        let ratio = lines.iter().filter(|l| len(l) <= short).count() as f64 / n_lines;
        if ratio > self.short_line_thr {
            return Err(Reason::new("short_line_ratio", ratio, self.short_line_thr));
        }
        let chars = text.chars().filter(|&c| c != '\n').count();
        let ratio = find_duplicates(&lines).1 as f64 / chars as f64;
        if ratio > self.char_duplicates_ratio {
            return Err(Reason::new("char_dup_ratio", ratio, self.char_duplicates_ratio));
        }
        let ratio = text.matches('\n').count() as f64 / mode.count(words(text));
        if ratio > self.new_line_ratio {
            return Err(Reason::new("list_ratio", ratio, self.new_line_ratio));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cjk() -> Cjk {
        Cjk::default()
    }

    /// `n` distinct Han characters from U+5000 on (none of them a stop word).
    fn han(n: usize) -> String {
        (0..n as u32).filter_map(|i| char::from_u32(0x5000 + i)).collect()
    }

    fn err<T: fmt::Debug>(r: Result<T, Reason>) -> (String, f64) {
        let r = r.expect_err("expected a drop");
        (r.rule, r.value)
    }

    #[test]
    fn default_toml_parses_to_the_default() {
        let parsed = FilterConfig::from_toml_str(&default_toml(), "default.toml").expect("parses");
        assert_eq!(parsed, FilterConfig::default());
        assert_eq!(
            FilterConfig::from_toml_str("", "empty.toml").expect("parses"),
            FilterConfig::default()
        );
    }

    #[test]
    fn config_errors_name_file_and_key() {
        let e = FilterConfig::from_toml_str("[cjk]\n\n[gopher_quality]\nmin_doc_word = 3\n", "f.toml").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("f.toml: line 4 `min_doc_word = 3`, in [gopher_quality]: unknown field"),
            "{msg}"
        );
        let e = FilterConfig::from_toml_str("[c4]\nmin_num_sentences = \"five\"\n", "f.toml").unwrap_err();
        assert!(
            e.to_string().contains("line 2 `min_num_sentences = \"five\"`, in [c4]"),
            "{e}"
        );
        let e = FilterConfig::from_toml_str("[fine_web]\n", "f.toml").unwrap_err();
        assert!(e.to_string().contains("fine_web"), "{e}");
        let e = FilterConfig::from_toml_str("[cjk]\nchars_per_word = 0.0\n", "f.toml").unwrap_err();
        assert!(e.to_string().contains("cjk.chars_per_word"), "{e}");
        let e = FilterConfig::from_toml_str("[gopher_repetition]\ntop_n_grams = [[0, 0.2]]\n", "f.toml").unwrap_err();
        assert!(e.to_string().contains("gopher_repetition.top_n_grams"), "{e}");
    }

    #[test]
    fn partial_config_keeps_other_defaults() {
        let text = "[c4]\nenabled = false\n[fineweb]\nstop_chars = [\".\", \"»\"]\n";
        let c = FilterConfig::from_toml_str(text, "f.toml").expect("parses");
        assert!(!c.c4.enabled && c.gopher_quality.enabled && c.c4.min_num_sentences == 5);
        assert_eq!(c.fineweb.stop_chars, Some(vec!['.', '»']));
    }

    #[test]
    fn reason_display() {
        assert_eq!(
            Reason::new("dup_line_frac", 0.5, 0.3).to_string(),
            "dup_line_frac: 0.5 > 0.3"
        );
        assert_eq!(
            Reason::new("gopher_short_doc", 6.0, 50.0).to_string(),
            "gopher_short_doc: 6 < 50"
        );
        assert_eq!(Reason::new("lorem_ipsum", 1.0, 0.0).to_string(), "lorem_ipsum");
    }

    #[test]
    fn gopher_repetition_english() {
        let g = GopherRepetition::default();
        assert_eq!(err(g.check("", &cjk())), ("empty".into(), 0.0));
        // 3 paragraphs, 1 repeated: 1/3 > 0.3.
        assert_eq!(
            err(g.check("A b c.\n\nA b c.\n\nD e f.", &cjk())),
            ("dup_para_frac".into(), 1.0 / 3.0)
        );
        // 4 paragraphs, 1 repeated (0.25), its 19 characters of 88: 0.2159 > 0.2.
        let t = "one two three four.\n\nfive six seven eight.\n\nnine ten eleven twelve.\n\none two three four.";
        assert_eq!(err(g.check(t, &cjk())), ("dup_para_char_frac".into(), 19.0 / 88.0));
        assert_eq!(
            err(g.check("alpha beta.\nalpha beta.\ngamma delta.", &cjk())),
            ("dup_line_frac".into(), 1.0 / 3.0)
        );
        // 4 lines, 1 repeated (0.25), its 26 characters of 59.
        let t = "a long repeated line here.\nb.\nc.\na long repeated line here.";
        assert_eq!(err(g.check(t, &cjk())), ("dup_line_char_frac".into(), 26.0 / 59.0));
        // "hello world": the top 2-gram covers 11 of 11 characters.
        assert_eq!(err(g.check("hello world", &cjk())), ("top_2_gram".into(), 1.0));
        // w00..w39 then w00..w19: 60 three-letter words, 239 characters. Top 4-gram "w00 w01 w02 w03"
        // twice: 30/239 < 0.16. Repeated 5-grams: w00-w04, w05-w09, w10-w14, w15-w19: 60/239 > 0.15.
        let ws: Vec<String> = (0..40).chain(0..20).map(|i| format!("w{i:02}")).collect();
        assert_eq!(
            err(g.check(&ws.join(" "), &cjk())),
            ("duplicated_5_n_grams".into(), 60.0 / 239.0)
        );
        let ws: Vec<String> = (0..60).map(|i| format!("w{i:02}")).collect();
        assert!(g.check(&ws.join(" "), &cjk()).is_ok());
    }

    #[test]
    fn gopher_repetition_helpers() {
        let w = ["我", "们", "好", "我", "们"];
        // "我们" twice: 2 characters in CJK form, "我 们" = 3 in English form.
        assert_eq!(top_ngram_chars(&w, 2, Mode(Some(1.5))), 4);
        assert_eq!(top_ngram_chars(&w, 2, Mode(None)), 6);
        // Ties go to the first n-gram seen: "ab cd" (5) not "e f" (3).
        assert_eq!(top_ngram_chars(&["ab", "cd", "e", "f"], 2, Mode(None)), 5);
        // Concatenated without spaces: "ab"+"c" repeats as "a"+"bc".
        assert_eq!(dup_ngram_chars(&["ab", "c", "a", "bc"], 2), 3);
        let m = Mode(Some(1.5));
        assert_eq!(
            [m.ngram(2), m.ngram(3), m.ngram(4), m.ngram(5), m.ngram(10)],
            [3, 5, 6, 8, 15]
        );
        assert_eq!(Mode(None).ngram(7), 7);
    }

    #[test]
    fn gopher_repetition_cjk() {
        // 10 x ("我们" + 4 distinct characters) = 60 characters. English form: "我 们" ten times
        // covers 30/60 > 0.2. CJK form uses 3-, 5-, 6-character n-grams, all distinct.
        let t: String = han(40)
            .chars()
            .collect::<Vec<_>>()
            .chunks(4)
            .map(|c| format!("我们{}", String::from_iter(c)))
            .collect();
        let g = GopherRepetition::default();
        assert!(g.check(&t, &cjk()).is_ok());
        let english = Cjk {
            min_share: 1.0,
            ..cjk()
        };
        assert_eq!(err(g.check(&t, &english)), ("top_2_gram".into(), 0.5));
    }

    fn repeat(group: &str, n: usize) -> String {
        vec![group; n].join(" ")
    }

    #[test]
    fn gopher_quality_english() {
        let q = GopherQuality::default();
        assert_eq!(
            err(q.check("The cat sat on the mat.", &cjk())),
            ("gopher_short_doc".into(), 6.0)
        );
        let small = GopherQuality {
            max_doc_words: 5,
            ..q.clone()
        };
        assert_eq!(
            err(small.check("The cat sat on the mat.", &cjk())),
            ("gopher_short_doc".into(), 6.0)
        );
        let small = GopherQuality {
            min_doc_words: 0,
            max_doc_words: 5,
            ..q.clone()
        };
        assert_eq!(
            err(small.check("The cat sat on the mat.", &cjk())),
            ("gopher_long_doc".into(), 6.0)
        );
        assert_eq!(
            err(q.check(&repeat("to be of it", 15), &cjk())),
            ("gopher_below_avg_threshold".into(), 2.0)
        );
        assert_eq!(
            err(q.check(&repeat("extraordinarily", 60), &cjk())),
            ("gopher_above_avg_threshold".into(), 15.0)
        );
        // 7 tokens per group (alpha beta gamma delta epsilon # x), 10 hashes in 70 tokens.
        let t = repeat("alpha beta gamma delta epsilon #x", 10);
        assert_eq!(err(q.check(&t, &cjk())), ("gopher_too_many_hashes".into(), 1.0 / 7.0));
        // 6 tokens per group, 10 ellipses in 60; … is a symbol, so 50 words of mean 5.2.
        let t = repeat("alpha beta gamma delta epsilon …", 10);
        assert_eq!(err(q.check(&t, &cjk())), ("gopher_too_many_ellipsis".into(), 1.0 / 6.0));
        let t = ["• alpha beta gamma delta epsilon zeta eta"; 10].join("\n");
        assert_eq!(err(q.check(&t, &cjk())), ("gopher_too_many_bullets".into(), 1.0));
        // 10 "..." in 100 tokens is not more than 0.1; all 10 lines end with one.
        let t = ["alpha beta gamma delta epsilon zeta eta..."; 10].join("\n");
        assert_eq!(err(q.check(&t, &cjk())), ("gopher_too_many_end_ellipsis".into(), 1.0));
        let t = repeat("alpha beta gamma delta 12 34", 10);
        assert_eq!(
            err(q.check(&t, &cjk())),
            ("gopher_below_alpha_threshold".into(), 2.0 / 3.0)
        );
        let t = repeat("alpha beta gamma delta epsilon", 12);
        assert_eq!(err(q.check(&t, &cjk())), ("gopher_enough_stop_words".into(), 0.0));
        let t = repeat("alpha beta gamma delta epsilon", 12) + " the end of it";
        assert!(q.check(&t, &cjk()).is_ok());
    }

    #[test]
    fn gopher_quality_cjk() {
        let q = GopherQuality::default();
        // 60 characters = 40 words < 50 (English form: 60 words).
        assert_eq!(err(q.check(&han(60), &cjk())), ("gopher_short_doc".into(), 40.0));
        // 90 characters (60 words) with 的 and 是, and "2023 5": the mean word length is measured
        // only on non-CJK words and only when there are 50 of them, so it is skipped.
        let t = format!("{}的是 2023 5", han(88));
        assert!(q.check(&t, &cjk()).is_ok());
        let english = Cjk {
            min_share: 1.0,
            ..cjk()
        };
        assert_eq!(err(q.check(&t, &english)).0, "gopher_below_avg_threshold");
        // 9 "……" are 9 ellipses among 99 characters (66 words) + 18 "…" tokens.
        let t = format!("{}的是{}", han(88), "……一".repeat(9));
        assert_eq!(
            err(q.check(&t, &cjk())),
            ("gopher_too_many_ellipsis".into(), 9.0 / 84.0)
        );
        // ·-bulleted lines: 10 lines of · + 9 characters.
        let t: Vec<String> = (0..10)
            .map(|i| format!("·{}的是", &han(70)[i * 21..i * 21 + 21]))
            .collect();
        assert_eq!(
            err(q.check(&t.join("\n"), &cjk())),
            ("gopher_too_many_bullets".into(), 1.0)
        );
        // 60 CJK words and 20 number tokens: 60/80 of the words hold a letter.
        let t = format!("{}的是{}", han(88), " 1".repeat(20));
        assert_eq!(err(q.check(&t, &cjk())), ("gopher_below_alpha_threshold".into(), 0.75));
        // Chinese stop words: none in 90 characters, then 的 and 是.
        assert_eq!(err(q.check(&han(90), &cjk())), ("gopher_enough_stop_words".into(), 0.0));
        assert!(q.check(&format!("{}的是", han(88)), &cjk()).is_ok());
    }

    #[test]
    fn c4_english_lines() {
        let c4 = C4::default();
        let t =
            "Line one has words.\nNo punctuation here\n  JavaScript must be enabled.\nWe use cookies on this site.\n\
                 Short one.\nTwo three four five.\nA b c. D e f. G h i.\nA final line here!";
        let (text, removed) = c4.apply(t, &cjk()).expect("kept");
        assert_eq!(
            text,
            "Line one has words.\nTwo three four five.\nA b c. D e f. G h i.\nA final line here!"
        );
        let rules: Vec<(&str, &str, f64)> = removed
            .iter()
            .map(|(l, r)| (l.as_str(), r.rule.as_str(), r.value))
            .collect();
        assert_eq!(
            rules,
            [
                ("No punctuation here", "line-filter-no_terminal_punc", 0.0),
                ("JavaScript must be enabled.", "line-filter-javascript", 1.0),
                ("We use cookies on this site.", "line-filter-policy", 1.0),
                ("Short one.", "line-filter-too_few_words", 2.0)
            ]
        );
        // Without the three-sentence line: 1 + 1 + 1 = 3 sentences.
        let t = t.replace("A b c. D e f. G h i.\n", "");
        assert_eq!(err(c4.apply(&t, &cjk())), ("too_few_sentences".into(), 3.0));
    }

    #[test]
    fn c4_english_page_rules_and_citations() {
        let c4 = C4::default();
        let five = "One two three. Four five six. Seven eight nine. Ten eleven twelve. Thirteen fourteen fifteen.";
        assert_eq!(
            err(c4.apply(&format!("{five}\nLorem ipsum dolor sit."), &cjk())).0,
            "lorem_ipsum"
        );
        // A lorem ipsum line without terminal punctuation is removed before it is looked at.
        assert!(c4.apply(&format!("{five}\nlorem ipsum dolor"), &cjk()).is_ok());
        assert_eq!(
            err(c4.apply(&format!("{five}\nUse {{braces}} here."), &cjk())).0,
            "curly_bracket"
        );
        assert!(c4.apply(&format!("{five}\nvar x = {{a: 1}};"), &cjk()).is_ok());
        let t =
            format!("{five}\nIt was so good.[1]\nIt was so good. [edit]\nNumbered so well.[١٢]\nKept [x] marks here.");
        let (text, removed) = c4.apply(&t, &cjk()).expect("kept");
        assert_eq!(
            text,
            format!("{five}\nIt was so good.\nNumbered so well.\nKept [x] marks here.")
        );
        assert_eq!(
            removed,
            [(
                "It was so good. ".to_string(),
                Reason::new("line-filter-no_terminal_punc", 0.0, 0.0)
            )]
        );
        let long = format!(
            "{five}\nA {} word.\nWait for it...\n  He said \"go now.\"  ",
            "x".repeat(1001)
        );
        let (text, removed) = c4.apply(&long, &cjk()).expect("kept");
        assert_eq!(text, format!("{five}\nHe said \"go now.\""));
        assert_eq!(removed[0].1, Reason::new("line-filter-too_long_word", 1001.0, 1000.0));
        assert_eq!(removed[1].1.rule, "line-filter-no_terminal_punc");
    }

    #[test]
    fn c4_cjk() {
        let c4 = C4::default();
        // 今天天气很好。 6 characters = 4 words; 我爱你。 3 characters = 2 words < 3.
        let t =
            "今天天气很好。我们去公园吧！\n我爱你。\n他说：「明天再来吧。」\n这件事情以后再说……\n大家都觉得很有道理。";
        // Sentences in the kept lines: 2 + 1 + 1 = 4 < 5; a line of two more makes 6.
        assert_eq!(err(c4.apply(t, &cjk())), ("too_few_sentences".into(), 4.0));
        let t = format!("{t}\n好的，我知道了。谢谢你们！");
        let (text, removed) = c4.apply(&t, &cjk()).expect("kept");
        assert_eq!(
            text,
            "今天天气很好。我们去公园吧！\n他说：「明天再来吧。」\n大家都觉得很有道理。\n好的，我知道了。谢谢你们！"
        );
        let rules: Vec<(&str, f64)> = removed.iter().map(|(_, r)| (r.rule.as_str(), r.value)).collect();
        assert_eq!(
            rules,
            [
                ("line-filter-too_few_words", 2.0),
                ("line-filter-no_terminal_punc", 0.0)
            ]
        );
        // English form: no line ends in . ? ! " ' and nothing is kept.
        let english = Cjk {
            min_share: 1.0,
            ..cjk()
        };
        assert_eq!(err(c4.apply(&t, &english)), ("too_few_sentences".into(), 0.0));
        // A 1200-character Chinese line is 1200 words of length 1, not one long word.
        let long = format!(
            "{}。\n{}",
            han(1200),
            "一二三四五。六七八九十。甲乙丙丁戊。己庚辛壬癸。子丑寅卯辰。"
        );
        let (text, _) = c4.apply(&long, &cjk()).expect("kept");
        assert!(text.starts_with(&han(1200)));
        assert_eq!(err(c4.apply(&long, &english)), ("too_few_sentences".into(), 0.0));
    }

    #[test]
    fn fineweb_english() {
        let f = FineWeb::default();
        assert_eq!(err(f.check("\n \n", &cjk())), ("empty".into(), 0.0));
        let t = ["a line without any final punctuation mark"; 10].join("\n");
        assert_eq!(err(f.check(&t, &cjk())), ("line_punct_ratio".into(), 0.0));
        let lenient = FineWeb {
            line_punct_exclude_zero: true,
            ..f.clone()
        };
        assert_eq!(err(lenient.check(&t, &cjk())).0, "char_dup_ratio");
        let t = "Short line one.\nShort line two.\nShort line six.\nThis line is a good deal longer than thirty characters.";
        assert_eq!(err(f.check(t, &cjk())), ("short_line_ratio".into(), 0.75));
        // 3 lines of 40 characters, one repeated: 40 / 120.
        let l = [
            "This is the first line, of forty chars..",
            "This is the second line, of forty chars.",
        ];
        let t = format!("{}\n{}\n{}", l[0], l[1], l[0]);
        assert_eq!(err(f.check(&t, &cjk())), ("char_dup_ratio".into(), 40.0 / 120.0));
        // 5 lines of one long word and a period: 4 newlines / 10 words.
        let t: Vec<String> = (0..5)
            .map(|i| format!("Pneumonoultramicroscopicsilicovolcanoconiosis{i}."))
            .collect();
        assert_eq!(err(f.check(&t.join("\n"), &cjk())), ("list_ratio".into(), 0.4));
        assert!(f
            .check("A single long enough line that ends as it should.", &cjk())
            .is_ok());
    }

    #[test]
    fn fineweb_cjk() {
        let f = FineWeb::default();
        // Lines ending in 」 end a sentence in CJK form; 12-character lines are not short.
        let t = "他说：「今天天气很好」\n她说：「明天会下雨的」\n我说：「后天再出去吧」";
        assert!(f.check(t, &cjk()).is_ok());
        let english = Cjk {
            min_share: 1.0,
            ..cjk()
        };
        assert_eq!(err(f.check(t, &english)), ("line_punct_ratio".into(), 0.0));
        let t = "今天天气很好，我们出去走走。\n明天也许会下雨。\n后天再看看天气吧。";
        assert!(f.check(t, &cjk()).is_ok());
        assert_eq!(err(f.check(t, &english)), ("short_line_ratio".into(), 1.0));
        // 6 lines of 2 characters and 。: 5 newlines / (6 x (2/1.5 + 1)) = 5/14.
        let lenient = FineWeb {
            short_line_thr: 1.0,
            ..f
        };
        let t = "好的。\n是的。\n对的。\n行吧。\n走吧。\n来吧。";
        assert_eq!(err(lenient.check(t, &cjk())), ("list_ratio".into(), 5.0 / 14.0));
        assert!(lenient.check(t, &english).is_ok());
    }

    #[test]
    fn odd_input_does_not_panic() {
        let pool = [
            "[", "[١", "]", "…", "...", "#", "\r", "\n", "\r\n", "\u{1c}", "\u{301}", "中", "。", "」", " ", "{", "-",
            "'", "a", "x",
        ];
        let c = FilterConfig::default();
        let zero = FilterConfig::from_toml_str(
            "[gopher_quality]\nmin_doc_words = 0\n[c4]\nmin_num_sentences = -1\nmin_words_per_line = -1\n",
            "z.toml",
        );
        let zero = zero.expect("parses");
        let mut seed = 7u64;
        for _ in 0..2000 {
            let mut t = String::new();
            for _ in 0..(seed % 40) {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                t.push_str(pool[(seed >> 33) as usize % pool.len()]);
            }
            let (a, b) = (c.apply(&t), zero.apply(&t));
            assert!(a.text.len() <= t.len() && b.text.len() <= t.len());
        }
    }

    #[test]
    fn pipeline_order_and_outcome() {
        let c = FilterConfig::default();
        let out = c.apply("");
        assert_eq!(out.dropped.map(|r| r.rule), Some("empty".to_string()));
        let verses = [
            "In the beginning God created the heaven and the earth.",
            "And the earth was without form, and void; and darkness was upon the face of the deep.",
            "And the Spirit of God moved upon the waters.",
            "And God said, Let there be light: and there was light.",
            "And God saw the light, that it was good: and God divided the light from the darkness.",
            "And God called the light Day, and the darkness he called Night.",
            "Click here to subscribe to our newsletter",
        ];
        let out = c.apply(&verses.join("\n"));
        assert!(out.kept(), "{:?}", out.dropped);
        assert_eq!(out.text, verses[..6].join("\n"));
        assert_eq!(out.removed_lines.len(), 1);
        // C4 drops the page: the text is left as it came, no lines are reported.
        let t = format!("{}\nLorem ipsum dolor sit amet.", verses.join("\n"));
        let out = c.apply(&t);
        assert_eq!(out.dropped.as_ref().map(|r| r.rule.as_str()), Some("lorem_ipsum"));
        assert_eq!(out.text, t);
        assert!(out.removed_lines.is_empty());
        let off = FilterConfig::from_toml_str("[c4]\nenabled = false\n", "f.toml").expect("parses");
        let out = off.apply(&t);
        assert!(out.kept() && out.removed_lines.is_empty() && out.text == t);
    }
}
