"""A re-laid weight keeps the name of the Linear weight it came from — one rule for every ONNX file fxconv writes.

Both the export path (``fxconv._tidy``, after torch.onnx folds ``weight.unflatten(...)`` into a new
initializer) and ``convert_onnx`` (which re-lays the initializer itself) make new initializers from a
Linear's weight. Configs and quantisation overrides name that weight (``classifier.0.weight``), so the
new one takes its name when the original is no longer read (``name.1``, ... when it still is), and
re-layouts that came out equal (a Linear called twice) become one initializer.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def name_after_originals(graph: ir.Graph, originals: dict[ir.Value, str]) -> None:
    """Give each re-laid initializer in ``originals`` (-> the name of the one it re-lays) that name."""
    taken: dict[str, list[ir.Value]] = {}
    for value, root in originals.items():
        if graph.initializers.get(value.name) is not value:
            continue
        twin = next((v for v in taken.get(root, ()) if _equal(v, value)), None)
        if twin is not None:
            ir.convenience.replace_all_uses_with(value, twin)
            graph.initializers.pop(value.name)
            continue
        taken.setdefault(root, []).append(value)
        graph.initializers.pop(value.name)
        name, n = root, 0
        while name in graph.initializers:
            n += 1
            name = f"{root}.{n}"
        value.name = name
        graph.register_initializer(value)


def _equal(a: ir.Value, b: ir.Value) -> bool:
    x, y = a.const_value.numpy(), b.const_value.numpy()
    return x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x, y)
