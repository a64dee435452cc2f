//! TensorBoard event files for scalar curves, written without TensorFlow or protobuf crates.
//!
//! Follows TensorFlow's on-disk format: a file `events.out.tfevents.<secs>.<host>` of TFRecords
//! (`u64` length, masked CRC-32C of the length, payload, masked CRC-32C of the payload, all
//! little-endian), each payload an `Event` protocol buffer (event.proto): the first carries
//! `file_version = "brain.Event:2"`, the second a `SessionLog` START at the step the run
//! (re)starts from, which makes TensorBoard drop what an earlier process logged at that step
//! and after (a run resumed from an older checkpoint), the others a `Summary` of `simple_value`
//! scalars. The
//! encoder writes the few fields needed by hand (the tests decode them back with a reader of
//! their own, `trainer/tests/common/tensorboard.rs`, and with TensorBoard's).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum EventError {
    #[error("{path}: input/output error on a TensorBoard event file")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// CRC-32C (Castagnoli), reflected polynomial 0x82F63B78, as TFRecord uses.
pub fn crc32c(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut crc = !0u32;
    for &b in bytes {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// TFRecord's masking of a CRC (so CRCs of data that embeds CRCs stay well distributed).
pub fn masked_crc(bytes: &[u8]) -> u32 {
    let c = crc32c(bytes);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn length_delimited(field: u64, bytes: &[u8], out: &mut Vec<u8>) {
    varint((field << 3) | 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// An `Event` with its wall time and step, plus `what` (already-encoded oneof field).
fn event(wall_time: f64, step: i64, what: &[u8]) -> Vec<u8> {
    let mut e = Vec::with_capacity(16 + what.len());
    e.push(0x09); // field 1 (wall_time), 64-bit
    e.extend_from_slice(&wall_time.to_le_bytes());
    e.push(0x10); // field 2 (step), varint
    varint(step as u64, &mut e);
    e.extend_from_slice(what);
    e
}

/// A `Summary` of scalar values, as field 5 of an `Event`.
fn summary(values: &[(&str, f64)]) -> Vec<u8> {
    let mut s = Vec::new();
    for (tag, v) in values {
        let mut value = Vec::with_capacity(tag.len() + 8);
        length_delimited(1, tag.as_bytes(), &mut value); // Value.tag
        value.push(0x15); // Value.simple_value (field 2), 32-bit
        value.extend_from_slice(&(*v as f32).to_le_bytes());
        length_delimited(1, &value, &mut s); // Summary.value
    }
    let mut what = Vec::with_capacity(s.len() + 4);
    length_delimited(5, &s, &mut what);
    what
}

fn record(payload: &[u8], out: &mut impl Write) -> std::io::Result<()> {
    let len = (payload.len() as u64).to_le_bytes();
    out.write_all(&len)?;
    out.write_all(&masked_crc(&len).to_le_bytes())?;
    out.write_all(payload)?;
    out.write_all(&masked_crc(payload).to_le_bytes())
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Appends scalar summaries to a new event file in a directory.
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// Creates `<dir>/events.out.tfevents.<secs>.<host>` (a new file per process, as
    /// TensorFlow does; TensorBoard reads all of a directory's files as one run), starting at
    /// `start_step`: earlier files' events at that step and later are superseded.
    pub fn create(dir: &Path, start_step: u64) -> Result<Self, EventError> {
        let io = |source| EventError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let wall = now();
        let mut path = dir.join(format!("events.out.tfevents.{}.{host}", wall as u64));
        let mut n = 1;
        while path.exists() {
            path = dir.join(format!("events.out.tfevents.{}.{host}.{n}", wall as u64));
            n += 1;
        }
        let file = File::create(&path).map_err(|source| EventError::Io {
            path: path.clone(),
            source,
        })?;
        let mut w = EventWriter {
            path,
            out: BufWriter::new(file),
        };
        let mut version = Vec::new();
        length_delimited(3, b"brain.Event:2", &mut version);
        w.write_event(&event(wall, 0, &version))?;
        let mut start = Vec::new();
        length_delimited(7, &[0x08, 1], &mut start); // session_log (field 7) { status: START }
        w.write_event(&event(wall, start_step as i64, &start))?;
        w.flush()?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_event(&mut self, payload: &[u8]) -> Result<(), EventError> {
        record(payload, &mut self.out).map_err(|source| EventError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Writes scalars `(tag, value)` of one step (non-finite values are written as they are:
    /// TensorBoard shows NaN and inf points).
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<(), EventError> {
        if values.is_empty() {
            return Ok(());
        }
        self.write_event(&event(now(), step as i64, &summary(values)))
    }

    pub fn flush(&mut self) -> Result<(), EventError> {
        self.out.flush().map_err(|source| EventError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// The event files of a directory, oldest first.
pub fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("events.out.tfevents."))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_values() {
        // the CRC catalogue's check value for CRC-32C, and RFC 3720's 32 zero bytes
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn varints_encode_as_protobuf_does() {
        let mut v = Vec::new();
        varint(300, &mut v);
        assert_eq!(v, [0xac, 0x02]);
        v.clear();
        varint(1, &mut v);
        assert_eq!(v, [1]);
    }
}
