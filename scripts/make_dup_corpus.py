#!/usr/bin/env python3
"""Build a deduplication test/benchmark corpus with planted near-duplicates and ground truth.

    scripts/make_dup_corpus.py --sample data/sample --out DIR --mb N [--seed S] [--format txt|jsonl]
                               [--files F] [--dup-frac 0.2] [--zh-frac 0.08] [--verify]

Writes
    DIR/corpus/part-0000.txt ...   one document per line (txt: units joined by spaces) or
                                   DIR/corpus/part-0000.jsonl ... ({"text": ...}; lines joined by "\\n")
    DIR/truth.jsonl                one record per planted copy:
        {"file": "part-0003.txt", "line": 17,                     # the copy (0-based line)
         "original": {"file": "part-0001.txt", "line": 40},       # the document it was made from
         "edit_rate": 0.1, "jaccard": 0.583, "lang": "en"|"zh", "group": 123}
    DIR/meta.json                  parameters, counts, bytes, and (with --verify) the largest exact
                                   Jaccard between two base (non-planted) documents.

Documents (about N MiB in total, planted copies included):
  * base round 0 ("originals"): kjv.txt cut into consecutive runs of 5-80 verses; the Chinese poems
    shuffled and grouped 5-15 per document. Every source line is used once. Documents of this round
    whose exact 5-gram Jaccard with an earlier one exceeds --base-max-jaccard (the KJV repeats itself:
    Numbers 7, Ezra 2 / Nehemiah 7) are left out.
  * base rounds 1.. (synthetic, only when round 0 is not enough): the verses are cut into chunks of 1-2
    consecutive verses, the chunks permuted, and documents of 8-80 verses taken from the permuted
    stream; the sentences of each document are then shuffled. Chinese: the poems' couplets permuted
    and taken 20-100 per document. Within a round every unit is used once; across rounds two documents
    share only a few random chunks, so their Jaccard stays far below 0.5 (--verify checks it exactly).
  * planted copies: --dup-frac of the base documents get 1-3 copies, each with an edit rate drawn from
    --edit-rates (default 0, 5, 10, 20, 40 %): that fraction of words (English) or characters (Chinese) is replaced, deleted or
    a random word/character inserted. Copies go to random later positions (possibly later files).

Shingles for "jaccard": lowercase; units are runs of letters/digits, every other character separates
them, and each CJK character is a unit of its own; shingles are 5-grams of units (word 5-grams for
English, character 5-grams for Chinese). A document with fewer than 5 units is one shingle.
Deterministic for a given --seed (and sample).
"""

import argparse
import json
import os
import random
import re
import sys
import time

MIB = 1 << 20
CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
CJK_RE = re.compile(f"[{CJK}]")
UNIT_RE = re.compile(rf"[{CJK}]|[^\W_{CJK}]+")
NONALNUM_RE = re.compile(r"[^\w]|_")
SENT_SPLIT_RE = re.compile(r"(?<=[.;:?!])\s+")


# ---------------------------------------------------------------- shingles


def units(text):
    """Lowercase; words are runs of letters/digits (anything else separates them), and every CJK
    character is a unit of its own (so Chinese gets character n-grams, English word n-grams)."""
    return UNIT_RE.findall(text.lower())


def shingles(text, lang=None, n=5):
    """Set of n-gram shingles (tuples of units); a text with fewer than n units is one shingle."""
    toks = units(text)
    if not toks:
        return set()
    if len(toks) < n:
        return {tuple(toks)}
    return {tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)}


def jaccard(a, b):
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


# ---------------------------------------------------------------- sources


def load_sample(sample):
    def lines(name):
        with open(os.path.join(sample, name), encoding="utf-8") as f:
            return [" ".join(l.split()) for l in f if l.strip()]

    verses = lines("kjv.txt")
    poems = lines("tang300.txt") + lines("song100.txt")
    couplets = []
    for p in poems:
        parts = p.split()
        # the first two parts are the title and the author; the rest are couplets
        couplets.extend(parts[2:] if len(parts) > 2 else parts)
    return verses, poems, couplets


