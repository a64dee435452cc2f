//! Character classes and text splitting for the heuristic rules: Python's notion of whitespace,
//! line breaks and decimal digits (what datatrove's `str.strip`, `str.splitlines` and `re`'s
//! `\d` see), datatrove's punctuation tables, CJK detection, and the one word splitter and
//! sentence splitter every rule uses.
//!
//! `words` stands in for NLTK's `word_tokenize` (datatrove's English tokenizer) and `sentences`
//! for NLTK's punkt: both are simple, documented and CJK-aware, and `scripts/reference/oracle_filters.py`
//! re-implements them in Python so that the Rust rules can be compared with datatrove's own.

/// datatrove `utils/text.py` `PUNCTUATION_SET` (PUNCTUATION ∪ TERMINAL_PUNCTUATION), code points, sorted.
#[rustfmt::skip]
const PUNCTUATION_SET: [u32; 281] = [
    0x0, 0x1, 0x2, 0x3, 0x4, 0x5, 0x6, 0x7, 0x8, 0xB, 0xC, 0xD, 0xE, 0xF, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15,
    0x16, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1C, 0x1D, 0x1E, 0x1F, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28,
    0x29, 0x2A, 0x2B, 0x2C, 0x2D, 0x2E, 0x2F, 0x3A, 0x3B, 0x3C, 0x3D, 0x3E, 0x3F, 0x40, 0x5B, 0x5C, 0x5D, 0x5E,
    0x5F, 0x60, 0x7B, 0x7C, 0x7D, 0x7E, 0x7F, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A,
    0x8B, 0x8C, 0x8D, 0x8E, 0x8F, 0x90, 0x91, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C,
    0x9D, 0x9E, 0x9F, 0xAB, 0xB4, 0xBB, 0x589, 0x61D, 0x61E, 0x61F, 0x6D4, 0x700, 0x701, 0x702, 0x7F9, 0x837,
    0x839, 0x83D, 0x83E, 0x964, 0x965, 0x104A, 0x104B, 0x1362, 0x1367, 0x1368, 0x166E, 0x1735, 0x1736, 0x17D4,
    0x17D5, 0x17D6, 0x17D9, 0x17DA, 0x1803, 0x1809, 0x1944, 0x1945, 0x1AA8, 0x1AA9, 0x1AAA, 0x1AAB, 0x1B5A,
    0x1B5B, 0x1B5E, 0x1B5F, 0x1B7D, 0x1B7E, 0x1C3B, 0x1C3C, 0x1C7E, 0x1C7F, 0x2013, 0x2014, 0x2019, 0x201C,
    0x201D, 0x201E, 0x2026, 0x203C, 0x203D, 0x2047, 0x2048, 0x2049, 0x2236, 0x2501, 0x25BA, 0x2E2E, 0x2E3C,
    0x2E53, 0x2E54, 0x3001, 0x3002, 0x3008, 0x3009, 0x300A, 0x300B, 0x300C, 0x300D, 0x3010, 0x3011, 0xA4FF,
    0xA60E, 0xA60F, 0xA6F3, 0xA6F7, 0xA876, 0xA877, 0xA8CE, 0xA8CF, 0xA92F, 0xA9C8, 0xA9C9, 0xAA5D, 0xAA5E,
    0xAA5F, 0xAAF0, 0xAAF1, 0xABEB, 0xFE52, 0xFE56, 0xFE57, 0xFF01, 0xFF05, 0xFF08, 0xFF09, 0xFF0C, 0xFF0E,
    0xFF11, 0xFF1A, 0xFF1B, 0xFF1F, 0xFF5E, 0xFF61, 0x10A56, 0x10A57, 0x10F55, 0x10F56, 0x10F57, 0x10F58,
    0x10F59, 0x10F86, 0x10F87, 0x10F88, 0x10F89, 0x11047, 0x11048, 0x110BE, 0x110BF, 0x110C0, 0x110C1, 0x11141,
    0x11142, 0x11143, 0x111C5, 0x111C6, 0x111CD, 0x111DE, 0x111DF, 0x11238, 0x11239, 0x1123B, 0x1123C, 0x112A9,
    0x1144B, 0x1144C, 0x115C2, 0x115C3, 0x115C9, 0x115CA, 0x115CB, 0x115CC, 0x115CD, 0x115CE, 0x115CF, 0x115D0,
    0x115D1, 0x115D2, 0x115D3, 0x115D4, 0x115D5, 0x115D6, 0x115D7, 0x11641, 0x11642, 0x1173C, 0x1173D, 0x1173E,
    0x11944, 0x11946, 0x11A42, 0x11A43, 0x11A9B, 0x11A9C, 0x11C41, 0x11C42, 0x11EF7, 0x11EF8, 0x11F43, 0x11F44,
    0x16A6E, 0x16A6F, 0x16AF5, 0x16B37, 0x16B38, 0x16B44, 0x16E98, 0x1BC9F, 0x1DA88,
];

