//! MinHash signatures and LSH banding (Broder 1997; Leskovec, Rajaraman and Ullman, *Mining of
//! Massive Datasets* ch. 3), with datasketch's default permutation scheme (`affine32`, since
//! datasketch 2.0) so that signatures can be checked against it value for value.
//!
//! Text is normalised (lowercased; punctuation and symbols are separators) into units: a run
//! of letters and digits is one unit, and each CJK character is a unit by itself, so English
//! shingles are word n-grams and Chinese shingles are character n-grams. Each shingle (its
//! units joined by spaces) is hashed with XXH3-64 truncated to 32 bits, pre-mixed once with the
//! MurmurHash3 32-bit finaliser, and permutation `i` maps it to `a_i * h + b_i mod 2^32` with an
//! odd `a_i`: a bijection, so unlike the older `(a h + b) mod (2^61 - 1)` fold it cannot merge
//! distinct shingles (datasketch issue 212). The `(a_i, b_i)` come from splitmix64 of the seed.

use baichuan_data::hash::{splitmix64, GOLDEN};
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

use crate::script::is_cjk;
use crate::{CurateError, Result};

const MAX_HASH: u64 = u32::MAX as u64;

/// Normalised units of `text` (see the module doc).
pub fn units(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in text.chars().flat_map(char::to_lowercase) {
        if is_cjk(c) {
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            out.push(c.to_string());
        } else if c.is_alphanumeric() {
            word.push(c);
        } else if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// Key of the normalised text for exact duplicates (XXH3-128 of the units joined by spaces).
pub fn exact_key(units: &[String]) -> u128 {
    xxh3_128(units.join(" ").as_bytes())
}

/// LSH parameters: shingle size, permutations and the banding `bands x rows <= num_perm`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LshParams {
    pub ngram: usize,
    pub num_perm: usize,
    pub bands: usize,
    pub rows: usize,
    pub seed: u64,
}

impl LshParams {
    /// datatrove's and FineWeb's choice: 5-grams, 14 bands of 8 rows (112 permutations). A pair
    /// at Jaccard 0.68 is found half the time, at 0.8 with probability 0.93, at 0.9 always
    /// (0.9996): a threshold near 0.7, text-dedup's default, at less than half its 250
    /// permutations of hashing work per shingle.
    pub const DEFAULT: LshParams = LshParams {
        ngram: 5,
        num_perm: 112,
        bands: 14,
        rows: 8,
        seed: 1,
    };

    /// Checks the banding fits the permutations.
    pub fn validate(&self) -> Result<()> {
        if self.ngram == 0 || self.num_perm == 0 || self.bands == 0 || self.rows == 0 {
            return Err(CurateError::Options(
                "--ngram, --num-perm, --bands and --rows must be positive".into(),
            ));
        }
        if self.bands * self.rows > self.num_perm {
            return Err(CurateError::Options(format!(
                "--bands {} x --rows {} = {} exceeds --num-perm {}; HINT: raise --num-perm or lower the banding",
                self.bands,
                self.rows,
                self.bands * self.rows,
                self.num_perm
            )));
        }
        Ok(())
    }

    /// Probability that a pair at Jaccard `s` shares at least one band: `1 - (1 - s^r)^b`.
    pub fn s_curve(&self, s: f64) -> f64 {
        1.0 - (1.0 - s.powi(self.rows as i32)).powi(self.bands as i32)
    }
}

/// The banding for `num_perm` permutations that minimises the equal-weight sum of false
/// positive and false negative probability mass around `threshold`, as datasketch's
/// `_optimal_param` does (integrals by Simpson's rule instead of quadrature).
pub fn optimal_banding(threshold: f64, num_perm: usize) -> (usize, usize) {
    fn integrate(f: impl Fn(f64) -> f64, a: f64, b: f64) -> f64 {
        let n = 2000;
        let h = (b - a) / n as f64;
        let mut s = f(a) + f(b);
        for i in 1..n {
            s += f(a + i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
        }
        s * h / 3.0
    }
    let mut best = (f64::INFINITY, (1, 1));
    for b in 1..=num_perm {
        for r in 1..=num_perm / b {
            let p = |s: f64| 1.0 - (1.0 - s.powi(r as i32)).powi(b as i32);
            let fp = integrate(p, 0.0, threshold);
            let fn_ = integrate(|s| 1.0 - p(s), threshold, 1.0);
            let err = 0.5 * fp + 0.5 * fn_;
            if err < best.0 {
                best = (err, (b, r));
            }
        }
    }
    best.1
}

/// Computes signatures and band keys for one parameter set.
#[derive(Debug, Clone)]
pub struct MinHasher {
    params: LshParams,
    a: Vec<u32>,
    b: Vec<u32>,
}

impl MinHasher {
    pub fn new(params: LshParams) -> Self {
        let (a, b) = permutations(params.seed, params.num_perm);
        MinHasher { params, a, b }
    }

    pub fn params(&self) -> &LshParams {
        &self.params
    }

    /// 32-bit hashes of the shingles of `units`: every window of `ngram` units, or the whole
    /// text when it is shorter (datatrove does the same), none for empty text.
    pub fn shingle_hashes(&self, units: &[String]) -> Vec<u64> {
        let k = self.params.ngram.min(units.len());
        if k == 0 {
            return Vec::new();
        }
        let mut buf = String::new();
        units
            .windows(k)
            .map(|w| {
                buf.clear();
                for (i, u) in w.iter().enumerate() {
                    if i > 0 {
                        buf.push(' ');
                    }
                    buf.push_str(u);
                }
                xxh3_64(buf.as_bytes()) & MAX_HASH
            })
            .collect()
    }

    /// The MinHash signature of a set of shingle hashes (all `u32::MAX` for an empty set).
    pub fn signature(&self, hashes: &[u64]) -> Vec<u32> {
        let mut sig = vec![u32::MAX; self.params.num_perm];
        for &h in hashes {
            let h = fmix32(h as u32);
            for ((s, &a), &b) in sig.iter_mut().zip(&self.a).zip(&self.b) {
                *s = (*s).min(a.wrapping_mul(h).wrapping_add(b));
            }
        }
        sig
    }

    /// One 128-bit key per band: XXH3-128 of the band's rows (little-endian u32s).
    pub fn band_keys(&self, sig: &[u32]) -> Vec<u128> {
        let r = self.params.rows;
        (0..self.params.bands)
            .map(|band| {
                let bytes: Vec<u8> = sig[band * r..(band + 1) * r]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                xxh3_128(&bytes)
            })
            .collect()
    }
}

/// The MurmurHash3 32-bit finaliser: an avalanching bijection on u32 (datasketch's `_fmix`).
pub fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85EB_CA6B);
    h ^= h >> 13;
    h = h.wrapping_mul(0xC2B2_AE35);
    h ^ (h >> 16)
}

