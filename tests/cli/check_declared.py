"""`gradproof check` on one case of tests/cli/check_cases.py, through the command: the right
gradients pass (exit 0), each broken gradient fails with its name on a FAIL line and the others
passing (exit 1), each bad input is refused with its message (exit 2).

usage: check_declared.py GRADPROOF_BINARY CASE WORK_DIR
"""
import os
import re
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_cases  # noqa: E402

cli, name, work = sys.argv[1:4]
case = next((c for c in check_cases.cases() if c.name == name), None)
if case is None:
    sys.exit(f"check_declared.py: no case '{name}'")
os.makedirs(work, exist_ok=True)
failures = []


def run(arrays, options):
    words = [cli, "check", case.op]
    for k, a in arrays.items():
        path = os.path.join(work, k + ".npy")
        np.save(path, a)
        words += ["--" + k.replace("_", "-"), path]
    for k, v in options.items():
        words += ["--" + k.replace("_", "-"), str(v)]
    return subprocess.run(words, capture_output=True, text=True)


def expect(what, r, rc, out=None, err=None):
    problems = []
    if r.returncode != rc:
        problems.append(f"exit status {r.returncode}, expected {rc}")
    for o in [out] if isinstance(out, str) else out or []:
        if not re.search(o, r.stdout, re.S):
            problems.append(f"stdout does not match {o!r}")
    if err and not re.search(err, r.stderr, re.S):
        problems.append(f"stderr does not match {err!r}")
    if problems:
        failures.append(f"{what}: " + "; ".join(problems) +
                        f"\n--- stdout\n{r.stdout}--- stderr\n{r.stderr}")
    else:
        print(f"ok: {what}")


n = len(case.grads)
expect("the right gradients pass", run(*check_cases.call(case)), 0,
       out=rf"pass: 0 of {n} gradients failed")
for grad, array, what in case.broken:
    grads = dict(case.grads)
    grads[grad] = array
    out = [rf"\n  {g} +pass " for g in case.grads if g != grad]
    expect(f"{grad} broken ({what}) fails", run(*check_cases.call(case, grads=grads)), 1,
           out=out + [rf"\n  {grad} +FAIL .*FAIL: 1 of {n} gradients failed"])
for what, changes, message in case.bad:
    expect(f"refused: {what}", run(*check_cases.call(case, changes)), 2, err=message)
if failures:
    sys.exit("\n".join(failures))
