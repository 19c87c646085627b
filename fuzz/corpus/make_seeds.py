#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz harnesses (fuzz/corpus/<harness>/seed-*) from readable
descriptions. The byte layout is the order in which fuzz/*.cpp read their input (fuzz.hpp: one
byte per decision, from the front; past the end every byte is 0, and the tensors' values come
from the bytes left, then from a generator seeded by the input):

  all:  threads-1, also_float, rank-1, one byte per extent (see extent() below)
  bn:   affine (0: none), with_beta, into, eval (0: eval), with_running, misuse (<16), eps, momentum
        (0: None) [, momentum table], seed
  ln:   affine, with_beta, into, misuse, k (trailing axes), eps, seed
  gn:   affine, with_beta, into, misuse, divisor of C, eps, seed
  in:   affine, with_beta, into, misuse, eps, momentum, eval (0: eval), with_running,
        one byte per channel (running variance), seed
  rms:  affine, into, misuse, k, has_eps [, eps], seed
  ops:  op (index into the catalog's declared ops, modulo their number), threads-1, mode (0: a
        problem, 14: an *_into call, 15: a bad input), then for a problem: case, mutate (odd: the
        extents follow, as many as the case's rank), 8 bytes of seed; for the others: which one

Run it from anywhere: python3 fuzz/corpus/make_seeds.py
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))
EDGES = [15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 130, 131, 255, 256, 257, 259]
NONE = 255  # misuse byte: no misuse


def extent(v):
    if v == 0:
        return [0]
    if 1 <= v <= 20:
        return [v + 19]
    for kind in range(176, 240):
        if EDGES[kind % len(EDGES)] == v:
            return [kind]
    assert 1 <= v <= 1100, v  # in_range(1, 1100): two bytes, 1 + (hi*256 + lo) % 1100
    return [240, (v - 1) // 256, (v - 1) % 256]


def prefix(shape, threads=1, also_float=1):
    out = [threads - 1, also_float, len(shape) - 1]
    for d in shape:
        out += extent(d)
    return out


def bn(shape, threads=1, affine=1, into=0, eval_=False, misuse=NONE, eps=0, momentum=1):
    return prefix(shape, threads) + [affine, 1, into, 0 if eval_ else 1, 1, misuse, eps, momentum, 0, 7]


def ln(shape, threads=1, k=1, into=0, misuse=NONE, affine=1):
    return prefix(shape, threads) + [affine, 1, into, misuse, k - 1, 0, 7]


def gn(shape, threads=1, divisor=1, into=0, misuse=NONE, affine=1):
    return prefix(shape, threads) + [affine, 1, into, misuse, divisor, 0, 7]


def in_(shape, threads=1, into=0, eval_=False, misuse=NONE, affine=1):
    return prefix(shape, threads) + [affine, 1, into, misuse, 0, 0, 0 if eval_ else 1, 1] + [64] * shape[1] + [7]


def rms(shape, threads=1, k=1, into=0, misuse=NONE, affine=1):
    return prefix(shape, threads) + [affine, into, misuse, k - 1, 0, 7]


SEEDS = {
    "bn": {
        "issue10-defect1-minimal": bn([1, 131, 17]),
        "issue10-defect1-594": bn([1, 131, 594], into=1),
        "small-4d": bn([2, 3, 5, 7]),
        "blocks-2-threads": bn([2, 259, 129], threads=2),
        "blocks-3-threads": bn([3, 130, 97], threads=3, into=1),
        "rank2": bn([5, 4]),
        "eval": bn([2, 6, 9], eval_=True),
        "no-affine": bn([3, 17, 33], affine=0),
        "misuse-gamma": bn([2, 5, 7], misuse=0),
        "bad-eps": bn([2, 5, 7], eps=14),
        "momentum-none": bn([2, 5, 7], momentum=0),
        "zero-extent": bn([2, 0, 7]),
    },
    "ln": {
        "row-17": ln([3, 17]),
        "rows-2-threads": ln([257, 130], threads=2),
        "two-axes": ln([2, 3, 5, 7], k=2, into=1),
        "threads-3": ln([4, 64, 131], threads=3, k=1),
        "misuse-normalized": ln([2, 5, 7], misuse=5),
        "one-value-rows": ln([9, 1]),
    },
    "gn": {
        "groups-3": gn([4, 12, 9, 11], divisor=2),
        "groups-all": gn([2, 8, 5, 7], divisor=3, into=1),
        "threads-2": gn([4, 32, 33, 31], threads=2, divisor=3),
        "misuse-groups": gn([2, 6, 5], misuse=4),
        "rank2": gn([6, 4], divisor=1),
    },
    "in": {
        "small": in_([4, 6, 13, 7]),
        "threads-2": in_([4, 32, 17, 17], threads=2, into=1),
        "eval": in_([2, 5, 9, 9], eval_=True),
        "misuse-running": in_([2, 3, 5], misuse=6),
        "one-spatial": in_([2, 3, 1]),
    },
    "rms": {
        "row-17": rms([3, 17]),
        "rows-2-threads": rms([257, 130], threads=2),
        "two-axes": rms([2, 3, 5, 7], k=2, into=1),
        "no-affine": rms([5, 33], affine=0),
        "misuse-gamma": rms([2, 5, 7], misuse=0),
    },
}

# Every declared op (40 covers the ops of catalog/ops.def with room to grow; an index past their
# number wraps): its first case as declared, the same case at ragged shapes of rank 2 and 3 (a
# case of another rank reads the extents it needs and the rest as seed), 2 threads, every bad
# input and *_into call (the second byte picks one; 0-7 cover the declarations' lists).
SEEDS["ops"] = {}
for op in range(40):
    seed = [0, 0, 0, 0, 0, 0, 0, op + 1]
    SEEDS["ops"]["%02d-case0" % op] = [op, 0, 0, 0, 0] + seed
    SEEDS["ops"]["%02d-17x33" % op] = [op, 0, 0, 0, 1] + extent(17) + extent(33) + seed
    SEEDS["ops"]["%02d-3x5x65-threads2" % op] = [op, 1, 0, 1, 1] + extent(3) + extent(5) + extent(65) + seed
    for k in range(8):
        SEEDS["ops"]["%02d-bad%d" % (op, k)] = [op, 0, 15, k]
    SEEDS["ops"]["%02d-into0" % op] = [op, 0, 14, 0]
    SEEDS["ops"]["%02d-into1" % op] = [op, 0, 14, 1]

for harness, seeds in SEEDS.items():
    os.makedirs(os.path.join(HERE, harness), exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(HERE, harness, "seed-" + name), "wb") as f:
            f.write(bytes(data))