/// datatrove `utils/text.py` `TERMINAL_PUNCTUATION` (FineWeb's default stop characters), sorted.
#[rustfmt::skip]
const TERMINAL_PUNCTUATION: [u32; 159] = [
    0x21, 0x2E, 0x3F, 0x589, 0x61D, 0x61E, 0x61F, 0x6D4, 0x700, 0x701, 0x702, 0x7F9, 0x837, 0x839, 0x83D, 0x83E,
    0x964, 0x965, 0x104A, 0x104B, 0x1362, 0x1367, 0x1368, 0x166E, 0x1735, 0x1736, 0x17D4, 0x17D5, 0x17D6, 0x17D9,
    0x17DA, 0x1803, 0x1809, 0x1944, 0x1945, 0x1AA8, 0x1AA9, 0x1AAA, 0x1AAB, 0x1B5A, 0x1B5B, 0x1B5E, 0x1B5F,
    0x1B7D, 0x1B7E, 0x1C3B, 0x1C3C, 0x1C7E, 0x1C7F, 0x203C, 0x203D, 0x2047, 0x2048, 0x2049, 0x2E2E, 0x2E3C,
    0x2E53, 0x2E54, 0x3002, 0xA4FF, 0xA60E, 0xA60F, 0xA6F3, 0xA6F7, 0xA876, 0xA877, 0xA8CE, 0xA8CF, 0xA92F,
    0xA9C8, 0xA9C9, 0xAA5D, 0xAA5E, 0xAA5F, 0xAAF0, 0xAAF1, 0xABEB, 0xFE52, 0xFE56, 0xFE57, 0xFF01, 0xFF0E,
    0xFF1F, 0xFF61, 0x10A56, 0x10A57, 0x10F55, 0x10F56, 0x10F57, 0x10F58, 0x10F59, 0x10F86, 0x10F87, 0x10F88,
    0x10F89, 0x11047, 0x11048, 0x110BE, 0x110BF, 0x110C0, 0x110C1, 0x11141, 0x11142, 0x11143, 0x111C5, 0x111C6,
    0x111CD, 0x111DE, 0x111DF, 0x11238, 0x11239, 0x1123B, 0x1123C, 0x112A9, 0x1144B, 0x1144C, 0x115C2, 0x115C3,
    0x115C9, 0x115CA, 0x115CB, 0x115CC, 0x115CD, 0x115CE, 0x115CF, 0x115D0, 0x115D1, 0x115D2, 0x115D3, 0x115D4,
    0x115D5, 0x115D6, 0x115D7, 0x11641, 0x11642, 0x1173C, 0x1173D, 0x1173E, 0x11944, 0x11946, 0x11A42, 0x11A43,
    0x11A9B, 0x11A9C, 0x11C41, 0x11C42, 0x11EF7, 0x11EF8, 0x11F43, 0x11F44, 0x16A6E, 0x16A6F, 0x16AF5, 0x16B37,
    0x16B38, 0x16B44, 0x16E98, 0x1BC9F, 0x1DA88,
];

