"""Sphinx directives that render what this build measured, and the offline MathJax.

    ```{gradproof-formula} bn.dvar_dmu
    ```
        one formula: its status (VERIFIED / FAILED / NOT VERIFIED), the tests that checked it with
        the command that runs only them, and its measured rows per test x oracle x dtype.
    ```{gradproof-ablation} bn
    ```
        the negative controls of one op.
    ```{gradproof-report}
    ```
        totals, then every formula x oracle x dtype, failures and gaps first in view.
    ```{gradproof-bench}
    ```
        the benchmark table and plot, or a box saying that this build ran no benchmark.

Everything comes from the files of this build (config values gradproof_results and
gradproof_bench, set by conf.py from the environment that build.sh provides); the pages depend on
those files, so an incremental build re-reads them when a new test run rewrites the results.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util.docutils import SphinxDirective

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gradproof_results as gr  # noqa: E402

logger = logging.getLogger(__name__)

STATUS_CLASS = {gr.VERIFIED: "verified", gr.FAILED: "failed", gr.NOT_VERIFIED: "not-verified"}
# Furo colours admonitions by class: green for tip, red for danger, orange for warning.
STATUS_ADMONITION = {gr.VERIFIED: "tip", gr.FAILED: "danger", gr.NOT_VERIFIED: "warning"}
STATUS_MARK = {gr.VERIFIED: "\u2714 VERIFIED", gr.FAILED: "\u2718 FAILED", gr.NOT_VERIFIED: "\u2718 NOT VERIFIED"}


# ---- Building docutils nodes -----------------------------------------------------------------

def text_cell(content: Any) -> nodes.entry:
    entry = nodes.entry()
    if isinstance(content, nodes.Node):
        entry += content if isinstance(content, (nodes.paragraph, nodes.container)) else nodes.paragraph("", "", content)
    else:
        entry += nodes.paragraph(text=str(content))
    return entry


def make_table(headers: list[str], body: list[list[Any]], classes: list[str] | None = None,
               row_classes: list[list[str]] | None = None) -> nodes.table:
    table = nodes.table(classes=["gradproof-table"] + (classes or []))
    group = nodes.tgroup(cols=len(headers))
    table += group
    for _ in headers:
        group += nodes.colspec(colwidth=1)
    thead = nodes.thead()
    group += thead
    hrow = nodes.row()
    for h in headers:
        hrow += text_cell(h)
    thead += hrow
    tbody = nodes.tbody()
    group += tbody
    for i, cells in enumerate(body):
        row = nodes.row(classes=(row_classes[i] if row_classes else []))
        for c in cells:
            row += text_cell(c)
        tbody += row
    return table


def verdict(passed: bool, n_failed: int = 0, n: int = 0) -> nodes.inline:
    if passed:
        return nodes.inline(text="\u2714 pass", classes=["gradproof-pass"])
    label = f"\u2718 FAIL ({n_failed} of {n})" if n else "\u2718 FAIL"
    return nodes.inline(text=label, classes=["gradproof-fail"])


def status_box(status: str, title: str, body: list[nodes.Node]) -> nodes.admonition:
    box = nodes.admonition(classes=["gradproof-status", f"gradproof-{STATUS_CLASS[status]}",
                                    STATUS_ADMONITION[status]])
    box += nodes.title(text=f"{STATUS_MARK[status]}: {title}")
    for b in body:
        box += b
    return box


class formula_ref(nodes.inline):
    """A formula id that becomes a link to its derivation once all labels are known."""


def resolve_formula_refs(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    labels = app.env.get_domain("std").labels  # name -> (docname, labelid, section name)
    for node in list(doctree.findall(formula_ref)):
        fid = node["formula"]
        text = nodes.literal(text=fid)
        if fid in labels and app.builder.format == "html":
            target_doc, label_id, _ = labels[fid]
            uri = app.builder.get_relative_uri(docname, target_doc) + "#" + label_id
            ref = nodes.reference("", "", text, internal=True, refuri=uri)
            node.replace_self(ref)
        else:
            node.replace_self(text)


class missing_derivations(nodes.container):
    """Becomes a warning box listing the catalog formulas that no page derives (known only once
    every page has been read), or nothing when every formula has its derivation."""


def resolve_missing_derivations(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    labels = app.env.get_domain("std").labels
    for node in list(doctree.findall(missing_derivations)):
        missing = [fid for fid in node["formulas"] if fid not in labels]
        if not missing:
            node.replace_self([])
            continue
        box = nodes.admonition(classes=["gradproof-status", "gradproof-not-derived", "warning"])
        box += nodes.title(text=f"\u2718 NOT DERIVED: {len(missing)} of {len(node['formulas'])} catalog "
                                "formulas have no derivation on this site")
        box += nodes.paragraph(text="They are checked by the tests (their rows are below), but no page of "
                                    "derivations/ labels them: " + ", ".join(missing) + ".")
        node.replace_self(box)


def ref_to(fid: str) -> formula_ref:
    return formula_ref("", "", formula=fid)


# ---- Shared state: the results of this build ---------------------------------------------------

def load(env) -> gr.Results | None:
    """The results, read once per build; None (after a warning) when unreadable."""
    cache = getattr(env.app, "_gradproof_results", "unread")
    if cache == "unread":
        path = env.config.gradproof_results
        try:
            cache = gr.load_results(path) if path else None
            if cache is None:
                logger.warning("gradproof_results is not set: no measured results to show")
        except gr.DataError as e:
            logger.warning(str(e))
            cache = None
        env.app._gradproof_results = cache
    return cache


def note_code_dependencies(env) -> None:
    """Pages rendered by this code are re-read when it changes, not only when their text does."""
    env.note_dependency(__file__)
    env.note_dependency(gr.__file__)


class ResultsDirective(SphinxDirective):
    def results(self) -> gr.Results | None:
        note_code_dependencies(self.env)
        path = self.config.gradproof_results
        if path:
            self.env.note_dependency(os.path.abspath(path))  # re-read this page when it changes
        return load(self.env)

    def provenance(self, res: gr.Results) -> str:
        return f"preset {res.preset}, run {res.generated_utc}, {res.compiler}"


# ---- {gradproof-formula} ---------------------------------------------------------------------

# An integer tuple such as (6,) or (2, 5): the shape a note names. Notes that differ only in these
# say the same thing about different shapes, which the test line lists once anyway.
_SHAPE_IN_NOTE = re.compile(r"\((?:\d+, )*\d+,?\)")


def notes_of(rows: list[dict[str, Any]]) -> str:
    """The distinct notes of `rows`, in order; notes differing only in a shape are given once."""
    notes: list[str] = []
    seen: dict[str, int] = {}  # note with shapes blanked -> its index in notes
    for r in rows:
        n = r.get("note") or ""
        if not n:
            continue
        key = _SHAPE_IN_NOTE.sub("(\u2026)", n)
        if key in seen:
            notes[seen[key]] = key  # a second shape: say it once, without the shape
        else:
            seen[key] = len(notes)
            notes.append(n)
    return "; ".join(notes)


def failing_rows_table(rows: list[dict[str, Any]], with_formula: bool = False) -> nodes.table:
    """One line per failing row, with the worst element: the numbers to start debugging from."""
    headers = (["formula", "test"] if with_formula else []) + [
        "oracle", "dtype", "shape", "worst at", "analytic", "oracle value", "|a \u2212 n|", "allowed"]
    body = []
    for r in rows:
        a, n = r.get("analytic"), r.get("numeric")
        allowed = r["atol"] + r["rtol"] * abs(n) if isinstance(n, (int, float)) else None
        err = abs(a - n) if isinstance(a, (int, float)) and isinstance(n, (int, float)) else None
        body.append(([ref_to(r["formula"]), nodes.literal(text=r["test"])] if with_formula else []) + [
            r["oracle"], r["dtype"], gr.fmt_shape(r["shape"]), gr.fmt_shape(r.get("worst_index", [])),
            gr.fmt_num(a), gr.fmt_num(n), gr.fmt_num(err), gr.fmt_num(allowed)])
    return make_table(headers, body, ["gradproof-failing-rows"], [["gradproof-row-failed"]] * len(body))


def oracle_cell(g: gr.Group) -> nodes.paragraph:
    """The oracle, with the kind of check under it when it is not a plain comparison."""
    para = nodes.paragraph(text=g.oracle)
    if g.kind not in ("oracle", g.oracle):
        para += nodes.inline(text=g.kind.replace("_", " "), classes=["gradproof-kind"])
    return para


MEASURED = ["rows", "max abs err", "max rel err", "atol", "rtol", "result"]


def measured_cells(g: gr.Group) -> list[Any]:
    """What a group of rows measured, and the verdict (columns MEASURED)."""
    return [str(len(g.rows)), gr.fmt_num(g.max_abs_err), gr.fmt_num(g.max_rel_err),
            gr.fmt_range(*g.atol_range), gr.fmt_range(*g.rtol_range), verdict(g.passed, g.n_failed, len(g.rows))]


def group_table(groups: list[gr.Group], first: list[str], first_cells) -> nodes.table:
    """Measured errors and tolerances, one line per group."""
    body = [first_cells(g) + measured_cells(g) for g in groups]
    classes = [[] if g.passed else ["gradproof-row-failed"] for g in groups]
    return make_table(first + MEASURED, body, ["gradproof-rows"], classes)


class FormulaDirective(ResultsDirective):
    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        fid = self.arguments[0]
        res = self.results()
        out = nodes.container(classes=["gradproof-formula"], ids=[f"result-{nodes.make_id(fid)}"])
        if res is None:
            out += status_box(gr.NOT_VERIFIED, f"{fid}: no results file in this build", [
                nodes.paragraph(text="The test run of this build wrote no readable results.json.")])
            return [out]
        formula = res.formula(fid)
        if formula is None:
            logger.warning(f"gradproof-formula: {fid} is not in the formula catalog",
                           location=self.get_location())
        rows = res.rows_of(fid)
        status = gr.status_of(rows)
        title = formula["title"] if formula else "(not in the catalog)"
        n_failed = sum(1 for r in rows if r["passed"] is not True)
        tests = gr.tests_of(rows)
        if status == gr.VERIFIED:
            summary = f"All {len(rows)} result rows from {len(tests)} tests passed in this build"
        elif status == gr.FAILED:
            summary = f"{n_failed} of {len(rows)} result rows FAILED in this build"
        else:
            summary = "No result rows in this build: nothing has checked this formula"
        head = nodes.paragraph()
        head += nodes.literal(text=fid)
        head += nodes.Text(f" \u2014 {title}. {summary} ({self.provenance(res)}).")
        out += status_box(status, fid, [head])

        out += nodes.paragraph(text="Run only the tests labelled with this formula:" if tests else
                               "No test produced a result row for this formula. The tests labelled "
                               "with it, if any, run with:")
        out += nodes.literal_block(text=gr.run_only_command(f"build/{res.preset}/tests/gradproof_tests", fid),
                                   language="none")
        for test in tests:
            trows = [r for r in rows if r["test"] == test]
            shapes = []
            for r in trows:
                if gr.fmt_shape(r["shape"]) not in shapes:
                    shapes.append(gr.fmt_shape(r["shape"]))
            para = nodes.paragraph(classes=["gradproof-test"])
            para += nodes.strong(text="Test ")
            para += nodes.literal(text=test)
            para += nodes.Text(f" \u2014 {notes_of(trows)}. Shapes: {', '.join(shapes)}.")
            out += para
            out += group_table(gr.group_rows(trows), ["oracle (kind)", "dtype"], lambda g: [oracle_cell(g), g.dtype])
            failing = [r for r in trows if r["passed"] is not True]
            if failing:
                out += nodes.paragraph(text=f"Its {len(failing)} failing rows, at the worst element:",
                                       classes=["gradproof-fail"])
                out += failing_rows_table(failing)
        return [out]


# ---- {gradproof-ablation} --------------------------------------------------------------------

def ablation_table(rows: list[dict[str, Any]]) -> nodes.table:
    body, classes = [], []
    for a in rows:
        body.append([ref_to(a["term"]), a["change"], gr.fmt_num(a.get("max_abs_err")),
                     gr.fmt_num(a.get("max_rel_err")), "caught" if a["caught"] else "not caught",
                     "caught" if a["expected_caught"] else "not caught",
                     verdict(a["passed"] is True), a.get("note", "")])
        classes.append([] if a["passed"] is True else ["gradproof-row-failed"])
    return make_table(["term", "change", "max abs err", "max rel err", "measured", "expected",
                       "result", "what was compared"], body, ["gradproof-ablation"], classes)


class AblationDirective(ResultsDirective):
    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        op = self.arguments[0]
        res = self.results()
        rows = res.ablation_of(op) if res else []
        if not rows:
            return [status_box(gr.NOT_VERIFIED, f"no negative controls for {op} in this build", [
                nodes.paragraph(text="The test run of this build wrote no ablation rows for this op.")])]
        failed = [a for a in rows if a["passed"] is not True]
        status = gr.FAILED if failed else gr.VERIFIED
        title = (f"{len(failed)} of {len(rows)} negative controls did not behave as expected" if failed
                 else f"all {len(rows)} negative controls behaved as expected")
        out = nodes.container(classes=["gradproof-ablation-block"])
        out += status_box(status, title, [nodes.paragraph(text=self.provenance(res) + ".")])
        out += ablation_table(rows)
        return [out]


# ---- {gradproof-report} ----------------------------------------------------------------------

class ReportDirective(ResultsDirective):
    def run(self) -> list[nodes.Node]:
        res = self.results()
        if res is None:
            return [status_box(gr.NOT_VERIFIED, "no results file in this build", [
                nodes.paragraph(text="The test run of this build wrote no readable results.json.")])]
        t = gr.totals(res)
        out: list[nodes.Node] = []
        bad = t.failed or t.formulas_without_rows or t.unknown_row_formulas or t.ablation_failed
        status = gr.FAILED if t.failed or t.ablation_failed or t.unknown_row_formulas \
            else gr.NOT_VERIFIED if t.formulas_without_rows else gr.VERIFIED
        headline = (f"{len(t.formulas_verified)} of {t.formulas} formulas verified; "
                    f"{t.failed} of {t.rows} result rows failed; "
                    f"{len(t.formulas_without_rows)} formulas have no result rows")
        body = [nodes.paragraph(text=f"Results of this build: {self.provenance(res)}.")]
        lists = [("Failing formulas", t.formulas_failed), ("Formulas with no result rows", t.formulas_without_rows),
                 ("Rows naming formulas the catalog does not know", t.unknown_row_formulas)]
        for name, ids in lists:
            if ids:
                p = nodes.paragraph(classes=["gradproof-fail"])
                p += nodes.strong(text=f"{name}: ")
                for i, fid in enumerate(ids):
                    if i:
                        p += nodes.Text(", ")
                    p += ref_to(fid)
                body.append(p)
        if not bad:
            body.append(nodes.paragraph(text="Every formula of the catalog has result rows and every row passed."))
        out.append(status_box(status, headline, body))
        out.append(missing_derivations(formulas=[f["id"] for f in res.formulas]))
        out.append(make_table(
            ["formulas", "verified", "failed", "no rows", "result rows", "passed", "failed",
             "negative controls", "controls failed"],
            [[t.formulas, len(t.formulas_verified), len(t.formulas_failed), len(t.formulas_without_rows),
              t.rows, t.passed, t.failed, t.ablation, t.ablation_failed]], ["gradproof-totals"]))

        # Every formula x oracle x dtype (x kind), catalog order; a formula without rows gets a line too.
        body, classes = [], []
        for f in res.formulas + [{"id": fid, "title": "(not in the catalog)"} for fid in t.unknown_row_formulas]:
            rows = res.rows_of(f["id"])
            if not rows:
                body.append([ref_to(f["id"]), "\u2014", "\u2014", "0", "\u2014", "\u2014", "\u2014",
                             "\u2014", nodes.inline(text="\u2718 NOT VERIFIED: no result rows",
                                                    classes=["gradproof-fail"])])
                classes.append(["gradproof-first", "gradproof-row-failed"])
                continue
            groups = gr.group_rows(rows, by_test=False)
            for i, g in enumerate(groups):  # the id once per formula, a rule above each formula
                body.append([ref_to(f["id"]) if i == 0 else "", oracle_cell(g), g.dtype] + measured_cells(g))
                classes.append((["gradproof-first"] if i == 0 else []) +
                               ([] if g.passed else ["gradproof-row-failed"]))
        section = nodes.rubric(text="Every formula \u00d7 oracle \u00d7 dtype")
        out += [section, make_table(["formula", "oracle (kind)", "dtype"] + MEASURED, body,
                                    ["gradproof-report"], classes)]
        failing = [r for r in res.rows if r["passed"] is not True]
        if failing:
            out += [nodes.rubric(text=f"The {len(failing)} failing rows"),
                    failing_rows_table(failing, with_formula=True)]
        if res.ablation:
            out += [nodes.rubric(text="Negative controls"), ablation_table(res.ablation)]
        return out


# ---- {gradproof-bench} -----------------------------------------------------------------------

def bench_plot(bench: gr.Bench, target: Path) -> None:
    """Grouped bars: effective GB/s of every implementation per case, with the measured bandwidth."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.hashsalt"] = "gradproof"  # stable ids: the same data gives the same file
    cases: list[tuple] = []
    impls: list[str] = []
    for r in bench.rows:
        if gr.bench_case_key(r) not in cases:
            cases.append(gr.bench_case_key(r))
        if r["impl"] not in impls:
            impls.append(r["impl"])
    value = {(gr.bench_case_key(r), r["impl"]): r["gbps"] for r in bench.rows}
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(cases) + 2), 4.2), dpi=100)
    width = 0.8 / max(1, len(impls))
    for j, impl in enumerate(impls):
        xs = [i + (j - (len(impls) - 1) / 2) * width for i in range(len(cases))]
        ys = [value.get((c, impl), 0.0) or 0.0 for c in cases]
        ax.bar(xs, ys, width, label=impl)
    for name, gbps in bench.bandwidth.items():
        ax.axhline(gbps, linestyle="--", linewidth=1, color="black")
        ax.annotate(f"measured {name}: {gbps:.1f} GB/s", (-0.45, gbps), ha="left", va="bottom", fontsize=8)
    top = max([v or 0.0 for v in value.values()] + list(bench.bandwidth.values()) + [1.0])
    ax.set_ylim(0, 1.12 * top)
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([f"{op} {ps}\n{'x'.join(map(str, shape))}\n{th} thr" for op, ps, shape, th in cases],
                       fontsize=7)
    ax.set_ylabel("effective GB/s (minimum traffic)")
    ax.legend(fontsize=8, ncol=len(impls), loc="lower left", bbox_to_anchor=(0, 1.01), frameon=False)
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, format="svg", metadata={"Date": None})
    plt.close(fig)


