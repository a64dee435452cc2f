//! Token shards: a fixed 64-byte header, then little-endian token ids (u16 when the
//! vocabulary fits, else u32), memory-mapped for training.
//!
//! Header layout (all little-endian), following llm.c's practice of a magic number and a
//! version in every binary file:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `BCHTOKS\0` |
//! | 8 | 4 | format version (2; 1 is still read) |
//! | 12 | 4 | bytes per token (2 or 4) |
//! | 16 | 8 | vocabulary size |
//! | 24 | 8 | tokens |
//! | 32 | 8 | documents |
//! | 40 | 4 | CRC-32 (IEEE) of the token bytes (version 2; zero in 1) |
//! | 44 | 4 | the largest token id (version 2; zero in 1) |
//! | 48 | 16 | zero |
//!
//! Writers go through a temporary name, fsync and rename, so a shard either exists whole or
//! not at all. Readers check magic, version, token width and the exact file length;
//! [`ShardSet::check`] verifies the body's checksum and that every id fits a model's
//! vocabulary (from the header's largest id; a version-1 shard is scanned).

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::loader::TokenSource;
use crate::DataError;

pub const MAGIC: &[u8; 8] = b"BCHTOKS\0";
pub const FORMAT_VERSION: u32 = 2;
pub const HEADER_BYTES: u64 = 64;

fn err(path: &Path, msg: impl Into<String>) -> DataError {
    DataError::Input {
        path: path.display().to_string(),
        msg: msg.into(),
    }
}

/// Bytes per token for a vocabulary.
pub fn token_width(vocab_size: u64) -> u32 {
    if vocab_size <= 1 << 16 {
        2
    } else {
        4
    }
}

/// The parsed header of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardHeader {
    pub version: u32,
    pub token_bytes: u32,
    pub vocab_size: u64,
    pub num_tokens: u64,
    pub num_documents: u64,
    /// CRC-32 of the token bytes (version 2).
    pub body_crc32: u32,
    /// The largest token id in the shard (version 2; 0 when empty).
    pub max_token_id: u32,
}

impl ShardHeader {
    fn encode(&self) -> [u8; HEADER_BYTES as usize] {
        let mut h = [0u8; HEADER_BYTES as usize];
        h[0..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&self.version.to_le_bytes());
        h[12..16].copy_from_slice(&self.token_bytes.to_le_bytes());
        h[16..24].copy_from_slice(&self.vocab_size.to_le_bytes());
        h[24..32].copy_from_slice(&self.num_tokens.to_le_bytes());
        h[32..40].copy_from_slice(&self.num_documents.to_le_bytes());
        h[40..44].copy_from_slice(&self.body_crc32.to_le_bytes());
        h[44..48].copy_from_slice(&self.max_token_id.to_le_bytes());
        h
    }

    /// Parses and checks a header; `file_len` must match the token count exactly.
    pub fn decode(bytes: &[u8], file_len: u64, path: &Path) -> Result<Self, DataError> {
        if bytes.len() < HEADER_BYTES as usize || &bytes[0..8] != MAGIC {
            return Err(err(
                path,
                "not a baichuan token shard (bad magic); HINT: create shards with `baichuan prepare`",
            ));
        }
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
        let header = ShardHeader {
            version: u32_at(8),
            token_bytes: u32_at(12),
            vocab_size: u64_at(16),
            num_tokens: u64_at(24),
            num_documents: u64_at(32),
            body_crc32: u32_at(40),
            max_token_id: u32_at(44),
        };
        if header.version > FORMAT_VERSION {
            return Err(err(
                path,
                format!(
                    "shard format version {} is newer than this baichuan understands ({FORMAT_VERSION}); \
                     HINT: upgrade baichuan, or re-run `baichuan prepare` with this version",
                    header.version
                ),
            ));
        }
        if header.version == 0 || !matches!(header.token_bytes, 2 | 4) {
            return Err(err(
                path,
                format!(
                    "corrupt header (version {}, {} bytes per token)",
                    header.version, header.token_bytes
                ),
            ));
        }
        let want = HEADER_BYTES + header.num_tokens * header.token_bytes as u64;
        if file_len != want {
            return Err(err(
                path,
                format!(
                    "file is {file_len} bytes but its header promises {} tokens ({want} bytes): the shard is \
                     truncated or damaged; HINT: re-run `baichuan prepare` (it rewrites damaged shards)",
                    header.num_tokens
                ),
            ));
        }
        Ok(header)
    }
}

