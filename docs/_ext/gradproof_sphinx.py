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


# ---- Folding: <details> and <summary> ---------------------------------------------------------

class details(nodes.General, nodes.Element):
    """A block that folds away (HTML <details>); its first child is a summary, always visible."""


class summary(nodes.General, nodes.TextElement):
    """The always-visible line of a details block."""


def visit_details(self, node: details) -> None:
    attrs = {"open": "open"} if node.get("open") else {}
    self.body.append(self.starttag(node, "details", "", **attrs))


def depart_details(self, node: details) -> None:
    self.body.append("</details>\n")


def visit_summary(self, node: summary) -> None:
    self.body.append(self.starttag(node, "summary", ""))


def depart_summary(self, node: summary) -> None:
    self.body.append("</summary>\n")


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


def shapes_of(rows: list[dict[str, Any]]) -> list[str]:
    """The input shapes the rows ran on, in order; none for checks that have no input shape."""
    out: list[str] = []
    for r in rows:
        if r["shape"] and gr.fmt_shape(r["shape"]) not in out:
            out.append(gr.fmt_shape(r["shape"]))
    return out


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


def outcome(g: gr.Group) -> nodes.inline:
    """The result of a group: pass/FAIL for comparisons; for negative controls and pitfalls what
    they showed, "as derived" (their large errors are the expected outcome)."""
    if not g.is_demonstration:
        return verdict(g.passed, g.n_failed, len(g.rows))
    shown = gr.demonstration_outcome(g.rows[0])
    if g.passed:
        return nodes.inline(text=f"\u2714 {shown}, as derived", classes=["gradproof-pass"])
    return nodes.inline(text=f"\u2718 not as derived ({g.n_failed} of {len(g.rows)})", classes=["gradproof-fail"])


MEASURED = ["rows", "max abs err", "max rel err", "atol", "rtol", "error \u00f7 allowance", "result"]


def rel_cell(g: gr.Group) -> str:
    return gr.fmt_num(g.max_rel_err) if g.rel_defined else "\u2014"


def measured_cells(g: gr.Group) -> list[Any]:
    """What a group of rows measured, and the verdict (columns MEASURED)."""
    return [str(len(g.rows)), gr.fmt_num(g.max_abs_err), rel_cell(g),
            gr.fmt_range(*g.atol_range), gr.fmt_range(*g.rtol_range), gr.fmt_ratio(g.ratio), outcome(g)]


def group_table(groups: list[gr.Group], first: list[str], first_cells) -> nodes.table:
    """Measured errors and tolerances, one line per group."""
    body = [first_cells(g) + measured_cells(g) for g in groups]
    classes = [[] if g.passed else ["gradproof-row-failed"] for g in groups]
    return make_table(first + MEASURED, body, ["gradproof-rows"], classes)