def fmt_target(t: gr.BenchTarget, v: float) -> str:
    """A fraction of bandwidth as a percentage, a ratio of times as a factor."""
    return f"{100 * v:.1f}%" if "fraction" in t.target else f"{v:.2f}\u00d7"


class BenchDirective(SphinxDirective):
    def run(self) -> list[nodes.Node]:
        path = self.config.gradproof_bench
        note_code_dependencies(self.env)
        if path:
            self.env.note_dependency(os.path.abspath(path))
        try:
            bench = gr.load_bench(path) if path else None
        except gr.DataError as e:
            logger.warning(str(e), location=self.get_location())
            bench = None
        if bench is None:
            box = nodes.admonition(classes=["gradproof-status", "gradproof-no-bench", "warning"])
            box += nodes.title(text="No benchmark run in this build")
            shown = os.path.relpath(path, Path(self.env.srcdir).parent) if path else "benchmark results file"
            box += nodes.paragraph(text=f"There is no {shown}: this build ran no "
                                        "benchmark, so this page shows no measurement. "
                                        "Run ./build.sh bench, then rebuild the site.")
            return [box]
        out: list[nodes.Node] = []
        profile = bench.extra.get("profile")
        if isinstance(profile, dict) and profile.get("name"):
            # Which profile measured this page, on which machine, and how to get the other one.
            cpu = bench.machine.get("cpu", "this machine")
            para = nodes.paragraph(classes=["gradproof-bench-profile"])
            para += nodes.strong(text=f"Profile: {profile['name']}. ")
            what = str(profile.get("what", ""))
            para += nodes.Text(f"{what[:1].upper() + what[1:]}; measured on {cpu}"
                               f"{', ' + bench.machine['logical cpus'] + ' logical CPUs' if bench.machine.get('logical cpus') else ''}"
                               f", load average at start {bench.machine.get('load average at start', 'not recorded')}. ")
            if profile.get("other"):
                para += nodes.Text(f"For the other profile: {profile['other']}.")
            out.append(para)
        try:
            targets = gr.bench_targets(bench)
        except gr.DataError as e:
            logger.warning(str(e), location=self.get_location())
            targets = []
        if targets:
            missed = [t for t in targets if not t.met]
            status = gr.VERIFIED if not missed else gr.FAILED
            title = (f"{len(targets) - len(missed)} of {len(targets)} performance targets met in this run"
                     if missed else f"all {len(targets)} performance targets met in this run")
            out.append(status_box(status, title, [nodes.paragraph(
                text="Each target compares figures of this run's table below; the page text explains what "
                     "bounds the ones at or near their line.")]))
            out.append(make_table(
                ["target", "measured", "required", "verdict"],
                [[t.target, fmt_target(t, t.measured), ("\u2265 " if t.at_least else "\u2264 ") + fmt_target(t, t.threshold),
                  verdict(t.met)] for t in targets],
                ["gradproof-bench-targets"]))
        facts = [(k, v) for k, v in bench.machine.items()] + \
                [(f"measured bandwidth ({k})", f"{v:.1f} GB/s") for k, v in bench.bandwidth.items()]
        if facts:
            out.append(make_table(["machine", ""], [[k, v] for k, v in facts], ["gradproof-machine"]))
        # Optional columns, shown when the run recorded them: the layout conversion a caller with
        # NCHW data would add (oneDNN's blocked layout), and the agreement with a float64 reference.
        has_extra = any(r.get("extra_ms") is not None for r in bench.rows)
        has_agree = any(r.get("agreement") is not None for r in bench.rows)
        body = []
        for r in bench.rows:
            frac = r.get("fraction_of_bandwidth")
            cells = [r["op"], r["pass"], nodes.literal(text=r["impl"]), gr.fmt_shape(r["shape"]),
                     str(r["threads"]), f"{r['median_ms']:.3f}", f"{r['min_ms']:.3f} \u2013 {r['max_ms']:.3f}",
                     f"{r['gbps']:.1f}" if r["gbps"] is not None else "\u2014",
                     f"{100 * frac:.0f}%" if frac is not None else "\u2014"]
            if has_extra:
                cells.append(f"+{r['extra_ms']:.3f}" if r.get("extra_ms") is not None else "")
            if has_agree:
                cells.append(f"{r['agreement']:.1e}" if r.get("agreement") is not None else "\u2014")
            body.append(cells)
        headers = ["op", "pass", "impl", "shape", "threads", "median ms", "min \u2013 max ms", "GB/s", "of bandwidth"]
        headers += ["layout conversion ms"] if has_extra else []
        headers += ["rel. diff. from float64"] if has_agree else []
        out.append(make_table(headers, body, ["gradproof-bench"]))
        target = Path(self.config.gradproof_generated_dir) / "bench.svg"
        bench_plot(bench, target)
        uri = "/" + os.path.relpath(target, self.env.srcdir)  # '/...' is relative to the source dir
        out.append(nodes.image(uri=uri, alt="Effective bandwidth of every implementation per case",
                               classes=["gradproof-bench-plot"]))
        return out


