//! A native encoder for SentencePiece BPE models with identity normalization (the Baichuan
//! tokenizer), producing exactly the ids of Google's `sentencepiece` but without its
//! protobuf round trip per call.
//!
//! Follows the algorithm of sentencepiece's `bpe_model.cc` and `normalizer.cc`:
//! 1. normalize: prefix `▁` (add_dummy_prefix), each space becomes `▁`;
//! 2. split into symbols: the longest user-defined symbol at a position (kept whole,
//!    "frozen"), else one UTF-8 character;
//! 3. repeatedly merge the adjacent pair whose concatenation is a known piece with the
//!    highest score, the leftmost first among equal scores;
//! 4. map pieces to ids; a piece with no id falls back to its UTF-8 bytes `<0xXX>`.
//!
//! When no piece contains `▁` after its first character (true of Baichuan's 64000 pieces), no
//! merge can cross the start of a `▁`-word, so words encode independently and a per-thread
//! word cache returns repeated words without re-running BPE. Models this encoder does not
//! cover (unigram, non-identity normalization, ...) are reported by [`Bpe::from_proto`]
//! returning `None`; the caller then uses the C++ library.

use std::cell::RefCell;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

/// FxHash (rustc's hasher): fast for short byte strings; no DoS concern for piece tables.
#[derive(Default)]
struct Fx(u64);

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(K);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;
type WordCache = FxMap<Box<[u8]>, Vec<u32>>;

const SPACE: &[u8] = "▁".as_bytes();

// SentencePiece piece types
const NORMAL: u64 = 1;
const UNKNOWN: u64 = 2;
const USER_DEFINED: u64 = 4;
const UNUSED: u64 = 5;
const BYTE: u64 = 6;

/// A minimal protobuf reader for the few fields of `ModelProto` this encoder needs.
struct Reader<'a> {
    buf: &'a [u8],
}

enum Field<'a> {
    Varint(u64),
    Fixed32(u32),
    Fixed64,
    Bytes(&'a [u8]),
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.buf.split_first()?;
            self.buf = rest;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn next(&mut self) -> Option<Option<(u64, Field<'a>)>> {
        if self.buf.is_empty() {
            return Some(None);
        }
        let key = self.varint()?;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.buf = self.buf.get(8..)?;
                Field::Fixed64
            }
            2 => {
                let len = self.varint()? as usize;
                let (data, rest) = (self.buf.get(..len)?, self.buf.get(len..)?);
                self.buf = rest;
                Field::Bytes(data)
            }
            5 => {
                let data = self.buf.get(..4)?;
                self.buf = &self.buf[4..];
                Field::Fixed32(u32::from_le_bytes(data.try_into().ok()?))
            }
            _ => return None,
        };
        Some(Some((key >> 3, field)))
    }

    /// Calls `f` for every field; `None` on malformed input.
    fn each(buf: &'a [u8], mut f: impl FnMut(u64, Field<'a>)) -> Option<()> {
        let mut r = Reader { buf };
        while let Some((num, field)) = r.next()? {
            f(num, field);
        }
        Some(())
    }
}

struct Symbol {
    start: usize,
    end: usize,
    prev: isize,
    next: isize,
    frozen: bool,
}