def verdict_line(fid: str, status: str, rows: list[dict[str, Any]], ref: bool = False) -> list[nodes.Node]:
    """The one line a formula's results come to: status, checks × dtypes, the worst error as a
    fraction of its allowance, and what the negative controls and pitfalls showed."""
    mark = nodes.inline(text=STATUS_MARK[status],
                        classes=["gradproof-pass" if status == gr.VERIFIED else "gradproof-fail"])
    out: list[nodes.Node] = [mark, nodes.Text(" "), ref_to(fid) if ref else nodes.literal(text=fid)]
    if not rows:
        out.append(nodes.Text(": no result rows in this build, nothing has checked this formula"))
        return out
    v = gr.verdict_of(rows)
    parts = []
    if v.checks:
        parts.append(gr.checks_phrase(v))
    if v.ratio is not None:
        parts.append(f"worst error {gr.fmt_ratio(v.ratio)} of its allowance")
    if v.demonstrations:
        parts.append(gr.demonstrations_phrase(v))
    if v.failed:
        parts.append(f"{v.failed} of {v.rows} rows FAILED")
    out.append(nodes.Text(": " + "; ".join(parts)))
    return out


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
        tests = gr.tests_of(rows)
        # Folded unless something failed: the derivation reads straight through, a failure does not hide.
        fold = details(classes=["gradproof-details", f"gradproof-{STATUS_CLASS[status]}"],
                       open=status != gr.VERIFIED)
        fold += summary("", "", *verdict_line(fid, status, rows), classes=["gradproof-verdict"])
        out += fold
        head = nodes.paragraph()
        head += nodes.literal(text=fid)
        head += nodes.Text(f" \u2014 {title}. {len(rows)} result row{'s' if len(rows) != 1 else ''} from "
                           f"{len(tests)} test{'s' if len(tests) != 1 else ''} "
                           f"({self.provenance(res)}). A row is one comparison on one input in one dtype; "
                           "the error \u00f7 allowance column is |a \u2212 n| \u00f7 (atol + rtol\u00b7|n|) at the "
                           "worst element (below 1 passes")
        if "report" in self.env.found_docs:
            head += nodes.Text("; the ")
            head += nodes.reference("", "verification report", internal=True,
                                    refuri=self.env.app.builder.get_relative_uri(self.env.docname, "report"))
            head += nodes.Text(" explains the tolerances")
        head += nodes.Text(").")
        fold += head
        fold += nodes.paragraph(text="Run only the tests labelled with this formula:" if tests else
                                "No test produced a result row for this formula. The tests labelled "
                                "with it, if any, run with:")
        fold += nodes.literal_block(text=gr.run_only_command(f"build/{res.preset}/tests/gradproof_tests", fid),
                                    language="none")
        for test in tests:
            trows = [r for r in rows if r["test"] == test]
            para = nodes.paragraph(classes=["gradproof-test"])
            para += nodes.strong(text="Test ")
            para += nodes.literal(text=test)
            said = [s for s in (notes_of(trows),) if s]
            shapes = shapes_of(trows)
            if shapes:
                said.append(f"input shape{'s' if len(shapes) > 1 else ''} {', '.join(shapes)}")
            if said:
                para += nodes.Text(" \u2014 " + ". ".join(said) + ".")
            fold += para
            fold += group_table(gr.group_rows(trows), ["oracle (kind)", "dtype"], lambda g: [oracle_cell(g), g.dtype])
            failing = [r for r in trows if r["passed"] is not True]
            if failing:
                fold += nodes.paragraph(text=f"Its {len(failing)} failing rows, at the worst element:",
                                        classes=["gradproof-fail"])
                fold += failing_rows_table(failing)
        return [out]


# ---- {gradproof-ablation} --------------------------------------------------------------------

def ablation_outcome(a: dict[str, Any]) -> nodes.inline:
    """"caught, as derived" for a term whose change the check caught, "no change, as derived" for
    the zero term; a control that did not behave as derived says how."""
    if a["passed"] is True:
        return nodes.inline(text="\u2714 caught, as derived" if a["caught"] else "\u2714 no change, as derived",
                            classes=["gradproof-pass"])
    got = "caught" if a["caught"] else "not caught"
    want = "must be caught" if a["expected_caught"] else "must change nothing"
    return nodes.inline(text=f"\u2718 {got}; {want}", classes=["gradproof-fail"])


def ablation_table(rows: list[dict[str, Any]]) -> nodes.table:
    body, classes = [], []
    for a in rows:
        body.append([ref_to(a["term"]), a["change"], gr.fmt_num(a.get("max_abs_err")),
                     gr.fmt_num(a.get("max_rel_err")), ablation_outcome(a), a.get("note", "")])
        classes.append([] if a["passed"] is True else ["gradproof-row-failed"])
    return make_table(["term", "change", "change of dx (abs)", "(rel)", "result", "what was compared"],
                      body, ["gradproof-ablation"], classes)


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
        caught = sum(1 for a in rows if a["passed"] is True and a["caught"])
        unchanged = sum(1 for a in rows if a["passed"] is True and not a["caught"])
        title = (f"{len(failed)} of {len(rows)} negative controls did not behave as derived" if failed
                 else f"all {len(rows)} negative controls behaved as derived: {caught} caught, "
                      f"{unchanged} changed nothing")
        zero = [f"{a['term']} {a['change']}" for a in rows if a["passed"] is True and not a["caught"]]
        if zero:
            title += f" ({', '.join(zero)})"
        out = nodes.container(classes=["gradproof-ablation-block"])
        fold = details(classes=["gradproof-details", f"gradproof-{STATUS_CLASS[status]}"], open=bool(failed))
        mark = nodes.inline(text=STATUS_MARK[status].split(" ")[0] + " negative controls",
                            classes=["gradproof-pass" if not failed else "gradproof-fail"])
        fold += summary("", "", mark, nodes.Text(f" of {op}: {title}"), classes=["gradproof-verdict"])
        fold += nodes.paragraph(text=self.provenance(res) + ".")
        fold += ablation_table(rows)
        out += fold
        return [out]


