"""Reading what a build measured: results.json of the test run and bench/results.json.

Plain Python (no Sphinx), shared by the Sphinx extension (gradproof_sphinx.py), the traceability
check (traceability.py) and their unit tests. Nothing here invents a value: every number the site shows
comes out of these files, and a formula is VERIFIED only if rows for it exist and all passed.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VERIFIED = "VERIFIED"
FAILED = "FAILED"
NOT_VERIFIED = "NOT VERIFIED"

ROW_KEYS = ("formula", "test", "oracle", "dtype", "kind", "shape", "max_abs_err", "max_rel_err",
            "atol", "rtol", "passed")
ABLATION_KEYS = ("op", "term", "change", "caught", "expected_caught", "passed")


class DataError(Exception):
    """A results file is missing, unreadable or not in the expected schema."""


# ---- results.json ----------------------------------------------------------------------------

@dataclass
class Results:
    path: Path
    preset: str
    generated_utc: str
    compiler: str
    formulas: list[dict[str, Any]]  # {"id", "op", "title"}, catalog order
    rows: list[dict[str, Any]]
    ablation: list[dict[str, Any]]

    def formula(self, fid: str) -> dict[str, Any] | None:
        return next((f for f in self.formulas if f["id"] == fid), None)

    def rows_of(self, fid: str) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["formula"] == fid]

    def ablation_of(self, op: str) -> list[dict[str, Any]]:
        return [a for a in self.ablation if a["op"] == op]

    def unknown_row_formulas(self) -> list[str]:
        """Formula ids that rows name but the catalog does not list."""
        known = {f["id"] for f in self.formulas}
        return sorted({r["formula"] for r in self.rows} - known)


def load_results(path: str | Path) -> Results:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no results file; run the tests of this build first (ctest)") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read results: {e}") from None
    if not isinstance(data, dict) or data.get("schema") != 1:
        raise DataError(f"{path}: expected a results object with \"schema\": 1")
    for key in ("formulas", "rows", "ablation"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: \"{key}\" must be a list")
    for i, f in enumerate(data["formulas"]):
        if not all(k in f for k in ("id", "op", "title")):
            raise DataError(f"{path}: formulas[{i}] lacks one of id, op, title")
    for i, r in enumerate(data["rows"]):
        missing = [k for k in ROW_KEYS if k not in r]
        if missing:
            raise DataError(f"{path}: rows[{i}] lacks {', '.join(missing)}")
    for i, a in enumerate(data["ablation"]):
        missing = [k for k in ABLATION_KEYS if k not in a]
        if missing:
            raise DataError(f"{path}: ablation[{i}] lacks {', '.join(missing)}")
    return Results(path=path, preset=str(data.get("preset", "?")),
                   generated_utc=str(data.get("generated_utc", "?")),
                   compiler=str(data.get("compiler", "?")), formulas=data["formulas"],
                   rows=data["rows"], ablation=data["ablation"])


def status_of(rows: list[dict[str, Any]]) -> str:
    """VERIFIED only if there are rows and every one passed."""
    if not rows:
        return NOT_VERIFIED
    return VERIFIED if all(r["passed"] is True for r in rows) else FAILED


def _max(values):
    """Largest value; None (a NaN written as null) dominates, since it never passes."""
    values = list(values)
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
        return None
    return max(values) if values else None


@dataclass
class Group:
    """Rows of one test x oracle x dtype (x kind): one line of a formula's table."""
    test: str
    oracle: str
    dtype: str
    kind: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        seen: list[tuple[int, ...]] = []
        for r in self.rows:
            s = tuple(r["shape"])
            if s not in seen:
                seen.append(s)
        return seen

    @property
    def n_failed(self) -> int:
        return sum(1 for r in self.rows if r["passed"] is not True)

    @property
    def passed(self) -> bool:
        return self.n_failed == 0

    @property
    def max_abs_err(self):
        return _max(r["max_abs_err"] for r in self.rows)

    @property
    def max_rel_err(self):
        return _max(r["max_rel_err"] for r in self.rows)

    @property
    def atol_range(self) -> tuple[float, float]:
        v = [r["atol"] for r in self.rows]
        return min(v), max(v)

    @property
    def rtol_range(self) -> tuple[float, float]:
        v = [r["rtol"] for r in self.rows]
        return min(v), max(v)

    @property
    def failing_rows(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["passed"] is not True]

    @property
    def rel_defined(self) -> bool:
        """False when no row has a relative error (every compared value was below atol)."""
        return any(rel_defined(r) for r in self.rows)

    @property
    def ratio(self) -> float | None:
        """The worst error as a fraction of its allowance (None for demonstration rows)."""
        return worst_ratio(self.rows)[0]

    @property
    def is_demonstration(self) -> bool:
        return self.kind in DEMONSTRATION_KINDS