#[derive(PartialEq)]
struct Pair {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl Eq for Pair {}

impl Ord for Pair {
    // highest score first; among equal scores the leftmost
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The encoder of one SentencePiece BPE model.
pub struct Bpe {
    /// Normal, user-defined and unused pieces: the ones merges may form.
    pieces: FxMap<Box<[u8]>, (u32, f32)>,
    /// Control, unknown and byte pieces: looked up only for final symbols.
    reserved: FxMap<Box<[u8]>, u32>,
    /// User-defined symbols by first byte, longest first.
    user_defined: Vec<Vec<Box<[u8]>>>,
    byte_ids: [u32; 256],
    unk: u32,
    add_dummy_prefix: bool,
    word_cache: bool,
    id: u64,
}

thread_local! {
    /// Per thread: the id of the encoder the entries belong to, and word -> ids.
    static CACHE: RefCell<(u64, WordCache)> = RefCell::new((0, FxMap::default()));
}

/// Entries per thread before the cache starts over (each at most `CACHE_MAX_WORD` bytes of
/// key plus its ids: a few tens of MB at worst).
const CACHE_LIMIT: usize = 1 << 17;
/// Longer spans (whole lines of CJK text, which has no spaces) rarely repeat: not cached.
const CACHE_MAX_WORD: usize = 48;

impl Bpe {
    /// Builds the encoder from a serialized `ModelProto`, or `None` when the model is not a
    /// BPE model with identity normalization and byte fallback (or is malformed).
    pub fn from_proto(proto: &[u8]) -> Option<Bpe> {
        let mut pieces = FxMap::default();
        let mut reserved = FxMap::default();
        let mut user: Vec<Box<[u8]>> = Vec::new();
        let mut byte_ids = [u32::MAX; 256];
        let mut unk = None;
        let mut ok = true;
        let (mut model_type, mut byte_fallback, mut suffix_ws) = (1u64, false, false);
        let (mut normalizer, mut charsmap) = (None::<Vec<u8>>, false);
        let (mut dummy, mut remove_ws, mut escape_ws) = (true, true, true);
        let mut index = 0u32;
        Reader::each(proto, |num, field| match (num, field) {
            (1, Field::Bytes(sp)) => {
                let (mut piece, mut score, mut kind) = (None, 0.0f32, NORMAL);
                let parsed = Reader::each(sp, |n, f| match (n, f) {
                    (1, Field::Bytes(p)) => piece = Some(p.to_vec().into_boxed_slice()),
                    (2, Field::Fixed32(s)) => score = f32::from_bits(s),
                    (3, Field::Varint(t)) => kind = t,
                    _ => {}
                });
                let Some(piece) = piece.filter(|_| parsed.is_some()) else {
                    ok = false;
                    return;
                };
                let id = index;
                index += 1;
                match kind {
                    NORMAL | USER_DEFINED | UNUSED => {
                        if kind == UNUSED {
                            ok = false; // would need sentencepiece's re-segmentation of unused pieces
                        }
                        if kind == USER_DEFINED {
                            user.push(piece.clone());
                        }
                        ok &= pieces.insert(piece, (id, score)).is_none();
                    }
                    _ => {
                        if kind == UNKNOWN {
                            unk = Some(id);
                        }
                        if kind == BYTE {
                            let hex = std::str::from_utf8(&piece)
                                .ok()
                                .and_then(|p| p.strip_prefix("<0x")?.strip_suffix('>').map(String::from));
                            match hex.and_then(|h| u8::from_str_radix(&h, 16).ok()) {
                                Some(b) => byte_ids[b as usize] = id,
                                None => ok = false,
                            }
                        }
                        ok &= reserved.insert(piece, id).is_none();
                    }
                }
            }
            (2, Field::Bytes(spec)) => {
                ok &= Reader::each(spec, |n, f| match (n, f) {
                    (3, Field::Varint(v)) => model_type = v,
                    (24, Field::Varint(v)) => suffix_ws = v != 0,
                    (35, Field::Varint(v)) => byte_fallback = v != 0,
                    _ => {}
                })
                .is_some();
            }
            (3, Field::Bytes(spec)) => {
                ok &= Reader::each(spec, |n, f| match (n, f) {
                    (1, Field::Bytes(name)) => normalizer = Some(name.to_vec()),
                    (2, Field::Bytes(map)) => charsmap = !map.is_empty(),
                    (3, Field::Varint(v)) => dummy = v != 0,
                    (4, Field::Varint(v)) => remove_ws = v != 0,
                    (5, Field::Varint(v)) => escape_ws = v != 0,
                    _ => {}
                })
                .is_some();
            }
            _ => {}
        })?;
        let identity = normalizer.as_deref() == Some(b"identity".as_slice()) && !charsmap;
        let supported = ok
            && model_type == 2 // BPE
            && byte_fallback
            && identity
            && escape_ws
            && !remove_ws
            && !suffix_ws
            && byte_ids.iter().all(|&id| id != u32::MAX);
        if !supported {
            return None;
        }
        let mut user_defined = vec![Vec::new(); 256];
        for u in &user {
            user_defined[u[0] as usize].push(u.clone());
        }
        for list in &mut user_defined {
            list.sort_by_key(|u| std::cmp::Reverse(u.len()));
        }
        // words encode independently when no piece or symbol holds ▁ past its first byte
        let inner_space = |p: &[u8]| p.len() > 3 && p[1..].windows(3).any(|w| w == SPACE);
        let word_cache =
            !pieces.keys().any(|p| inner_space(p)) && !user.iter().any(|u| u.windows(3).any(|w| w == SPACE));
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Some(Bpe {
            pieces,
            reserved,
            user_defined,
            byte_ids,
            unk: unk?,
            add_dummy_prefix: dummy,
            word_cache,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// The ids of `text`, as sentencepiece's `EncodeAsIds`.
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut norm = Vec::with_capacity(text.len() + text.len() / 4 + 3);
        if self.add_dummy_prefix {
            norm.extend_from_slice(SPACE);
        }
        for &b in text.as_bytes() {
            if b == b' ' {
                norm.extend_from_slice(SPACE);
            } else {
                norm.push(b);
            }
        }
        if !self.word_cache {
            return self.encode_word(&norm, out);
        }
        CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.0 != self.id || cache.1.len() > CACHE_LIMIT {
                cache.0 = self.id;
                cache.1.clear();
            }
            let mut start = 0;
            while start < norm.len() {
                // a word runs from one ▁ to the next
                let mut end = start + 1;
                while end < norm.len() && !norm[end..].starts_with(SPACE) {
                    end += 1;
                }
                let word = &norm[start..end];
                if word.len() > CACHE_MAX_WORD {
                    self.encode_word(word, out);
                    start = end;
                    continue;
                }
                match cache.1.get(word) {
                    Some(ids) => out.extend_from_slice(ids),
                    None => {
                        let at = out.len();
                        self.encode_word(word, out);
                        cache.1.insert(word.into(), out[at..].to_vec());
                    }
                }
                start = end;
            }
        });
    }