# ---- {gradproof-report} ----------------------------------------------------------------------

OP_NAMES = {"bn": "Batch normalization", "norm": "Normalization over a set", "ln": "Layer normalization",
            "gn": "Group normalization", "in": "Instance normalization", "rms": "RMS normalization"}

REPORT_COLUMNS = ["oracle (kind)", "dtype", "rows", "max abs err", "max rel err",
                  "error \u00f7 allowance", "result"]


def report_table(res: gr.Results, formulas: list[dict[str, Any]]) -> nodes.table:
    """One op's formulas: the id and title once per formula, then a line per oracle × dtype (× kind)."""
    body, classes = [], []
    for f in formulas:
        rows = res.rows_of(f["id"])
        head = nodes.paragraph()
        head += ref_to(f["id"])
        head += nodes.inline(text=f["title"], classes=["gradproof-formula-title"])
        if not rows:
            body.append([head, "\u2014", "\u2014", "0", "\u2014", "\u2014", "\u2014",
                         nodes.inline(text="\u2718 NOT VERIFIED: no result rows", classes=["gradproof-fail"])])
            classes.append(["gradproof-first", "gradproof-row-failed"])
            continue
        for i, g in enumerate(gr.group_rows(rows, by_test=False)):
            body.append([head if i == 0 else "", oracle_cell(g), g.dtype, str(len(g.rows)), gr.fmt_num(g.max_abs_err),
                         rel_cell(g), gr.fmt_ratio(g.ratio), outcome(g)])
            classes.append((["gradproof-first"] if i == 0 else []) + ([] if g.passed else ["gradproof-row-failed"]))
    return make_table(["formula"] + REPORT_COLUMNS, body, ["gradproof-report"], classes)


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
        failing = [r for r in res.rows if r["passed"] is not True]
        if failing:
            out += [nodes.rubric(text=f"The {len(failing)} failing rows"),
                    failing_rows_table(failing, with_formula=True)]

        # One section per op, catalog order; rows naming unknown formulas get a section of their own.
        ops: list[str] = []
        for f in res.formulas:
            if f["op"] not in ops:
                ops.append(f["op"])
        unknown = [{"id": fid, "op": "?", "title": "(not in the catalog)"} for fid in t.unknown_row_formulas]
        for op in ops + (["?"] if unknown else []):
            formulas = [f for f in res.formulas if f["op"] == op] if op != "?" else unknown
            name = OP_NAMES.get(op, "Rows of formulas the catalog does not know" if op == "?" else op)
            sec = nodes.section(ids=[f"report-{nodes.make_id(op if op != '?' else 'unknown')}"])
            sec += nodes.title(text=f"{name} ({op})" if op != "?" else name)
            n_rows = sum(len(res.rows_of(f["id"])) for f in formulas)
            verified = sum(1 for f in formulas if gr.status_of(res.rows_of(f["id"])) == gr.VERIFIED)
            sec += nodes.paragraph(text=f"{verified} of {len(formulas)} formulas verified, {n_rows} result rows.")
            sec += report_table(res, formulas)
            ablation = res.ablation_of(op)
            if ablation:
                sec += nodes.rubric(text="Negative controls")
                sec += ablation_table(ablation)
            out.append(sec)
        return out


# ---- {gradproof-step-sweep} ------------------------------------------------------------------

