#!/usr/bin/python3
"""Traceability check: the formula id is one thread through derivation, code, tests and results.

    traceability.py --results build/release/verification/results.json \\
             --test-binary build/release/tests/gradproof_tests [--root .]

Fails (exit 1, one line per problem) when:
  labels   a formula label in derivations/ names an id the catalog does not know, or has no code
           marker in src/, no test labelled with it, or no result row;
  catalog  a catalog formula has no formula label in derivations/;
  markers  a code marker `//! [id]` in src/ names an id with no formula label, or is unpaired;
  tests    a test label names an id with no formula label;
  rows     a result row (or negative control) failed, or names an id the catalog does not know,
           or results.json is older than the test binary (a stale run);
  include  a literalinclude in derivations/ or docs/ names a missing file or a marker that is
           not in it, or encloses nothing;
  pages    a formula label's page lacks the code (a literalinclude of its marker) or the measured
           result (a {gradproof-formula} block for it), or such a block names an unknown id.

A formula label is a MyST target whose name has the form <op>.<term> (`(bn.dvar_dmu)=`, or an
equation label `$$ ... $$ (bn.dvar_dmu)`); other targets (sections, pitfalls) use names without a
dot, e.g. `(bn-pitfalls)=`. Standard library only, so that ctest can run it anywhere.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gradproof_results as gr  # noqa: E402

FORMULA_ID = re.compile(r"^[a-z][a-z0-9_]*\.[a-z0-9_]+$")
TARGET_LINE = re.compile(r"^\(([^()\s]+)\)=\s*$")
EQUATION_LABEL = re.compile(r"\$\$\s*\(([^()\s]+)\)\s*$")
MARKER = re.compile(r"//!\s*\[([^\]\s]+)\]")
MARKER_LINE = re.compile(r"^\s*//!\s*\[([^\]\s]+)\]\s*$")  # a marker stands on its own line
DIRECTIVE = re.compile(r"^\s*(`{3,}|:{3,})\{([a-z-]+)\}\s*(.*?)\s*$")
OPTION = re.compile(r"^\s*:([a-z][a-z0-9_-]*):\s*(.*?)\s*$")


@dataclass
class Where:
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass
class Directive:
    name: str
    argument: str
    options: dict[str, str]
    where: Where


@dataclass
class Sources:
    labels: dict[str, list[Where]] = field(default_factory=dict)   # formula labels in derivations/
    markers: dict[str, list[Where]] = field(default_factory=dict)  # code markers in src/
    directives: list[Directive] = field(default_factory=list)      # in derivations/ and docs/


def unquote(v: str) -> str:
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
        return v[1:-1]
    return v


CODE_LIKE = {"literalinclude", "code-block", "code", "sourcecode", "graphviz", "math", "raw",
             "eval-rst", "doxygenfile", "doxygenclass", "doxygenstruct", "doxygenfunction"}


def parse_page(path: Path, shown: Path, src: Sources, collect_labels: bool) -> None:
    """Collects formula labels and directives. Code blocks and the bodies of code-like
    directives are skipped; the bodies of other directives (admonitions, ...) are read."""
    lines = path.read_text(encoding="utf-8").splitlines()
    stack: list[tuple[str, bool]] = []  # open fences: (fence, body is code)
    for i, line in enumerate(lines):
        where = Where(shown, i + 1)
        stripped = line.strip()
        if stack and stripped and stripped == stripped[0] * len(stripped) \
                and stripped[0] == stack[-1][0][0] and len(stripped) >= len(stack[-1][0]):
            stack.pop()
            continue
        in_code = any(code for _, code in stack)
        d = DIRECTIVE.match(line)
        if d and not in_code:
            options = {}
            for nxt in lines[i + 1:]:
                o = OPTION.match(nxt)
                if not o:
                    break
                options[o.group(1)] = unquote(o.group(2))
            src.directives.append(Directive(d.group(2), d.group(3), options, where))
            stack.append((d.group(1), d.group(2) in CODE_LIKE))
            continue
        f = re.match(r"^\s*(`{3,}|~{3,})", line)
        if f:
            stack.append((f.group(1), True))
            continue
        if in_code or not collect_labels:
            continue
        for m in (TARGET_LINE.match(line), EQUATION_LABEL.search(line)):
            if m and "." in m.group(1):
                src.labels.setdefault(m.group(1), []).append(where)


def scan(root: Path) -> Sources:
    src = Sources()
    deriv = root / "derivations"
    for page in sorted(deriv.glob("*.md")) if deriv.is_dir() else []:
        parse_page(page, page.relative_to(root), src, collect_labels=True)
    docs = root / "docs"
    for page in sorted(docs.rglob("*.md")) if docs.is_dir() else []:
        rel = page.relative_to(docs)
        if rel.parts[0] in ("derivations", "_build") or rel.parts[0].startswith("."):
            continue  # docs/derivations is a link to ../derivations, already read
        parse_page(page, page.relative_to(root), src, collect_labels=False)
    for code in sorted((root / "src").rglob("*")):
        if code.suffix not in (".hpp", ".cpp", ".h"):
            continue
        for i, line in enumerate(code.read_text(encoding="utf-8").splitlines()):
            m = MARKER_LINE.match(line)
            if m:
                src.markers.setdefault(m.group(1), []).append(Where(code.relative_to(root), i + 1))
    return src


def include_target(root: Path, page: Path, arg: str) -> Path:
    """Where Sphinx finds a literalinclude: '/x' is relative to the source dir (docs/), anything
    else to the page's directory as Sphinx sees it (derivations/ pages sit in docs/derivations)."""
    docs = root / "docs"
    if arg.startswith("/"):
        return Path(os.path.normpath(docs / arg.lstrip("/")))
    seen_dir = docs / page.parent.relative_to("docs") if page.parts[0] == "docs" else docs / page.parent
    return Path(os.path.normpath(seen_dir / arg))


