"""Straightforward numpy sweep: the baseline `stopwise bench sweep` compares against.

Same families, grids and accounting as stopwise's sweep, vectorised over traces, one pass per
threshold. Reads a trace JSONL file (not timed), then times the sweep. Prints seconds.
Usage: python3 bench/sweep_baseline.py TRACES.jsonl THRESHOLDS
"""
import json
import sys
import time

import numpy as np


def main(path, n_thresholds):
    rows = [json.loads(line) for line in open(path)]
    n = len(rows)
    c = max(len(r["checkpoints"]) for r in rows)
    tokens = np.zeros((n, c)); probe = np.zeros((n, c)); prob = np.full((n, c), -np.inf)
    logprob = np.zeros((n, c)); answer = np.full((n, c), "", dtype=object); empty = np.ones((n, c), bool)
    for i, r in enumerate(rows):
        for j, cp in enumerate(r["checkpoints"]):
            tokens[i, j] = cp["tokens"]; probe[i, j] = cp["answer_tokens"]; logprob[i, j] = cp["segment_logprob"]
            answer[i, j] = cp["answer"]; empty[i, j] = cp["answer"] == ""
            prob[i, j] = -np.inf if cp["answer"] == "" else cp["mean_prob"]
    final_answer = np.array([r["final"]["answer"] for r in rows], dtype=object)
    gold = np.array([r["gold"][0] if r["gold"] else "" for r in rows], dtype=object)
    full_tokens = np.array([r["final"]["tokens"] for r in rows], float)

    start = time.perf_counter()
    em = answer == gold[:, None]
    agree = answer == final_answer[:, None]
    full_em = final_answer == gold
    probe_cum = np.cumsum(probe, axis=1)
    # consistency run lengths
    run = np.zeros((n, c))
    for j in range(c):
        same = (~empty[:, j]) & ((answer[:, j] == answer[:, j - 1]) if j else False)
        run[:, j] = np.where(empty[:, j], 0, np.where(same, run[:, j - 1] + 1 if j else 1, 1))
    # 128-token window of 32-token segments = mean of the last 4 segments
    kernel = np.ones(4)
    window = np.stack([np.convolve(row, kernel)[:c] for row in logprob]) / np.minimum(np.arange(1, c + 1), 4)
    window = np.where(empty, -np.inf, window)
    families = {
        "budget": (tokens, np.arange(1, n_thresholds + 1) * 32.0, False),
        "consistency": (run, np.arange(1, n_thresholds + 1, dtype=float), True),
        "confidence": (prob, np.linspace(0, 1, n_thresholds), True),
        "logprob_window": (window, -np.geomspace(5, 0.005, n_thresholds), True),
    }
    results = []
    for name, (score, grid, every) in families.items():
        for t in grid:
            hit = score >= t
            stopped = hit.any(axis=1)
            first = hit.argmax(axis=1)
            idx = np.arange(n)
            gen = np.where(stopped, tokens[idx, first], full_tokens)
            cost = np.where(stopped, probe_cum[idx, first] if every else probe[idx, first], probe_cum[:, -1] if every else 0)
            em_s = np.where(stopped, em[idx, first], full_em)
            ag = np.where(stopped, agree[idx, first], True)
            results.append((name, t, 1 - (gen.sum() + cost.sum()) / full_tokens.sum(), em_s.mean(), ag.mean()))
    print(f"{time.perf_counter() - start:.3f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