# ---- Offline MathJax ------------------------------------------------------------------------

# MathJax 2.7 from Debian's libjs-mathjax: the combined configuration TeX-AMS_CHTML (core, TeX
# input with AMS, CommonHTML output) and what it loads on demand: the CHTML font metrics, the
# operator tables, the TeX extensions that macros autoload, the menu and zoom (right click), and
# the TeX web fonts (about 1.2 MB in all). The browser test fails on any request left unanswered.
MATHJAX_FILES = [
    "MathJax.js",
    "config/TeX-AMS_CHTML.js",
    "extensions/MathMenu.js",
    "extensions/MathZoom.js",
]
MATHJAX_DIRS = [
    "jax/output/CommonHTML",
    "jax/element/mml/optable",
    "extensions/TeX",
    "fonts/HTML-CSS/TeX/woff",
]
MATHJAX_CONFIG = {
    "tex2jax": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]], "processEscapes": False},
    # Errors must show as errors (the browser test looks for them), not as the TeX source.
    "TeX": {"equationNumbers": {"autoNumber": "none"}, "noErrors": {"disabled": True},
            "noUndefined": {"disabled": True}},
    "CommonHTML": {"linebreaks": {"automatic": False}},
    "messageStyle": "none",
    "showMathMenu": False,
    "menuSettings": {"zoom": "None"},
    # No quick preview typeset first and replaced after: each formula is typeset once (faster for
    # a reader, and for the browser test, which typesets every page twice).
    "fast-preview": {"disabled": True},
}


