"""Every Python block of the README and of ``docs/`` runs on its own, as pasted into a fresh file, and
prints what the page says it prints: the ``# `` comment lines right after a ``print(...)`` line are its
output (``...`` stands for any number of lines). The pages' generated parts are what ``docs/generate.py``
makes, and every link between them leads somewhere."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def _blocks() -> list[tuple[str, str]]:
    """(the page and the heading above it, the code) for each ```python block of the pages."""
    blocks = []
    for page in PAGES:
        text = page.read_text()
        for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
            heading = re.findall(r"^#+ (.+)$", text[: match.start()], re.M)[-1]
            blocks.append((f"{page.stem}: {heading}", match.group(1)))
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


def test_the_pages_have_their_blocks_and_show_what_they_print():
    assert len(BLOCKS) >= 5 and any(name.startswith("README") for name, _ in BLOCKS)
    assert sum(len(_printed(code)) for _, code in BLOCKS) >= 5
    assert _matches(["a", "...", "c"], ["x", "a", "b", "b", "c"]) and not _matches(["a", "c"], ["a", "b", "c"])


@pytest.mark.parametrize("code", [code for _, code in BLOCKS], ids=[heading for heading, _ in BLOCKS])
def test_a_block_runs_as_pasted(code, tmp_path):
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


def test_the_generated_parts_are_what_the_code_and_the_results_make():
    done = subprocess.run([sys.executable, str(ROOT / "docs/generate.py"), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert all("<!-- generated: " in (ROOT / "docs" / page).read_text() for page in ("convert.md", "targets.md"))


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_every_link_between_the_pages_leads_to_a_file_and_heading_that_exist(page):
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)  # not inside code
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if "://" in target:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name} links to {target}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M)
            assert anchor in map(_anchor, headings), f"{page.name} links to {target}: no such heading"
