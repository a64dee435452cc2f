#!/usr/bin/env python3
"""Benchmark peer: datatrove 0.10.1 MinHash dedup (or its quality filters) on a corpus directory.

    scripts/bench_datatrove_dedup.py --input DIR --out DIR --workers N [--filters] [--tokenizer spacy|simple]

--input: a directory of part-*.txt (one document per line) or part-*.jsonl ({"text": ...}) files, or a
         make_dup_corpus.py output directory (its corpus/ is used). Datatrove shards by file, so the
         corpus should have at least N files.
--out:   wiped, then: output/ (survivors, jsonl), removed/ (dropped documents, jsonl, each with
         metadata.minhash_cluster_id and id "<file>/<line>"), sigs/ buckets/ clusters/ logs/.

Dedup (FineWeb's recipe): MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8), 64-bit xxhash.
  1 MinhashDedupSignature  tasks=N  workers=N
  2 MinhashDedupBuckets    tasks=14 workers=min(N,14)  (datatrove requires tasks % num_buckets == 0)
  3 MinhashDedupCluster    tasks=1  (single process by design)
  4 MinhashDedupFilter     tasks=N  workers=N  (+ JsonlWriter for survivors and for removed docs)
--filters: one stage, tasks=N workers=N: GopherRepetitionFilter, GopherQualityFilter, C4QualityFilter,
  FineWebQualityFilter (all with datatrove's defaults), JsonlWriter for survivors.

Prints one JSON line on stdout:
  {"tool": "datatrove", "stage": "dedup"|"filter", "docs", "seconds", "docs_per_s", "removed",
   "peak_rss_mb", "peak_pss_mb", "max_proc_rss_mb", "workers", "tokenizer", "stages": {...}, ...}
Memory: a thread samples /proc for this process and all its descendants (the forkserver pool's workers
are grandchildren, which neither /usr/bin/time -v nor getrusage(RUSAGE_CHILDREN) can see); see
scripts/peak_mem.py for the three figures. "seconds" is the wall time of all stages, reading and writing
included, interpreter start-up and imports excluded.

Tokenizer: datatrove 0.10.1 assigns English to spaCy (spacy.blank("en"), no model download; NLTK/punkt
is not used any more). --tokenizer spacy (default) is that stock setup; it leaves CJK text unsegmented,
so a Chinese clause between punctuation marks is one "word". --tokenizer simple uses a regex tokenizer
(runs of letters/digits; every CJK character is its own token), i.e. character 5-grams on Chinese, as
the baichuan side shingles. Without spaCy installed, simple is used and said so in the JSON.

Environment fixes (both reported in the JSON): xxhash>=4 refuses str, which datatrove 0.10.1 passes, so
the signature step gets a hash function that encodes UTF-8 first (the value xxhash<4 computed); and
`import torch` is blocked unless --allow-torch (see block_torch). Needs: datatrove, spacy, orjson, xxhash.
"""

import argparse
import glob
import json
import os
import re
import shutil
import sys
import tempfile
import time


def block_torch():
    """spaCy imports thinc, which imports torch when it is installed (this venv has it for the trainer's
    oracles): +460 MB RSS in every worker that a plain `pip install datatrove spacy` would not have.
    A stub package on PYTHONPATH (inherited by the forkserver and its workers) makes `import torch`
    fail, which thinc handles. --allow-torch turns this off."""
    d = tempfile.mkdtemp(prefix="bench-notorch-")
    os.makedirs(os.path.join(d, "torch"))
    with open(os.path.join(d, "torch", "__init__.py"), "w") as f:
        f.write('raise ImportError("torch is blocked by bench_datatrove_dedup.py")\n')
    sys.path.insert(0, d)
    os.environ["PYTHONPATH"] = d + os.pathsep + os.environ.get("PYTHONPATH", "")
    return d


if "--allow-torch" not in sys.argv:
    _NOTORCH = block_torch()

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference"))
from peak_mem import TreeMemSampler  # noqa: E402