def sweep_plot(s: dict[str, Any], target: Path) -> None:
    """Relative error of central differences and Richardson against the step h (log-log), the
    steps the policy chose, and the complex step and dual numbers as flat lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.hashsalt"] = "gradproof"
    floor = 1e-17  # an error of exactly 0 is drawn here, at the bottom of the axes
    clamp = lambda v: max(v, floor) if v is not None else None  # noqa: E731
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    h = s["h"]
    ax.loglog(h, [clamp(v) for v in s["central"]], marker=".", markersize=3, linewidth=1.2,
              label="central differences", color="#1f77b4")
    ax.loglog(h, [clamp(v) for v in s["richardson"]], marker=".", markersize=3, linewidth=1.2,
              label="Richardson (h and h/2)", color="#d62728")
    for name, key, colour, style in (("complex step", "complex_step", "#2ca02c", "--"),
                                     ("dual numbers", "dual", "#9467bd", ":")):
        v = s[key]
        ax.axhline(clamp(v), color=colour, linestyle=style, linewidth=1.4,
                   label=f"{name}: {gr.fmt_num(v)}" + (" (exact)" if v == 0 else ""))
    ax.axvline(s["h_central"], color="#1f77b4", linewidth=0.8, alpha=0.6)
    ax.axvline(s["h_richardson"], color="#d62728", linewidth=0.8, alpha=0.6)
    ax.plot([s["h_central"]], [clamp(s["central_at_policy"])], marker="o", markersize=7, color="#1f77b4",
            markerfacecolor="none")
    ax.plot([s["h_richardson"]], [clamp(s["richardson_at_policy"])], marker="o", markersize=7, color="#d62728",
            markerfacecolor="none")
    ax.annotate(f"chosen h = {s['h_central']:.2g}", (s["h_central"], 1e-1), rotation=90, fontsize=8,
                ha="right", va="top", color="#1f77b4")
    ax.annotate(f"chosen h = {s['h_richardson']:.2g}", (s["h_richardson"], 1e-1), rotation=90, fontsize=8,
                ha="right", va="top", color="#d62728")
    ax.set_ylim(floor / 2, 10)
    ax.set_xlabel("step h", fontsize=9)
    ax.set_ylabel("relative error of \u2202L/\u2202x\u2096", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(True, which="major", linewidth=0.3, alpha=0.5)
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, format="svg", metadata={"Date": None})
    plt.close(fig)


def sweeps_path(config) -> str:
    """verification/step_sweep.json beside the results file, unless set explicitly."""
    if config.gradproof_sweeps:
        return config.gradproof_sweeps
    return str(Path(config.gradproof_results).parent / "step_sweep.json") if config.gradproof_results else ""


class StepSweepDirective(SphinxDirective):
    """The error-against-step plot of one op, with a sentence of its numbers."""
    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        op = self.arguments[0]
        note_code_dependencies(self.env)
        path = sweeps_path(self.config)
        if path:
            self.env.note_dependency(os.path.abspath(path))
        try:
            sweeps = gr.load_sweeps(path) if path else None
        except gr.DataError as e:
            logger.warning(str(e), location=self.get_location())
            sweeps = None
        s = (sweeps or {}).get(op)
        if s is None:
            box = nodes.admonition(classes=["gradproof-status", "gradproof-no-sweep", "warning"])
            box += nodes.title(text=f"No step sweep for {op} in this build")
            box += nodes.paragraph(text="The test run of this build wrote no verification/step_sweep.json "
                                        f"with a sweep of {op} (ctest test results.step_sweep).")
            return [box]
        target = Path(self.config.gradproof_generated_dir) / f"step_sweep_{nodes.make_id(op)}.svg"
        sweep_plot(s, target)
        uri = "/" + os.path.relpath(target, self.env.srcdir)
        best_c = min((v, hh) for v, hh in zip(s["central"], s["h"]) if v is not None)
        best_r = min((v, hh) for v, hh in zip(s["richardson"], s["h"]) if v is not None)
        para = nodes.paragraph()
        para += nodes.Text(
            f"Measured in this build for {s['entry']}: at the chosen step h = {s['h_central']:.2g} central "
            f"differences miss the analytic value {s['analytic']:.6g} by {gr.fmt_num(s['central_at_policy'])} "
            f"relative (the best step of the sweep, h = {best_c[1]:.2g}, by {gr.fmt_num(best_c[0])}); "
            f"Richardson at its step h = {s['h_richardson']:.2g} by {gr.fmt_num(s['richardson_at_policy'])} "
            f"(best {gr.fmt_num(best_r[0])} at h = {best_r[1]:.2g}); the complex step by "
            f"{gr.fmt_num(s['complex_step'])} and dual numbers by {gr.fmt_num(s['dual'])}, with no step to choose. "
            "Left of the minimum, rounding (about u/h) dominates; right of it, truncation (h\u00b2 for central "
            "differences, h\u2074 for Richardson).")
        alt = (f"Log-log plot of the relative error of central differences and Richardson extrapolation "
               f"against the step h for {op}, with the chosen steps marked and the complex-step and "
               f"dual-number errors as flat lines")
        fig = nodes.figure(classes=["gradproof-step-sweep"])
        fig += nodes.image(uri=uri, alt=alt, classes=["gradproof-plot"])
        fig += nodes.caption(text=f"Error against step size ({op}, float64): the picture behind the step policy.")
        return [fig, para]


# ---- {gradproof-summary}: the verification summary of this build, for the landing page -----------

class SummaryDirective(ResultsDirective):
    def run(self) -> list[nodes.Node]:
        res = self.results()
        if res is None:
            return [status_box(gr.NOT_VERIFIED, "no results file in this build", [
                nodes.paragraph(text="The test run of this build wrote no readable results.json.")])]
        t = gr.totals(res)
        status = gr.FAILED if t.failed or t.ablation_failed or t.unknown_row_formulas \
            else gr.NOT_VERIFIED if t.formulas_without_rows else gr.VERIFIED
        ops = []
        for f in res.formulas:
            if f["op"] not in ops:
                ops.append(f["op"])
        ablation_ok = t.ablation - t.ablation_failed
        caught = sum(1 for a in res.ablation if a["passed"] is True and a["caught"])
        title = f"{len(t.formulas_verified)} of {t.formulas} formulas verified in this build"
        zero_terms = sorted({a["term"] for a in res.ablation if a["passed"] is True and not a["caught"]})
        body = [nodes.paragraph(text=(
            f"{t.rows} result rows, {t.passed} passed, {t.failed} failed; {ablation_ok} of {t.ablation} negative "
            f"controls behaved as derived: {caught} caught a dropped or sign-flipped term, "
            f"{ablation_ok - caught} changed nothing"
            + (f" (the terms that are zero: {', '.join(zero_terms)})" if zero_terms else "")
            + ". Ops: " + ", ".join(f"{OP_NAMES.get(op, op)} ({op})" for op in ops) + f". {self.provenance(res)}."))]
        if t.formulas_failed or t.formulas_without_rows:
            p = nodes.paragraph(classes=["gradproof-fail"])
            p += nodes.strong(text="Not verified: ")
            for i, fid in enumerate(t.formulas_failed + t.formulas_without_rows):
                if i:
                    p += nodes.Text(", ")
                p += ref_to(fid)
            body.append(p)
        return [status_box(status, title, body)]


# ---- {bench}`...`: one figure of this build's benchmark run, in prose ----------------------------

def _bench_for(env) -> gr.Bench | None:
    cache = getattr(env.app, "_gradproof_bench", "unread")
    if cache == "unread":
        path = env.config.gradproof_bench
        try:
            cache = gr.load_bench(path) if path else None
        except gr.DataError:
            cache = None  # the {gradproof-bench} directive reports it
        env.app._gradproof_bench = cache
    return cache


def bench_figure(bench: gr.Bench | None, spec: str) -> tuple[str, str | None]:
    """The text of {bench}`OP PASS IMPL SHAPE THREADS WHAT`, e.g.
    `batchnorm backward fused 32x64x56x56 2 fraction`. WHAT is `fraction` (of the bandwidth, in
    %), `gbps`, `gflops` (rows that count floating-point operations), `ms` (median), `vs:IMPL`
    (IMPL's median time ÷ this one's) or `bandwidth` (the run's bandwidth at THREADS; the other
    fields are then `-`). Returns (text, problem): a figure
    this run did not measure reads "not measured in this run", never a number from elsewhere."""
    parts = spec.split()
    if len(parts) != 6:
        return spec, f"bench role: expected OP PASS IMPL SHAPE THREADS WHAT, got {spec!r}"
    op, ps, impl, shape, threads, what = parts
    missing = "(not measured in this run)"
    if bench is None:
        return "(no benchmark run in this build)", None
    if what == "bandwidth":
        key = f"{threads} thread" + ("" if threads == "1" else "s")
        v = bench.bandwidth.get(key)
        return (f"{v:.1f} GB/s" if v is not None else missing), None
    try:
        dims = [int(d) for d in shape.split("x")]
        th = int(threads)
    except ValueError:
        return spec, f"bench role: bad shape or threads in {spec!r}"

    def find(i: str):
        return next((r for r in bench.rows if r["op"] == op and r["pass"] == ps and r["impl"] == i
                     and list(r["shape"]) == dims and r["threads"] == th), None)

    row = find(impl)
    if row is None:
        return missing, None
    if what == "fraction":
        f = row.get("fraction_of_bandwidth")
        return (f"{100 * f:.0f}%" if f is not None else missing), None
    if what == "gbps":
        return (f"{row['gbps']:.1f} GB/s" if row["gbps"] is not None else missing), None
    if what == "gflops":
        g = row.get("gflops")
        return (f"{g:.1f} GFLOP/s" if g is not None else missing), None
    if what == "ms":
        return f"{row['median_ms']:.3g} ms", None
    if what.startswith("vs:"):
        other = find(what[3:])
        if other is None:
            return missing, None
        return f"{other['median_ms'] / row['median_ms']:.2f}\u00d7", None
    return spec, f"bench role: unknown figure {what!r} in {spec!r}"


def bench_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    env = inliner.document.settings.env
    note_code_dependencies(env)
    if env.config.gradproof_bench:
        env.note_dependency(os.path.abspath(env.config.gradproof_bench))
    value, problem = bench_figure(_bench_for(env), text)
    if problem:
        msg = inliner.reporter.warning(problem, line=lineno)
        return [nodes.inline(rawtext, value)], [msg]
    return [nodes.inline(rawtext, value, classes=["gradproof-bench-figure"])], []


# ---- {gradproof-bench} -----------------------------------------------------------------------

def bench_plot(bench: gr.Bench, target: Path) -> None:
    """Small multiples: one panel per op and pass, bars of effective GB/s per implementation for
    each shape and thread count, and the bandwidth this run measured at each thread count."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.hashsalt"] = "gradproof"  # stable ids: the same data gives the same file
    panels: list[tuple[str, str]] = []
    impls: list[str] = []

    def panel_of(r) -> str:  # the activations share one panel per pass, one case per activation
        return "activations" if r.get("group") == "activations" else r["op"]

    for r in bench.rows:
        if (panel_of(r), r["pass"]) not in panels:
            panels.append((panel_of(r), r["pass"]))
        if r["impl"] not in impls:
            impls.append(r["impl"])
    colours = dict(zip(impls, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3))
    ncols = 2 if len(panels) > 1 else 1
    nrows = (len(panels) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(7.2, 2.5 * nrows + 0.6), dpi=100, squeeze=False)
    bw = {k: v for k, v in bench.bandwidth.items()}
    for ax, (op, ps) in zip(axes.flat, panels):
        rows = [r for r in bench.rows if panel_of(r) == op and r["pass"] == ps]
        cases: list[tuple] = []
        for r in rows:
            k = (r["op"], tuple(r["shape"]), r["threads"])
            if k not in cases:
                cases.append(k)
        here = [i for i in impls if any(r["impl"] == i for r in rows)]
        width = 0.8 / max(1, len(here))
        for j, impl in enumerate(here):
            xs, ys = [], []
            for i, (name, shape, th) in enumerate(cases):
                r = next((r for r in rows if r["impl"] == impl and r["op"] == name
                          and tuple(r["shape"]) == shape and r["threads"] == th), None)
                if r is not None and r["gbps"] is not None:
                    xs.append(i + (j - (len(here) - 1) / 2) * width)
                    ys.append(r["gbps"])
            ax.bar(xs, ys, width, label=impl, color=colours[impl])
        # the bandwidth of the case's thread count, over its bars
        for i, (_, shape, th) in enumerate(cases):
            key = f"{th} thread" + ("" if th == 1 else "s")
            if key in bw:
                ax.plot([i - 0.45, i + 0.45], [bw[key]] * 2, color="black", linestyle="--", linewidth=1)
        ax.set_title(f"{op} {ps}", fontsize=9)
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels([(f"{name}\n" if name != op else "")
                            + f"{'x'.join(map(str, sh))}\n{th} thr" for name, sh, th in cases],
                           fontsize=6 if op == "activations" else 7)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_ylabel("GB/s", fontsize=8)
        top = max([r["gbps"] or 0.0 for r in rows] + list(bw.values()) + [1.0])
        ax.set_ylim(0, 1.1 * top)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[i]) for i in impls]
    labels = list(impls)
    if bw:
        handles.append(plt.Line2D([0], [0], color="black", linestyle="--", linewidth=1))
        labels.append("bandwidth measured in this run (" + ", ".join(f"{k}: {v:.1f} GB/s" for k, v in bw.items()) + ")")
    fig.legend(handles, labels, loc="upper center", ncol=3, fontsize=7.5, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (2.5 * nrows + 0.6)))
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, format="svg", metadata={"Date": None})
    plt.close(fig)


