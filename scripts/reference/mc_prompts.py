#!/usr/bin/env python3
"""Oracle for `eval mc` prompts: rebuilds each prompt from the benchmark's CSV files the way the
reference scripts build theirs, and compares it with the text baichuan produced.

- C-Eval, `baichuan` style: Baichuan-7B's evaluation/evaluate_zh.py (instruction + "\\n", then
  "\\n" + example for each shot and for the question; an example is
  "{question}\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\n答案：{answer}").
- C-Eval, `official` style: C-Eval's own evaluator (instruction + "\\n\\n", each shot followed by
  "\\n\\n").
- MMLU (both styles): Baichuan-7B's evaluation/evaluate_mmlu.py, itself Hendrycks' text
  ("The following are multiple choice questions (with answers) about {subject}.\\n\\n", shots
  ending "Answer: X\\n\\n", the question ending "Answer:"), the first k dev rows.

The shot order is taken from baichuan's dump (the reference's C-Eval shuffle is unseeded and
cannot be reproduced); this script checks that it is a valid draw (distinct dev rows, as many
as asked or as dev holds; for MMLU and official C-Eval, the first k rows).

usage: mc_prompts.py DATA_DIR ceval|mmlu SPLIT SHOTS baichuan|official DUMP.jsonl
Prints one JSON line: {"checked": N, "mismatches": [...]}.
"""
import csv
import json
import sys

# the C-Eval subjects of the test fixtures, named as the reference's TASK2DESC names them
CEVAL_NAMES = {"computer_network": "计算机网络", "logic": "逻辑学"}
LETTERS = ["A", "B", "C", "D"]


def read(data_dir, subject, split, fmt):
    path = f"{data_dir}/{split}/{subject}_{split}.csv"
    with open(path, newline="", encoding="utf-8-sig") as f:
        if fmt == "ceval":
            return [(r["question"], [r[l] for l in LETTERS], r["answer"].strip().upper()) for r in csv.DictReader(f)]
        return [(r[0], r[1:5], r[5].strip().upper()) for r in csv.reader(f) if r]


def ceval_example(q, with_answer, trailer):
    question, options, answer = q
    choice = "\n".join(f"{l}. {o}" for l, o in zip(LETTERS, options))
    return f"{question}\n{choice}\n答案：{answer if with_answer else ''}" + (trailer if with_answer else "")


def mmlu_example(q, with_answer):
    question, options, answer = q
    p = question
    for l, o in zip(LETTERS, options):
        p += f"\n{l}. {o}"
    p += "\nAnswer:"
    if with_answer:
        p += f" {answer}\n\n"
    return p


def main():
    data_dir, fmt, split, shots, style, dump = sys.argv[1:7]
    shots = int(shots)
    mismatches, checked = [], 0
    for line in open(dump, encoding="utf-8"):
        d = json.loads(line)
        subject, qi, order = d["subject"], d["question"], d["shots"]
        dev = read(data_dir, subject, "dev", fmt) if shots > 0 else []
        q = read(data_dir, subject, split, fmt)[qi]
        want_n = min(shots, len(dev))
        if len(order) != want_n or len(set(order)) != len(order) or any(not 0 <= i < len(dev) for i in order):
            mismatches.append({"subject": subject, "question": qi, "bad_shots": order})
            continue
        if (fmt == "mmlu" or style == "official") and order != list(range(want_n)):
            mismatches.append({"subject": subject, "question": qi, "not_first_rows": order})
            continue
        if fmt == "ceval" and style == "baichuan":
            prompt = f"以下是中国关于{CEVAL_NAMES[subject]}考试的单项选择题，请选出其中的正确答案。\n"
            for i in order:
                prompt += "\n" + ceval_example(dev[i], True, "")
            prompt += "\n" + ceval_example(q, False, "")
        elif fmt == "ceval":
            prompt = f"以下是中国关于{CEVAL_NAMES[subject]}考试的单项选择题，请选出其中的正确答案。\n\n"
            for i in order:
                prompt += ceval_example(dev[i], True, "\n\n")
            prompt += ceval_example(q, False, "")
        else:
            words = "".join(" " + w for w in subject.split("_"))
            prompt = f"The following are multiple choice questions (with answers) about {words}.\n\n"
            for i in order:
                prompt += mmlu_example(dev[i], True)
            prompt += mmlu_example(q, False)
        checked += 1
        if prompt != d["text"]:
            mismatches.append({"subject": subject, "question": qi, "want": prompt, "got": d["text"]})
    print(json.dumps({"checked": checked, "mismatches": mismatches}, ensure_ascii=False))


if __name__ == "__main__":
    main()
