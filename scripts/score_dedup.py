#!/usr/bin/env python3
"""Score a dedup run's removals against make_dup_corpus.py's truth.jsonl.

    scripts/score_dedup.py --truth DIR/truth.jsonl --removed OUT/removed [--kept OUT/output]
                           [--bands 14 --rows 8] [--json FILE]

--removed: a JSONL file or a directory searched recursively for *.jsonl / *.jsonl.gz: one record per
removed document. Fields read (anything else is ignored; a record without a location is counted and
skipped):
  location     "file" + "line" (0-based line of the document in its input file), at top level or in
               "metadata"; else "id" of the form "<file>/<line>" or "<file>:<line>" (datatrove's readers
               use "<file>/<line>"). Files are compared by base name without extension, so
               "part-0003.txt", "corpus/part-0003.jsonl" and "/abs/part-0003.txt" are the same file.
  link (opt.)  "duplicate_of": {"file", "line"} or an id string as above: the kept document it matched;
               or a cluster id in "cluster", "cluster_id" or metadata "minhash_cluster_id" (datatrove
               with save_cluster_id). Survivors' cluster ids come from --kept (records as above).
Without any link the scoring is "loose": a planted copy counts as found when it or its original was
removed. With links it is "strict": found when the copy and its original ended up linked (same cluster,
or joined by duplicate_of edges, transitively).

Reports, per edit rate and per exact-Jaccard bin: copies, recall (strict when links exist), loose recall,
and the recall that LSH with --bands x --rows would give each pair on its own (1-(1-J^r)^b), the
reference for a MinHash implementation of those parameters. Precision: a removal is correct when the
removed document belongs to a planted group (an original and its copies) and its link, if any, points
into the same group. Also: groups left with no member at all (over-removal).
"""

import argparse
import glob
import gzip
import json
import os
import re
import sys
from collections import defaultdict

JBINS = ((1.0, 1.01), (0.9, 1.0), (0.8, 0.9), (0.7, 0.8), (0.6, 0.7), (0.5, 0.6), (0.3, 0.5), (0.0, 0.3))
ID_RE = re.compile(r"^(.*)[/:](\d+)$")


def norm_file(f):
    b = os.path.basename(str(f))
    for ext in (".gz", ".zst", ".jsonl", ".json", ".txt"):
        if b.endswith(ext):
            b = b[: -len(ext)]
    return b


def loc_of(obj):
    """(file, line) from a dict with file/line, or from an id string; None if neither."""
    if isinstance(obj, str):
        m = ID_RE.match(obj)
        return (norm_file(m.group(1)), int(m.group(2))) if m else None
    if not isinstance(obj, dict):
        return None
    for d in (obj, obj.get("metadata") or {}):
        if isinstance(d, dict) and "file" in d and "line" in d:
            try:
                return norm_file(d["file"]), int(d["line"])
            except (TypeError, ValueError):
                return None
    if "id" in obj:
        return loc_of(str(obj["id"]))
    return None


def link_of(rec):
    md = rec.get("metadata") if isinstance(rec.get("metadata"), dict) else {}
    for d in (rec, md):
        if "duplicate_of" in d and d["duplicate_of"] is not None:
            return "dup", loc_of(d["duplicate_of"])
    for d in (rec, md):
        for k in ("cluster", "cluster_id", "minhash_cluster_id"):
            if k in d and d[k] is not None and d[k] != -1:
                return "cluster", d[k]
    return None, None