def fmt_target(t: gr.BenchTarget, v: float) -> str:
    """A fraction of bandwidth as a percentage, a yes-or-no check (1 yes, 0 no) as a word, a ratio
    of times or GFLOP/s as a factor."""
    if "fraction" in t.target:
        return f"{100 * v:.1f}%"
    if "(1 yes, 0 no)" in t.target:
        return "yes" if v >= 1 else "no"
    return f"{v:.2f}\u00d7"


BENCH_GROUP_TITLES = {"normalization": "Normalization", "activations": "Element-wise activations",
                      "softmax": "Softmax, log-softmax and the fused softmax\u2013cross-entropy",
                      "linear": "Linear (GFLOP/s: 2 per multiply-add)",
                      "embedding": "Embedding backward"}


def bench_table(rows: list[dict]) -> nodes.Node:
    """The benchmark table of some rows, with the optional columns that they have: the layout
    conversion a caller with NCHW data would add (oneDNN's blocked layout), GFLOP/s, whether
    repeated runs gave identical bits, and the agreement with a float64 reference."""
    has_extra = any(r.get("extra_ms") is not None for r in rows)
    has_flops = any(r.get("gflops") is not None for r in rows)
    has_det = any(r.get("deterministic") is not None for r in rows)
    has_agree = any(r.get("agreement") is not None for r in rows)
    body = []
    for r in rows:
        frac = r.get("fraction_of_bandwidth")
        cells = [r["op"], r["pass"], nodes.literal(text=r["impl"]), gr.fmt_shape(r["shape"]),
                 str(r["threads"]), f"{r['median_ms']:.3f}",
                 f"{r['min_ms']:.3f} \u2013 {r['max_ms']:.3f}"]
        if has_flops:
            cells.append(f"{r['gflops']:.1f}" if r.get("gflops") is not None else "\u2014")
        cells += [f"{r['gbps']:.1f}" if r["gbps"] is not None else "\u2014",
                  f"{100 * frac:.0f}%" if frac is not None else "\u2014"]
        if has_extra:
            cells.append(f"+{r['extra_ms']:.3f}" if r.get("extra_ms") is not None else "")
        if has_det:
            d = r.get("deterministic")
            cells.append("\u2014" if d is None else "yes" if d else "no")
        if has_agree:
            cells.append(f"{r['agreement']:.1e}" if r.get("agreement") is not None else "\u2014")
        body.append(cells)
    headers = ["op", "pass", "impl", "shape", "threads", "median ms", "min \u2013 max ms"]
    headers += ["GFLOP/s"] if has_flops else []
    headers += ["GB/s", "of bandwidth"]
    headers += ["layout conversion ms"] if has_extra else []
    headers += ["identical bits in 3 runs"] if has_det else []
    headers += ["rel. diff. from float64"] if has_agree else []
    return make_table(headers, body, ["gradproof-bench"])


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
            title = (f"speed targets: {len(targets) - len(missed)} of {len(targets)} met in this run"
                     if missed else f"speed targets: all {len(targets)} met in this run")
            box = nodes.admonition(classes=["gradproof-status", "gradproof-speed-targets",
                                            "warning" if missed else "tip"])
            box += nodes.title(text=("\u26a0 " if missed else "\u2714 ") + title)
            box += nodes.paragraph(
                text="These are speed targets: each compares times or bandwidth fractions of this run's table "
                     "below with a goal of this work. A missed speed target says the kernel was slower than "
                     "its goal on this machine in this run; correctness is unaffected (every formula is checked "
                     "by the tests of the verification report, whatever its speed). The page text below "
                     "explains what bounds the cases at or near their line.")
            out.append(box)
            out.append(make_table(
                ["speed target", "measured", "goal", "verdict"],
                [[t.target, fmt_target(t, t.measured), ("\u2265 " if t.at_least else "\u2264 ") + fmt_target(t, t.threshold),
                  nodes.inline(text="\u2714 met", classes=["gradproof-pass"]) if t.met else
                  nodes.inline(text="\u26a0 missed (speed target)", classes=["gradproof-fail"])] for t in targets],
                ["gradproof-bench-targets"]))
        facts = [(k, v) for k, v in bench.machine.items()] + \
                [(f"measured bandwidth ({k})", f"{v:.1f} GB/s") for k, v in bench.bandwidth.items()]
        if facts:
            out.append(make_table(["machine", ""], [[k, v] for k, v in facts], ["gradproof-machine"]))
        # Optional columns, shown when the run recorded them: the layout conversion a caller with
        # NCHW data would add (oneDNN's blocked layout), and the agreement with a float64 reference.
        # One table per family of ops (the rows' "group"; rows without one are the normalizations),
        # in the order the run measured them, each with the optional columns its rows have.
        groups: list[str] = []
        for r in bench.rows:
            g = r.get("group") or "normalization"
            if g not in groups:
                groups.append(g)
        for g in groups:
            rows = [r for r in bench.rows if (r.get("group") or "normalization") == g]
            if len(groups) > 1:
                out.append(nodes.rubric(text=BENCH_GROUP_TITLES.get(g, g)))
            out.append(bench_table(rows))
        target = Path(self.config.gradproof_generated_dir) / "bench.svg"
        bench_plot(bench, target)
        uri = "/" + os.path.relpath(target, self.env.srcdir)  # '/...' is relative to the source dir
        out.append(nodes.image(uri=uri, alt="Small multiples, one panel per op and pass: effective GB/s of "
                                            "every implementation per shape and thread count, with the "
                                            "bandwidth measured in this run as dashed lines",
                               classes=["gradproof-bench-plot", "gradproof-plot"]))
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