from datatrove.pipeline.readers.base import BaseDiskReader  # noqa: E402
from datatrove.utils.word_tokenizers import WordTokenizer  # noqa: E402

CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
WORD_RE = re.compile(rf"[{CJK}]|[^\W{CJK}]+")
SENT_RE = re.compile(r"[^.!?。！？]+[.!?。！？]*")


class SimpleTokenizer(WordTokenizer):
    """Words are runs of letters/digits; each CJK character is a word. Sentences end at . ! ? 。！？"""

    def __init__(self):
        super().__init__("simple")

    def word_tokenize(self, text):
        return WORD_RE.findall(text)

    def sent_tokenize(self, text):
        return [text[a:b] for a, b in self.span_tokenize(text)]

    def span_tokenize(self, text):
        return [(m.start(), m.end()) for m in SENT_RE.finditer(text) if m.group().strip()]


def xxh64_utf8(text):
    """datatrove 0.10.1 hashes each shingle with xxhash.xxh64_intdigest(str); xxhash>=4 refuses str
    ("Strings must be encoded before hashing"), xxhash<4 hashed its UTF-8 bytes. Same value here."""
    import xxhash

    return xxhash.xxh64_intdigest(text.encode("utf-8") if isinstance(text, str) else text)


def xxhash_takes_str():
    import xxhash

    try:
        xxhash.xxh64_intdigest("a")
        return True
    except TypeError:
        return False


class TxtLinesReader(BaseDiskReader):
    """One document per line; id "<file>/<line>" like JsonlReader's default."""

    name = "📄 txt lines"

    def read_file(self, filepath):
        with self.data_folder.open(filepath, "r", encoding="utf-8") as f:
            for li, line in enumerate(f):
                with self.track_time():
                    doc = self.get_document_from_dict({"text": line.rstrip("\n")}, filepath, li)
                if doc:
                    yield doc


def make_reader(input_dir, fmt):
    from datatrove.pipeline.readers import JsonlReader

    if fmt == "txt":
        return TxtLinesReader(input_dir, glob_pattern="*.txt", add_file_path=False)
    return JsonlReader(input_dir, glob_pattern="*.jsonl", add_file_path=False)


