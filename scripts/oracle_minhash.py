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


def is_cjk(c):
    o = ord(c)
    return (0x3040 <= o <= 0x30FF or 0x3400 <= o <= 0x4DBF or 0x4E00 <= o <= 0x9FFF
            or 0xAC00 <= o <= 0xD7AF or 0xF900 <= o <= 0xFAFF or 0x20000 <= o <= 0x3134F)


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