/// First code points of the runs of ten Unicode decimal digits (category Nd, Unicode 14 as in
/// Python 3.11: what `re`'s `\d` matches). 0x1D7CE starts the 50 mathematical digits.
#[rustfmt::skip]
const ND_STARTS: [u32; 62] = [
    0x30, 0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xB66, 0xBE6, 0xC66, 0xCE6, 0xD66, 0xDE6, 0xE50,
    0xED0, 0xF20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90, 0x1B50, 0x1BB0, 0x1C40,
    0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0, 0xFF10, 0x104A0, 0x10D30, 0x11066, 0x110F0,
    0x11136, 0x111D0, 0x112F0, 0x11450, 0x114D0, 0x11650, 0x116C0, 0x11730, 0x118E0, 0x11950, 0x11C50, 0x11D50,
    0x11DA0, 0x16A60, 0x16AC0, 0x16B50, 0x1D7CE, 0x1E140, 0x1E2F0, 0x1E950, 0x1FBF0,
];

/// Punctuation beyond datatrove's table that the word splitter also cuts off: Latin-1 marks,
/// General Punctuation, geometric-shape bullets, CJK and fullwidth punctuation (inclusive ranges).
const EXTRA_PUNCT: [(u32, u32); 17] = [
    (0xA1, 0xA1),     // ¡
    (0xA7, 0xA7),     // §
    (0xB6, 0xB7),     // ¶ ·
    (0xBF, 0xBF),     // ¿
    (0x2010, 0x2027), // dashes, quotes, • ‥ …
    (0x2030, 0x205E), // ‰ ′ ‹ › ※ ‼ ⁂ …
    (0x25A0, 0x25FF), // ■ □ ▪ ● ◦ ◆ (bullets)
    (0x2605, 0x2606), // ★ ☆
    (0x3001, 0x3003), // 、 。 〃
    (0x3008, 0x3011), // 〈〉《》「」『』【】
    (0x3014, 0x301F), // 〔〕〖〗〘〙〚〛〜〝〞〟
    (0x30FB, 0x30FB), // ・
    (0xFE10, 0xFE19), // vertical forms
    (0xFE30, 0xFE6B), // CJK compatibility forms, small form variants
    (0xFF01, 0xFF0F), // fullwidth ！＂＃…／
    (0xFF1A, 0xFF20), // fullwidth ：；＜＝＞？＠
    (0xFF3B, 0xFF65), // fullwidth ［＼］＾＿｀, then ｛｜｝～ and halfwidth ｡｢｣､･ (letters in between excluded below)
];

/// Python's `str.isspace`: Rust's White_Space plus the separators U+001C..U+001F.
pub fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// A line boundary for Python's `str.splitlines` (`\r\n` counts once).
fn is_line_break(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r' | '\u{b}' | '\u{c}' | '\u{1c}'..='\u{1e}' | '\u{85}' | '\u{2028}' | '\u{2029}'
    )
}

/// Python `re`'s `\d` on `str`: a Unicode decimal digit (category Nd).
pub fn is_decimal(c: char) -> bool {
    let cp = c as u32;
    ND_STARTS
        .iter()
        .any(|&s| cp >= s && cp < s + if s == 0x1D7CE { 50 } else { 10 })
}

/// Python's `str.isalpha` (categories L*), approximated by Unicode Alphabetic minus numerals.
/// Over all code points they differ only on 1312 combining marks (Mn, Mc), 130 circled letters
/// (So) and characters assigned after Unicode 14 (Python 3.11's version); a word made of those
/// alone is all but nonexistent. Only Gopher's alphabetic-word ratio uses it.
pub fn is_alpha(c: char) -> bool {
    c.is_alphabetic() && !c.is_numeric()
}