def count_lines(pattern):
    n = 0
    for f in glob.glob(pattern, recursive=True):
        with open(f, "rb") as fh:
            n += sum(1 for _ in fh)
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--filters", action="store_true", help="quality filters instead of MinHash dedup")
    ap.add_argument("--tokenizer", choices=("spacy", "simple", "baichuan"), default="spacy")
    ap.add_argument("--allow-torch", action="store_true", help="let spaCy/thinc import torch (+~460 MB per worker)")
    args = ap.parse_args()

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    inp = args.input
    if os.path.isdir(os.path.join(inp, "corpus")):
        inp = os.path.join(inp, "corpus")
    inp = os.path.abspath(inp)
    txt = sorted(glob.glob(os.path.join(inp, "*.txt")))
    jsl = sorted(glob.glob(os.path.join(inp, "*.jsonl")))
    fmt = "txt" if txt else "jsonl"
    files = txt or jsl
    if not files:
        sys.exit(f"no *.txt or *.jsonl in {inp}")
    in_mb = sum(os.path.getsize(f) for f in files) / (1 << 20)
    docs = sum(count_lines(f) for f in files)  # one document per line in both formats

    tok_name = args.tokenizer
    if tok_name == "spacy":
        try:
            import spacy  # noqa: F401

            language = "eng"  # datatrove's assignment: SpaCyTokenizer("en")
            tok_name = "spacy-blank-en (datatrove default for eng)"
        except ImportError:
            tok_name = "simple (spaCy not installed)"
            language = SimpleTokenizer()
    elif tok_name == "baichuan":
        # The word and sentence splitters of baichuan's filters, as scripts/reference/oracle_filters.py
        # re-implements them: the same decisions as `baichuan filter` on English text.
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference"))
        from oracle_filters import SplitterTokenizer  # noqa: PLC0415

        tok_name = "baichuan splitters (scripts/reference/oracle_filters.py)"
        language = SplitterTokenizer()
    else:
        tok_name = "simple (regex words, CJK chars as words)"
        language = SimpleTokenizer()

    out = os.path.abspath(args.out)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    N = args.workers
    stages = {}
    hash_note = "xxh64 of the shingle's UTF-8 (datatrove default)"

    def run(name, pipeline, tasks, workers):
        ex = LocalPipelineExecutor(
            pipeline=pipeline, tasks=tasks, workers=workers, logging_dir=f"{out}/logs/{name}", skip_completed=False
        )
        t = time.time()
        stats = ex.run()
        stages[name] = round(time.time() - t, 3)
        return stats

    sampler = TreeMemSampler(os.getpid())
    with sampler:
        if args.filters:
            stage = "filter"
            run(
                "filter",
                [
                    make_reader(inp, fmt),
                    GopherRepetitionFilter(language=language),
                    GopherQualityFilter(language=language),
                    C4QualityFilter(language=language),
                    FineWebQualityFilter(language=language),
                    JsonlWriter(f"{out}/output", compression=None),
                ],
                N,
                N,
            )
        else:
            stage = "dedup"
            cfg = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8, hash_config=HashConfig(precision=64))
            sig = MinhashDedupSignature(f"{out}/sigs", config=cfg, language=language)
            if not xxhash_takes_str():
                sig._hash_func = xxh64_utf8
                hash_note = "xxh64 of the shingle's UTF-8 (patched in: installed xxhash>=4 refuses str)"
            run("1_signature", [make_reader(inp, fmt), sig], N, N)
            run("2_buckets", [MinhashDedupBuckets(f"{out}/sigs", f"{out}/buckets", config=cfg)], cfg.num_buckets, min(N, cfg.num_buckets))
            run("3_cluster", [MinhashDedupCluster(f"{out}/buckets", f"{out}/clusters", config=cfg, save_cluster_id=True)], 1, 1)
            run(
                "4_filter",
                [
                    make_reader(inp, fmt),
                    MinhashDedupFilter(
                        f"{out}/clusters",
                        exclusion_writer=JsonlWriter(f"{out}/removed", compression=None),
                        load_cluster_ids=True,
                    ),
                    JsonlWriter(f"{out}/output", compression=None),
                ],
                N,
                N,
            )
    secs = sampler.seconds
    kept = count_lines(f"{out}/output/**/*.jsonl")
    removed = docs - kept
    if not args.filters and removed != count_lines(f"{out}/removed/**/*.jsonl"):
        print("warning: kept + removed != input documents", file=sys.stderr)
    if args.filters:
        # per-filter drop counts from the merged stats
        per_filter = {}
        try:
            with open(f"{out}/logs/filter/stats.json") as f:
                for st in json.load(f):
                    for k, v in st.get("stats", {}).items():
                        if k == "dropped" or k.startswith("dropped_"):
                            n = v.get("total", v) if isinstance(v, dict) else v
                            name = re.sub(r"[^\x20-\x7e]", "", st["name"].split(":")[-1]).strip()
                            per_filter.setdefault(name, {})[k] = n
        except (OSError, ValueError, KeyError, TypeError):
            pass
    res = {
        "tool": "datatrove",
        "stage": stage,
        "docs": docs,
        "seconds": round(secs, 3),
        "docs_per_s": round(docs / secs, 1),
        "mb": round(in_mb, 2),
        "mb_per_s": round(in_mb / secs, 3),
        "removed": removed,
        **sampler.result(),
        "workers": N,
        "files": len(files),
        "format": fmt,
        "tokenizer": tok_name,
        "stages": stages,
        "torch_import_blocked": not args.allow_torch,
    }
    if not args.filters:
        res["shingle_hash"] = hash_note
    if args.filters:
        res["dropped_by"] = per_filter
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