/// Writes one shard through a temporary file; `finish` makes it visible atomically.
pub struct ShardWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    header: ShardHeader,
    crc: crc32fast::Hasher,
}

impl ShardWriter {
    pub fn create(path: &Path, vocab_size: u64) -> Result<Self, DataError> {
        let tmp = path.with_extension("bin.tmp");
        let file = File::create(&tmp).map_err(|e| err(&tmp, e.to_string()))?;
        let header = ShardHeader {
            version: FORMAT_VERSION,
            token_bytes: token_width(vocab_size),
            vocab_size,
            num_tokens: 0,
            num_documents: 0,
            body_crc32: 0,
            max_token_id: 0,
        };
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&header.encode()).map_err(|e| err(&tmp, e.to_string()))?;
        Ok(ShardWriter {
            path: path.to_path_buf(),
            tmp,
            out,
            header,
            crc: crc32fast::Hasher::new(),
        })
    }

    pub fn num_tokens(&self) -> u64 {
        self.header.num_tokens
    }

    /// Appends tokens; `documents` is how many documents they complete.
    pub fn write(&mut self, tokens: &[u32], documents: u64) -> Result<(), DataError> {
        let max = tokens.iter().copied().max().unwrap_or(0);
        if u64::from(max) >= self.header.vocab_size {
            return Err(err(
                &self.tmp,
                format!(
                    "token id {max} is outside the {}-piece vocabulary",
                    self.header.vocab_size
                ),
            ));
        }
        self.header.max_token_id = self.header.max_token_id.max(max);
        let buf = if self.header.token_bytes == 2 {
            let mut buf = Vec::with_capacity(tokens.len() * 2);
            for &t in tokens {
                buf.extend_from_slice(&(t as u16).to_le_bytes());
            }
            buf
        } else {
            let mut buf = Vec::with_capacity(tokens.len() * 4);
            for &t in tokens {
                buf.extend_from_slice(&t.to_le_bytes());
            }
            buf
        };
        self.crc.update(&buf);
        self.out.write_all(&buf).map_err(|e| err(&self.tmp, e.to_string()))?;
        self.header.num_tokens += tokens.len() as u64;
        self.header.num_documents += documents;
        Ok(())
    }

    /// Rewrites the header with the final counts, fsyncs and renames into place.
    pub fn finish(self) -> Result<ShardHeader, DataError> {
        use std::io::{Seek, SeekFrom};
        let ShardWriter {
            path,
            tmp,
            out,
            mut header,
            crc,
        } = self;
        header.body_crc32 = crc.finalize();
        let mut file = out.into_inner().map_err(|e| err(&tmp, e.to_string()))?;
        let io = |e: std::io::Error| err(&tmp, e.to_string());
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&header.encode()).map_err(io)?;
        file.sync_all().map_err(io)?;
        fs::rename(&tmp, &path).map_err(|e| err(&path, e.to_string()))?;
        Ok(header)
    }
}

/// A memory-mapped shard.
pub struct Shard {
    pub path: PathBuf,
    pub header: ShardHeader,
    map: memmap2::Mmap,
}

impl Shard {
    pub fn open(path: &Path) -> Result<Self, DataError> {
        let file = File::open(path).map_err(|e| err(path, format!("{e}; HINT: check data.path")))?;
        let len = file.metadata().map_err(|e| err(path, e.to_string()))?.len();
        // SAFETY: shards are written once (atomically renamed) and never modified in place.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| err(path, e.to_string()))?;
        let header = ShardHeader::decode(&map, len, path)?;
        Ok(Shard {
            path: path.to_path_buf(),
            header,
            map,
        })
    }

    fn body(&self) -> &[u8] {
        &self.map[HEADER_BYTES as usize..]
    }

    /// Checks the token bytes against the header's CRC-32 (version 2; version 1 has none).
    pub fn verify(&self) -> Result<(), DataError> {
        if self.header.version < 2 {
            return Ok(());
        }
        let got = crc32fast::hash(self.body());
        if got != self.header.body_crc32 {
            return Err(err(
                &self.path,
                format!(
                    "the token data is damaged (CRC-32 {got:08x}; the header says {:08x}); HINT: re-run \
                     `baichuan prepare` to rewrite it",
                    self.header.body_crc32
                ),
            ));
        }
        Ok(())
    }