def read_jsonl(path):
    files = [path] if os.path.isfile(path) else sorted(
        glob.glob(os.path.join(path, "**", "*.jsonl"), recursive=True)
        + glob.glob(os.path.join(path, "**", "*.jsonl.gz"), recursive=True)
    )
    for f in files:
        op = gzip.open if f.endswith(".gz") else open
        with op(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if line:
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        continue


class UF:
    def __init__(self):
        self.p = {}

    def find(self, x):
        p = self.p
        p.setdefault(x, x)
        while p[x] != x:
            p[x] = p[p[x]]
            x = p[x]
        return x

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.p[ra] = rb


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--truth", required=True)
    ap.add_argument("--removed", required=True)
    ap.add_argument("--kept", help="survivors (for cluster ids), optional")
    ap.add_argument("--bands", type=int, default=14)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--json", help="also write the numbers as JSON here")
    ap.add_argument("--label", default="", help="name shown in the table title")
    args = ap.parse_args()

    truth = list(read_jsonl(args.truth))
    group_of = {}
    for t in truth:
        c, o = (norm_file(t["file"]), t["line"]), (norm_file(t["original"]["file"]), t["original"]["line"])
        group_of[c] = group_of[o] = t["group"]
    members = defaultdict(set)
    for loc, g in group_of.items():
        members[g].add(loc)

    uf = UF()
    removed, links, unlocated = {}, 0, 0
    cluster_members = defaultdict(set)
    for rec in read_jsonl(args.removed):
        loc = loc_of(rec)
        if loc is None:
            unlocated += 1
            continue
        kind, tgt = link_of(rec)
        removed[loc] = (kind, tgt)
        if kind == "dup" and tgt is not None:
            uf.union(loc, tgt)
            links += 1
        elif kind == "cluster":
            uf.union(loc, ("cluster", tgt))
            cluster_members[tgt].add(loc)
            links += 1
    kept_clusters = 0
    if args.kept:
        for rec in read_jsonl(args.kept):
            kind, tgt = link_of(rec)
            if kind == "cluster":
                loc = loc_of(rec)
                if loc is not None:
                    uf.union(loc, ("cluster", tgt))
                    cluster_members[tgt].add(loc)
                    kept_clusters += 1
    uses_clusters = any(k == "cluster" for k, _ in removed.values())
    strict = links > 0 and (not uses_clusters or kept_clusters > 0)

    def lsh(j):
        return 1 - (1 - j**args.rows) ** args.bands

    rows = {}

    def add(key, found, loose, j):
        r = rows.setdefault(key, {"copies": 0, "found": 0, "found_loose": 0, "lsh_expected": 0.0, "jaccard_sum": 0.0})
        r["copies"] += 1
        r["found"] += found
        r["found_loose"] += loose
        r["lsh_expected"] += lsh(j)
        r["jaccard_sum"] += j

    for t in truth:
        c, o = (norm_file(t["file"]), t["line"]), (norm_file(t["original"]["file"]), t["original"]["line"])
        loose = int(c in removed or o in removed)
        found = int(uf.find(c) == uf.find(o)) if strict else loose
        j = float(t["jaccard"])
        add(("rate", float(t["edit_rate"])), found, loose, j)
        for lo, hi in JBINS:
            if lo <= j < hi:
                add(("jaccard", f"[{lo:.1f},{min(hi, 1.0):.1f}{']' if hi > 1 else ')'}"), found, loose, j)
                break
        add(("all", "all"), found, loose, j)

    # precision
    tp = fp = 0
    for loc, (kind, tgt) in removed.items():
        g = group_of.get(loc)
        ok = g is not None
        if ok and kind == "dup" and tgt is not None:
            ok = group_of.get(tgt) == g
        elif ok and kind == "cluster":
            ok = any(group_of.get(m) == g for m in cluster_members[tgt] if m != loc) or not strict
        tp += ok
        fp += not ok
    over = sum(1 for g, ms in members.items() if all(m in removed for m in ms))

    def fmt_row(name, r):
        n = r["copies"]
        return (f"| {name} | {n} | {r['jaccard_sum'] / n:.3f} | {r['found'] / n:.3f} | {r['found_loose'] / n:.3f} "
                f"| {r['lsh_expected'] / n:.3f} |")

    title = f"dedup recall vs truth{(' — ' + args.label) if args.label else ''} ({'strict' if strict else 'loose'} linking)"
    print(f"**{title}**\n")
    print("| edit rate / Jaccard bin | copies | mean J | recall | loose recall | LSH %dx%d expected |" % (args.bands, args.rows))
    print("|---|---|---|---|---|---|")
    for key in sorted((k for k in rows if k[0] == "rate"), key=lambda k: k[1]):
        print(fmt_row(f"edit {key[1] * 100:.0f}%", rows[key]))
    for lo, hi in JBINS:
        key = ("jaccard", f"[{lo:.1f},{min(hi, 1.0):.1f}{']' if hi > 1 else ')'}")
        if key in rows:
            print(fmt_row(f"J {key[1]}", rows[key]))
    print(fmt_row("all copies", rows[("all", "all")]))
    prec = tp / (tp + fp) if tp + fp else 1.0
    print(f"\nremoved {len(removed)} (unlocated records {unlocated}); precision {prec:.4f} ({fp} removals outside "
          f"a planted group or linked to another group); groups removed entirely: {over}")

    if args.json:
        out = {
            "strict": strict, "removed": len(removed), "unlocated": unlocated, "precision": round(prec, 5),
            "false_removals": fp, "groups_fully_removed": over,
            "by_edit_rate": {f"{k[1]}": {"copies": r["copies"], "recall": round(r["found"] / r["copies"], 4),
                                          "recall_loose": round(r["found_loose"] / r["copies"], 4),
                                          "lsh_expected": round(r["lsh_expected"] / r["copies"], 4),
                                          "mean_jaccard": round(r["jaccard_sum"] / r["copies"], 4)}
                             for k, r in rows.items() if k[0] == "rate"},
            "by_jaccard": {k[1]: {"copies": r["copies"], "recall": round(r["found"] / r["copies"], 4),
                                  "lsh_expected": round(r["lsh_expected"] / r["copies"], 4)}
                           for k, r in rows.items() if k[0] == "jaccard"},
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
