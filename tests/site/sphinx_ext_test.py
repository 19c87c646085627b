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

```{gradproof-summary}
```

```{gradproof-formula} bn.ok
```

```{gradproof-formula} bn.zero
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
        row(formula="bn.bad", test="bn/bad/a", oracle="dual", passed=False, abs_err=0.5),
        dict(row(formula="bn.zero", test="bn/zero/a", rel_err=0), rel_defined=False),
        row(formula="bn.zero", test="bn/zero/nc", kind="negative_control", note="drop: caught by the check",
            abs_err=2.0, rel_err=1.0, atol=0, rtol=0)],
        formulas=("bn.ok", "bn.bad", "bn.none", "bn.zero"),
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
        self.assertIn("\u2714 VERIFIED bn.ok :", self.text)
        self.assertIn("\u2718 FAILED bn.bad :", self.text)
        self.assertIn("1 of 2 rows FAILED", self.text)
        self.assertIn("\u2718 NOT VERIFIED bn.none : no result rows in this build", self.text)
        self.assertNotIn("VERIFIED bn.bad", self.text.replace("NOT VERIFIED", ""))

    def test_one_verdict_line_always_visible_and_the_tables_folded(self):
        # The verdict is the <summary> of a <details>: folded when verified, open when not.
        self.assertRegex(self.html, r'<details class="[^"]*gradproof-verified[^"]*"><summary')
        self.assertRegex(self.html, r'<details class="[^"]*gradproof-failed[^"]*" open="open"><summary')
        self.assertIn("2 checks \u00d7 1 dtype (float64)", self.text)
        self.assertIn("1 check \u00d7 1 dtype (float64)", self.text)
        self.assertIn("worst error 0 of its allowance", self.text)

    def test_no_generated_filler(self):
        self.assertNotIn("Shapes:", self.text)

    def test_error_over_allowance_column_and_undefined_relative_error(self):
        self.assertIn("error \u00f7 allowance", self.text)
        # bn.zero's row has no element above atol: its relative error is "—", not 0.
        zero = self.html[self.html.index('id="result-bn-zero"'):]
        zero = zero[:zero.index("</table>")]
        self.assertIn("<td><p>\u2014</p></td>", zero)

    def test_negative_controls_read_caught_as_derived(self):
        self.assertIn("\u2714 caught, as derived", self.text)
        self.assertNotIn("\u2714 pass \u2714 caught", self.text)

    def test_report_has_a_section_per_op(self):
        self.assertIn('id="report-bn"', self.html)
        self.assertIn("Batch normalization (bn)", self.text)
        self.assertIn("title of bn.ok", self.text)

    def test_landing_summary(self):
        self.assertIn("2 of 4 formulas verified in this build", self.text)
        self.assertIn("1 caught a dropped or sign-flipped term", self.text)

    def test_failing_row_and_command_are_shown(self):
        self.assertIn("gradproof-row-failed", self.html)
        self.assertIn("build/release/tests/gradproof_tests --run_test=@bn.bad", self.text)
        self.assertIn("0.5", self.text)

    def test_report_totals_and_gaps(self):
        self.assertIn("2 of 4 formulas verified; 1 of 6 result rows failed; 1 formulas have no result rows",
                      self.text)
        self.assertIn("NOT VERIFIED: no result rows", self.text)

    def test_report_lists_formulas_no_page_derives(self):
        # The test page labels none of them, so all three are listed.
        self.assertIn("NOT DERIVED: 4 of 4 catalog formulas have no derivation on this site", self.text)

    def test_ablation_table(self):
        self.assertIn("negative controls of bn: all 1 negative controls behaved as derived: 1 caught, 0 changed nothing", self.text)

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
            page = "".join(f"({fid})=\n## {fid}\n\ntext\n\n" for fid in ("bn.ok", "bn.bad", "bn.none", "bn.zero"))
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
        self.assertIn("speed targets: 1 of 2 met in this run", html)
        self.assertIn("correctness is unaffected", html)
        self.assertIn("84.0%", html)
        self.assertIn("0.99\u00d7", html)
        self.assertIn("missed (speed target)", html)

    def test_bench_figures_in_prose_come_from_the_results_file(self):
        page = ("# B\n\nfused {bench}`batchnorm forward fused 32x64x56x56 2 fraction`, "
                "{bench}`batchnorm forward fused 32x64x56x56 2 vs:libtorch` faster; "
                "layer norm {bench}`layernorm forward fused 4096x1024 2 fraction`; "
                "bandwidth {bench}`- - - - 2 bandwidth`.\n")
        bench = {"rows": [BENCH_ROW, dict(BENCH_ROW, impl="libtorch", median_ms=2.5)],
                 "bandwidth": {"2 threads": 60.0}}
        with tempfile.TemporaryDirectory() as tmp:
            html, warnings, _ = build(Path(tmp), page, bench=bench)
            self.assertEqual(warnings, "")
            t = re.sub(r" ([,;.])", r"\1", text(html))
            self.assertIn("fused 86%, 2.00\u00d7 faster", t)
            self.assertIn("layer norm (not measured in this run)", t)
            self.assertIn("bandwidth 60.0 GB/s", t)
            _, warnings, _ = build(Path(tmp), "# B\n\n{bench}`batchnorm forward`\n", bench=bench)
            self.assertIn("expected OP PASS IMPL SHAPE THREADS WHAT", warnings)

    def test_bench_layers_get_a_table_per_family_with_gflops_and_determinism(self):
        lin = dict(BENCH_ROW, op="linear", shape=[4096, 1024], group="linear", flops=8.6e9,
                   gflops=58.5)
        emb = dict(BENCH_ROW, op="embedding", **{"pass": "backward"}, shape=[262144, 256],
                   group="embedding", deterministic=True)
        act = dict(BENCH_ROW, op="gelu", shape=[4096, 4096], group="activations")
        name = "embedding backward 262144x256, 2 threads: fused, bits identical in 3 runs (1 yes, 0 no)"
        targets = [{"target": name, "measured": 1, "threshold": 1, "at_least": True, "met": True}]
        page = ("# B\n\n```{gradproof-bench}\n```\n\nlinear "
                "{bench}`linear forward fused 4096x1024 2 gflops`.\n")
        with tempfile.TemporaryDirectory() as tmp:
            bench = {"rows": [BENCH_ROW, act, lin, emb], "targets": targets}
            html, warnings, out = build(Path(tmp), page, bench=bench)
            self.assertEqual(warnings, "")
            svg = next((out / "_images").glob("bench*.svg")).read_text()
        t = text(html)
        for title in ("Normalization", "Element-wise activations", "Linear (GFLOP/s",
                      "Embedding backward"):
            self.assertIn(title, t)
        self.assertIn("GFLOP/s", t)
        self.assertIn("identical bits in 3 runs", t)
        self.assertIn("yes", t)
        self.assertIn("linear 58.5 GFLOP/s", re.sub(r" ([,;.])", r"\1", t))
        self.assertIn("activations forward", svg)

    def test_bench_plot_is_small_multiples(self):
        rows = [BENCH_ROW, dict(BENCH_ROW, pass_="x"), dict(BENCH_ROW, op="layernorm", shape=[4096, 1024])]
        rows[1] = dict(BENCH_ROW, **{"pass": "backward"})
        with tempfile.TemporaryDirectory() as tmp:
            _, warnings, out = build(Path(tmp), "# B\n\n```{gradproof-bench}\n```\n",
                                     bench={"rows": rows, "bandwidth": {"2 threads": 60.0}})
            self.assertEqual(warnings, "")
            svg = next((out / "_images").glob("bench*.svg")).read_text()
        self.assertIn('width="518.4pt"', svg)  # 7.2 in: fits the page, not one 1728-pt strip
        for title in ("batchnorm forward", "batchnorm backward", "layernorm forward"):
            self.assertIn(title, svg)

    def test_step_sweep_plot_and_its_numbers(self):
        sweep = {"op": "bn", "entry": "the entry", "analytic": 0.5, "h_central": 7.6e-6, "h_richardson": 6.1e-4,
                 "central_at_policy": 3e-10, "richardson_at_policy": 2e-12, "complex_step": 1e-16, "dual": 0.0,
                 "h": [0.5, 1e-3, 1e-6, 1e-9], "central": [1e-2, 1e-7, 3e-10, 1e-7],
                 "richardson": [1e-4, 1e-12, 1e-9, 1e-6]}
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "step_sweep.json").write_text(json.dumps({"schema": 1, "sweeps": [sweep]}))
            html, warnings, out = build(Path(tmp), "# S\n\n```{gradproof-step-sweep} bn\n```\n\n"
                                                   "```{gradproof-step-sweep} ln\n```\n")
            self.assertEqual(warnings, "")
            self.assertTrue(list((out / "_images").glob("step_sweep_bn*.svg")))
        t = text(html)
        self.assertIn("at the chosen step h = 7.6e-06 central differences miss the analytic value 0.5 by 3e-10", t)
        self.assertIn("No step sweep for ln in this build", t)
        self.assertIn('alt="Log-log plot of the relative error', html)

    def test_a_target_verdict_that_contradicts_its_numbers_is_a_warning(self):
        lie = [{"target": "x: fused, fraction of bandwidth", "measured": 0.5, "threshold": 0.75, "met": True}]
        with tempfile.TemporaryDirectory() as tmp:
            _, warnings, _ = build(Path(tmp), "# B\n\n```{gradproof-bench}\n```\n",
                                   bench={"rows": [BENCH_ROW], "targets": lie})
        self.assertIn("says met=True", warnings)



# ---- docs/_ext/gradproof_training.py: the training page's directives and role ------------------

def training_json(acc=0.975):
    def run(name, diff):
        return {"name": name, "optimizer": "adam", "backward": "staged", "what": name, "seconds": 0.5,
                "epochs": {"train_loss": [1.0, 0.5], "test_loss": [1.1, 0.6], "train_acc": [0.9, 0.99],
                           "test_acc": [0.9, acc]},
                "step_loss": [2.0, 1.0, 0.5], "bn_terms": {},
                "vs_staged": {"identical_bits": diff == 0, "max_step_loss_diff": diff, "max_test_acc_diff": 0,
                              "max_parameter_diff": diff}}
    return {"data": {"train": 1437, "test": 360}, "threads": 1, "total_seconds": 9.5,
            "config": {"hidden": 64, "epochs": 2, "batch": 64, "seed": 1, "adam": {"lr": 0.001}},
            "runs": [run("adam", 2.4e-7), run("sgd", 0.5), run("staged", 0), run("no_dvar_dmu", 2.4e-7),
                     run("no_dl_dmu", 0.65), run("no_dl_dvar", 0.14)],
            "confusion": [[36 if t == p else 0 for p in range(10)] for t in range(10)],
            "misclassified_count": 1, "misclassified": [{"row": 3, "label": 3, "predicted": 8, "pixels": [0] * 64}],
            "determinism": {"rerun_identical": True, "threads_identical": True, "threads_epochs": 2}}


def build_training(tmp: Path, page: str, data):
    src, out = tmp / "src", tmp / "out"
    src.mkdir(exist_ok=True)
    path = tmp / "training.json"
    if data is not None:
        path.write_text(json.dumps(data))
    (src / "conf.py").write_text(
        f"import sys\nsys.path.insert(0, {str(EXT)!r})\n"
        "extensions = ['myst_parser', 'gradproof_sphinx', 'gradproof_training']\n"
        f"gradproof_training = {str(path)!r}\ngradproof_generated_dir = {str(tmp / 'generated')!r}\n")
    (src / "index.md").write_text(page)
    warnings = io.StringIO()
    with docutils_namespace():
        app = Sphinx(str(src), str(src), str(out), str(tmp / "doctrees"), "html",
                     status=io.StringIO(), warning=warnings, freshenv=True)
        app.build()
    return (out / "index.html").read_text(encoding="utf-8"), warnings.getvalue()


TRAINING_PAGE = """# Training

Accuracy {training}`accuracy`, without dl_dmu {training}`diff no_dl_dmu`.

```{gradproof-training} summary
```

```{gradproof-training} confusion
```

```{gradproof-training} misclassified
```

```{gradproof-training} ablation
```
"""


class TrainingTest(unittest.TestCase):
    def test_the_figures_come_from_the_run(self):
        with tempfile.TemporaryDirectory() as tmp:
            html, warnings = build_training(Path(tmp), TRAINING_PAGE, training_json())
            self.assertEqual(warnings.strip(), "")
            t = text(html)
            self.assertIn("Accuracy 97.5%", t)
            self.assertIn("without dl_dmu 0.65", t)
            self.assertIn("Measured in this build: 97.5% test accuracy", t)
            self.assertIn("the same bits", t)
            self.assertIn("3 read as 8", html)  # the misclassified digit's alt text
            self.assertTrue((Path(tmp) / "generated" / "training_ablation.svg").exists())
            self.assertTrue((Path(tmp) / "generated" / "training_misclassified.svg").exists())

    def test_without_a_run_the_page_says_so(self):
        with tempfile.TemporaryDirectory() as tmp:
            html, _ = build_training(Path(tmp), TRAINING_PAGE, None)
            self.assertIn("No training run in this build", text(html))
            self.assertIn("(no training run in this build)", text(html))

    def test_a_run_without_an_ablation_run_is_a_warning(self):
        d = training_json()
        d["runs"] = [r for r in d["runs"] if r["name"] != "no_dl_dmu"]
        with tempfile.TemporaryDirectory() as tmp:
            _, warnings = build_training(Path(tmp), TRAINING_PAGE, d)
            self.assertIn("no run 'no_dl_dmu'", warnings)

if __name__ == "__main__":
    import warnings
    warnings.simplefilter("ignore", DeprecationWarning)  # docutils 0.19 about MyST 0.18's option parser
    unittest.main(verbosity=2)