def configure_mathjax(app: Sphinx) -> None:
    """MyST puts its MathJax settings into mathjax3_config (the v3 name) even for v2, and Sphinx
    would then load MathJax as v3 and drop the v2 settings. Move them to mathjax2_config."""
    if app.builder.format != "html":
        return
    v3 = app.config.mathjax3_config or {}
    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in MATHJAX_CONFIG.items()}
    process = v3.get("options", {}).get("processHtmlClass")
    if process:
        cfg["tex2jax"]["processClass"] = process  # MyST marks its sections mathjax_ignore otherwise
    app.config.mathjax3_config = None
    app.config.mathjax2_config = cfg


def copy_mathjax(app: Sphinx, exc: Exception | None) -> None:
    if exc is not None or app.builder.format != "html":
        return
    src = Path(app.config.gradproof_mathjax_src)
    dst = Path(app.outdir) / "_static" / "mathjax"
    if not (src / "MathJax.js").is_file():
        logger.warning(f"MathJax not found in {src} (Debian package libjs-mathjax)")
        return
    shutil.rmtree(dst, ignore_errors=True)  # exactly the files listed, nothing left from before
    for rel in MATHJAX_FILES:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dst / rel)
    for rel in MATHJAX_DIRS:
        shutil.copytree(src / rel, dst / rel, dirs_exist_ok=True)


