#!/usr/bin/env python3
"""Independent oracle for `baichuan dedup`'s MinHash (tests only, never on the data path).

Reads a JSON request {"seed", "num_perm", "ngram", "texts": [...], "banding": [[threshold,
num_perm], ...]} and prints {"signatures": [[...]], "banding": [[b, r], ...]} where each
signature is datasketch's MinHash (scheme "affine32", the default since datasketch 2.0) of the
text's shingles, built from its own normalisation and shingling written here from the spec in
curate/src/dedup/minhash.rs, with the permutations derived from the seed by splitmix64, and
each banding is datasketch's own `_optimal_param(threshold, num_perm, 0.5, 0.5)`.
"""
import json
import sys

import numpy as np
import xxhash
from datasketch import MinHash
from datasketch.lsh import _optimal_param

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def splitmix64(z):
    z = (z + GOLDEN) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


CJK_RANGES = [  # curate/src/script.rs is_cjk
    (0x1100, 0x11FF), (0x3005, 0x3007), (0x3021, 0x3029), (0x3031, 0x3035), (0x3041, 0x309F),
    (0x30A1, 0x30FA), (0x30FC, 0x30FF), (0x3100, 0x312F), (0x3131, 0x318F), (0x31A0, 0x31BF),
    (0x31F0, 0x31FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xA960, 0xA97F), (0xAC00, 0xD7AF),
    (0xD7B0, 0xD7FF), (0xF900, 0xFAFF), (0xFF66, 0xFF9F), (0x1B000, 0x1B16F), (0x20000, 0x323AF),
]


def is_cjk(c):
    o = ord(c)
    return any(a <= o <= b for a, b in CJK_RANGES)


def units(text):
    out, word = [], []
    for c in text.lower():
        if is_cjk(c):
            if word:
                out.append("".join(word))
                word = []
            out.append(c)
        elif c.isalnum():
            word.append(c)
        elif word:
            out.append("".join(word))
            word = []
    if word:
        out.append("".join(word))
    return out


def main():
    req = json.load(open(sys.argv[1]))
    seed, n, k = req["seed"], req["num_perm"], req["ngram"]
    draw = lambda i: splitmix64((seed + i * GOLDEN) & MASK64) & 0xFFFFFFFF
    a = np.array([draw(2 * i) | 1 for i in range(n)], dtype=np.uint32)
    b = np.array([draw(2 * i + 1) for i in range(n)], dtype=np.uint32)
    sigs = []
    for text in req["texts"]:
        u = units(text)
        m = MinHash(num_perm=n, scheme="affine32", permutations=(a, b),
                    hashfunc=lambda s: xxhash.xxh3_64_intdigest(s) & 0xFFFFFFFF)
        w = min(k, len(u))
        for i in range(len(u) - w + 1 if w else 0):
            m.update(" ".join(u[i:i + w]).encode("utf-8"))
        sigs.append([int(v) for v in m.hashvalues])
    banding = [list(_optimal_param(t, p, 0.5, 0.5)) for t, p in req.get("banding", [])]
    print(json.dumps({"signatures": sigs, "banding": banding}))


if __name__ == "__main__":
    main()
