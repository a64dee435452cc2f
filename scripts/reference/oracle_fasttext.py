#!/usr/bin/env python3
"""Oracle for tests only: reference fastText (the `fasttext` / fasttext-wheel 0.9.2 package).

The Rust integration tests of the fastText quality classifier (src/quality/fasttext.rs) call this
script to compare the pure-Rust implementation with fastText's own C++ code. It is not part of the
data pipeline and nothing in production imports it.

  oracle_fasttext.py train   --input train.txt --out model.bin [--dim --epoch --minn --maxn
                             --wordNgrams --bucket --lr --minCount --loss --seed]
      Trains with fasttext.train_supervised (thread=1, verbose=0). train.txt is fastText's own
      format: one example per line, "__label__X some text".

  oracle_fasttext.py predict --model model.bin --input docs.txt [--k K]
      For every line of docs.txt (one document per line; only "\\n" separates documents) prints one
      JSON line {"labels": [...], "probs": [...]} with all labels (k=-1) in fastText's order.
      Probabilities are exactly what the Python binding reports, i.e. exp(log(p + 1e-5)) as float32.

Only argparse, json and fasttext are used. With numpy 2, fasttext's FastText.predict() raises on
np.array(..., copy=False), so the pybind method model.f.predict is called directly.
"""

import argparse
import json
import sys


def _load_fasttext():
    try:
        import fasttext  # noqa: PLC0415
    except ImportError as e:  # pragma: no cover - environment problem
        sys.exit(
            f"oracle_fasttext.py: cannot import fasttext ({e}). "
            "HINT: run with the project venv (.venv/bin/python) where fasttext-wheel 0.9.2 is installed."
        )
    return fasttext


def cmd_train(a):
    fasttext = _load_fasttext()
    model = fasttext.train_supervised(
        input=a.input,
        dim=a.dim,
        epoch=a.epoch,
        minn=a.minn,
        maxn=a.maxn,
        wordNgrams=a.wordNgrams,
        bucket=a.bucket,
        lr=a.lr,
        minCount=a.minCount,
        loss=a.loss,
        seed=a.seed,
        thread=1,
        verbose=0,
    )
    model.save_model(a.out)


def cmd_predict(a):
    fasttext = _load_fasttext()
    model = fasttext.load_model(a.model)
    out = sys.stdout
    # newline="\n": split documents on "\n" only, keep "\r", "\v", "\f" inside a document.
    with open(a.input, encoding="utf-8", newline="\n") as f:
        for line in f:
            if line.endswith("\n"):
                line = line[:-1]
            # The binding returns [(prob, label), ...], prob = exp(log(p + 1e-5)) (float32).
            pairs = model.f.predict(line + "\n", a.k, 0.0, "strict")
            out.write(json.dumps({"labels": [l for _, l in pairs], "probs": [float(p) for p, _ in pairs]},
                                 ensure_ascii=False))
            out.write("\n")


def main():
    p = argparse.ArgumentParser(description="fastText oracle for tests only")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train a supervised model with fastText (thread=1)")
    t.add_argument("--input", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--dim", type=int, default=32)
    t.add_argument("--epoch", type=int, default=5)
    t.add_argument("--minn", type=int, default=2)
    t.add_argument("--maxn", type=int, default=4)
    t.add_argument("--wordNgrams", type=int, default=2)
    t.add_argument("--bucket", type=int, default=200000)
    t.add_argument("--lr", type=float, default=0.5)
    t.add_argument("--minCount", type=int, default=1)
    t.add_argument("--loss", default="softmax", choices=["softmax", "ova", "ns", "hs"])
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_train)

    q = sub.add_parser("predict", help="print all label probabilities per document as JSON lines")
    q.add_argument("--model", required=True)
    q.add_argument("--input", required=True)
    q.add_argument("--k", type=int, default=-1)
    q.set_defaults(func=cmd_predict)

    a = p.parse_args()
    a.func(a)


if __name__ == "__main__":
    main()