# ---- Debian's Furo, made to work offline ------------------------------------------------------

def repair_furo(app: Sphinx, exc: Exception | None) -> None:
    """Debian's furo (2022.12.07+dfsg) ships its sources unbundled: furo.js is an ES module that
    imports gumshoe-patched.js (a classic script fails on the import; a module script is blocked
    on file://), and furo.css imports normalize.css from /javascript/normalize.css/, a path of
    Debian's web server, not of this site. Rebuild both as plain files in the site's _static."""
    if exc is not None or app.builder.format != "html" or app.config.html_theme != "furo":
        return
    import furo

    theme_static = Path(furo.__file__).parent / "theme" / "furo" / "static"
    static = Path(app.outdir) / "_static"
    gumshoe = (theme_static / "scripts" / "gumshoe-patched.js").read_text(encoding="utf-8")
    main = (theme_static / "scripts" / "furo.js").read_text(encoding="utf-8")
    imports = 'import Gumshoe from "./gumshoe-patched.js";'
    # Gumshoe (the table-of-contents scroll spy) reads contents[-1].content even when a page's
    # table of contents has no entries, and a short page (the landing page) is "at the bottom":
    # a TypeError in the console on every load. Return early when there is nothing to spy on.
    empty_toc = "var last = contents[contents.length - 1];"
    gumshoe = gumshoe.replace(empty_toc, "if (!contents.length) return;\n      " + empty_toc)
    css = (theme_static / "styles" / "furo.css").read_text(encoding="utf-8")
    css_import = "@import url(/javascript/normalize.css/normalize.css);"
    normalize = Path(app.config.gradproof_normalize_css)
    if imports not in main and css_import not in css:
        return  # a Furo that is bundled as upstream ships it: nothing to repair
    if imports not in main or css_import not in css or empty_toc not in gumshoe or not normalize.is_file():
        logger.warning("furo: unexpected Debian packaging; cannot make its scripts and styles work offline")
        return
    # Gumshoe is a UMD script: run as a classic script it defines window.Gumshoe.
    (static / "scripts" / "furo.js").write_text(
        f"{gumshoe}\n(function () {{\n{main.replace(imports, '')}\n}})();\n", encoding="utf-8")
    # Its furo.css also lacks the rule that makes the default ("auto") theme follow the system's
    # dark theme: only the data-theme="dark" that the toggle sets is there, so that a reader with
    # a dark system saw a light page with dark code blocks. Add it, with the same colours.
    css = css.replace(css_import, "@import url(normalize.css);")
    dark = re.search(r'body\[data-theme="dark"\] \{([^}]*)\}', css)
    if "prefers-color-scheme" not in css and dark:
        css += ("\n@media not print {\n  @media (prefers-color-scheme: dark) {\n"
                f'    body:not([data-theme="light"]) {{{dark.group(1)}}} }} }}\n')
    (static / "styles" / "furo.css").write_text(css, encoding="utf-8")
    shutil.copyfile(normalize, static / "styles" / "normalize.css")