def included_lines(text: str, start: str | None, end: str | None) -> list[str] | None:
    """The lines literalinclude takes (Sphinx's start-after / end-before), None if a marker is
    not found."""
    lines = text.splitlines()
    if start is not None:
        idx = next((i for i, ln in enumerate(lines) if start in ln), None)
        if idx is None:
            return None
        lines = lines[idx + 1:]
    if end is not None:
        idx = next((i for i, ln in enumerate(lines) if end in ln), None)
        if idx is None:
            return None
        lines = lines[:idx]
    return lines


def test_labels(binary: Path) -> tuple[list[str], dict[str, list[str]]]:
    def run(*args):
        p = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"{binary} {' '.join(args)} exited with {p.returncode}: {p.stderr.strip()}")
        return p.stdout + p.stderr  # Boost.Test prints listings on stderr in some versions

    return gr.parse_list_labels(run("--list_labels")), gr.parse_dot_labels(run("--list_content=DOT"))


def check(root: Path, results: gr.Results, labels: list[str], labelled_tests: dict[str, list[str]],
          binary: Path | None = None) -> list[str]:
    src = scan(root)
    problems: list[str] = []

    def bad(rule: str, msg: str) -> None:
        problems.append(f"[{rule}] {msg}")

    catalog = {f["id"] for f in results.formulas}
    row_ids = {r["formula"] for r in results.rows}
    derived = set(src.labels)

    if sorted(set(labels)) != sorted(labelled_tests):
        bad("tests", f"--list_labels {sorted(set(labels))} and the DOT listing {sorted(labelled_tests)} disagree")

    for fid, wheres in sorted(src.labels.items()):
        at = wheres[0]
        if not FORMULA_ID.match(fid):
            bad("labels", f"{at}: formula label {fid!r} is not of the form <op>.<term> (lower case)")
        if fid not in catalog:
            bad("labels", f"{at}: {fid} is not in the formula catalog (src/gradproof/catalog/)")
        if fid not in src.markers:
            bad("labels", f"{at}: {fid} has no code marker //! [{fid}] in src/")
        if fid not in labels:
            bad("labels", f"{at}: no test is labelled {fid}")
        if fid not in row_ids:
            bad("labels", f"{at}: {fid} has no result row in {results.path}")
        pages = {w.path for w in wheres}
        if len([w for w in wheres if w.path == at.path]) > 2 or len(pages) > 1:
            bad("labels", f"{at}: {fid} is labelled more than once: {', '.join(map(str, wheres))}")

    for fid in sorted(catalog - derived):
        bad("catalog", f"catalog formula {fid} has no formula label ({fid})= in derivations/")

    for fid, wheres in sorted(src.markers.items()):
        if fid not in derived:
            bad("markers", f"{wheres[0]}: code marker //! [{fid}] names no formula label in derivations/")
        per_file: dict[Path, int] = {}
        for w in wheres:
            per_file[w.path] = per_file.get(w.path, 0) + 1
        for path, n in per_file.items():
            if n % 2:
                bad("markers", f"{path}: marker //! [{fid}] appears {n} times; markers come in pairs")

    for lab in sorted(set(labels)):
        if lab not in derived:
            tests = ", ".join(labelled_tests.get(lab, [])) or "?"
            bad("tests", f"test label {lab} (on {tests}) names no formula label in derivations/")

    for r in results.rows:
        if r["formula"] not in catalog:
            bad("rows", f"a row of test {r['test']} names {r['formula']}, which the catalog does not know")
        if r["passed"] is not True:
            bad("rows", f"FAILED {r['formula']} {r['test']} oracle={r['oracle']} dtype={r['dtype']} "
                        f"shape={gr.fmt_shape(r['shape'])} max_abs_err={gr.fmt_num(r['max_abs_err'])} "
                        f"(atol={gr.fmt_num(r['atol'])}, rtol={gr.fmt_num(r['rtol'])})")
    for a in results.ablation:
        if a["passed"] is not True:
            bad("rows", f"FAILED negative control {a['term']} ({a['change']}): caught={a['caught']}, "
                        f"expected {a['expected_caught']}")
    if binary is not None and binary.exists() and results.path.stat().st_mtime < binary.stat().st_mtime:
        bad("rows", f"{results.path} is older than {binary}: rerun the tests (ctest) before checking")

    included: dict[Path, set[str]] = {}  # page -> markers its literalincludes pull in
    shown: dict[Path, set[str]] = {}     # page -> ids of its gradproof-formula blocks
    for d in src.directives:
        if d.name == "literalinclude":
            target = include_target(root, d.where.path, d.argument)
            if not target.is_file():
                bad("include", f"{d.where}: literalinclude {d.argument}: no file {target}")
                continue
            start, end = d.options.get("start-after"), d.options.get("end-before")
            body = included_lines(target.read_text(encoding="utf-8"), start, end)
            if body is None:
                bad("include", f"{d.where}: marker {start!r} / {end!r} not found in {target.relative_to(root)}")
            elif not any(ln.strip() for ln in body):
                bad("include", f"{d.where}: markers {start!r} / {end!r} enclose nothing")
            for opt in (start, end):
                m = MARKER.search(opt or "")
                if m:
                    included.setdefault(d.where.path, set()).add(m.group(1))
                    if m.group(1) not in derived:
                        bad("include", f"{d.where}: literalinclude of marker {m.group(1)}, which has no formula label")
        elif d.name == "gradproof-formula":
            shown.setdefault(d.where.path, set()).add(d.argument)
            if d.argument not in derived:
                bad("pages", f"{d.where}: gradproof-formula {d.argument!r} names no formula label")

    for fid, wheres in sorted(src.labels.items()):
        page = wheres[0].path
        if fid not in included.get(page, set()):
            bad("pages", f"{page}: formula {fid} is labelled but its code is not shown "
                         f"(literalinclude with :start-after: \"//! [{fid}]\")")
        if fid not in shown.get(page, set()):
            bad("pages", f"{page}: formula {fid} is labelled but its measured result is not shown "
                         f"(```{{gradproof-formula}} {fid}```)")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2])
    ap.add_argument("--results", type=Path, required=True, help="results.json of this build")
    ap.add_argument("--test-binary", type=Path, required=True, help="gradproof_tests of this build")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each id and where it appears")
    args = ap.parse_args(argv)
    try:
        results = gr.load_results(args.results)
        labels, labelled_tests = test_labels(args.test_binary)
    except (gr.DataError, RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        print(f"trace: {e}", file=sys.stderr)
        return 1
    problems = check(args.root.resolve(), results, labels, labelled_tests, args.test_binary)
    src = scan(args.root.resolve())
    if args.verbose:
        for fid in sorted(set(src.labels) | {f["id"] for f in results.formulas}):
            rows = results.rows_of(fid)
            print(f"{fid}: label {', '.join(map(str, src.labels.get(fid, []))) or '-'}; "
                  f"marker {', '.join(map(str, src.markers.get(fid, [])[:1])) or '-'}; "
                  f"tests {', '.join(labelled_tests.get(fid, [])) or '-'}; "
                  f"{len(rows)} rows, {gr.status_of(rows)}")
    summary = (f"{len(src.labels)} formula labels, {len(src.markers)} code markers, {len(set(labels))} "
               f"test labels, {len(results.formulas)} catalog formulas, {len(results.rows)} result rows")
    if problems:
        for p in problems:
            print(p, file=sys.stderr)
        print(f"trace: {len(problems)} problems ({summary})", file=sys.stderr)
        return 1
    print(f"trace: every id is traced: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