    /// The largest token id: from the header (version 2), else by reading every token.
    pub fn max_token_id(&self) -> u32 {
        if self.header.version >= 2 {
            return self.header.max_token_id;
        }
        match self.header.token_bytes {
            2 => self
                .body()
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32)
                .max()
                .unwrap_or(0),
            _ => self
                .body()
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .max()
                .unwrap_or(0),
        }
    }

    /// Copies tokens `[start, start + out.len())` of this shard.
    fn read(&self, start: u64, out: &mut [u32]) {
        let body = &self.map[HEADER_BYTES as usize..];
        match self.header.token_bytes {
            2 => {
                let bytes = &body[start as usize * 2..(start as usize + out.len()) * 2];
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = u16::from_le_bytes([b[0], b[1]]) as u32;
                }
            }
            _ => {
                let bytes = &body[start as usize * 4..(start as usize + out.len()) * 4];
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
        }
    }
}

/// Several shards read as one token stream, in the order given.
pub struct ShardSet {
    shards: Vec<Shard>,
    starts: Vec<u64>, // first global token of each shard, plus the total at the end
}

impl ShardSet {
    /// Opens shards; all must share one vocabulary size.
    pub fn open(paths: &[PathBuf]) -> Result<Self, DataError> {
        if paths.is_empty() {
            return Err(DataError::Config(
                "no token shards given; HINT: run `baichuan prepare` first".into(),
            ));
        }
        let shards = paths.iter().map(|p| Shard::open(p)).collect::<Result<Vec<_>, _>>()?;
        let vocab = shards[0].header.vocab_size;
        if let Some(other) = shards.iter().find(|s| s.header.vocab_size != vocab) {
            return Err(err(
                &other.path,
                format!(
                    "vocabulary {} differs from {} in {}: shards of different tokenizers",
                    other.header.vocab_size,
                    vocab,
                    shards[0].path.display()
                ),
            ));
        }
        let mut starts = vec![0];
        for s in &shards {
            starts.push(starts.last().expect("non-empty") + s.header.num_tokens);
        }
        Ok(ShardSet { shards, starts })
    }

    pub fn vocab_size(&self) -> u64 {
        self.shards[0].header.vocab_size
    }