def group_rows(rows: list[dict[str, Any]], by_test: bool = True) -> list[Group]:
    """Groups rows by (test, oracle, dtype, kind), or (oracle, dtype, kind) if not by_test,
    keeping the order in which each group first appears."""
    groups: dict[tuple, Group] = {}
    for r in rows:
        test = r["test"] if by_test else ""
        key = (test, r["oracle"], r["dtype"], r["kind"])
        if key not in groups:
            groups[key] = Group(test, r["oracle"], r["dtype"], r["kind"])
        groups[key].rows.append(r)
    return list(groups.values())


def tests_of(rows: list[dict[str, Any]]) -> list[str]:
    """Test names in order of first appearance."""
    out: list[str] = []
    for r in rows:
        if r["test"] not in out:
            out.append(r["test"])
    return out


@dataclass
class Totals:
    formulas: int
    rows: int
    passed: int
    failed: int
    formulas_verified: list[str]
    formulas_failed: list[str]
    formulas_without_rows: list[str]
    unknown_row_formulas: list[str]
    ablation: int
    ablation_failed: int


def totals(res: Results) -> Totals:
    verified, failed, missing = [], [], []
    for f in res.formulas:
        s = status_of(res.rows_of(f["id"]))
        {VERIFIED: verified, FAILED: failed, NOT_VERIFIED: missing}[s].append(f["id"])
    n_failed = sum(1 for r in res.rows if r["passed"] is not True)
    return Totals(formulas=len(res.formulas), rows=len(res.rows), passed=len(res.rows) - n_failed,
                  failed=n_failed, formulas_verified=verified, formulas_failed=failed,
                  formulas_without_rows=missing, unknown_row_formulas=res.unknown_row_formulas(),
                  ablation=len(res.ablation),
                  ablation_failed=sum(1 for a in res.ablation if a["passed"] is not True))


def run_only_command(test_binary: str, fid: str) -> str:
    """The command that runs exactly the tests labelled with a formula id."""
    return f"{test_binary} --run_test=@{fid}"


# ---- Formatting ------------------------------------------------------------------------------

def fmt_num(v) -> str:
    """Errors and tolerances: three significant digits; null (a NaN in the run) shown as NaN."""
    if v is None:
        return "NaN"
    if v == 0:
        return "0"
    return f"{v:.3g}"


def fmt_range(lo, hi) -> str:
    """A tolerance that scales with the data, as its range over the rows (two digits)."""
    if fmt_num(lo) == fmt_num(hi):
        return fmt_num(lo)
    return f"{lo:.2g}…{hi:.2g}"


def fmt_shape(shape) -> str:
    s = ", ".join(str(d) for d in shape)
    return f"({s},)" if len(shape) == 1 else f"({s})"


# ---- Test labels, from the test binary ----------------------------------------------------------

_DOT_NODE = re.compile(r'^(tu\d+)\[.*?label="(.*)"\];$')
_DOT_EDGE = re.compile(r'^(tu\d+) -> (tu\d+);$')


def parse_dot_labels(dot: str) -> dict[str, list[str]]:
    """Maps each label to the full names (suite/.../case) of the test units that carry it, from
    the output of `gradproof_tests --list_content=DOT` (Boost.Test's --list_labels gives only
    the label names; the DOT listing also says which test carries which label)."""
    name: dict[str, str] = {}
    labels: dict[str, list[str]] = {}
    parent: dict[str, str] = {}
    for line in dot.splitlines():
        line = line.strip()
        m = _DOT_NODE.match(line)
        if m:
            unit, text = m.groups()
            parts = text.split("|")
            name[unit] = parts[0]
            labels[unit] = []
            for p in parts[2:]:
                if p.startswith("labels:"):
                    labels[unit] = [w[1:] for w in p.split()[1:] if w.startswith("@")]
            continue
        m = _DOT_EDGE.match(line)
        if m:
            parent[m.group(2)] = m.group(1)

    def full(unit: str) -> str:
        parts = []
        while unit in parent:  # the root (master suite) has no parent and no place in names
            parts.append(name[unit])
            unit = parent[unit]
        return "/".join(reversed(parts))

    out: dict[str, list[str]] = {}
    for unit, labs in labels.items():
        for lab in labs:
            out.setdefault(lab, []).append(full(unit))
    return out