# ---- The list of ops (src/gradproof/catalog/ops.def) -------------------------------------------
# The site's table of contents and the API page's table of headers come from the list of ops, so
# that adding an op edits that list once: a line `@GRADPROOF_OPS_TOCTREE@` in a toctree becomes one
# entry per op, a line `@GRADPROOF_OPS_TABLE@` one table row per op.
OP_LINE = re.compile(r'^GRADPROOF_OP\(\s*([a-z0-9_]+)\s*,\s*([A-Za-z0-9_]+)\s*,\s*"([^"]*)"\s*,\s*"([^"]*)"\s*,\s*"([^"]*)"\s*\)\s*$')


def read_ops(path: Path) -> list[dict[str, str]]:
    ops = []
    for line in path.read_text(encoding="utf-8").splitlines():
        m = OP_LINE.match(line)
        if m:
            ops.append(dict(zip(("id", "registrar", "page", "header", "title"), m.groups())))
        elif line.startswith("GRADPROOF_OP("):
            raise ValueError(f"{path}: unreadable line: {line}")
    return ops


def expand_ops(app: Sphinx, docname: str, source: list[str]) -> None:
    text = source[0]
    if "@GRADPROOF_OPS_" not in text:
        return
    ops = read_ops(Path(app.confdir).parent / "src" / "gradproof" / "catalog" / "ops.def")
    up = "../" * docname.count("/")
    # Several ops may share a page (the activations, softmax with log-softmax and cross-entropy):
    # each page once, at its first op's place.
    pages = list(dict.fromkeys(o["page"] for o in ops))
    text = text.replace("@GRADPROOF_OPS_TOCTREE@", "\n".join(f"derivations/{page}" for page in pages))
    text = text.replace("@GRADPROOF_OPS_TABLE@", "\n".join(
        f"| `{o['header']}` | {o['title']} (`{o['id']}.*`) | {{doc}}`{up}derivations/{o['page']}` |" for o in ops))
    source[0] = text


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
    app.add_config_value("gradproof_sweeps", "", "env")  # default: step_sweep.json beside the results
    app.add_config_value("gradproof_mathjax_src", "/usr/share/javascript/mathjax", "html")
    app.add_config_value("gradproof_normalize_css", "/usr/share/javascript/normalize.css/normalize.css", "html")
    app.add_node(formula_ref)
    app.add_node(details, html=(visit_details, depart_details))
    app.add_node(summary, html=(visit_summary, depart_summary))
    app.add_directive("gradproof-formula", FormulaDirective)
    app.add_directive("gradproof-ablation", AblationDirective)
    app.add_directive("gradproof-report", ReportDirective)
    app.add_directive("gradproof-bench", BenchDirective)
    app.add_directive("gradproof-step-sweep", StepSweepDirective)
    app.add_role("bench", bench_role)
    app.add_directive("gradproof-summary", SummaryDirective)
    app.add_node(missing_derivations)
    app.connect("source-read", expand_ops)
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
    app.add_css_file("gradproof-results.css")
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
