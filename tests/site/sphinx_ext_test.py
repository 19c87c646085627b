#!/usr/bin/python3
"""The Sphinx directives of docs/_ext/gradproof_sphinx.py, built into a small site from a
results file made for the test: a formula whose rows all pass reads VERIFIED, one with a failing
row reads FAILED with that row shown, one without rows reads NOT VERIFIED, and an id the catalog
does not know is a build warning. Needs Sphinx and MyST (Debian's), so `./build.sh site` runs it
with /usr/bin/python3 rather than ctest."""
import io
import json
import re
import sys
import tempfile
import unittest
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.util.docutils import docutils_namespace

HERE = Path(__file__).resolve().parent
EXT = HERE.parents[1] / "docs" / "_ext"
sys.path.insert(0, str(HERE))
from test_results_model import results_file, row  # noqa: E402

PAGE = """# Formulas

```{gradproof-formula} bn.ok
```

```{gradproof-formula} bn.bad
```

```{gradproof-formula} bn.none
```

```{gradproof-ablation} bn
```

```{gradproof-report}
```

```{gradproof-bench}
```
"""

BENCH_ROW = {"op": "batchnorm", "pass": "forward", "impl": "fused", "shape": [32, 64, 56, 56], "threads": 2,
             "median_ms": 1.25, "min_ms": 1.2, "max_ms": 1.4, "gbps": 51.4, "fraction_of_bandwidth": 0.86}


def build(tmp: Path, page: str, bench=None):
    src, out = tmp / "src", tmp / "out"
    src.mkdir(exist_ok=True)
    results = results_file(tmp, [
        row(formula="bn.ok", test="bn/ok/a"), row(formula="bn.ok", test="bn/ok/a", oracle="dual"),
        row(formula="bn.bad", test="bn/bad/a"),
        row(formula="bn.bad", test="bn/bad/a", oracle="dual", passed=False, abs_err=0.5)],
        formulas=("bn.ok", "bn.bad", "bn.none"),
        ablation=[{"op": "bn", "term": "bn.ok", "change": "drop", "max_abs_err": 1.0, "max_rel_err": 1.0,
                   "caught": True, "expected_caught": True, "passed": True, "note": "dropped"}])
    bench_path = tmp / "bench.json"
    if bench is not None:
        bench_path.write_text(json.dumps(bench))
    (src / "conf.py").write_text(
        f"import sys\nsys.path.insert(0, {str(EXT)!r})\n"
        "extensions = ['myst_parser', 'sphinx.ext.mathjax', 'gradproof_sphinx']\n"
        "myst_enable_extensions = ['dollarmath', 'amsmath']\n"
        f"gradproof_results = {str(results)!r}\ngradproof_bench = {str(bench_path)!r}\n"
        f"gradproof_generated_dir = {str(tmp / 'generated')!r}\n"
        "mathjax_path = 'mathjax/MathJax.js?config=TeX-AMS_CHTML'\n")
    (src / "index.md").write_text(page)
    warnings = io.StringIO()
    with docutils_namespace():  # each build registers its nodes and directives afresh
        app = Sphinx(str(src), str(src), str(out), str(tmp / "doctrees"), "html",
                     status=io.StringIO(), warning=warnings, freshenv=True)
        app.build()
    html = (out / "index.html").read_text(encoding="utf-8")
    return html, warnings.getvalue(), out


def text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


class DirectivesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.html, cls.warnings, cls.out = build(Path(cls.tmp.name), PAGE)
        cls.text = text(cls.html)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_builds_without_warnings(self):
        self.assertEqual(self.warnings, "")

    def test_status_of_each_formula(self):
        self.assertIn("\u2714 VERIFIED: bn.ok", self.text)
        self.assertIn("\u2718 FAILED: bn.bad", self.text)
        self.assertIn("1 of 2 result rows FAILED", self.text)
        self.assertIn("\u2718 NOT VERIFIED: bn.none", self.text)
        self.assertIn("No result rows in this build", self.text)
        self.assertNotIn("VERIFIED: bn.bad", self.text.replace("NOT VERIFIED", ""))

    def test_failing_row_and_command_are_shown(self):
        self.assertIn("gradproof-row-failed", self.html)
        self.assertIn("build/release/tests/gradproof_tests --run_test=@bn.bad", self.text)
        self.assertIn("0.5", self.text)

    def test_report_totals_and_gaps(self):
        self.assertIn("1 of 3 formulas verified; 1 of 4 result rows failed; 1 formulas have no result rows",
                      self.text)
        self.assertIn("NOT VERIFIED: no result rows", self.text)

    def test_report_lists_formulas_no_page_derives(self):
        # The test page labels none of them, so all three are listed.
        self.assertIn("NOT DERIVED: 3 of 3 catalog formulas have no derivation on this site", self.text)

    def test_ablation_table(self):
        self.assertIn("all 1 negative controls behaved as expected", self.text)

    def test_absent_bench_is_a_visible_box_not_a_warning(self):
        self.assertIn("No benchmark run in this build", self.text)

    def test_mathjax_is_local_and_configured_for_v2(self):
        self.assertTrue((self.out / "_static" / "mathjax" / "MathJax.js").is_file())
        self.assertNotIn("cdn.jsdelivr", self.html)