    /// Checks every shard for a model of `vocab` token ids: the body's checksum when `verify`
    /// (one read of every shard), and that its largest id is below `vocab`. The error names
    /// the file and the fix.
    pub fn check(&self, vocab: u64, verify: bool) -> Result<(), DataError> {
        for s in &self.shards {
            if verify {
                s.verify()?;
            }
            let max = s.max_token_id();
            if s.header.num_tokens > 0 && u64::from(max) >= vocab {
                return Err(err(
                    &s.path,
                    format!(
                        "holds token id {max}, outside the model's vocabulary of {vocab} (model.vocab_size); the \
                         shard was made with another tokenizer or is damaged. HINT: re-run `baichuan prepare` with \
                         the model's tokenizer, or set model.vocab_size above {max}"
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn num_documents(&self) -> u64 {
        self.shards.iter().map(|s| s.header.num_documents).sum()
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }
}

impl TokenSource for ShardSet {
    fn num_tokens(&self) -> u64 {
        *self.starts.last().expect("non-empty")
    }

    fn read(&self, start: u64, out: &mut [u32]) {
        let mut pos = start;
        let mut done = 0;
        // the shard holding `pos`: the last start <= pos
        let mut i = self.starts.partition_point(|&s| s <= pos) - 1;
        while done < out.len() {
            let shard = &self.shards[i];
            let offset = pos - self.starts[i];
            let take = ((shard.header.num_tokens - offset) as usize).min(out.len() - done);
            shard.read(offset, &mut out[done..done + take]);
            done += take;
            pos += take as u64;
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("baichuan-shard-{name}-{}", std::process::id()));
        if d.exists() {
            fs::remove_dir_all(&d).unwrap();
        }
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn write(path: &Path, vocab: u64, tokens: &[u32]) {
        let mut w = ShardWriter::create(path, vocab).unwrap();
        w.write(tokens, 1).unwrap();
        w.finish().unwrap();
    }

    #[test]
    fn round_trip_u16_and_u32_across_shard_boundaries() {
        let d = dir("rt");
        for (vocab, width) in [(64000u64, 2u64), (100_000, 4)] {
            let a: Vec<u32> = (0..1000).map(|i| i * 37 % vocab as u32).collect();
            let b: Vec<u32> = (0..500).map(|i| (i * 91 + 7) % vocab as u32).collect();
            let (pa, pb) = (d.join(format!("a{vocab}.bin")), d.join(format!("b{vocab}.bin")));
            write(&pa, vocab, &a);
            write(&pb, vocab, &b);
            assert_eq!(fs::metadata(&pa).unwrap().len(), HEADER_BYTES + 1000 * width);
            let set = ShardSet::open(&[pa, pb]).unwrap();
            assert_eq!(set.num_tokens(), 1500);
            assert_eq!(set.num_documents(), 2);
            let mut out = vec![0u32; 20];
            set.read(990, &mut out); // spans both shards
            assert_eq!(&out[..10], &a[990..]);
            assert_eq!(&out[10..], &b[..10]);
        }
    }

    #[test]
    fn header_rejects_wrong_magic_newer_version_and_truncation() {
        let d = dir("bad");
        let p = d.join("s.bin");
        write(&p, 64000, &[1, 2, 3, 4]);
        let good = fs::read(&p).unwrap();

        let mut bad = good.clone();
        bad[0] = b'X';
        fs::write(&p, &bad).unwrap();
        let e = Shard::open(&p).err().unwrap().to_string();
        assert!(e.contains("magic") && e.contains("s.bin"), "{e}");

        let mut newer = good.clone();
        newer[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        fs::write(&p, &newer).unwrap();
        let e = Shard::open(&p).err().unwrap().to_string();
        assert!(e.contains("newer") && e.contains("upgrade"), "{e}");

        fs::write(&p, &good[..good.len() - 3]).unwrap();
        let e = Shard::open(&p).err().unwrap().to_string();
        assert!(e.contains("truncated") && e.contains("prepare"), "{e}");

        fs::write(&p, &good).unwrap();
        assert!(Shard::open(&p).is_ok());
    }

    /// A flipped token byte is caught by the body checksum, naming the file; ids at or above a
    /// model's vocabulary are refused with the file and the fix, from the header of a version-2
    /// shard and by a scan of a version-1 one.
    #[test]
    fn damaged_bodies_and_ids_outside_the_vocabulary_are_refused_by_name() {
        let d = dir("check");
        let p = d.join("s.bin");
        write(&p, 64000, &[5, 63999, 7]);
        let set = ShardSet::open(std::slice::from_ref(&p)).unwrap();
        assert_eq!(set.shards()[0].max_token_id(), 63999);
        set.check(64000, true).unwrap();
        let e = set.check(32000, false).unwrap_err().to_string();
        assert!(
            e.contains("s.bin") && e.contains("token id 63999") && e.contains("prepare"),
            "{e}"
        );
        drop(set);

        let good = fs::read(&p).unwrap();
        let mut flipped = good.clone();
        flipped[HEADER_BYTES as usize + 1] ^= 0x40;
        fs::write(&p, &flipped).unwrap();
        let set = ShardSet::open(std::slice::from_ref(&p)).unwrap();
        let e = set.check(64000, true).unwrap_err().to_string();
        assert!(e.contains("s.bin") && e.contains("damaged"), "{e}");
        drop(set);

        // a version-1 shard (no checksum, no largest id) is scanned for its largest id
        let mut v1 = good.clone();
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        v1[40..48].fill(0);
        fs::write(&p, &v1).unwrap();
        let set = ShardSet::open(std::slice::from_ref(&p)).unwrap();
        set.check(64000, true).unwrap();
        assert!(set
            .check(1000, true)
            .unwrap_err()
            .to_string()
            .contains("token id 63999"));
        let mut w = ShardWriter::create(&d.join("w.bin"), 100).unwrap();
        assert!(w
            .write(&[3, 100], 1)
            .unwrap_err()
            .to_string()
            .contains("outside the 100-piece"));
    }
}