def join_lines(units, rng, fmt, per_line=(1, 4)):
    """Join units into one document: jsonl groups 1-4 units per line (newline-separated), txt uses spaces."""
    if fmt == "txt":
        return " ".join(units)
    out, i = [], 0
    while i < len(units):
        k = rng.randint(*per_line)
        out.append(" ".join(units[i : i + k]))
        i += k
    return "\n".join(out)


class BaseDocs:
    """Generates base documents in rounds, as described in the module docstring."""

    def __init__(self, verses, poems, couplets, rng, fmt):
        self.verses, self.poems, self.couplets, self.rng, self.fmt = verses, poems, couplets, rng, fmt

    def en_round0(self):
        i, n = 0, len(self.verses)
        while i < n:
            L = self.rng.randint(5, 80)
            if n - i < 5:
                break
            yield join_lines(self.verses[i : i + L], self.rng, self.fmt)
            i += L

    def zh_round0(self):
        order = list(range(len(self.poems)))
        self.rng.shuffle(order)
        i = 0
        while i < len(order):
            k = self.rng.randint(5, 15)
            if len(order) - i < 3:
                break
            yield join_lines([self.poems[j] for j in order[i : i + k]], self.rng, self.fmt, (1, 1))
            i += k

    def en_synthetic(self):
        rng, n = self.rng, len(self.verses)
        while True:  # one round per iteration
            chunks, i = [], rng.randrange(2)  # random phase: chunk boundaries differ between rounds
            if i:
                chunks.append((0, i))
            while i < n:
                c = rng.randint(1, 2)
                chunks.append((i, min(n, i + c)))
                i += c
            rng.shuffle(chunks)
            ci = 0
            while ci < len(chunks):
                L = rng.randint(8, 80)  # at least 4 independent chunks per document
                vs = []
                while len(vs) < L and ci < len(chunks):
                    a, b = chunks[ci]
                    vs.extend(self.verses[a:b])
                    ci += 1
                if len(vs) < 5:
                    break
                sents = [s for v in vs for s in SENT_SPLIT_RE.split(v) if s]
                rng.shuffle(sents)
                yield join_lines(sents, rng, self.fmt, (1, 5))

    def zh_synthetic(self):
        rng = self.rng
        while True:
            order = list(range(len(self.couplets)))
            rng.shuffle(order)
            i = 0
            while len(order) - i >= 20:
                k = rng.randint(20, 100)
                yield join_lines([self.couplets[j] for j in order[i : i + k]], rng, self.fmt, (2, 4))
                i += k


# ---------------------------------------------------------------- edits


def make_edit(text, lang, rate, rng, en_vocab, zh_vocab):
    """Replace/delete/insert round(rate * n) words (English) or CJK characters (Chinese)."""
    if rate <= 0:
        return text
    if lang == "zh":
        toks = list(text)
        editable = lambda t: bool(CJK_RE.match(t))  # noqa: E731
        vocab, sep = zh_vocab, ""
    else:
        toks = text.replace("\n", " \n ").split(" ")
        editable = lambda t: t not in ("\n", "")  # noqa: E731
        vocab, sep = en_vocab, " "
    n_edit = round(rate * sum(1 for t in toks if editable(t)))
    for _ in range(n_edit):
        pos = [i for i in range(len(toks)) if editable(toks[i])] if len(toks) < 64 else None
        # pick an editable position (rejection sampling on long documents)
        if pos is not None:
            if not pos:
                break
            i = rng.choice(pos)
        else:
            while True:
                i = rng.randrange(len(toks))
                if editable(toks[i]):
                    break
        op = rng.randrange(3)
        if op == 0:
            toks[i] = rng.choice(vocab)
        elif op == 1:
            del toks[i]
        else:
            toks.insert(i, rng.choice(vocab))
    out = sep.join(toks)
    if lang != "zh":
        out = out.replace(" \n ", "\n")
    return out


# ---------------------------------------------------------------- exact pairwise check


