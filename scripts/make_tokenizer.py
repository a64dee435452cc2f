#!/usr/bin/env python3
"""Rebuild the Baichuan-7B SentencePiece `tokenizer.model` from llama.cpp's vocabulary file.

One-off conversion used by scripts/setup.sh (never on the training path). No package ships
Baichuan's tokenizer.model, but llama.cpp's vocabulary test file `ggml-vocab-baichuan.gguf`
(inside the llama-cpp-python source distribution) holds all 64000 pieces with their scores
and types. This script turns them back into a SentencePiece ModelProto following the recipe
in ASSETS.md and checks the result against the two reference encodings.

The same recipe rebuilds LLaMA's 32000-piece model from `ggml-vocab-llama-spm.gguf` (for
`baichuan tokenizer stats`); when llama.cpp's test texts `VOCAB.gguf.inp` and their ids
`VOCAB.gguf.out` lie beside the vocabulary, every one is checked too.

usage: make_tokenizer.py VOCAB.gguf OUT/tokenizer.model
"""
import os
import sys

from gguf import GGUFReader
from sentencepiece import SentencePieceProcessor
from sentencepiece import sentencepiece_model_pb2 as spm

# llama.cpp token types -> SentencePiece piece types
GGUF_UNKNOWN, GGUF_CONTROL, GGUF_USER_DEFINED, GGUF_UNUSED, GGUF_BYTE = 2, 3, 4, 5, 6

CHECKS = [
    ("登鹳雀楼->王之涣\n夜雨寄北->",
     [31106, 32040, 36988, 33888, 31914, 3817, 31702, 31278, 36161, 5, 32010, 31963, 32953, 31505, 3817]),
    ("Hello world 12345", [24568, 1275, 31106, 53, 54, 55, 56, 57]),
]


def field_array(reader, name):
    field = reader.fields[name]
    return [field.parts[i] for i in field.data]


def main(src, dst):
    reader = GGUFReader(src)
    tokens = [bytes(p).decode("utf-8") for p in field_array(reader, "tokenizer.ggml.tokens")]
    scores = [float(p[0]) for p in field_array(reader, "tokenizer.ggml.scores")]
    types = [int(p[0]) for p in field_array(reader, "tokenizer.ggml.token_type")]
    assert len(tokens) == len(scores) == len(types), (len(tokens), len(scores), len(types))
    baichuan = len(tokens) == 64000

    first_byte = types.index(GGUF_BYTE)
    proto = spm.ModelProto()
    P = spm.ModelProto.SentencePiece
    for i, (piece, score, kind) in enumerate(zip(tokens, scores, types)):
        sp = proto.pieces.add()
        sp.piece = piece
        sp.score = score
        if kind == GGUF_UNKNOWN:
            sp.type = P.UNKNOWN
        elif kind == GGUF_CONTROL:
            sp.type = P.CONTROL
        elif kind == GGUF_BYTE:
            sp.type = P.BYTE
        elif kind == GGUF_USER_DEFINED or (i < first_byte and score == 0.0):
            # the GGUF marks the user-defined symbols (<SEP>, "\n", digits, ...) as normal
            sp.type = P.USER_DEFINED
        elif kind == GGUF_UNUSED:
            sp.type = P.UNUSED
        else:
            sp.type = P.NORMAL

    ts = proto.trainer_spec
    ts.model_type = spm.TrainerSpec.BPE
    ts.vocab_size = len(tokens)
    ts.byte_fallback = True
    ts.character_coverage = 0.9995
    ts.max_sentencepiece_length = 16
    ts.split_digits = True
    ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = 0, 1, 2, -1
    ns = proto.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = True
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True

    data = proto.SerializeToString()
    sp_proc = SentencePieceProcessor(model_proto=data)
    checks = list(CHECKS) if baichuan else []
    if os.path.exists(src + ".inp") and os.path.exists(src + ".out"):
        texts = open(src + ".inp", encoding="utf-8").read().split("\n__ggml_vocab_test__\n")[:-1]
        ids = [[int(x) for x in line.split()] for line in open(src + ".out", encoding="utf-8").read().split("\n")]
        checks += list(zip(texts, ids))
    for text, want in checks:
        got = sp_proc.encode(text)
        if got != want:
            sys.exit(f"make_tokenizer: {text!r} encodes to {got}, expected {want}")
        if baichuan and sp_proc.decode(got) != text:
            sys.exit(f"make_tokenizer: {text!r} does not decode back")
    with open(dst, "wb") as f:
        f.write(data)
    print(f"wrote {dst}: {len(tokens)} pieces, all {len(checks)} check strings encode to the reference ids")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