def parse_list_labels(text: str) -> list[str]:
    """Label names from `gradproof_tests --list_labels`."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("Available labels"):
        return []
    return [ln.strip() for ln in lines[1:] if ln.strip()]


# ---- bench/results.json (issue 4) ---------------------------------------------------------------

BENCH_ROW_KEYS = ("op", "pass", "impl", "shape", "threads", "median_ms", "min_ms", "max_ms", "gbps",
                  "fraction_of_bandwidth")


@dataclass
class Bench:
    path: Path
    rows: list[dict[str, Any]]
    bandwidth: dict[str, float]  # name -> GB/s, e.g. {"triad": 58.1, "read": 61.0}
    machine: dict[str, str]      # name -> description
    extra: dict[str, Any]


def _named_numbers(v: Any, default_name: str) -> dict[str, float]:
    if v is None:
        return {}
    if isinstance(v, (int, float)):
        return {default_name: float(v)}
    if isinstance(v, dict):
        return {str(k): float(x) for k, x in v.items() if isinstance(x, (int, float))}
    raise DataError(f"bandwidth must be a number or an object of numbers, got {type(v).__name__}")


def load_bench(path: str | Path) -> Bench | None:
    """The benchmark results, or None if this build ran no benchmark.

    Accepted: a list of rows, or an object {"rows": [...], "bandwidth": number | {name: GB/s},
    "machine": str | {name: str}, ...}; every row has BENCH_ROW_KEYS."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read benchmark results: {e}") from None
    if isinstance(data, list):
        data = {"rows": data}
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise DataError(f"{path}: expected a list of rows or an object with a \"rows\" list")
    for i, r in enumerate(data["rows"]):
        missing = [k for k in BENCH_ROW_KEYS if k not in r]
        if missing:
            raise DataError(f"{path}: rows[{i}] lacks {', '.join(missing)}")
    bw_key = next((k for k in ("bandwidth", "bandwidth_gbps") if k in data), None)
    bandwidth = _named_numbers(data.get(bw_key), "measured") if bw_key else {}
    machine = data.get("machine", {})
    if isinstance(machine, str):
        machine = {"machine": machine}
    elif isinstance(machine, dict):
        machine = {str(k): (v if isinstance(v, str) else json.dumps(v)) for k, v in machine.items()}
    else:
        raise DataError(f"{path}: \"machine\" must be a string or an object")
    extra = {k: v for k, v in data.items() if k not in ("rows", "machine", bw_key)}
    return Bench(path=path, rows=data["rows"], bandwidth=bandwidth, machine=machine, extra=extra)


@dataclass
class BenchTarget:
    target: str       # what is measured, e.g. "batchnorm forward 32x64x56x56: libtorch time / fused time"
    measured: float
    threshold: float
    at_least: bool    # met when measured >= threshold (else when measured <= threshold)
    met: bool


def bench_targets(bench: Bench) -> list[BenchTarget]:
    """The targets the benchmark run checked, with its verdicts; the verdict is recomputed from
    the numbers, and a disagreement with the file's own is an error (a verdict is never trusted)."""
    out = []
    for i, t in enumerate(bench.extra.get("targets") or []):
        try:
            bt = BenchTarget(str(t["target"]), float(t["measured"]), float(t["threshold"]),
                             bool(t.get("at_least", True)), t["met"] is True)
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{bench.path}: targets[{i}] is malformed: {e}") from None
        met = bt.measured >= bt.threshold if bt.at_least else bt.measured <= bt.threshold
        if met != bt.met:
            raise DataError(f"{bench.path}: targets[{i}] ({bt.target}) says met={bt.met}, but "
                            f"{bt.measured} vs {bt.threshold} says otherwise")
        out.append(bt)
    return out


def bench_case_key(row: dict[str, Any]) -> tuple:
    """Rows with the same key are the implementations of one case."""
    return (row["op"], row["pass"], tuple(row["shape"]), row["threads"])


# ---- Reading a row: how far inside its allowance, and what kind of outcome -------------------------

# Rows of these kinds are demonstrations, not comparisons that pass when the error is small: a
# negative control passes when its check catches a changed term (or, for a term that is zero,
# when nothing changes), a pitfall passes when the trap behaves as the derivation says. Their
# errors are meant to be large, so they are never read against an allowance.
DEMONSTRATION_KINDS = ("negative_control", "pitfall")


def is_comparison(r: dict[str, Any]) -> bool:
    return r["kind"] not in DEMONSTRATION_KINDS


def allowance_ratio(r: dict[str, Any]) -> float | None:
    """|a − n| ÷ (atol + rtol·|n|) at the row's worst element (the element the comparison picked
    for the largest such ratio): below 1 passes. None for a demonstration row or when the row has
    no allowance to divide by; NaN (null in the file) is infinite."""
    if not is_comparison(r):
        return None
    a, n = r.get("analytic"), r.get("numeric")
    if a is None or n is None or r["max_abs_err"] is None:
        return math.inf
    allow = r["atol"] + r["rtol"] * abs(n)
    if allow <= 0:
        return None if abs(a - n) == 0 else math.inf
    return abs(a - n) / allow


def rel_defined(r: dict[str, Any]) -> bool:
    """False when no element of the row had |n| > atol, so that a relative error means nothing
    (a quantity that is 0, such as ∂σ²/∂μ): its max_rel_err of 0 is shown as "—"."""
    return r.get("rel_defined", True) is not False


