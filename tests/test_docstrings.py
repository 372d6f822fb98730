"""Every public class, function, method and property of the public API has a docstring
(`inspect.getdoc`, so an override that keeps its base's meaning inherits the base's)."""

from __future__ import annotations

import inspect

import nnx
import nnx.testing

MODULES = [nnx, nnx.layers, nnx.losses, nnx.metrics, nnx.callbacks, nnx.optim, nnx.text,
           nnx.interop, nnx.hooks, nnx.preprocessing, nnx.datasets, nnx.testing,
           nnx.regularizers, nnx.initializers, nnx.distributed, nnx.profile]


def _from_nnx(obj) -> bool:
    return (getattr(obj, "__module__", "") or "").startswith("nnx")


def _undocumented() -> list[str]:
    missing = []
    for m in MODULES:
        names = getattr(m, "__all__", None) or [n for n in dir(m) if not n.startswith("_")]
        for n in names:
            o = getattr(m, n, None)
            if not (inspect.isclass(o) or inspect.isfunction(o)) or not _from_nnx(o):
                continue
            if not (inspect.getdoc(o) or "").strip():
                missing.append(f"{o.__module__}.{o.__qualname__}")
            if not inspect.isclass(o):
                continue
            for k, v in inspect.getmembers(o):
                if k.startswith("_") or not (inspect.isfunction(v) or isinstance(v, property)):
                    continue
                if not (getattr(v, "__module__", "nnx") or "nnx").startswith("nnx"):
                    continue
                if not (inspect.getdoc(v) or "").strip():
                    missing.append(f"{o.__module__}.{o.__qualname__}.{k}")
    return sorted(set(missing))


def test_public_api_is_documented():
    missing = _undocumented()
    assert not missing, f"{len(missing)} public objects without a docstring:\n" + "\n".join(
        missing)
