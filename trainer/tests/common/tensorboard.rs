//! A reader of TensorBoard event files for the tests: it decodes what the trainer's writer
//! (`metrics::tensorboard`) encodes, checking both CRCs of every record, so a test can read a
//! run's curves back without TensorBoard installed.

use std::path::Path;

use baichuan_trainer::metrics::tensorboard::masked_crc;

/// One decoded scalar.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    pub step: i64,
    pub tag: String,
    pub value: f32,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.bytes.get(self.at)?;
            self.at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    /// The next field: (number, wire type, payload bytes or the varint as bytes).
    fn field(&mut self) -> Option<(u64, u64, Vec<u8>)> {
        let key = self.varint()?;
        let (num, wire) = (key >> 3, key & 7);
        let body = match wire {
            0 => self.varint()?.to_le_bytes().to_vec(),
            1 => self.take(8)?.to_vec(),
            2 => {
                let n = self.varint()? as usize;
                self.take(n)?.to_vec()
            }
            5 => self.take(4)?.to_vec(),
            _ => return None,
        };
        Some((num, wire, body))
    }
    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }
}

fn decode_event(payload: &[u8], out: &mut Vec<Scalar>) -> Option<()> {
    let mut c = Cursor { bytes: payload, at: 0 };
    let mut step = 0i64;
    let mut summaries = Vec::new();
    while !c.done() {
        let (num, _, body) = c.field()?;
        match num {
            2 => step = u64::from_le_bytes(body.try_into().ok()?) as i64,
            5 => summaries.push(body),
            _ => {}
        }
    }
    for s in summaries {
        let mut sc = Cursor { bytes: &s, at: 0 };
        while !sc.done() {
            let (num, _, value) = sc.field()?;
            if num != 1 {
                continue;
            }
            let mut vc = Cursor { bytes: &value, at: 0 };
            let (mut tag, mut v) = (String::new(), None);
            while !vc.done() {
                let (n, wire, body) = vc.field()?;
                match (n, wire) {
                    (1, 2) => tag = String::from_utf8(body).ok()?,
                    (2, 5) => v = Some(f32::from_le_bytes(body.try_into().ok()?)),
                    _ => {}
                }
            }
            if let Some(value) = v {
                out.push(Scalar { step, tag, value });
            }
        }
    }
    Some(())
}

/// Every scalar of an event file, checking each record's CRCs. A torn last record (a run
/// killed mid-write) ends the read silently, as TensorBoard does; damage before it is an error.
pub fn read_scalars(path: &Path) -> Result<Vec<Scalar>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let damaged = |offset: usize, what: &str| format!("{}: record at byte {offset}: {what}; damaged", path.display());
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if bytes.len() - at < 12 {
            break; // torn header
        }
        let len_bytes = &bytes[at..at + 8];
        let crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().expect("4 bytes"));
        if masked_crc(len_bytes) != crc {
            return Err(damaged(at, "length CRC mismatch"));
        }
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes")) as usize;
        let end = at + 12 + len + 4;
        if end > bytes.len() {
            break; // torn payload
        }
        let payload = &bytes[at + 12..at + 12 + len];
        let crc = u32::from_le_bytes(bytes[end - 4..end].try_into().expect("4 bytes"));
        if masked_crc(payload) != crc {
            return Err(damaged(at, "payload CRC mismatch"));
        }
        decode_event(payload, &mut out).ok_or_else(|| damaged(at, "not an Event protocol buffer"))?;
        at = end;
    }
    Ok(out)
}