/// In datatrove's `PUNCTUATION_SET` (Gopher's "symbol" characters).
pub fn in_punctuation_set(c: char) -> bool {
    PUNCTUATION_SET.binary_search(&(c as u32)).is_ok()
}

/// In datatrove's `TERMINAL_PUNCTUATION` (sentence-final marks of many scripts, 。！？ included).
pub fn is_terminal(c: char) -> bool {
    TERMINAL_PUNCTUATION.binary_search(&(c as u32)).is_ok()
}

/// Punctuation for the word splitter: datatrove's `PUNCTUATION_SET` plus `EXTRA_PUNCT`.
pub fn is_punct(c: char) -> bool {
    let cp = c as u32;
    in_punctuation_set(c) || (EXTRA_PUNCT.iter().any(|&(a, b)| (a..=b).contains(&cp)) && !c.is_alphanumeric())
}

/// True for a character that is a word unit by itself: a CJK ideograph (URO, extensions A-H,
/// compatibility ideographs, 々〆〇 and Hangzhou numerals), kana (not the ・ separator), Bopomofo
/// or Hangul. CJK punctuation is not included (see `is_punct`); it too is a token of its own.
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x1100..=0x11FF         // Hangul Jamo
        | 0x3005..=0x3007       // 々 〆 〇
        | 0x3021..=0x3029       // Hangzhou numerals
        | 0x3031..=0x3035       // kana repeat marks
        | 0x3041..=0x309F       // Hiragana
        | 0x30A1..=0x30FA       // Katakana
        | 0x30FC..=0x30FF       // ー ヽ ヾ ヿ
        | 0x3100..=0x312F       // Bopomofo
        | 0x3131..=0x318F       // Hangul compatibility Jamo
        | 0x31A0..=0x31BF       // Bopomofo extended
        | 0x31F0..=0x31FF       // Katakana phonetic extensions
        | 0x3400..=0x4DBF       // CJK extension A
        | 0x4E00..=0x9FFF       // CJK unified ideographs
        | 0xA960..=0xA97F       // Hangul Jamo extended A
        | 0xAC00..=0xD7AF       // Hangul syllables
        | 0xD7B0..=0xD7FF       // Hangul Jamo extended B
        | 0xF900..=0xFAFF       // CJK compatibility ideographs
        | 0xFF66..=0xFF9F       // halfwidth Katakana
        | 0x1B000..=0x1B16F     // Kana supplement and extensions
        | 0x20000..=0x323AF     // CJK extensions B-H, compatibility supplement
    )
}

/// A token that is one CJK character.
pub fn is_cjk_token(w: &str) -> bool {
    let mut cs = w.chars();
    matches!((cs.next(), cs.next()), (Some(c), None) if is_cjk(c))
}

fn is_word_char(c: char) -> bool {
    !is_space(c) && !is_cjk(c) && !is_punct(c)
}

/// The word splitter every word-counting rule uses (in place of NLTK's `word_tokenize`).
///
/// 1. Whitespace (Python's `str.isspace`) separates tokens and is dropped.
/// 2. Every CJK character (`is_cjk`) is a token of its own: Chinese and Japanese have no spaces,
///    and one character is the only unit that needs no dictionary.
/// 3. Every punctuation character (`is_punct`) is a token of its own, except that an apostrophe
///    (' or ’) or a hyphen between two word characters stays inside the word: `don't`,
///    `LORD’s` and `well-known` are one word each.
/// 4. Runs of the remaining characters (letters, digits, symbols) are words.
pub fn words(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut it = text.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        let joins = || matches!(c, '\'' | '’' | '-') && it.clone().next().is_some_and(|(_, n)| is_word_char(n));
        if is_word_char(c) || (start.is_some() && joins()) {
            start.get_or_insert(i);
            continue;
        }
        if let Some(s) = start.take() {
            out.push(&text[s..i]);
        }
        if !is_space(c) {
            out.push(&text[i..i + c.len_utf8()]);
        }
    }
    if let Some(s) = start {
        out.push(&text[s..]);
    }
    out
}

