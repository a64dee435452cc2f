//! Counts and bytes kept and removed, per rule, for `stats.json` and the printed summary.
//! Bytes are UTF-8 bytes of document text (for JSONL, of the text field, not the whole line).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// What one rule (or duplicate kind) removed: whole documents, and parts (lines or sentences).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleStats {
    pub documents: u64,
    pub bytes: u64,
    pub parts: u64,
    pub part_bytes: u64,
}

/// Totals of one run (or one task of it; tasks merge).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub files: u64,
    pub documents: u64,
    pub bytes: u64,
    pub kept_documents: u64,
    pub kept_bytes: u64,
    pub removed_documents: u64,
    pub removed_bytes: u64,
    /// Lines or sentences cut out of documents that were kept (or emptied).
    pub removed_parts: u64,
    pub removed_part_bytes: u64,
    pub empty_lines: u64,
    pub invalid_utf8_lines: u64,
    pub rules: BTreeMap<String, RuleStats>,
}

impl Stats {
    pub fn merge(&mut self, o: &Stats) {
        self.files += o.files;
        self.documents += o.documents;
        self.bytes += o.bytes;
        self.kept_documents += o.kept_documents;
        self.kept_bytes += o.kept_bytes;
        self.empty_lines += o.empty_lines;
        self.invalid_utf8_lines += o.invalid_utf8_lines;
        self.merge_removals(o);
    }

    /// Adds `o`'s removals (totals and per rule), not its reads or survivors.
    fn merge_removals(&mut self, o: &Stats) {
        self.removed_documents += o.removed_documents;
        self.removed_bytes += o.removed_bytes;
        self.removed_parts += o.removed_parts;
        self.removed_part_bytes += o.removed_part_bytes;
        for (k, v) in &o.rules {
            let r = self.rules.entry(k.clone()).or_default();
            r.documents += v.documents;
            r.bytes += v.bytes;
            r.parts += v.parts;
            r.part_bytes += v.part_bytes;
        }
    }

    /// A pass over this pass's survivors: what both removed, and what the second kept.
    pub fn then(&self, second: &Stats) -> Stats {
        let mut s = self.clone();
        s.kept_documents = second.kept_documents;
        s.kept_bytes = second.kept_bytes;
        s.merge_removals(second);
        s
    }

    /// A document read.
    pub fn read(&mut self, bytes: usize) {
        self.documents += 1;
        self.bytes += bytes as u64;
    }

    /// A document kept with `bytes` of text.
    pub fn kept(&mut self, bytes: usize) {
        self.kept_documents += 1;
        self.kept_bytes += bytes as u64;
    }

    /// A whole document removed by `rule`.
    pub fn removed(&mut self, rule: &str, bytes: usize) {
        self.removed_documents += 1;
        self.removed_bytes += bytes as u64;
        let r = self.rules.entry(rule.to_string()).or_default();
        r.documents += 1;
        r.bytes += bytes as u64;
    }

    /// A line or sentence cut out by `rule`.
    pub fn removed_part(&mut self, rule: &str, bytes: usize) {
        self.removed_parts += 1;
        self.removed_part_bytes += bytes as u64;
        let r = self.rules.entry(rule.to_string()).or_default();
        r.parts += 1;
        r.part_bytes += bytes as u64;
    }

    /// The multi-line summary printed at the end of a run.
    pub fn summary(&self) -> String {
        let pct = |a: u64, b: u64| if b == 0 { 0.0 } else { 100.0 * a as f64 / b as f64 };
        let mb = |b: u64| b as f64 / 1e6;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} files, {} documents ({:.1} MB) in; kept {} documents ({:.1}%), {:.1} MB ({:.1}%)",
            self.files,
            self.documents,
            mb(self.bytes),
            self.kept_documents,
            pct(self.kept_documents, self.documents),
            mb(self.kept_bytes),
            pct(self.kept_bytes, self.bytes)
        );
        let _ = writeln!(
            s,
            "removed {} documents ({:.1} MB) and {} lines/sentences ({:.1} MB)",
            self.removed_documents,
            mb(self.removed_bytes),
            self.removed_parts,
            mb(self.removed_part_bytes)
        );
        let mut rules: Vec<_> = self.rules.iter().collect();
        rules.sort_by_key(|(k, v)| (std::cmp::Reverse(v.bytes + v.part_bytes), (*k).clone()));
        for (rule, r) in rules {
            let _ = writeln!(
                s,
                "  {rule:<32} {:>9} docs {:>9.2} MB  {:>9} parts {:>9.2} MB",
                r.documents,
                mb(r.bytes),
                r.parts,
                mb(r.part_bytes)
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_adds_every_counter() {
        let mut a = Stats::default();
        a.read(10);
        a.removed("gopher_short_doc", 10);
        let mut b = Stats::default();
        b.read(7);
        b.kept(5);
        b.removed_part("c4_no_terminal_punct", 2);
        a.merge(&b);
        assert_eq!(
            (a.documents, a.bytes, a.kept_documents, a.removed_documents),
            (2, 17, 1, 1)
        );
        assert_eq!(a.rules["c4_no_terminal_punct"].part_bytes, 2);
        assert!(a.summary().contains("gopher_short_doc"));
    }
}