# ---- Graphs (sphinx.ext.graphviz), code font, unique ids (issue 11) ---------------------------


# Plain-text scripts in graph labels, written as in the derivations' prose: x_rj, σ², (σ²+ε)^−3/2.
SCRIPT_CHARS = {"²": ("SUP", "2"), "³": ("SUP", "3"), "ᵢ": ("SUB", "i"), "ⱼ": ("SUB", "j")}
SCRIPT = re.compile(r"([_^])(\{[^}]*\}|−?[0-9A-Za-z]+(?:/[0-9]+)?)|[" + "".join(SCRIPT_CHARS) + "]")


def html_label(text: str) -> str | None:
    """A label with scripts as a Graphviz HTML-like label with real <SUP>/<SUB> (None without)."""
    if not SCRIPT.search(text):
        return None

    def esc(t: str) -> str:
        return t.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\\n", "<BR/>")

    out, pos = [], 0
    for m in SCRIPT.finditer(text):
        out.append(esc(text[pos:m.start()]))
        if m.group(1):
            tag, body = ("SUP" if m.group(1) == "^" else "SUB"), m.group(2).strip("{}")
        else:
            tag, body = SCRIPT_CHARS[m.group(0)]
        out.append(f"<{tag}>{esc(body)}</{tag}>")
        pos = m.end()
    out.append(esc(text[pos:]))
    return "<" + "".join(out) + ">"


