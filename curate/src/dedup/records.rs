//! The fixed-size little-endian records the dedup stages pass through the work directory:
//! sorted runs of `(key, item)` per band, the duplicate edges each band yields, and the
//! removals per input file. Sorted runs and a k-way merge keep memory bounded by one
//! buffer, whatever the corpus size (external sorting, Knuth vol. 3 §5.4).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::{input_err, output_err, Result};

/// A document (`sent == 0` at document level) or a sentence of one, in corpus order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ItemId {
    pub file: u32,
    pub line: u32,
    pub sent: u32,
}

impl ItemId {
    const BYTES: usize = 12;

    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.file.to_le_bytes());
        out.extend_from_slice(&self.line.to_le_bytes());
        out.extend_from_slice(&self.sent.to_le_bytes());
    }

    fn get(b: &[u8]) -> Self {
        let u = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        ItemId {
            file: u(0),
            line: u(4),
            sent: u(8),
        }
    }
}

/// Reads fixed-size records from a file.
struct RecordReader {
    r: BufReader<File>,
    path: PathBuf,
    buf: Vec<u8>,
}

impl RecordReader {
    fn open(path: &Path, size: usize) -> Result<Self> {
        let f = File::open(path).map_err(|e| input_err(path, e))?;
        Ok(RecordReader {
            r: BufReader::with_capacity(1 << 16, f),
            path: path.to_path_buf(),
            buf: vec![0; size],
        })
    }

