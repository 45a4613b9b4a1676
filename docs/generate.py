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


def _results(name: str) -> list[dict]:
    return json.loads((ROOT / "benchmarks/results" / name).read_text())["rows"]


def _latency(name: str, original: str, columns, **options):
    """A table of converted/original latency ratios from a ``bench.py`` result (``bench.ratio_table``)."""
    def make() -> str:
        import bench  # benchmarks/bench.py

        return bench.ratio_table(_results(name), original, columns, **options)

    return make


def verify_cost() -> str:
    """What the self-check costs, from ``benchmarks/results/bench-verify.json`` (``self_check.markdown``)."""
    import self_check

    return self_check.markdown(_results("bench-verify.json"))


def large_file() -> str:
    """A model past 2 GB, from ``benchmarks/results/bench-large-file.json`` (``large_file.markdown``)."""
    import large_file as bench_large_file

    return bench_large_file.markdown(_results("bench-large-file.json"))


ORT, OV, EAGER = "onnxruntime", "openvino", "pytorch"
PARTS = {
    "codes": ("convert.md", codes),
    "targets": ("targets.md", targets),
    "verify": ("benchmarks.md", verify_cost),
    "large_file": ("benchmarks.md", large_file),
    "latency_ort": ("benchmarks.md", _latency("bench.json", ORT, [
        ("ORT kernel", ORT, "kernel"), ("ORT 1x1", ORT, "1x1"), ("ORT kernel, batched", ORT, "kernel batched"),
        ("eager kernel", EAGER, "kernel"), ("eager 1x1", EAGER, "1x1")], diff=(ORT, "kernel"))),
    "latency_openvino": ("benchmarks.md", _latency("bench.json", OV, [
        ("OpenVINO kernel", OV, "kernel"), ("OpenVINO 1x1", OV, "1x1"),
        ("OpenVINO kernel, batched", OV, "kernel batched")], diff=(OV, "kernel"))),
    "latency_onnx": ("benchmarks.md", _latency("bench-onnx.json", ORT, [
        ("ORT kernel", ORT, "onnx kernel"), ("ORT 1x1", ORT, "onnx 1x1"), ("OpenVINO kernel", OV, "onnx kernel"),
        ("OpenVINO 1x1", OV, "onnx 1x1")], diff=(ORT, "onnx kernel"), first="file")),
    "latency_scope": ("benchmarks.md", _latency("bench-scope.json", ORT, [
        ('ORT `scope="all"`', ORT, "scope all"), ("ORT wrap each Linear", ORT, "wrap each Linear"),
        ("ORT tokens into batch", ORT, "tokens into batch"), ('OpenVINO `scope="all"`', OV, "scope all"),
        ("OpenVINO wrap each", OV, "wrap each Linear"), ("OpenVINO into batch", OV, "tokens into batch")],
        bold=(0, 3), flag=False)),
}  # fmt: skip
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
