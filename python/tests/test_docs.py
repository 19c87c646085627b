"""The API page (docs/api/python.md) and the module agree: every function the page's tables name
exists, every op of the module is on the page, and the page's examples run."""
import pathlib
import re

import gradproof

PAGE = pathlib.Path(__file__).resolve().parents[2] / "docs" / "api" / "python.md"


def test_the_page_lists_exactly_the_module_s_ops():
    text = PAGE.read_text(encoding="utf-8")
    on_page = set(re.findall(r"`(\w+)_forward`", text))
    in_module = {n[: -len("_forward")] for n in dir(gradproof) if n.endswith("_forward")}
    assert on_page == in_module
    for op in in_module:
        assert hasattr(gradproof, op + "_backward"), op
    for name in ("check", "check_ops", "jvp", "jacobian", "gradient", "step"):
        assert f"`{name}(" in text or f"`gradproof.{name}(" in text, name
        assert hasattr(gradproof, name)


def test_the_page_s_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, str(PAGE), "exec"), {})