def real_scripts(code: str) -> str:
    """dot code with every label that has scripts turned into an HTML-like label."""
    return re.sub(r'label="((?:[^"\\]|\\.)*)"', lambda m: f"label={html_label(m.group(1)) or m.group(0)[6:]}", code)


def polish_svg(path: Path) -> None:
    """Graphviz writes a label's <SUP>/<SUB> as text at the label's size with baseline-shift, which
    browsers do not all honour; draw it at 3/4 of that size, shifted by dy, so that a superscript
    is raised wherever the SVG is shown. Idempotent: a polished file has no baseline-shift left."""
    text = path.read_text(encoding="utf-8")

    def shift(m: re.Match) -> str:
        attrs, kind = m.group(1) + m.group(3), m.group(2)
        size = re.search(r'font-size="([0-9.]+)"', attrs)
        em = float(size.group(1)) if size else 10.0
        dy = -0.4 * em if kind == "super" else 0.25 * em
        attrs = re.sub(r'font-size="[0-9.]+"', f'font-size="{0.75 * em:.2f}"', attrs)
        return f'<text{attrs} dy="{dy:.2f}" class="{"sup" if kind == "super" else "sub"}"'

    polished = re.sub(r'<text([^>]*?) baseline-shift="(super|sub)"([^>]*?)(?= *>)', shift, text)
    if polished != text:
        path.write_text(polished, encoding="utf-8")


