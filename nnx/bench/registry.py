"""The case registry: what to run (cases, grouped in suites) and where (targets).

A *case* is one workload at one size: a name, its suite, its FLOP and byte counts, and a
`setup(target)` that allocates the inputs on the target and returns the zero-argument function
to time (or raises `Skip` with a reason: a kernel that does not exist yet, no torch equivalent).
A *target* is where a case runs: an nnx backend ("numpy", "numba", "cupy") or the PyTorch
yardstick ("torch" on the CPU, "torch-cuda"); `nnx bench` runs the torch targets in a worker
process of their own (nnx.bench.remote). Suites are functions `quick -> [Case]`, registered
declared with `@suite(name)` and added to a `SuiteRegistry` explicitly: `nnx.bench.suites`
lists the built-in ones and `register_all(registry)` adds them; `nnx.bench.default_registry()`
is the registry that feeds `nnx bench`, the pytest-benchmark files in `benchmarks/` and
`nnx.bench.cases`. The crossover sweep builds its cases itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from nnx import compat
from nnx.backend import available_backends, backend_module, backend_names, get_ops
from nnx.errors import unknown

from .machine import torch_info
from .timing import CudaEventClock, HostClock, TorchCudaEventClock

TORCH_TARGETS = ("torch", "torch-cuda")


class Skip(Exception):
    """Raised by a case's setup when it cannot run on a target; the message is the reason."""


@dataclass
class Case:
    name: str
    suite: str
    setup: Callable  # setup(target) -> fn() (raises Skip(reason))
    flops: float | None = None  # floating-point operations per call of fn
    bytes: float | None = None  # minimal bytes moved per call (reads + writes)
    params: dict = field(default_factory=dict)
    group: str | None = None  # plot group: cases of one group share an x axis
    x: float | None = None  # position on that axis (e.g. the n of an n^3 GEMM)
    bound: str = "compute"  # "compute": % of SGEMM peak; "memory": % of memcpy peak
    number: int | None = None  # fixed calls per sample (None: calibrated)
    repeats: int | None = None  # fixed rounds (None: the run's setting)
    # why a target is slower than PyTorch here, when it is ({target: reason}, from measurements;
    # the table prints it under a case where that target's per-round ratio to torch is < 1)
    why: dict = field(default_factory=dict)

    @property
    def intensity(self) -> float | None:
        """Arithmetic intensity, FLOP per byte."""
        if self.flops and self.bytes:
            return self.flops / self.bytes
        return None


class Target:
    """Where a case runs, in this process. For nnx backends `new_ops()` gives a fresh, seeded
    Ops object; a torch target imports torch (`nnx bench` creates those only in a worker
    process: nnx.bench.remote)."""

    remote = False

    def __init__(self, name: str):
        self.name = name
        self.kind = "torch" if name in TORCH_TARGETS else "nnx"
        self._ops = None
        if self.kind == "torch":
            import torch

            self.torch = torch
            self.device = "cuda" if name == "torch-cuda" else "cpu"
        else:
            self._ops = self.new_ops()
        self.on_device = (self.kind == "torch" and self.device == "cuda") or (
            self.kind == "nnx" and not self._ops.on_host)

    def __repr__(self):
        return f"Target({self.name!r})"

    # -- nnx backends -------------------------------------------------------------------
    def new_ops(self, seed: int = 0):
        return get_ops(self.name, seed=seed)

    @property
    def ops(self):
        return self._ops

    # -- both ---------------------------------------------------------------------------
    def sync(self) -> None:
        if self.kind == "torch":
            if self.device == "cuda":
                self.torch.cuda.synchronize()
        else:
            self._ops.synchronize()

    def clock(self):
        """The clock for this target: CUDA events on GPUs, synchronized perf_counter else."""
        if self.kind == "torch" and self.device == "cuda":
            return TorchCudaEventClock(self.torch)
        if self.kind == "nnx" and not self._ops.on_host:
            cp = getattr(self._ops, "xp", None)
            if cp is not None and hasattr(cp, "cuda") and hasattr(cp.cuda, "Event"):
                return CudaEventClock(cp, self.sync)
        return HostClock(self.sync)

    def array(self, host, dtype=None):
        """A host NumPy array moved to the target (floats as float32 unless `dtype`)."""
        host = np.asarray(host)
        if self.kind == "torch":
            t = self.torch.from_numpy(np.ascontiguousarray(host))
            if dtype is None and host.dtype.kind == "f":
                t = t.float()
            return t.to(self.device)
        return self._ops.asarray(host, dtype=dtype)

    def empty(self, shape):
        if self.kind == "torch":
            return self.torch.empty(shape, device=self.device)
        return self._ops.empty(shape)