/// Closing quotes and brackets that stay with the sentence they close.
fn is_closer(c: char) -> bool {
    matches!(
        c,
        '"' | '\'' | ')' | ']' | '”' | '’' | '»' | '）' | '」' | '』' | '》' | '〉' | '】'
    )
}

/// The sentence splitter (in place of NLTK's punkt), as byte spans of the sentences.
///
/// A sentence ends after a run of `TERMINAL_PUNCTUATION` (. ! ? 。 ！ ？ and other scripts'
/// marks) and any closing quotes or brackets, when what follows is whitespace, the end of the
/// text or a CJK character, or when the run holds a non-ASCII mark such as 。 (Chinese and
/// Japanese put no space after a sentence). Text after the last such end is one more sentence.
pub fn sentences(text: &str) -> Vec<(usize, usize)> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let byte_at = |j: usize| chars.get(j).map_or(text.len(), |&(b, _)| b);
    let mut spans = Vec::new();
    let mut start: Option<usize> = None;
    let mut i = 0;
    while i < chars.len() {
        let (b, c) = chars[i];
        if start.is_none() {
            if is_space(c) {
                i += 1;
                continue;
            }
            start = Some(b);
        }
        if !is_terminal(c) {
            i += 1;
            continue;
        }
        let mut wide = false;
        while i < chars.len() && is_terminal(chars[i].1) {
            wide |= !chars[i].1.is_ascii();
            i += 1;
        }
        while i < chars.len() && is_closer(chars[i].1) {
            i += 1;
        }
        let ends = chars
            .get(i)
            .map(|&(_, n)| wide || is_space(n) || is_cjk(n))
            .unwrap_or(true);
        if let (true, Some(s)) = (ends, start) {
            spans.push((s, byte_at(i)));
            start = None;
        }
    }
    if let Some(s) = start {
        spans.push((s, s + text[s..].trim_end_matches(is_space).len()));
    }
    spans
}

/// Python's `str.splitlines()`.
pub fn splitlines(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut it = text.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        if is_line_break(c) {
            out.push(&text[start..i]);
            start = i + c.len_utf8();
            if c == '\r' && it.next_if(|&(_, n)| n == '\n').is_some() {
                start += 1;
            }
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// Python's `re.split("\n{min_run,}", text)`.
pub fn split_newline_runs(text: &str, min_run: usize) -> Vec<&str> {
    let bytes = text.as_bytes();
    let (mut out, mut start, mut i) = (Vec::new(), 0, 0);
    while i < bytes.len() {
        let run = bytes[i..].iter().take_while(|&&b| b == b'\n').count();
        if run >= min_run.max(1) {
            out.push(&text[start..i]);
            start = i + run;
        }
        i += run.max(1);
    }
    out.push(&text[start..]);
    out
}

/// Python's `str.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_space)
}

/// Python's `str.split()` with no argument.
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_space).filter(|w| !w.is_empty())
}

/// Number of characters (Python's `len`).
pub fn len(s: &str) -> usize {
    s.chars().count()
}