def html_visit_graphviz(self, node) -> None:
    """A graph as <img> with its alt text (Sphinx writes SVG as an <object> whose only text is the
    dot source); a graph without :alt: is a warning, which fails the site build (-W)."""
    from sphinx.ext import graphviz as gv

    alt = (node.get("alt") or "").strip()
    if not alt:
        logger.warning("graph without :alt: text (say what the graph shows, for readers who cannot see it)",
                       location=node)
    try:
        code = real_scripts(node["code"])
        fname, outfn = gv.render_dot(self, code, node["options"], "svg", "graphviz", node.get("filename"))
    except gv.GraphvizError as exc:
        logger.warning(f"dot code {node['code']!r}: {exc}", location=node)
        raise nodes.SkipNode from exc
    if fname is None:
        self.body.append(self.encode(node["code"]))
        raise nodes.SkipNode
    polish_svg(Path(outfn))
    classes = " ".join(["graphviz"] + node.get("classes", []))
    self.body.append(f'<div class="graphviz"><img src="{fname}" alt="{self.attval(alt)}" class="{classes}" />'
                     "</div>\n")
    raise nodes.SkipNode


CODE_FONTS = ["DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf"]


def copy_code_font(app: Sphinx, exc: Exception | None) -> None:
    """DejaVu Sans Mono (fonts-dejavu-core) into _static/fonts, for gradproof.css's @font-face."""
    if exc is not None or app.builder.format != "html":
        return
    src, dst = Path(app.config.gradproof_code_font_dir), Path(app.outdir) / "_static" / "fonts"
    missing = [f for f in CODE_FONTS if not (src / f).is_file()]
    if missing:
        logger.warning(f"{', '.join(missing)} not found in {src} (Debian package fonts-dejavu-core)")
        return
    dst.mkdir(parents=True, exist_ok=True)
    for f in CODE_FONTS:
        if not (dst / f).is_file() or (dst / f).stat().st_size != (src / f).stat().st_size:
            shutil.copy2(src / f, dst / f)


class UniqueIds(SphinxPostTransform):
    """Every id once per page. Furo wraps each display equation in a container and copies the
    equation's ids onto it: keep them on the equation only. Breathe gives every "Functions" or
    "Public Members" heading of a page the same id: number the repeats (nothing links to them)."""
    default_priority = 600  # after Furo's wrapping transform (500)
    formats = ("html",)

    def run(self, **kwargs: Any) -> None:
        for node in list(self.document.findall(nodes.container)):
            if "math-wrapper" in node.get("classes", []) and node.children \
                    and isinstance(node.children[0], nodes.math_block):
                node["ids"] = [i for i in node["ids"] if i not in node.children[0]["ids"]]
        seen: dict[str, int] = {}
        for node in self.document.findall(nodes.Element):
            ids = node.get("ids")
            if not ids:
                continue
            for k, i in enumerate(ids):
                if i.startswith("breathe-section-title-"):
                    seen[i] = seen.get(i, 0) + 1
                    if seen[i] > 1:
                        ids[k] = f"{i}-{seen[i]}"


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("gradproof_results", "", "env")
    app.add_config_value("gradproof_bench", "", "env")
    app.add_config_value("gradproof_generated_dir", "", "env")
    app.add_config_value("gradproof_mathjax_src", "/usr/share/javascript/mathjax", "html")
    app.add_config_value("gradproof_normalize_css", "/usr/share/javascript/normalize.css/normalize.css", "html")
    app.add_node(formula_ref)
    app.add_directive("gradproof-formula", FormulaDirective)
    app.add_directive("gradproof-ablation", AblationDirective)
    app.add_directive("gradproof-report", ReportDirective)
    app.add_directive("gradproof-bench", BenchDirective)
    app.add_node(missing_derivations)
    app.connect("doctree-resolved", resolve_formula_refs)
    app.connect("doctree-resolved", resolve_missing_derivations)
    app.connect("builder-inited", configure_mathjax, priority=900)  # after MyST's handler (500)
    app.connect("build-finished", copy_mathjax)
    app.connect("build-finished", repair_furo)
    app.add_config_value("gradproof_code_font_dir", "/usr/share/fonts/truetype/dejavu", "html")
    app.setup_extension("sphinx.ext.graphviz")
    from sphinx.ext.graphviz import graphviz as graphviz_node
    app.add_node(graphviz_node, override=True, html=(html_visit_graphviz, None))
    app.add_post_transform(UniqueIds)
    app.connect("build-finished", copy_code_font)
    app.add_css_file("gradproof.css")
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