def available_targets(backends=None, torch: bool = True) -> tuple[list[str], dict]:
    """(target names, {unavailable target: reason}). Default: every available nnx backend, then
    torch (CPU) and torch-cuda when PyTorch is installed and sees a GPU. Whether it does is
    asked of a child process (`machine.torch_info`): this process never imports torch."""
    skipped: dict[str, str] = {}
    avail = available_backends()
    if backends:
        names = []
        for b in backends:
            if b in TORCH_TARGETS:
                continue
            if b in avail:
                names.append(b)
            elif b in backend_names():
                skipped[b] = backend_module(b).unavailable_reason()
            else:
                skipped[b] = "unknown backend"
    else:
        names = list(avail)
        for b in backend_names():
            if b not in avail:
                skipped[b] = backend_module(b).unavailable_reason()
    explicit = [b for b in (backends or []) if b in TORCH_TARGETS]
    # torch runs by default, or when named in `backends`; an explicit list of nnx backends alone
    # means those only
    if torch and (not backends or explicit):
        info = torch_info() if compat.has_torch else {}
        if not compat.has_torch:
            skipped["torch"] = "PyTorch is not installed (pip install torch)"
        elif "error" in info:
            for t in explicit or ["torch"]:
                skipped[t] = f"PyTorch does not import: {info['error']}"
        else:
            if not explicit or "torch" in explicit:
                names.append("torch")
            if info.get("cuda"):
                if not explicit or "torch-cuda" in explicit:
                    names.append("torch-cuda")
            elif not explicit or "torch-cuda" in explicit:
                skipped["torch-cuda"] = "torch sees no CUDA device"
    return names, skipped


# -- suites -----------------------------------------------------------------------------------
def suite(name: str, help: str = ""):
    """Declare `fn(quick: bool) -> list[Case]` as the suite `name` (with a one-line `help`, else
    the first line of its docstring). Declaring registers nothing: a `SuiteRegistry` receives the
    suite through `add` (the built-in ones: `nnx.bench.suites.register_all`)."""

    def deco(fn):
        fn.suite_name = name
        fn.suite_help = help or (fn.__doc__ or "").strip().splitlines()[0]
        return fn

    return deco


class SuiteRegistry:
    """Suites by name, in the order they were added."""

    def __init__(self, suites=()):
        self._suites: dict[str, Callable] = {}
        self._help: dict[str, str] = {}
        for fn in suites:
            self.add(fn)

    def add(self, fn: Callable, name: str | None = None, help: str | None = None) -> Callable:
        """Add a suite: `fn(quick) -> [Case]`, named by `@suite` unless `name` is given."""
        name = name or getattr(fn, "suite_name", None)
        if not name:
            raise ValueError(f"suite {fn!r} has no name: declare it with @suite(name) or pass one")
        if name in self._suites and self._suites[name] is not fn:
            raise ValueError(f"benchmark suite {name!r} is already registered")
        self._suites[name] = fn
        self._help[name] = help if help is not None else getattr(fn, "suite_help", "")
        return fn

    def __contains__(self, name) -> bool:
        return name in self._suites

    def __len__(self) -> int:
        return len(self._suites)

    def names(self) -> list[str]:
        return list(self._suites)

    def help(self, name: str) -> str:
        return self._help.get(name, "")

    def cases(self, names=None, quick: bool = False) -> list[Case]:
        """The cases of the named suites (all when None), in registry order."""
        out = []
        for n in names or list(self._suites):
            if n not in self._suites:
                raise unknown("benchmark suite", n, self._suites)
            out.extend(self._suites[n](quick))
        return out


def gemm_flops(m: int, k: int, n: int) -> float:
    """FLOPs of C = A @ B with A (m, k), B (k, n): one multiply and one add per term."""
    return 2.0 * m * k * n


def fmt_shape(*dims) -> str:
    return "x".join(str(d) for d in dims)


def nan_to_none(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x
