"""The results model behind the site (docs/_ext/gradproof_results.py): what VERIFIED means, how
rows are grouped and counted, and how test labels are read from the test binary's listings."""
import json
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "docs" / "_ext"))
import gradproof_results as gr  # noqa: E402


def row(formula="bn.dx", test="bn/dx/t", oracle="central", dtype="float64", kind="oracle", shape=(2, 3),
        abs_err=1e-9, rel_err=1e-8, atol=1e-7, rtol=1e-7, passed=True, note="n"):
    return {"formula": formula, "test": test, "oracle": oracle, "dtype": dtype, "kind": kind,
            "shape": list(shape), "max_abs_err": abs_err, "max_rel_err": rel_err, "atol": atol,
            "rtol": rtol, "passed": passed, "worst_index": [0], "analytic": 1.0, "numeric": 1.0, "note": note}


def results_file(tmp, rows, formulas=("bn.dx", "bn.dgamma"), ablation=()):
    path = Path(tmp) / "results.json"
    path.write_text(json.dumps({
        "schema": 1, "preset": "release", "generated_utc": "2026-01-01T00:00:00Z", "compiler": "GNU 12",
        "formulas": [{"id": f, "op": "bn", "title": f"title of {f}"} for f in formulas],
        "rows": list(rows), "ablation": list(ablation)}))
    return path


class StatusTest(unittest.TestCase):
    def test_no_rows_is_not_verified(self):
        self.assertEqual(gr.status_of([]), gr.NOT_VERIFIED)

    def test_all_passed_is_verified(self):
        self.assertEqual(gr.status_of([row(), row(oracle="dual")]), gr.VERIFIED)

    def test_one_failure_fails_the_formula(self):
        self.assertEqual(gr.status_of([row(), row(passed=False)]), gr.FAILED)

    def test_a_passed_value_that_is_not_true_counts_as_failed(self):
        # A row whose verdict is missing or malformed must never read as verified.
        self.assertEqual(gr.status_of([row(passed=None)]), gr.FAILED)
        self.assertEqual(gr.status_of([row(passed="true")]), gr.FAILED)


class GroupingTest(unittest.TestCase):
    def test_groups_by_test_oracle_dtype_kind_in_first_seen_order(self):
        rows = [row(shape=(2, 3)), row(oracle="dual"), row(shape=(4, 5), abs_err=3e-9, atol=2e-7),
                row(test="bn/dx/u")]
        groups = gr.group_rows(rows)
        self.assertEqual([(g.test, g.oracle) for g in groups],
                         [("bn/dx/t", "central"), ("bn/dx/t", "dual"), ("bn/dx/u", "central")])
        g = groups[0]
        self.assertEqual(len(g.rows), 2)
        self.assertEqual(g.shapes, [(2, 3), (4, 5)])
        self.assertEqual(g.max_abs_err, 3e-9)
        self.assertEqual(g.atol_range, (1e-7, 2e-7))
        self.assertTrue(g.passed)

    def test_without_test_names_groups_merge_across_tests(self):
        groups = gr.group_rows([row(), row(test="bn/dx/u")], by_test=False)
        self.assertEqual(len(groups), 1)
        self.assertEqual(len(groups[0].rows), 2)

    def test_a_nan_error_dominates_the_maximum(self):
        g = gr.group_rows([row(abs_err=1.0), row(abs_err=None, passed=False)])[0]
        self.assertIsNone(g.max_abs_err)
        self.assertEqual(gr.fmt_num(g.max_abs_err), "NaN")
        self.assertEqual(g.n_failed, 1)

    def test_totals(self):
        with tempfile.TemporaryDirectory() as tmp:
            res = gr.load_results(results_file(tmp, [row(), row(passed=False), row(formula="bn.other")],
                                               formulas=("bn.dx", "bn.dgamma", "bn.ok")))
        t = gr.totals(res)
        self.assertEqual((t.formulas, t.rows, t.passed, t.failed), (3, 3, 2, 1))
        self.assertEqual(t.formulas_failed, ["bn.dx"])
        self.assertEqual(t.formulas_without_rows, ["bn.dgamma", "bn.ok"])
        self.assertEqual(t.unknown_row_formulas, ["bn.other"])


