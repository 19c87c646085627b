"""The traceability rules (docs/_ext/traceability.py): a clean tree passes, and each rule fires on a tree
broken in exactly the way it guards against."""
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "docs" / "_ext"))
import gradproof_results as gr  # noqa: E402
import traceability as tr  # noqa: E402

from test_results_model import results_file, row  # noqa: E402

CODE = """// header
//! [bn.dx]
dx = dxhat * invstd;
//! [bn.dx]
"""

PAGE = """(bn-page)=
# Batch normalization

```python
(bn.in_code)=
```

(bn.dx)=
## The input gradient

$$
\\frac{\\partial L}{\\partial x_i}
$$ (bn.dx)

```{literalinclude} /../src/bn.hpp
:language: c++
:start-after: "//! [bn.dx]"
:end-before: "//! [bn.dx]"
```

```{gradproof-formula} bn.dx
```
"""


class TraceTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = Path(self.tmp.name)
        (self.root / "derivations").mkdir()
        (self.root / "docs").mkdir()
        (self.root / "src").mkdir()
        self.write("derivations/bn.md", PAGE)
        self.write("src/bn.hpp", CODE)
        self.rows = [row(formula="bn.dx", test="bn/dx/t")]
        self.formulas = ["bn.dx"]
        self.labels = {"bn.dx": ["bn/dx/t"]}

    def tearDown(self):
        self.tmp.cleanup()

    def write(self, rel, text):
        (self.root / rel).write_text(text, encoding="utf-8")

    def problems(self):
        res = gr.load_results(results_file(self.tmp.name, self.rows, formulas=self.formulas))
        return tr.check(self.root, res, list(self.labels), self.labels)

    def assertFires(self, rule, text):
        found = [p for p in self.problems() if p.startswith(f"[{rule}]") and text in p]
        self.assertTrue(found, f"expected a [{rule}] problem mentioning {text!r}, got {self.problems()}")

    def test_clean_tree_passes_and_code_blocks_are_not_labels(self):
        self.assertEqual(self.problems(), [])
        src = tr.scan(self.root)
        self.assertEqual(sorted(src.labels), ["bn.dx"])  # (bn.in_code)= sits in a code block
        self.assertEqual(len(src.labels["bn.dx"]), 2)    # the target and the equation label

    def test_label_without_marker_test_row_or_catalog_entry(self):
        self.write("src/bn.hpp", "// no markers\n")
        self.labels = {}
        self.rows = []
        self.formulas = []
        for what in ("no code marker", "no test is labelled", "no result row", "not in the formula catalog"):
            self.assertFires("labels", what)

    def test_catalog_formula_without_label(self):
        self.formulas = ["bn.dx", "bn.dgamma"]
        self.assertFires("catalog", "bn.dgamma")

    def test_unknown_and_unpaired_markers(self):
        self.write("src/other.cpp", "//! [bn.nowhere]\nx;\n//! [bn.nowhere]\n//! [bn.dx]\n")
        self.assertFires("markers", "bn.nowhere")
        self.assertFires("markers", "appears 1 times")

    def test_unknown_test_label(self):
        self.labels = {"bn.dx": ["bn/dx/t"], "bn.ghost": ["bn/ghost"]}
        self.assertFires("tests", "bn.ghost")

    def test_failing_row_and_row_for_unknown_formula(self):
        self.rows = [row(formula="bn.dx", passed=False), row(formula="bn.ghost")]
        self.assertFires("rows", "FAILED bn.dx")
        self.assertFires("rows", "bn.ghost")

    def test_literalinclude_with_missing_marker_or_file(self):
        self.write("derivations/bn.md", PAGE.replace(':end-before: "//! [bn.dx]"', ':end-before: "//! [bn.gone]"'))
        self.assertFires("include", "not found")
        self.write("derivations/bn.md", PAGE.replace("/../src/bn.hpp", "/../src/missing.hpp"))
        self.assertFires("include", "no file")

    def test_formula_without_its_code_or_result_on_the_page(self):
        self.write("derivations/bn.md", PAGE.replace("```{gradproof-formula} bn.dx\n```\n", ""))
        self.assertFires("pages", "measured result is not shown")
        self.write("derivations/bn.md", PAGE.replace("literalinclude", "code-block"))
        self.assertFires("pages", "its code is not shown")

    def test_section_labels_without_a_dot_are_not_formulas(self):
        self.assertNotIn("bn-page", tr.scan(self.root).labels)


if __name__ == "__main__":
    unittest.main()
