#!/usr/bin/env python3
"""Oracle for tests only: Python sentencepiece's own trainer on the same sample and options.

  spm_train.py FLAGS.json OUT_PREFIX OURS.model
FLAGS.json is the list of [name, value] flags `baichuan tokenizer train` passed to the library
(input, model_prefix and the trainer options) plus ["seed", N]. Trains with
sentencepiece.SentencePieceTrainer.train (model_prefix replaced by OUT_PREFIX), then prints one
JSON object: {"theirs": [[piece, score, type], ...], "ours": [...] of OURS.model,
"theirs_normalizer": ..., "ours_normalizer": ...}.
"""
import json
import sys

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb


def dump(path):
    m = pb.ModelProto()
    m.ParseFromString(open(path, "rb").read())
    pieces = [[p.piece, p.score, int(p.type)] for p in m.pieces]
    n = m.normalizer_spec
    norm = [n.name, n.add_dummy_prefix, n.remove_extra_whitespaces, n.escape_whitespaces]
    return pieces, norm


def main():
    flags, prefix, ours = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
    kwargs = {}
    seed = None
    for name, value in flags:
        if name == "seed":
            seed = int(value)
        elif name == "model_prefix":
            kwargs[name] = prefix
        else:
            kwargs[name] = value
    if seed is not None:
        spm.set_random_generator_seed(seed)
    spm.SentencePieceTrainer.train(**kwargs)
    theirs, tn = dump(prefix + ".model")
    mine, on = dump(ours)
    print(json.dumps({"theirs": theirs, "ours": mine, "theirs_normalizer": tn, "ours_normalizer": on,
                      "version": spm.__version__}))


if __name__ == "__main__":
    main()