/// The permutation parameters: `a_i = low32(splitmix64(seed + 2i GOLDEN)) | 1` (odd) and
/// `b_i = low32(splitmix64(seed + (2i + 1) GOLDEN))`.
pub fn permutations(seed: u64, n: usize) -> (Vec<u32>, Vec<u32>) {
    let draw = |k: u64| splitmix64(seed.wrapping_add(k.wrapping_mul(GOLDEN))) as u32;
    let a = (0..n as u64).map(|i| draw(2 * i) | 1).collect();
    let b = (0..n as u64).map(|i| draw(2 * i + 1)).collect();
    (a, b)
}

/// Exact Jaccard similarity of two shingle-hash sets (for tests and reports).
pub fn jaccard(a: &[u64], b: &[u64]) -> f64 {
    let a: std::collections::HashSet<_> = a.iter().collect();
    let b: std::collections::HashSet<_> = b.iter().collect();
    let union = a.union(&b).count();
    if union == 0 {
        return 1.0;
    }
    a.intersection(&b).count() as f64 / union as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_split_words_and_cjk_characters() {
        assert_eq!(units("Hello, World! 2024"), ["hello", "world", "2024"]);
        assert_eq!(
            units("床前明月光，疑是地上霜。"),
            ["床", "前", "明", "月", "光", "疑", "是", "地", "上", "霜"]
        );
        assert_eq!(units("GPU加速ok"), ["gpu", "加", "速", "ok"]);
        assert!(units(" ,.!? ").is_empty());
    }

    #[test]
    fn fmix32_is_murmur3s_finaliser() {
        // MurmurHash3_x86_32 of the empty input with seed 1 is fmix32(1) = 0x514E28B7.
        assert_eq!(fmix32(1), 0x514E_28B7);
        assert_eq!(fmix32(0), 0);
    }

    #[test]
    fn signature_agreement_estimates_jaccard() {
        let m = MinHasher::new(LshParams {
            num_perm: 512,
            ..LshParams::DEFAULT
        });
        let a: Vec<u64> = (0..300).collect();
        let b: Vec<u64> = (100..400).collect(); // Jaccard 200/400 = 0.5
        let (sa, sb) = (m.signature(&a), m.signature(&b));
        let agree = sa.iter().zip(&sb).filter(|(x, y)| x == y).count() as f64 / 512.0;
        // Standard error sqrt(0.25/512) = 0.022: 0.5 +- 4.5 sigma.
        assert!((agree - jaccard(&a, &b)).abs() < 0.1, "estimate {agree}");
        assert_eq!(m.signature(&[]), vec![u32::MAX; 512]);
    }

    #[test]
    fn banding_choices() {
        assert!(LshParams::DEFAULT.validate().is_ok());
        assert!(LshParams {
            bands: 20,
            ..LshParams::DEFAULT
        }
        .validate()
        .is_err());
        let p = LshParams::DEFAULT;
        assert!(p.s_curve(0.9) > 0.99 && p.s_curve(0.5) < 0.1);
        // datasketch.lsh._optimal_param(0.7, 250, 0.5, 0.5) is (25, 10); tests/oracle_minhash.rs checks.
        let (b, r) = optimal_banding(0.7, 250);
        assert_eq!((b, r), (25, 10));
    }
}