def pairwise_jaccard(docs, langs, min_j=0.0, top=5):
    """Exact Jaccard over all pairs that share a shingle.

    Returns (pairs with J > min_j as (j, a, b) with a < b, the `top` largest (j, a, b) overall)."""
    import numpy as np

    ids = {}
    sets = []
    for d, lg in zip(docs, langs):
        s = np.fromiter((ids.setdefault(x, len(ids)) for x in shingles(d, lg)), dtype=np.int64)
        sets.append(np.unique(s))
    n = len(docs)
    sizes = np.array([len(s) for s in sets])
    # inverted index: shingle id -> doc ids
    all_s = np.concatenate(sets) if sets else np.zeros(0, np.int64)
    all_d = np.repeat(np.arange(n), sizes)
    order = np.argsort(all_s, kind="stable")
    s_sorted, d_sorted = all_s[order], all_d[order]
    starts = np.searchsorted(s_sorted, np.arange(len(ids) + 1))
    above, best = [], []
    for i in range(n):
        sl = sets[i]
        if len(sl) == 0:
            continue
        post = np.concatenate([d_sorted[starts[x] : starts[x + 1]] for x in sl])
        post = post[post > i]
        if len(post) == 0:
            continue
        inter = np.bincount(post, minlength=n)
        js = inter / (sizes[i] + sizes - inter).clip(min=1)
        js[: i + 1] = 0
        k = int(np.argmax(js))
        best.append((float(js[k]), i, k))
        for k in np.nonzero(js > min_j)[0]:
            above.append((float(js[k]), i, int(k)))
    best.sort(reverse=True)
    return above, best[:top]


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", default=os.path.join(os.path.dirname(__file__), "..", "data", "sample"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--mb", type=float, required=True, help="target size in MiB, planted copies included")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--format", choices=("txt", "jsonl"), default="txt")
    ap.add_argument("--files", type=int, default=8, help="number of part files (datatrove parallelises by file)")
    ap.add_argument("--dup-frac", type=float, default=0.2, help="fraction of base documents that get copies")
    ap.add_argument("--zh-frac", type=float, default=0.08, help="fraction of base bytes that is Chinese")
    ap.add_argument("--base-max-jaccard", type=float, default=0.3, help="round-0 documents above this are dropped")
    ap.add_argument("--edit-rates", default="0,0.05,0.1,0.2,0.4",
                    help="comma-separated edit rates drawn uniformly per copy (add 0.02 to populate J 0.8-0.9)")
    ap.add_argument("--verify", action="store_true", help="exact max pairwise Jaccard of all base docs (small N only)")
    args = ap.parse_args()
    rates = tuple(float(x) for x in args.edit_rates.split(","))

    t0 = time.time()
    rng = random.Random(args.seed)
    verses, poems, couplets = load_sample(args.sample)
    gen = BaseDocs(verses, poems, couplets, rng, args.format)
    target = args.mb * MIB
    # expected size of the planted copies: dup_frac * 2 copies per document on average
    base_target = target / (1 + 2 * args.dup_frac)

    # round 0, screened for natural near-duplicates (exact Jaccard, small)
    r0 = [(d, "en", 0) for d in gen.en_round0()] + [(d, "zh", 0) for d in gen.zh_round0()]
    above, _ = pairwise_jaccard([d for d, _, _ in r0], [lg for _, lg, _ in r0], min_j=args.base_max_jaccard)
    drop = set()
    for j, a, b in sorted(above, key=lambda x: (x[1], x[2])):
        if a not in drop:
            drop.add(b)
    r0 = [x for i, x in enumerate(r0) if i not in drop]

    en_syn, zh_syn = gen.en_synthetic(), gen.zh_synthetic()
    base, nbytes, zh_bytes = [], 0, 0
    r0_en = [x for x in r0 if x[1] == "en"]
    r0_zh = [x for x in r0 if x[1] == "zh"]
    while nbytes < base_target:
        want_zh = zh_bytes < args.zh_frac * (nbytes + 1)
        if want_zh:
            item = r0_zh.pop(0) if r0_zh else (next(zh_syn), "zh", 1)
        else:
            item = r0_en.pop(0) if r0_en else (next(en_syn), "en", 1)
        b = len(item[0].encode("utf-8")) + 1
        nbytes += b
        if item[1] == "zh":
            zh_bytes += b
        base.append(item)
    rng.shuffle(base)

    # planted copies: key = position in the final order (originals at i, copies in (i, n))
    en_vocab = sorted({w for v in verses for w in NONALNUM_RE.sub(" ", v).split()})
    zh_vocab = sorted({c for p in poems for c in p if CJK_RE.match(c)})
    n_base = len(base)
    picked = sorted(rng.sample(range(n_base), round(args.dup_frac * n_base)))
    entries = [(float(i), 0, i, None) for i in range(n_base)]  # (key, tiebreak, base index, copy info)
    for g in picked:
        for c in range(rng.randint(1, 3)):
            rate = rng.choice(rates)
            text = make_edit(base[g][0], base[g][1], rate, rng, en_vocab, zh_vocab)
            key = rng.uniform(g + 0.001, n_base)
            entries.append((key, 1 + c, g, (text, rate)))
    entries.sort(key=lambda e: (e[0], e[1]))

    # split into files of about equal bytes
    texts = [base[g][0] if info is None else info[0] for _, _, g, info in entries]
    sizes = [len(t.encode("utf-8")) + 1 for t in texts]
    total = sum(sizes)
    ext = args.format
    corpus = os.path.join(args.out, "corpus")
    os.makedirs(corpus, exist_ok=True)
    for f in os.listdir(corpus):
        os.remove(os.path.join(corpus, f))
    loc = []  # (file name, line) of each entry
    fi, acc, line, fh = 0, 0, 0, None
    for t, sz in zip(texts, sizes):
        if fh is None or (acc >= (fi + 1) * total / args.files and fi + 1 < args.files):
            if fh is not None:
                fh.close()
                fi += 1
            name = f"part-{fi:04d}.{ext}"
            fh = open(os.path.join(corpus, name), "w", encoding="utf-8")
            line = 0
        if ext == "txt":
            assert "\n" not in t
            fh.write(t + "\n")
        else:
            fh.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
        loc.append((name, line))
        line += 1
        acc += sz
    fh.close()

    where_base = {}
    for (key, tb, g, info), l in zip(entries, loc):
        if info is None:
            where_base[g] = l
    n_copies = 0
    by_rate = {r: 0 for r in rates}
    with open(os.path.join(args.out, "truth.jsonl"), "w", encoding="utf-8") as tf:
        for (key, tb, g, info), (fname, ln) in zip(entries, loc):
            if info is None:
                continue
            text, rate = info
            lang = base[g][1]
            j = jaccard(shingles(text, lang), shingles(base[g][0], lang))
            of, ol = where_base[g]
            rec = {"file": fname, "line": ln, "original": {"file": of, "line": ol}, "edit_rate": rate,
                   "jaccard": round(j, 4), "lang": lang, "group": g}
            tf.write(json.dumps(rec) + "\n")
            n_copies += 1
            by_rate[rate] += 1

    meta = {
        "seed": args.seed, "format": ext, "files": args.files, "mib_target": args.mb,
        "bytes": total, "docs": len(entries), "base_docs": n_base, "planted_copies": n_copies,
        "originals_with_copies": len(picked), "copies_by_edit_rate": {str(k): v for k, v in by_rate.items()},
        "zh_base_docs": sum(1 for b in base if b[1] == "zh"),
        "round0_docs_used": sum(1 for b in base if b[2] == 0), "round0_dropped_as_near_dup": len(drop),
        "shingles": "5-grams of units: lowercase, runs of letters/digits, each CJK character a unit",
    }
    if args.verify:
        tv = time.time()
        above, top = pairwise_jaccard([b[0] for b in base], [b[1] for b in base], min_j=0.2, top=5)
        meta["verify_base_pairs_above"] = {str(t): sum(1 for j, _, _ in above if j > t) for t in (0.2, 0.3, 0.4, 0.5)}
        meta["verify_base_max_jaccard"] = [
            {"jaccard": round(j, 4), "a_round": base[a][2], "b_round": base[b][2], "lang": base[a][1]} for j, a, b in top
        ]
        print(f"verify: {time.time() - tv:.1f} s", file=sys.stderr)
    with open(os.path.join(args.out, "meta.json"), "w") as mf:
        json.dump(meta, mf, indent=1)
    print(json.dumps(meta), file=sys.stderr)
    print(f"make_dup_corpus: {total / MIB:.1f} MiB, {len(entries)} docs in {time.time() - t0:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
