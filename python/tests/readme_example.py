"""Runs the README's Python example exactly as README.md has it: the first ```python block of its
"## Python" section, which must be five lines (the README says so)."""
import re
import sys

text = open(sys.argv[1], encoding="utf-8").read()
section = text.split("\n## Python\n", 1)
if len(section) != 2:
    sys.exit("readme_example: README.md has no '## Python' section")
match = re.search(r"```python\n(.*?)```", section[1], re.S)
if not match:
    sys.exit("readme_example: the '## Python' section of README.md has no ```python block")
code = match.group(1)
lines = code.strip("\n").split("\n")
if len(lines) != 5:
    sys.exit(f"readme_example: the README's example has {len(lines)} lines; the README promises five")
exec(compile(code, "README.md (## Python)", "exec"), {})