class LoadTest(unittest.TestCase):
    def test_missing_file_says_to_run_the_tests(self):
        with self.assertRaisesRegex(gr.DataError, "run the tests"):
            gr.load_results("/nonexistent/results.json")

    def test_wrong_schema_and_missing_keys_are_errors(self):
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / "r.json"
            p.write_text('{"schema": 2, "formulas": [], "rows": [], "ablation": []}')
            with self.assertRaisesRegex(gr.DataError, "schema"):
                gr.load_results(p)
            bad = row()
            del bad["atol"]
            with self.assertRaisesRegex(gr.DataError, r"rows\[0\] lacks atol"):
                gr.load_results(results_file(tmp, [bad]))

    def test_bench_absent_is_none_and_list_or_object_load(self):
        with tempfile.TemporaryDirectory() as tmp:
            self.assertIsNone(gr.load_bench(Path(tmp) / "none.json"))
            r = {"op": "batchnorm", "pass": "forward", "impl": "fused", "shape": [32, 64, 56, 56], "threads": 2,
                 "median_ms": 1.0, "min_ms": 0.9, "max_ms": 1.2, "gbps": 50.0, "fraction_of_bandwidth": 0.8}
            p = Path(tmp) / "b.json"
            p.write_text(json.dumps([r]))
            self.assertEqual(gr.load_bench(p).bandwidth, {})
            p.write_text(json.dumps({"rows": [r], "bandwidth": {"triad": 60.5, "read": 70},
                                     "machine": {"cpu": "x", "cores": 2}}))
            b = gr.load_bench(p)
            self.assertEqual(b.bandwidth, {"triad": 60.5, "read": 70.0})
            self.assertEqual(b.machine, {"cpu": "x", "cores": "2"})
            del r["gbps"]
            p.write_text(json.dumps([r]))
            with self.assertRaisesRegex(gr.DataError, "lacks gbps"):
                gr.load_bench(p)


class LabelParsingTest(unittest.TestCase):
    # Shapes of `gradproof_tests --list_content=DOT` and `--list_labels` (Boost.Test 1.74).
    DOT = """digraph G {rankdir=LR;
tu1[shape=ellipse,peripheries=2,fontname=Helvetica,color=green,label="Master Test Suite"];
{
tu2[shape=Mrecord,fontname=Helvetica,color=green,label="bn|/src/tests/main.cpp(92)"];
tu1 -> tu2;
{
tu3[shape=Mrecord,fontname=Helvetica,color=green,label="terms|/src/tests/main.cpp(92)"];
tu2 -> tu3;
{
tu65565[shape=Mrecord,fontname=Helvetica,color=green,label="dvar_dmu_is_zero|/src/tests/main.cpp(92)|labels: @bn.dvar_dmu"];
tu3 -> tu65565;
}
}
tu65559[shape=Mrecord,fontname=Helvetica,color=green,label="table|/src/tests/ops/bn.test.cpp(206)|labels: @bn.dl_dxhat @bn.dvar_dmu"];
tu2 -> tu65559;
}
}
"""

    def test_dot_listing_gives_full_test_names_per_label(self):
        self.assertEqual(gr.parse_dot_labels(self.DOT), {
            "bn.dvar_dmu": ["bn/terms/dvar_dmu_is_zero", "bn/table"], "bn.dl_dxhat": ["bn/table"]})

    def test_list_labels(self):
        self.assertEqual(gr.parse_list_labels("Available labels:\n  bn.dbeta\n  bn.dx\n  \n"), ["bn.dbeta", "bn.dx"])
        self.assertEqual(gr.parse_list_labels("something else"), [])



