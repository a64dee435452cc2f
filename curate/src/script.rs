//! Script detection shared by the filters and the deduplicator: which characters are CJK
//! (each one a word of its own, since Chinese and Japanese are written without spaces).
//!
//! Ranges follow the Unicode blocks for Han ideographs (URO, extensions A to G, compatibility
//! ideographs), kana and Hangul syllables.

/// True for a CJK ideograph, kana or Hangul syllable: a character that is a word unit by itself.
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // Hiragana, Katakana
        | 0x3400..=0x4DBF    // CJK Extension A
        | 0x4E00..=0x9FFF    // CJK Unified Ideographs
        | 0xAC00..=0xD7AF    // Hangul syllables
        | 0xF900..=0xFAFF    // CJK Compatibility Ideographs
        | 0x20000..=0x3134F  // Extensions B to G
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cjk_characters_are_recognised() {
        assert!(is_cjk('中') && is_cjk('の') && is_cjk('한') && is_cjk('𠀀'));
        assert!(!is_cjk('a') && !is_cjk('，') && !is_cjk('。') && !is_cjk('1'));
    }
}
