"""The refusal codes: one table (``fxconv.codes``) for both front ends and the code (the docs' table is made
from it: tests/test_docs.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

import fxconv
from fxconv.codes import CODES, skip

PACKAGE = Path(fxconv.__file__).parent


def _emitted_codes() -> dict[str, list[str]]:
    """Every code the package can emit: the second argument of each ``skip(...)`` call, and the first item
    of each ``(code, reason)`` pair a ``*_refusal`` helper returns."""
    found: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            code = None
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "skip" and len(node.args) >= 2:
                code = node.args[1]
            elif isinstance(node, ast.FunctionDef) and node.name.endswith("_refusal"):
                for ret in (n for n in ast.walk(node) if isinstance(n, ast.Return) and isinstance(n.value, ast.Tuple)):
                    found.setdefault(ret.value.elts[0].value, []).append(f"{path.name}:{ret.lineno}")
            if isinstance(code, ast.Constant):
                found.setdefault(code.value, []).append(f"{path.name}:{node.lineno}")
            elif code is not None and not isinstance(code, ast.Starred):  # skip(name, *refusal): a helper's pair
                pytest.fail(f"{path.name}:{node.lineno}: a refusal code that is not a literal")
    return found


def test_every_code_emitted_is_in_the_table_and_every_code_in_the_table_is_emitted():
    emitted = _emitted_codes()
    assert set(emitted) - set(CODES) == set(), {c: emitted[c] for c in set(emitted) - set(CODES)}
    assert set(CODES) - set(emitted) == set()


def test_a_code_outside_the_table_is_a_bug_not_a_report():
    with pytest.raises(ValueError, match="not in fxconv.codes.CODES"):
        skip("fc", "no-such-code", "...")


def test_old_codes_still_match_the_skips_that_replaced_them():
    class LeftWeight(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 3))

        def forward(self, x):
            return self.w @ x

    _, report = fxconv.convert(LeftWeight(), torch.randn(3, 4), capture="fx")
    (skipped,) = report.skipped
    assert skipped.code == "constant-left" and skipped.matches("weight-on-left") and skipped.matches("constant-left")
    assert not skipped.matches("not-2d")