def demonstration_outcome(r: dict[str, Any]) -> str:
    """What a demonstration row showed, in words: "caught", "no change" (a negative control of a
    term that is zero), or "shown" (a pitfall)."""
    if r["kind"] == "negative_control":
        note = r.get("note") or ""
        return "no change" if "not caught" in note else "caught"
    return "shown"


def worst_ratio(rows: list[dict[str, Any]]) -> tuple[float | None, dict[str, Any] | None]:
    """The largest allowance ratio over the comparison rows, and its row."""
    best, where = None, None
    for r in rows:
        q = allowance_ratio(r)
        if q is not None and (best is None or q > best):
            best, where = q, r
    return best, where


@dataclass
class Verdict:
    """The one line a formula's result reduces to."""
    status: str
    rows: int
    failed: int
    checks: int               # comparisons, counted once over the dtypes
    dtypes: list[str]
    per_dtype: dict[str, int]
    ratio: float | None       # worst error as a fraction of its allowance
    ratio_row: dict[str, Any] | None
    demonstrations: dict[str, int]  # outcome -> count, of the negative controls and pitfalls
    tests: int


def verdict_of(rows: list[dict[str, Any]]) -> Verdict:
    comparisons = [r for r in rows if is_comparison(r)]
    keys, dtypes, per_dtype = [], [], {}
    for r in comparisons:
        k = (r["test"], r["oracle"], r["kind"], tuple(r["shape"]), r.get("note") or "")
        if k not in keys:
            keys.append(k)
        if r["dtype"] not in dtypes:
            dtypes.append(r["dtype"])
        per_dtype[r["dtype"]] = per_dtype.get(r["dtype"], 0) + 1
    demos: dict[str, int] = {}
    for r in rows:
        if not is_comparison(r):
            o = demonstration_outcome(r)
            demos[o] = demos.get(o, 0) + 1
    ratio, where = worst_ratio(rows)
    return Verdict(status=status_of(rows), rows=len(rows), failed=sum(1 for r in rows if r["passed"] is not True),
                   checks=len(keys), dtypes=dtypes, per_dtype=per_dtype, ratio=ratio, ratio_row=where,
                   demonstrations=demos, tests=len(tests_of(rows)))


def fmt_ratio(q: float | None) -> str:
    """An error as a fraction of its allowance: two significant digits; "—" when there is none."""
    if q is None:
        return "\u2014"
    if math.isinf(q):
        return "\u221e"
    if q == 0:
        return "0"
    return f"{q:.2g}" if q < 100 else f"{q:.3g}"


def checks_phrase(v: Verdict) -> str:
    """"31 checks × 2 dtypes (float64, float32)" when every check ran in every dtype, else the
    count per dtype."""
    if not v.checks:
        return "no comparisons"
    n = len(v.dtypes)
    if v.checks * n == sum(v.per_dtype.values()):
        return (f"{v.checks} check{'s' if v.checks > 1 else ''} \u00d7 {n} dtype{'s' if n > 1 else ''} "
                f"({', '.join(v.dtypes)})")
    return f"{sum(v.per_dtype.values())} comparisons (" + ", ".join(f"{d}: {c}" for d, c in v.per_dtype.items()) + ")"


def demonstrations_phrase(v: Verdict) -> str:
    words = {"caught": "negative control{} caught, as derived",
             "no change": "negative control{} of a zero term changed nothing, as derived",
             "shown": "pitfall row{} behaved as derived"}
    parts = [f"{c} " + words[o].format("s" if c > 1 else "") for o, c in v.demonstrations.items()]
    return "; ".join(parts)


# ---- The error-against-step sweeps (verification/step_sweep.json) ---------------------------------

SWEEP_KEYS = ("op", "entry", "analytic", "h_central", "h_richardson", "central_at_policy",
              "richardson_at_policy", "complex_step", "dual", "h", "central", "richardson")


def load_sweeps(path: str | Path) -> dict[str, dict[str, Any]] | None:
    """op -> its sweep, or None when the file does not exist (this build ran no sweep)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the step sweeps: {e}") from None
    if not isinstance(data, dict) or data.get("schema") != 1 or not isinstance(data.get("sweeps"), list):
        raise DataError(f"{path}: expected {{\"schema\": 1, \"sweeps\": [...]}}")
    out = {}
    for i, s in enumerate(data["sweeps"]):
        missing = [k for k in SWEEP_KEYS if k not in s]
        if missing:
            raise DataError(f"{path}: sweeps[{i}] lacks {', '.join(missing)}")
        if not (len(s["h"]) == len(s["central"]) == len(s["richardson"])):
            raise DataError(f"{path}: sweeps[{i}]: h, central and richardson differ in length")
        out[s["op"]] = s
    return out
