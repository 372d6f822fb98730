"""The model zoo behind `nnx train --model NAME` and the examples: one module per model.

Each module defines:
- `LOSS`: the loss name to compile with;
- `INPUT`: "image" (N, 1, 28, 28), "flat"/"rows" (N, 28, 28 as given; the model flattens or reads
  rows itself);
- `TARGET`: "labels" or "inputs" (autoencoders reconstruct their input);
- `build(backend=None, seed=0, **options) -> nnx.Model`.
"""

from __future__ import annotations

import importlib
import pkgutil


def names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get(name: str):
    if name not in names():
        from ..errors import unknown

        raise unknown("model", name, names())
    return importlib.import_module(f"{__name__}.{name}")
