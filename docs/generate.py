"""The docs' generated parts: the tables made from the code and from the benchmarks' results, written
between markers so that no figure or code is typed twice.

    python docs/generate.py          # rewrite them
    python docs/generate.py --check  # exit 1, naming the pages, where a page is not what this makes

A generated part sits between ``<!-- generated: NAME -->`` and ``<!-- end generated -->``; the test run
(``tests/test_docs.py``) fails where one is out of date.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # fxconv, and the benchmarks' table makers


def codes() -> str:
    """The refusal codes, from ``fxconv.codes``: what each means and what to do."""
    from fxconv.codes import ALIASES, CODES

    lines = ["| code | meaning | what to do |", "| --- | --- | --- |"]
    lines += [f"| `{code}` | {c.meaning} | {c.to_do} |" for code, c in CODES.items()]
    renamed = ", ".join(f"`{old}` (now `{new}`)" for old, new in ALIASES.items())
    return "\n".join(lines) + f"\n\nOld codes a `Skipped.matches(...)` still recognises: {renamed}."


def targets() -> str:
    """Vela's cycles and Core ML's MIL ops per model and variant, from ``benchmarks/results/bench-targets.json``."""
    import targets as bench_targets  # benchmarks/targets.py

    rows = json.loads((ROOT / "benchmarks/results/bench-targets.json").read_text())["rows"]
    return bench_targets.table(rows)


PARTS = {"codes": ("convert.md", codes), "targets": ("targets.md", targets)}
_PART = re.compile(r"(<!-- generated: (\w+) -->\n)(.*?)(<!-- end generated -->)", re.S)


def generated(page: Path) -> str:
    """The page with each of its generated parts made afresh."""
    def fill(match: re.Match) -> str:
        _, make = PARTS[match[2]]
        return f"{match[1]}{make()}\n{match[4]}"

    return _PART.sub(fill, page.read_text())


def main(check: bool) -> int:
    stale = []
    for name in sorted({page for page, _ in PARTS.values()}):
        page = DOCS / name
        text = generated(page)
        if text != page.read_text():
            stale.append(name)
            if not check:
                page.write_text(text)
    if check and stale:
        print(f"out of date: {', '.join(stale)}; run python docs/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main("--check" in sys.argv[1:]))
