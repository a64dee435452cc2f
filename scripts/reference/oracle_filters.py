#!/usr/bin/env python3
"""Oracle for tests only: datatrove's heuristic filters, run on a JSONL of {"text": ...} documents.

Runs datatrove's own GopherRepetitionFilter, GopherQualityFilter, C4QualityFilter and
FineWebQualityFilter (datatrove 0.10.1, default arguments) in that order, FineWeb's pipeline
order, calling `.filter(doc)` on `datatrove.data.Document` objects, and prints one JSON line per
document: {"keep": bool, "reason": str | null, "text": text after C4's line removal}.

The word tokenizer is swapped: NLTK's word_tokenize and punkt sentence splitter are replaced by
`SplitterTokenizer`, a Python copy of the Rust filters' `script::words` and `script::sentences`,
passed to every filter as its `language` (datatrove's `load_word_tokenizer` accepts a
`WordTokenizer` instance). So the Rust integration tests compare the rules, not NLTK. All four
filters thread `language` into `split_into_words` / `split_into_sentences`; NLTK is also made to
fail loudly so that a path that fell back to it could not go unnoticed.

Usage: oracle_filters.py [INPUT.jsonl]   (stdin when no file is given; output on stdout)
"""

import json
import sys

from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.utils import word_tokenizers
from datatrove.utils.text import PUNCTUATION_SET, TERMINAL_PUNCTUATION
from datatrove.utils.word_tokenizers import WordTokenizer

# Keep in step with script.rs: EXTRA_PUNCT, is_cjk, is_closer.
EXTRA_PUNCT = [
    (0xA1, 0xA1), (0xA7, 0xA7), (0xB6, 0xB7), (0xBF, 0xBF), (0x2010, 0x2027), (0x2030, 0x205E),
    (0x25A0, 0x25FF), (0x2605, 0x2606), (0x3001, 0x3003), (0x3008, 0x3011), (0x3014, 0x301F),
    (0x30FB, 0x30FB), (0xFE10, 0xFE19), (0xFE30, 0xFE6B), (0xFF01, 0xFF0F), (0xFF1A, 0xFF20),
    (0xFF3B, 0xFF65),
]
CJK = [
    (0x1100, 0x11FF), (0x3005, 0x3007), (0x3021, 0x3029), (0x3031, 0x3035), (0x3041, 0x309F),
    (0x30A1, 0x30FA), (0x30FC, 0x30FF), (0x3100, 0x312F), (0x3131, 0x318F), (0x31A0, 0x31BF),
    (0x31F0, 0x31FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xA960, 0xA97F), (0xAC00, 0xD7AF),
    (0xD7B0, 0xD7FF), (0xF900, 0xFAFF), (0xFF66, 0xFF9F), (0x1B000, 0x1B16F), (0x20000, 0x323AF),
]
CLOSERS = set("\"')]”’»）」』》〉】")
JOINERS = set("'’-")


def in_ranges(c, ranges):
    cp = ord(c)
    return any(a <= cp <= b for a, b in ranges)


def is_cjk(c):
    return in_ranges(c, CJK)


def is_punct(c):
    return c in PUNCTUATION_SET or (in_ranges(c, EXTRA_PUNCT) and not c.isalnum())


def is_word_char(c):
    return not c.isspace() and not is_cjk(c) and not is_punct(c)


def words(text):
    """script::words: whitespace separates; each CJK character and each punctuation character is
    a token, except ' ’ - between two word characters; runs of other characters are words."""
    out, start, n = [], None, len(text)
    for i, c in enumerate(text):
        joins = c in JOINERS and i + 1 < n and is_word_char(text[i + 1])
        if is_word_char(c) or (start is not None and joins):
            if start is None:
                start = i
            continue
        if start is not None:
            out.append(text[start:i])
            start = None
        if not c.isspace():
            out.append(c)
    if start is not None:
        out.append(text[start:])
    return out


def sentence_spans(text):
    """script::sentences: a sentence ends after a run of TERMINAL_PUNCTUATION and closers, when
    followed by whitespace, the end, or a CJK character, or when the run holds a non-ASCII mark."""
    spans, start, i, n = [], None, 0, len(text)
    while i < n:
        c = text[i]
        if start is None:
            if c.isspace():
                i += 1
                continue
            start = i
        if c not in TERMINAL_PUNCTUATION:
            i += 1
            continue
        wide = False
        while i < n and text[i] in TERMINAL_PUNCTUATION:
            wide |= not text[i].isascii()
            i += 1
        while i < n and text[i] in CLOSERS:
            i += 1
        if i == n or wide or text[i].isspace() or is_cjk(text[i]):
            spans.append((start, i))
            start = None
    if start is not None:
        spans.append((start, start + len(text[start:].rstrip())))
    return spans


class SplitterTokenizer(WordTokenizer):
    def word_tokenize(self, text):
        return words(text)

    def sent_tokenize(self, text):
        return [text[a:b] for a, b in sentence_spans(text)]

    def span_tokenize(self, text):
        return sentence_spans(text)


def _no_nltk(*_args, **_kwargs):
    raise RuntimeError("a filter fell back to NLTK: the tokenizer swap did not reach it")


def main():
    word_tokenizers.NLTKTokenizer.word_tokenize = _no_nltk
    word_tokenizers.NLTKTokenizer.sent_tokenize = _no_nltk
    word_tokenizers.NLTKTokenizer.span_tokenize = _no_nltk
    tok = SplitterTokenizer()
    filters = [
        GopherRepetitionFilter(language=tok),
        GopherQualityFilter(language=tok),
        C4QualityFilter(language=tok),
        FineWebQualityFilter(language=tok),
    ]
    src = open(sys.argv[1], encoding="utf-8") if len(sys.argv) > 1 else sys.stdin
    for i, line in enumerate(src):
        if not line.strip():
            continue
        doc = Document(text=json.loads(line)["text"], id=str(i))
        keep, reason = True, None
        for f in filters:
            result = f.filter(doc)
            keep, reason = result if isinstance(result, tuple) else (result, None)
            if not keep:
                break
        print(json.dumps({"keep": bool(keep), "reason": reason, "text": doc.text}, ensure_ascii=False))


if __name__ == "__main__":
    main()
