#!/usr/bin/env bash
# Data-curation throughput and memory: `baichuan-curate dedup` / `filter` (the libtorch-free build of
# `baichuan dedup` / `filter`) against datatrove 0.10.1 (MinHash dedup with FineWeb's 14 bands x 8 rows
# on word 5-grams; Gopher repetition + Gopher quality + C4 + FineWeb quality filters) on the same corpus
# with the same number of workers, plus the recall and precision of each tool's dedup against the
# planted near-duplicates.
#   scripts/bench_curate.sh [MB...]          (default: 100 400; `scripts/bench_curate.sh 5` is a smoke test)
# Needs target/release/baichuan-curate and .venv with datatrove, orjson, xxhash, numpy (spacy for the
# stock datatrove tokenizer): .venv/bin/pip install datatrove==0.10.1 spacy orjson xxhash.
# Environment: JOBS (default nproc) workers for both tools; BENCH_FORMAT jsonl|txt (default jsonl: lines
# inside documents, which the line-based filters need); BENCH_SEED (1); BENCH_FILES (default: a multiple
# of JOBS, at least 8: datatrove parallelises by file); DT_TOKENIZER spacy|simple for datatrove's dedup
# (spacy: its stock English tokenizer; simple: regex words + CJK characters, baichuan's shingling);
# DT_FILTER_TOKENIZER for datatrove's filters (default baichuan: the word and sentence splitters of
# baichuan's rules from scripts/reference/oracle_filters.py, so both tools make the same decisions on
# English; spacy is datatrove's stock); baichuan's filter runs with boilerplate counting off (datatrove
# has none); ONLY=datatrove or ONLY=baichuan runs one side; BENCH_DIR work folder (default
# /tmp/baichuan-bench-curate); BENCH_NOTES the notes file to append to; BC_MEMORY_MB the run buffer of
# baichuan (--memory-mb, default 256; a buffer smaller than the corpus's records shows memory staying
# flat); BAICHUAN_BIN another binary.
# Corpora are built once by scripts/make_dup_corpus.py and cached under .cache/bench_curate/.
# Measured: wall seconds of the whole command (datatrove: all four stages in-process, imports excluded);
# peak memory: baichuan under /usr/bin/time -v ("Maximum resident set size"; one process), or, where
# /usr/bin/time is missing, scripts/peak_mem.py (getrusage(RUSAGE_CHILDREN) and /proc sampling);
# datatrove: the peak of the summed RSS (and PSS) of its process tree, sampled from /proc (its pool
# workers are grandchildren that /usr/bin/time cannot see). Prints a markdown table and appends it, with
# the raw JSON, the recall tables and the machine, to notes/bench_curate-DATE.md.
# Duration on 2 cores: datatrove's filters run at about 0.2 MB/s, so 100 MB takes 9 minutes there;
# with its stock spaCy tokenizer its dedup is about 3x slower than with DT_TOKENIZER=simple.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SIZES=("$@")
[ ${#SIZES[@]} -eq 0 ] && SIZES=(100 400)
JOBS="${JOBS:-$(nproc)}"
FORMAT="${BENCH_FORMAT:-jsonl}"
SEED="${BENCH_SEED:-1}"
FILES="${BENCH_FILES:-$(( JOBS * ((8 + JOBS - 1) / JOBS) ))}"
DT_TOK="${DT_TOKENIZER:-spacy}"
ONLY="${ONLY:-}"
WORK="${BENCH_DIR:-/tmp/baichuan-bench-curate}"
CACHE=.cache/bench_curate
BIN="${BAICHUAN_BIN:-target/release/baichuan-curate}"  # the libtorch-free build of the same commands
TIME_BIN="${TIME_BIN:-/usr/bin/time}"  # GNU time; a missing path forces the python fallback
PY=.venv/bin/python
NOTES="${BENCH_NOTES:-notes/bench_curate-$(date +%F).md}"
LOAD0="$(cut -d' ' -f1-3 /proc/loadavg)"
GEN="$(sha256sum scripts/make_dup_corpus.py | cut -c1-8)"   # a changed generator means new corpora
RUN_BC=1; RUN_DT=1
BC_MEM=(); [ -n "${BC_MEMORY_MB:-}" ] && BC_MEM=(--memory-mb "$BC_MEMORY_MB")  # run buffer of baichuan (default 256)
[ "$ONLY" = datatrove ] && RUN_BC=0
[ "$ONLY" = baichuan ] && RUN_DT=0

die() { echo "bench_curate: $*" >&2; exit 1; }
log() { printf '[bench_curate] %s\n' "$*" >&2; }
[ -x "$PY" ] || die "no .venv (run scripts/setup.sh, then .venv/bin/pip install datatrove==0.10.1 spacy orjson xxhash)"
if [ $RUN_DT = 1 ]; then
  "$PY" -c 'import datatrove, orjson, xxhash' 2>/dev/null \
    || die "datatrove/orjson/xxhash missing in .venv: .venv/bin/pip install datatrove==0.10.1 spacy orjson xxhash"
fi
if [ $RUN_BC = 1 ]; then
  [ -x "$BIN" ] || die "no $BIN: cargo build --release first (or ONLY=datatrove)"
  "$BIN" dedup --help >/dev/null 2>&1 || die "$BIN has no dedup command yet (ONLY=datatrove runs the peer only)"
  BC_FILTER=1
  "$BIN" filter --help >/dev/null 2>&1 || { BC_FILTER=0; log "note: $BIN has no filter command yet: baichuan filter rows skipped"; }
fi

rm -rf "$WORK" && mkdir -p "$WORK" "$CACHE"
RESULTS="$WORK/results.tsv"   # size tool stage docs seconds docs_per_s rss_mb pss_mb removed
: > "$RESULTS"
RAW="$WORK/raw.md"
: > "$RAW"

lines_in() { # total lines of the part files directly in $1 (the tools' survivor outputs)
  find "$1" -maxdepth 1 -type f -name 'part-*' -exec cat {} + 2>/dev/null | wc -l
}
lines_under() { # total lines of all *.jsonl under $1
  find "$1" -type f -name '*.jsonl' -exec cat {} + 2>/dev/null | wc -l
}

# run_bc NAME OUTDIR ARGS... : baichuan under /usr/bin/time -v (or peak_mem.py); sets BC_SECS BC_RSS BC_PSS
run_bc() {
  local name="$1" out="$2"; shift 2
  rm -rf "$out"
  local t0 t1
  if [ -x "$TIME_BIN" ]; then
    t0=$(date +%s.%N)
    "$TIME_BIN" -v -o "$WORK/$name.time" "$BIN" "$@" >"$WORK/$name.log" 2>&1 || { tail -20 "$WORK/$name.log" >&2; die "baichuan $name failed"; }
    t1=$(date +%s.%N)
    BC_SECS=$("$PY" -c "print(round($t1 - $t0, 3))")
    BC_RSS=$(awk -F': ' '/Maximum resident set size/ {printf "%.1f", $2/1024}' "$WORK/$name.time")
    BC_PSS="-"
  else
    "$PY" scripts/peak_mem.py --json "$WORK/$name.mem.json" -- "$BIN" "$@" >"$WORK/$name.log" 2>&1 \
      || { tail -20 "$WORK/$name.log" >&2; die "baichuan $name failed"; }
    read -r BC_SECS BC_RSS BC_PSS < <("$PY" -c "import json; m=json.load(open('$WORK/$name.mem.json')); print(m['seconds'], m['max_proc_rss_mb'], m['peak_pss_mb'])")
  fi
}

row() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$RESULTS"; }
dt_row() { # SIZE STAGE JSONFILE
  "$PY" - "$1" "$2" "$3" >> "$RESULTS" <<'EOF'
import json, sys
size, stage, f = sys.argv[1:]
m = json.loads(open(f).read().strip().splitlines()[-1])
print("\t".join(map(str, [size, "datatrove", stage, m["docs"], m["seconds"], m["docs_per_s"], m["peak_rss_mb"], m["peak_pss_mb"], m["removed"]])))
EOF
}

for MB in "${SIZES[@]}"; do
  C="$CACHE/${MB}mb-${FORMAT}-seed${SEED}-f${FILES}-$GEN"
  if [ ! -f "$C/meta.json" ]; then
    log "building a ${MB} MiB corpus in $C"
    rm -rf "$C.tmp"
    "$PY" scripts/make_dup_corpus.py --sample data/sample --out "$C.tmp" --mb "$MB" --seed "$SEED" \
      --format "$FORMAT" --files "$FILES"
    rm -rf "$C" && mv "$C.tmp" "$C"
  fi
  DOCS=$("$PY" -c "import json; print(json.load(open('$C/meta.json'))['docs'])")
  log "${MB} MiB: $DOCS documents in $FILES files, $JOBS workers"
  printf '\n### %s MiB corpus (%s docs, %s files, %s)\n\n' "$MB" "$DOCS" "$FILES" "$FORMAT" >> "$RAW"

  if [ $RUN_DT = 1 ]; then
    log "datatrove dedup (tokenizer $DT_TOK)"
    "$PY" scripts/bench_datatrove_dedup.py --input "$C" --out "$WORK/dt-dedup" --workers "$JOBS" \
      --tokenizer "$DT_TOK" > "$WORK/dt-dedup.json" 2> "$WORK/dt-dedup.log" \
      || { tail -30 "$WORK/dt-dedup.log" >&2; die "datatrove dedup failed"; }
    dt_row "$MB" dedup "$WORK/dt-dedup.json"
    "$PY" scripts/score_dedup.py --truth "$C/truth.jsonl" --removed "$WORK/dt-dedup/removed" \
      --kept "$WORK/dt-dedup/output" --label "datatrove, ${MB} MiB" --json "$WORK/dt-dedup.score.json" > "$WORK/dt-dedup.score.md"
    log "datatrove filter"
    "$PY" scripts/bench_datatrove_dedup.py --input "$C" --out "$WORK/dt-filter" --workers "$JOBS" \
      --tokenizer "${DT_FILTER_TOKENIZER:-baichuan}" --filters > "$WORK/dt-filter.json" 2> "$WORK/dt-filter.log" \
      || { tail -30 "$WORK/dt-filter.log" >&2; die "datatrove filter failed"; }
    dt_row "$MB" filter "$WORK/dt-filter.json"
    { echo '```'; cat "$WORK/dt-dedup.json" "$WORK/dt-filter.json"; echo '```'; echo; cat "$WORK/dt-dedup.score.md"; echo; } >> "$RAW"
    rm -rf "$WORK/dt-dedup/sigs" "$WORK/dt-dedup/buckets"
  fi

  if [ $RUN_BC = 1 ]; then
    log "baichuan dedup"
    run_bc bc-dedup "$WORK/bc-dedup" dedup --input "$C/corpus" --out "$WORK/bc-dedup" --jobs "$JOBS" "${BC_MEM[@]}"
    KEPT=$(lines_in "$WORK/bc-dedup")
    row "$MB" baichuan dedup "$DOCS" "$BC_SECS" "$("$PY" -c "print(round($DOCS / $BC_SECS, 1))")" "$BC_RSS" "$BC_PSS" "$((DOCS - KEPT))"
    REMOVED_LINES=$(lines_under "$WORK/bc-dedup/removed")
    [ "$REMOVED_LINES" = "$((DOCS - KEPT))" ] || log "note: $REMOVED_LINES removed records but $((DOCS - KEPT)) documents missing from the output"
    "$PY" scripts/score_dedup.py --truth "$C/truth.jsonl" --removed "$WORK/bc-dedup/removed" \
      --label "baichuan, ${MB} MiB" --json "$WORK/bc-dedup.score.json" > "$WORK/bc-dedup.score.md"
    if [ "$BC_FILTER" = 1 ]; then
      log "baichuan filter"
      # The same work as datatrove's four filters: boilerplate counting (which datatrove lacks) off.
      printf '[boilerplate]\nenabled = false\n' > "$WORK/filters.toml"
      run_bc bc-filter "$WORK/bc-filter" filter --input "$C/corpus" --out "$WORK/bc-filter" --jobs "$JOBS" --config "$WORK/filters.toml" "${BC_MEM[@]}"
      KEPT=$(lines_in "$WORK/bc-filter")
      row "$MB" baichuan filter "$DOCS" "$BC_SECS" "$("$PY" -c "print(round($DOCS / $BC_SECS, 1))")" "$BC_RSS" "$BC_PSS" "$((DOCS - KEPT))"
    fi
    {
      echo "baichuan dedup: $(tail -n 3 "$WORK/bc-dedup.log" | tr '\n' ' ')"
      if [ -f "$WORK/bc-dedup/stats.json" ]; then echo '```'; cat "$WORK/bc-dedup/stats.json"; echo; echo '```'; fi
      echo; cat "$WORK/bc-dedup.score.md"; echo
    } >> "$RAW"
  fi
done

TABLE=$("$PY" - "$RESULTS" <<'EOF'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
dps = {(r[0], r[1], r[2]): float(r[5]) for r in rows}
out = ["| size MiB | tool | stage | docs | seconds | docs/s | peak RSS MB | peak PSS MB | removed | baichuan/datatrove docs/s |",
       "|---|---|---|---|---|---|---|---|---|---|"]
for s, tool, stage, docs, secs, rate, rss, pss, rem in rows:
    ratio = ""
    if tool == "baichuan" and (s, "datatrove", stage) in dps:
        ratio = "%.1fx" % (float(rate) / dps[(s, "datatrove", stage)])
    out.append(f"| {s} | {tool} | {stage} | {docs} | {secs} | {rate} | {rss} | {pss} | {rem} | {ratio} |")
sizes = sorted({r[0] for r in rows}, key=float)
if len(sizes) > 1:
    lo, hi = sizes[0], sizes[-1]
    out.append("")
    out.append(f"Peak RSS growth from {lo} to {hi} MiB:")
    for tool, stage in sorted({(r[1], r[2]) for r in rows}):
        a = [r for r in rows if r[0] == lo and r[1] == tool and r[2] == stage]
        b = [r for r in rows if r[0] == hi and r[1] == tool and r[2] == stage]
        if a and b:
            ra, rb = float(a[0][6]), float(b[0][6])
            out.append(f"- {tool} {stage}: {ra:.0f} -> {rb:.0f} MB ({rb - ra:+.0f} MB, x{rb / ra:.2f} for x{float(hi) / float(lo):.0f} data)")
print("\n".join(out))
EOF
)
echo
echo "$TABLE"
for f in "$WORK"/*.score.md; do
  if [ -f "$f" ]; then echo; cat "$f"; fi
done

mkdir -p notes
{
  echo
  echo "## bench_curate $(date '+%F %T') (sizes: ${SIZES[*]} MiB)"
  echo
  echo "- machine: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1), nproc $(nproc), load average at start: $LOAD0"
  echo "- commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), JOBS=$JOBS, format $FORMAT, files $FILES, seed $SEED, datatrove tokenizer $DT_TOK"
  echo
  echo "$TABLE"
  echo
  echo "<details><summary>raw output</summary>"
  echo
  cat "$RAW"
  echo "</details>"
} >> "$NOTES"
log "appended to $NOTES"
