"""Every Python block of the README runs on its own, as pasted into a fresh file, and prints what the
README says it prints: the ``# `` comment lines right after a ``print(...)`` line are its output
(``...`` stands for any number of lines)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks() -> list[tuple[str, str]]:
    """(the heading above it, the code) for each ```python block of the README."""
    text = README.read_text()
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
        heading = re.findall(r"^#+ (.+)$", text[: match.start()], re.M)[-1]
        blocks.append((heading, match.group(1)))
    return blocks


BLOCKS = _blocks()


def _printed(code: str) -> list[list[str]]:
    """The output each print line of the block is shown to give: its run of ``# `` lines."""
    lines = code.splitlines()
    shown = []
    for i, line in enumerate(lines):
        if not line.startswith("print("):
            continue
        run = []
        for after in lines[i + 1:]:
            if not after.startswith("# "):
                break
            run.append(after[2:])
        if run:
            shown.append(run)
    return shown


def _matches(expected: list[str], output: list[str]) -> bool:
    """Whether ``expected`` (with ``...`` lines as wildcards) is a run of consecutive ``output`` lines."""
    pattern = "\n".join(".*?" if line.strip() == "..." else re.escape(line) for line in expected)
    return re.search(f"(^|\n){pattern}(\n|$)", "\n".join(output), re.S) is not None


def test_the_readme_has_its_blocks_and_shows_what_they_print():
    assert len(BLOCKS) >= 5
    assert sum(len(_printed(code)) for _, code in BLOCKS) >= 5
    assert _matches(["a", "...", "c"], ["x", "a", "b", "b", "c"]) and not _matches(["a", "c"], ["a", "b", "c"])


@pytest.mark.parametrize("code", [code for _, code in BLOCKS], ids=[heading for heading, _ in BLOCKS])
def test_a_readme_block_runs_as_pasted(code, tmp_path):
    script = tmp_path / "block.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    output = [line.rstrip() for line in done.stdout.splitlines()]
    for expected in _printed(code):
        assert _matches([line.rstrip() for line in expected], output), (expected, done.stdout)


def test_what_the_readme_s_main_command_writes_stays_out_of_git_status():
    import fnmatch

    command = next(line for line in README.read_text().splitlines() if "fxconv convert torchvision:resnet50" in line)
    written = re.findall(r"(?:-o|--report) (\S+)", command)
    ignored = [p.strip() for p in (README.parent / ".gitignore").read_text().splitlines() if p.strip()]
    assert len(written) == 2 and all(any(fnmatch.fnmatch(f, p) for p in ignored) for f in written), written
