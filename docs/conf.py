"""Sphinx configuration of the gradproof site. Built by `./build.sh site`, which sets:

GRADPROOF_RESULTS      results.json of the test run of this build (default: preset release)
GRADPROOF_BENCH        bench/results.json of this build's benchmark run, if any
GRADPROOF_TRAINING     training.json of this build's training run (the training page)
GRADPROOF_DOXYGEN_XML  Doxygen's XML output for Breathe
GRADPROOF_GENERATED    where figures made at build time (the benchmark plot) are written
GRADPROOF_SITE_DIR     the site's build directory (build/site), for the defaults of the two above

Without them, the defaults are those of the release preset, so a bare sphinx-build works too.
"""
import os
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
root = here.parent
sys.path.insert(0, str(here / "_ext"))
site = Path(os.environ.get("GRADPROOF_SITE_DIR", root / "build" / "site"))

project = "gradproof"
author = "the gradproof authors"
copyright = "the gradproof authors. Code: Apache License 2.0; text and figures: CC BY 4.0"

extensions = [
    "myst_parser",
    "sphinx.ext.mathjax",
    "sphinx.ext.graphviz",
    "breathe",
    "gradproof_sphinx",
    "gradproof_training",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "Doxyfile", "**/README.md"]

# MyST: $...$ and $$...$$ (labelled: `$$ ... $$ (bn.dvar_dmu)`), amsmath environments, ::: fences.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_dmath_double_inline = True

# Results of this build (see docs/_ext/gradproof_sphinx.py).
gradproof_results = os.environ.get("GRADPROOF_RESULTS",
                                   str(root / "build" / "release" / "verification" / "results.json"))
gradproof_bench = os.environ.get("GRADPROOF_BENCH", str(root / "build" / "bench" / "bench" / "results.json"))
gradproof_training = os.environ.get("GRADPROOF_TRAINING",
                                    str(root / "build" / "release" / "training" / "training.json"))
gradproof_generated_dir = os.environ.get("GRADPROOF_GENERATED", str(site / "generated"))

# Math: MathJax 2.7 copied from Debian's libjs-mathjax into _static by the extension; nothing is
# loaded from another host. The MathJax settings are in the extension (configure_mathjax).
mathjax_path = "mathjax/MathJax.js?config=TeX-AMS_CHTML"

graphviz_output_format = "svg"

# API reference: Breathe over Doxygen's XML (docs/Doxyfile).
breathe_projects = {"gradproof": os.environ.get("GRADPROOF_DOXYGEN_XML", str(site / "doxygen" / "xml"))}
breathe_default_project = "gradproof"
breathe_domain_by_extension = {"hpp": "cpp"}
breathe_default_members = ("members",)
primary_domain = "cpp"
highlight_language = "c++"

html_theme = "furo"
html_title = "gradproof"
html_static_path = ["_static"]
html_favicon = "_static/favicon.svg"  # also spares the browser a request for /favicon.ico
html_show_sphinx = True
html_copy_source = False
html_theme_options = {"navigation_with_keys": True}
