//! Sentence spans for sentence-level deduplication: a document is cut after sentence-final
//! punctuation (`.` `!` `?` `;` followed by whitespace; `。` `！` `？` `；` `…` anywhere, with
//! closing quotes and brackets kept on the sentence) and at line breaks. The spans cover the
//! text exactly, each with its trailing whitespace, so removing spans and joining the rest
//! rebuilds the document without them.

/// Byte ranges of the sentences of `text`, covering it end to end.
pub fn sentence_spans(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut spans = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let cjk_end = matches!(c, '。' | '！' | '？' | '；' | '…');
        let latin_end = matches!(c, '.' | '!' | '?' | ';');
        let newline = c == '\n';
        if !(cjk_end || latin_end || newline) {
            continue;
        }
        let mut end = i + c.len_utf8();
        // Repeated terminators, closing quotes and brackets stay with the sentence.
        while let Some(&(j, d)) = chars.peek() {
            if matches!(
                d,
                '。' | '！' | '？' | '…' | '.' | '!' | '?' | '"' | '\'' | '”' | '’' | '」' | '』' | ')' | '）' | '》'
            ) {
                end = j + d.len_utf8();
                chars.next();
            } else {
                break;
            }
        }
        let next_is_space = chars.peek().map(|&(_, d)| d.is_whitespace()).unwrap_or(true);
        if latin_end && !newline && !next_is_space {
            continue; // "3.14", "e.g.x": not a boundary
        }
        while let Some(&(j, d)) = chars.peek() {
            if d.is_whitespace() {
                end = j + d.len_utf8();
                chars.next();
            } else {
                break;
            }
        }
        spans.push(start..end);
        start = end;
    }
    if start < text.len() {
        spans.push(start..text.len());
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(t: &str) -> Vec<&str> {
        sentence_spans(t).into_iter().map(|r| &t[r]).collect()
    }

    #[test]
    fn english_chinese_and_lines() {
        assert_eq!(split("One. Two!  Three?"), ["One. ", "Two!  ", "Three?"]);
        assert_eq!(split("Pi is 3.14 today. Yes"), ["Pi is 3.14 today. ", "Yes"]);
        assert_eq!(
            split("床前明月光。疑是地上霜！他说：“好。”走"),
            ["床前明月光。", "疑是地上霜！", "他说：“好。”", "走"]
        );
        assert_eq!(split("a line\nnext line\n"), ["a line\n", "next line\n"]);
        assert_eq!(split("Wait... what?!"), ["Wait... ", "what?!"]);
        assert!(split("").is_empty());
        let t = "甲。乙. 丙\n丁";
        assert_eq!(split(t).concat(), t);
    }
}