    /// The next record, or None at a clean end; a partial record is an error.
    fn next(&mut self) -> Result<Option<&[u8]>> {
        let mut got = 0;
        while got < self.buf.len() {
            match self.r.read(&mut self.buf[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => {
                    return Err(input_err(
                        &self.path,
                        "truncated record; HINT: rerun the stage that wrote it",
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(input_err(&self.path, e)),
            }
        }
        Ok(Some(&self.buf))
    }
}

/// Writes `bytes` to `path` through a temporary name.
fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::corpus::write_atomic(path, bytes)
}

/// Sorts `(key, item)` pairs and writes them as one run file.
pub fn write_run(path: &Path, records: &mut [(u128, ItemId)]) -> Result<()> {
    records.sort_unstable();
    let mut bytes = Vec::with_capacity(records.len() * 28);
    for (key, id) in records.iter() {
        bytes.extend_from_slice(&key.to_le_bytes());
        id.put(&mut bytes);
    }
    write_file(path, &bytes)
}

/// The run files under `dir` (`*.run`), sorted by name.
pub fn run_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    match fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(input_err(dir, e)),
        Ok(entries) => {
            for e in entries {
                let p = e.map_err(|e| input_err(dir, e))?.path();
                if p.extension().is_some_and(|x| x == "run") {
                    out.push(p);
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Creates `dir` and removes the runs an earlier attempt of `task` (any count) left there.
pub fn clear_task_runs(dir: &Path, task: crate::Task) -> Result<()> {
    create_dir(dir)?;
    let prefix = format!("t{:05}of", task.index);
    for old in run_files(dir)? {
        if old
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        {
            fs::remove_file(&old).map_err(|e| output_err(&old, e))?;
        }
    }
    Ok(())
}

/// Merges sorted runs and calls `group` once per key shared by two or more items, with the
/// items in order.
pub fn merge_runs(runs: &[PathBuf], mut group: impl FnMut(&[ItemId]) -> Result<()>) -> Result<()> {
    merge_runs_keyed(runs, |_, items| group(items))
}

/// As [`merge_runs`], with the key.
pub fn merge_runs_keyed(runs: &[PathBuf], mut group: impl FnMut(u128, &[ItemId]) -> Result<()>) -> Result<()> {
    let mut readers = runs
        .iter()
        .map(|p| RecordReader::open(p, 28))
        .collect::<Result<Vec<_>>>()?;
    let mut heap = BinaryHeap::new();
    let decode = |b: &[u8]| {
        (
            u128::from_le_bytes(b[..16].try_into().expect("16 bytes")),
            ItemId::get(&b[16..]),
        )
    };
    for (i, r) in readers.iter_mut().enumerate() {
        if let Some(b) = r.next()? {
            let (k, id) = decode(b);
            heap.push(Reverse((k, id, i)));
        }
    }
    let mut current: Option<u128> = None;
    let mut items: Vec<ItemId> = Vec::new();
    while let Some(Reverse((k, id, i))) = heap.pop() {
        if current != Some(k) {
            if let (Some(key), true) = (current, items.len() > 1) {
                group(key, &items)?;
            }
            items.clear();
            current = Some(k);
        }
        items.push(id);
        if let Some(b) = readers[i].next()? {
            let (k2, id2) = decode(b);
            heap.push(Reverse((k2, id2, i)));
        }
    }
    if let (Some(key), true) = (current, items.len() > 1) {
        group(key, &items)?;
    }
    Ok(())
}

/// Appends edges `(item, representative)` to a buffered file.
pub struct EdgeWriter {
    out: crate::corpus::AtomicFile,
    buf: Vec<u8>,
}

impl EdgeWriter {
    pub fn create(path: &Path) -> Result<Self> {
        Ok(EdgeWriter {
            out: crate::corpus::AtomicFile::create(path)?,
            buf: Vec::new(),
        })
    }

    pub fn push(&mut self, item: ItemId, rep: ItemId) -> Result<()> {
        item.put(&mut self.buf);
        rep.put(&mut self.buf);
        if self.buf.len() >= 1 << 20 {
            self.out.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<()> {
        self.out.write_all(&self.buf)?;
        self.out.finish()
    }
}

/// Calls `f(item, rep)` for every edge in `path`.
pub fn read_edges(path: &Path, mut f: impl FnMut(ItemId, ItemId)) -> Result<()> {
    let mut r = RecordReader::open(path, 2 * ItemId::BYTES)?;
    while let Some(b) = r.next()? {
        f(ItemId::get(&b[..12]), ItemId::get(&b[12..]));
    }
    Ok(())
}

/// A removed item, the kept representative of its cluster, and whether it matched exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Removal {
    pub item: ItemId,
    pub rep: ItemId,
    pub exact: bool,
}

/// Writes one file's removals (sorted by item).
pub fn write_removals(path: &Path, removals: &[Removal]) -> Result<()> {
    let mut bytes = Vec::with_capacity(removals.len() * 25);
    for r in removals {
        r.item.put(&mut bytes);
        r.rep.put(&mut bytes);
        bytes.push(r.exact as u8);
    }
    write_file(path, &bytes)
}

/// Reads one file's removals; a missing file means none.
pub fn read_removals(path: &Path) -> Result<Vec<Removal>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut r = RecordReader::open(path, 25)?;
    let mut out = Vec::new();
    while let Some(b) = r.next()? {
        out.push(Removal {
            item: ItemId::get(&b[..12]),
            rep: ItemId::get(&b[12..24]),
            exact: b[24] == 1,
        });
    }
    Ok(out)
}

/// Creates a directory, naming it on failure.
pub fn create_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| output_err(dir, e))
}

/// Union-find over items whose root is always the smallest item of its set (the first in
/// corpus order), so the representative does not depend on the order edges arrive in.
#[derive(Default)]
pub struct Clusters {
    parent: std::collections::HashMap<ItemId, ItemId>,
}

impl Clusters {
    pub fn find(&mut self, x: ItemId) -> ItemId {
        let mut root = x;
        while let Some(&p) = self.parent.get(&root) {
            if p == root {
                break;
            }
            root = p;
        }
        let mut cur = x;
        while cur != root {
            let next = self.parent.insert(cur, root).unwrap_or(root);
            cur = next;
        }
        root
    }

    pub fn union(&mut self, a: ItemId, b: ItemId) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
            self.parent.insert(hi, lo);
            self.parent.entry(lo).or_insert(lo);
        }
    }

    /// Every non-root item with its root.
    pub fn members(&mut self) -> Vec<(ItemId, ItemId)> {
        let keys: Vec<ItemId> = self.parent.keys().copied().collect();
        let mut out: Vec<(ItemId, ItemId)> = keys
            .into_iter()
            .map(|k| (k, self.find(k)))
            .filter(|(k, r)| k != r)
            .collect();
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(line: u32) -> ItemId {
        ItemId { file: 0, line, sent: 0 }
    }

    #[test]
    fn runs_merge_into_groups_in_order() {
        let dir = std::env::temp_dir().join(format!("curate-records-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        write_run(&dir.join("a.run"), &mut [(7, id(5)), (3, id(1)), (7, id(2))]).unwrap();
        write_run(&dir.join("b.run"), &mut [(7, id(0)), (9, id(4)), (3, id(3))]).unwrap();
        let mut groups = Vec::new();
        merge_runs(&run_files(&dir).unwrap(), |g| {
            groups.push(g.to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(groups, vec![vec![id(1), id(3)], vec![id(0), id(2), id(5)]]);
        fs::write(dir.join("c.run"), [0u8; 30]).unwrap();
        assert!(merge_runs(&run_files(&dir).unwrap(), |_| Ok(()))
            .unwrap_err()
            .to_string()
            .contains("truncated"));
    }

    #[test]
    fn clusters_keep_the_first_item() {
        let mut c = Clusters::default();
        c.union(id(9), id(4));
        c.union(id(7), id(8));
        c.union(id(8), id(4));
        c.union(id(2), id(20));
        let m = c.members();
        assert_eq!(m, vec![(id(7), id(4)), (id(8), id(4)), (id(9), id(4)), (id(20), id(2))]);
    }
}