/// Share of a text's letters that are CJK: CJK characters / (CJK characters + other letters).
pub fn cjk_share(text: &str) -> f64 {
    let (mut cjk, mut other) = (0usize, 0usize);
    for c in text.chars() {
        if is_cjk(c) {
            cjk += 1;
        } else if c.is_alphabetic() {
            other += 1;
        }
    }
    if cjk == 0 {
        0.0
    } else {
        cjk as f64 / (cjk + other) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert!(is_cjk('中') && is_cjk('の') && is_cjk('한') && is_cjk('𠀀') && is_cjk('ー'));
        assert!(!is_cjk('a') && !is_cjk('，') && !is_cjk('。') && !is_cjk('1') && !is_cjk('・'));
        assert!(is_punct('。') && is_punct('，') && is_punct('「') && is_punct('·') && is_punct('●'));
        assert!(is_punct('…') && is_punct('・') && is_punct('！') && !is_punct('ａ') && !is_punct('Ａ'));
        assert!(in_punctuation_set('#') && in_punctuation_set('\u{7}') && !in_punctuation_set('•'));
        assert!(is_terminal('。') && is_terminal('?') && !is_terminal('…') && !is_terminal('"'));
        assert!(is_space('\u{1c}') && is_space('\u{3000}') && !is_space('\u{200b}'));
        assert!(is_decimal('7') && is_decimal('٣') && is_decimal('𝟿') && !is_decimal('²') && !is_decimal('Ⅳ'));
        assert!(is_alpha('é') && is_alpha('中') && !is_alpha('Ⅳ') && !is_alpha('1'));
    }

    #[test]
    fn english_words() {
        let w = words("Don't stop--the well-known LORD’s \"day\", 3.14 #tag ...");
        let want = [
            "Don't",
            "stop",
            "-",
            "-",
            "the",
            "well-known",
            "LORD’s",
            "\"",
            "day",
            "\"",
            ",",
            "3",
            ".",
            "14",
            "#",
            "tag",
            ".",
            ".",
            ".",
        ];
        assert_eq!(w, want);
        assert_eq!(words("'tis -x y-"), ["'", "tis", "-", "x", "y", "-"]);
        assert!(words(" \n\t").is_empty());
    }

    #[test]
    fn cjk_words() {
        assert_eq!(words("我爱北京。"), ["我", "爱", "北", "京", "。"]);
        assert_eq!(
            words("用iPhone 15拍照，很好"),
            ["用", "iPhone", "15", "拍", "照", "，", "很", "好"]
        );
        assert_eq!(words("「東京」へ"), ["「", "東", "京", "」", "へ"]);
        assert!(is_cjk_token("中") && !is_cjk_token("中文") && !is_cjk_token("a"));
    }

    #[test]
    fn sentence_spans() {
        let count = |t: &str| sentences(t).len();
        assert_eq!(
            count("In the beginning. And God said, Let there be light: and there was light."),
            2
        );
        assert_eq!(count("He said \"Go.\" Then he went"), 2);
        assert_eq!(count("Pi is 3.14 exactly!"), 1);
        assert_eq!(count("Really?! Yes... no"), 3);
        // CJK: 。！？ end a sentence without a following space; closing 」 stays with it.
        assert_eq!(count("今天天气很好。我们去公园吧！「真的吗？」他问。"), 4);
        assert_eq!(count("没有句号的一句话"), 1);
        let t = "  Hi there.  Bye ";
        let s: Vec<&str> = sentences(t).iter().map(|&(a, b)| &t[a..b]).collect();
        assert_eq!(s, ["Hi there.", "Bye"]);
        assert!(sentences("   ").is_empty());
    }

    #[test]
    fn python_splitting() {
        assert_eq!(splitlines("a\r\nb\rc\u{2028}d\n"), ["a", "b", "c", "d"]);
        assert_eq!(splitlines("\n"), [""]);
        assert!(splitlines("").is_empty());
        assert_eq!(split_newline_runs("\na\n\nb\n", 1), ["", "a", "b", ""]);
        assert_eq!(split_newline_runs("a\nb\n\n\nc", 2), ["a\nb", "c"]);
        assert_eq!(py_strip("\u{1f} x \u{3000}"), "x");
        assert_eq!(py_split(" a\u{a0}b  c ").collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(len("中文ab"), 4);
        assert_eq!(cjk_share("中文ab"), 0.5);
        assert_eq!(cjk_share("abc 123"), 0.0);
    }
}