class NotesTest(unittest.TestCase):
    def test_notes_that_differ_only_in_a_shape_are_given_once(self):
        import gradproof_sphinx as gs
        rows = [{"note": "forward y (normalized_shape (6,))"}, {"note": "forward y (normalized_shape (2, 5))"},
                {"note": "eps = 0.001: max |dx| = 0.0253"}, {"note": "eps = 1e-05: max |dx| = 0.00025"},
                {"note": "forward y (normalized_shape (6,))"}, {"note": ""}]
        self.assertEqual(gs.notes_of(rows), "forward y (normalized_shape (\u2026)); eps = 0.001: max |dx| = 0.0253; "
                                            "eps = 1e-05: max |dx| = 0.00025")

    def test_a_single_shape_is_kept(self):
        import gradproof_sphinx as gs
        self.assertEqual(gs.notes_of([{"note": "Jacobian (2, 3)"}]), "Jacobian (2, 3)")


class EdgesTest(unittest.TestCase):
    def test_no_missing_derivation_box_when_every_formula_is_labelled(self):
        with tempfile.TemporaryDirectory() as tmp:
            page = "".join(f"({fid})=\n## {fid}\n\ntext\n\n" for fid in ("bn.ok", "bn.bad", "bn.none"))
            html, warnings, _ = build(Path(tmp), "# R\n\n" + page + "```{gradproof-report}\n```\n")
        self.assertEqual(warnings, "")
        self.assertNotIn("NOT DERIVED", html)
        self.assertIn("FAILED", html)


    def test_unknown_formula_id_is_a_warning(self):
        with tempfile.TemporaryDirectory() as tmp:
            _, warnings, _ = build(Path(tmp), "# X\n\n```{gradproof-formula} bn.ghost\n```\n")
        self.assertIn("bn.ghost is not in the formula catalog", warnings)

    def test_bench_table_and_plot(self):
        with tempfile.TemporaryDirectory() as tmp:
            html, warnings, out = build(Path(tmp), "# B\n\n```{gradproof-bench}\n```\n",
                                        bench={"rows": [BENCH_ROW, dict(BENCH_ROW, impl="libtorch", gbps=20.0)],
                                               "bandwidth": {"triad": 60.0}, "machine": "2 cores"})
            self.assertEqual(warnings, "")
            self.assertIn("51.4", html)
            self.assertIn("86%", html)
            self.assertIn("60.0 GB/s", html)
            self.assertTrue(list((out / "_images").glob("bench*.svg")), "the plot was not copied to the site")

    def test_bench_targets_are_shown_and_a_miss_is_impossible_to_miss(self):
        targets = [{"target": "x: fused, fraction of bandwidth", "measured": 0.84, "threshold": 0.75,
                    "at_least": True, "met": True},
                   {"target": "x: oneDNN nChw16c time / fused time", "measured": 0.99, "threshold": 1,
                    "at_least": True, "met": False}]
        with tempfile.TemporaryDirectory() as tmp:
            html, warnings, _ = build(Path(tmp), "# B\n\n```{gradproof-bench}\n```\n",
                                      bench={"rows": [BENCH_ROW], "targets": targets})
        self.assertEqual(warnings, "")
        self.assertIn("1 of 2 performance targets met in this run", html)
        self.assertIn("84.0%", html)
        self.assertIn("0.99\u00d7", html)
        self.assertIn("FAIL", html)

    def test_a_target_verdict_that_contradicts_its_numbers_is_a_warning(self):
        lie = [{"target": "x: fused, fraction of bandwidth", "measured": 0.5, "threshold": 0.75, "met": True}]
        with tempfile.TemporaryDirectory() as tmp:
            _, warnings, _ = build(Path(tmp), "# B\n\n```{gradproof-bench}\n```\n",
                                   bench={"rows": [BENCH_ROW], "targets": lie})
        self.assertIn("says met=True", warnings)


if __name__ == "__main__":
    import warnings
    warnings.simplefilter("ignore", DeprecationWarning)  # docutils 0.19 about MyST 0.18's option parser
    unittest.main(verbosity=2)