class VerdictTest(unittest.TestCase):
    """The one line a formula reduces to, and how rows are read against their allowance."""

    def test_allowance_ratio_is_the_error_over_atol_plus_rtol_n_at_the_worst_element(self):
        r = dict(row(atol=1e-6, rtol=1e-5), analytic=1.0 + 2e-5, numeric=1.0)
        self.assertAlmostEqual(gr.allowance_ratio(r), 2e-5 / (1e-6 + 1e-5), places=6)

    def test_a_float32_row_with_a_large_rel_err_can_sit_well_inside_its_allowance(self):
        # max rel err 0.00285 beside rtol 1e-05 is no violation when atol carries the allowance.
        r = dict(row(dtype="float32", rel_err=0.00285, atol=3e-5, rtol=1e-5), analytic=0.001 + 2.85e-6, numeric=0.001)
        self.assertLess(gr.allowance_ratio(r), 0.1)

    def test_demonstration_rows_have_no_allowance_ratio(self):
        self.assertIsNone(gr.allowance_ratio(row(kind="negative_control", atol=0, rtol=0)))
        self.assertIsNone(gr.allowance_ratio(row(kind="pitfall")))

    def test_relative_error_undefined_when_the_row_says_so(self):
        g = gr.group_rows([dict(row(rel_err=0), rel_defined=False)])[0]
        self.assertFalse(g.rel_defined)
        self.assertTrue(gr.group_rows([row()])[0].rel_defined)  # older files: defined

    def test_negative_control_outcome_from_its_note(self):
        self.assertEqual(gr.demonstration_outcome(row(kind="negative_control", note="drop: caught by the oracle")),
                         "caught")
        self.assertEqual(gr.demonstration_outcome(row(kind="negative_control", note="flip: not caught (no change)")),
                         "no change")

    def test_checks_times_dtypes(self):
        rows = [row(), row(dtype="float32"), row(oracle="dual"), row(oracle="dual", dtype="float32")]
        v = gr.verdict_of(rows)
        self.assertEqual(gr.checks_phrase(v), "2 checks \u00d7 2 dtypes (float64, float32)")
        v = gr.verdict_of(rows[:3])
        self.assertEqual(gr.checks_phrase(v), "3 comparisons (float64: 2, float32: 1)")

    def test_verdict_counts_demonstrations_apart(self):
        rows = [row(), row(kind="negative_control", note="drop: caught", abs_err=2.0, rel_err=1.0),
                row(kind="pitfall", abs_err=5.0)]
        v = gr.verdict_of(rows)
        self.assertEqual(v.checks, 1)
        self.assertEqual(v.demonstrations, {"caught": 1, "shown": 1})
        self.assertEqual(gr.demonstrations_phrase(v),
                         "1 negative control caught, as derived; 1 pitfall row behaved as derived")

    def test_fmt_ratio(self):
        self.assertEqual(gr.fmt_ratio(None), "\u2014")
        self.assertEqual(gr.fmt_ratio(0.01234), "0.012")
        self.assertEqual(gr.fmt_ratio(float("inf")), "\u221e")


class SweepTest(unittest.TestCase):
    def sweep(self, **kw):
        s = {"op": "bn", "entry": "e", "analytic": 1.0, "h_central": 1e-5, "h_richardson": 1e-3,
             "central_at_policy": 1e-10, "richardson_at_policy": 1e-12, "complex_step": 0.0, "dual": 1e-16,
             "h": [1e-1, 1e-2], "central": [1e-3, 1e-5], "richardson": [1e-5, 1e-9]}
        s.update(kw)
        return s

    def test_absent_file_is_none_and_a_sweep_is_read_by_op(self):
        with tempfile.TemporaryDirectory() as tmp:
            self.assertIsNone(gr.load_sweeps(Path(tmp) / "none.json"))
            p = Path(tmp) / "s.json"
            p.write_text(json.dumps({"schema": 1, "sweeps": [self.sweep()]}))
            self.assertEqual(gr.load_sweeps(p)["bn"]["h_central"], 1e-5)

    def test_lengths_must_agree(self):
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / "s.json"
            p.write_text(json.dumps({"schema": 1, "sweeps": [self.sweep(central=[1.0])]}))
            with self.assertRaises(gr.DataError):
                gr.load_sweeps(p)

if __name__ == "__main__":
    unittest.main()