    fn user_defined_at(&self, s: &[u8]) -> Option<usize> {
        self.user_defined[s[0] as usize]
            .iter()
            .find(|u| s.starts_with(u))
            .map(|u| u.len())
    }

    /// BPE over one normalized span.
    fn encode_word(&self, s: &[u8], out: &mut Vec<u32>) {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(s.len());
        let mut pos = 0;
        while pos < s.len() {
            let (len, frozen) = match self.user_defined_at(&s[pos..]) {
                Some(len) => (len, true),
                None => (utf8_len(s[pos]).min(s.len() - pos), false),
            };
            let i = symbols.len() as isize;
            symbols.push(Symbol {
                start: pos,
                end: pos + len,
                prev: i - 1,
                next: i + 1,
                frozen,
            });
            pos += len;
        }
        if let Some(last) = symbols.last_mut() {
            last.next = -1;
        }
        let mut heap = BinaryHeap::with_capacity(symbols.len());
        let try_pair = |heap: &mut BinaryHeap<Pair>, symbols: &[Symbol], left: isize, right: isize| {
            if left < 0 || right < 0 {
                return;
            }
            let (l, r) = (&symbols[left as usize], &symbols[right as usize]);
            if l.frozen || r.frozen {
                return;
            }
            if let Some(&(_, score)) = self.pieces.get(&s[l.start..r.end]) {
                heap.push(Pair {
                    score,
                    left: left as usize,
                    right: right as usize,
                    size: r.end - l.start,
                });
            }
        };
        for i in 1..symbols.len() {
            try_pair(&mut heap, &symbols, i as isize - 1, i as isize);
        }
        while let Some(top) = heap.pop() {
            let (l, r) = (&symbols[top.left], &symbols[top.right]);
            // stale: one side was merged away or grew since the pair was queued
            if l.start == l.end || r.start == r.end || (l.end - l.start) + (r.end - r.start) != top.size {
                continue;
            }
            let (r_end, r_next) = (r.end, r.next);
            symbols[top.left].end = r_end;
            symbols[top.left].next = r_next;
            if r_next >= 0 {
                symbols[r_next as usize].prev = top.left as isize;
            }
            symbols[top.right].end = symbols[top.right].start; // empty
            let prev = symbols[top.left].prev;
            try_pair(&mut heap, &symbols, prev, top.left as isize);
            try_pair(&mut heap, &symbols, top.left as isize, r_next);
        }
        let mut i: isize = if symbols.is_empty() { -1 } else { 0 };
        while i >= 0 {
            let sym = &symbols[i as usize];
            let piece = &s[sym.start..sym.end];
            match self
                .reserved
                .get(piece)
                .copied()
                .or_else(|| self.pieces.get(piece).map(|&(id, _)| id))
            {
                Some(id) if id != self.unk => out.push(id),
                _ => out.extend(piece.iter().map(|&b| self.byte_ids[b as usize])),
            }
            i = sym.next;
        }
    }
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => 1,
    }
}
