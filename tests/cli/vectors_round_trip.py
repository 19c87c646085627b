"""`gradproof vectors OP DIR`, then `gradproof check OP` on the arrays it wrote, once with the
float64 set and once with the float32 set: both must pass (exit 0, no gradient failed). With
`--every-check-op`, instead: the ops `vectors` has cases for are exactly the ops `check` knows.

usage: vectors_round_trip.py GRADPROOF_BINARY OP WORK_DIR
       vectors_round_trip.py GRADPROOF_BINARY --every-check-op
"""
import json
import os
import re
import subprocess
import sys

cli, op = sys.argv[1:3]


def known(command, *rest):
    r = subprocess.run([cli, command, "nope", *rest], capture_output=True, text=True)
    m = re.search(command + r" knows ([^)]*)\)", r.stderr)
    if not m:
        sys.exit(f"no list of ops in the refusal of '{command} nope':\n{r.stderr}")
    return m.group(1).split(", ")


if op == "--every-check-op":
    check, vectors = known("check"), known("vectors", "out")
    if sorted(check) != sorted(vectors):
        sys.exit(f"check knows {check}\nvectors knows {vectors}")
    print(f"ok: vectors has a case for each of the {len(check)} ops check knows")
    sys.exit(0)

work = sys.argv[3]
os.makedirs(work, exist_ok=True)
r = subprocess.run([cli, "vectors", op, work], capture_output=True, text=True)
if r.returncode != 0:
    sys.exit(f"vectors {op}: exit {r.returncode}\n{r.stdout}{r.stderr}")
with open(os.path.join(work, "manifest.json")) as f:
    manifest = json.load(f)
failures = []
for s in manifest["sets"]:
    words, grads = [cli, "check", op], 0
    for name, e in s["files"].items():
        if e["role"] == "output":
            continue  # check recomputes y; dropout's --y would be a second source of its mask
        words += ["--" + name, os.path.join(work, e["file"])]
        grads += e["role"] == "gradient"
    for k, v in manifest["options"].items():
        words += ["--" + k, v]
    r = subprocess.run(words, capture_output=True, text=True)
    if r.returncode != 0 or not re.search(rf"pass: 0 of {grads} gradients failed", r.stdout):
        failures.append(f"{s['dtype']}: exit {r.returncode}\n{' '.join(words)}\n"
                        f"--- stdout\n{r.stdout}--- stderr\n{r.stderr}")
    else:
        print(f"ok: check {op} passes on the {s['dtype']} vectors ({grads} gradients)")
if failures:
    sys.exit("\n".join(failures))
