"""The worker process of a remote target (see nnx.bench.remote for why and for the protocol).

Started by `RemoteTarget.start` as `python -c <boot> <spec>`: the boot code imports the
modules the spec preloads (torch, before nnx, so that its OpenMP runtime loads with the user's
environment), then calls `main(spec)`. The worker sets the run's thread count, rebuilds the
cases of the spec's suites from its registry and serves requests on stdin until it closes.
Its stdout is the protocol alone: file descriptor 1 is pointed at stderr, so prints, warnings
and C libraries' output land there.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import sys
import time
import traceback

from . import machine
from .registry import Skip, Target
from .runner import prepare


def _protocol_stream():
    """A private copy of stdout for the replies; fd 1 and sys.stdout then go to stderr."""
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def resolve(spec: str):
    """The registry named by "module:attribute" (called when it is a function)."""
    module, _, attr = spec.partition(":")
    obj = getattr(importlib.import_module(module), attr or "default_registry")
    return obj() if callable(obj) else obj


class Worker:
    """One target's state in the worker: its Target, the cases by (suite, name), and the case
    set up last (its function, clock and calls per sample)."""

    def __init__(self, spec: dict):
        self.spec = spec
        n = int(spec["threads"])
        name = spec["target"]
        self.is_torch = name.startswith("torch")
        machine.set_threads(n, torch_too=self.is_torch)  # torch.set_num_threads(n) too
        self.target = Target(name)
        registry = resolve(spec.get("registry") or "nnx.bench:default_registry")
        self.cases = {(c.suite, c.name): c
                      for c in registry.cases(spec.get("suites"), quick=bool(spec.get("quick")))}
        self.warmup_s = None
        if spec.get("warmup") and self.target.kind == "nnx":
            from nnx.backend import backend_module

            t0 = time.perf_counter()
            backend_module(name).warmup(self.target.ops)
            self.warmup_s = time.perf_counter() - t0
        self.fn = self.clock = None

    def hello(self) -> dict:
        """What the parent learns at start: pid, thread counts, torch's version, the cases."""
        out = {"hello": True, "pid": os.getpid(), "target": self.spec["target"],
               "threads": machine.thread_counts(), "cases": len(self.cases),
               "on_device": bool(self.target.on_device), "warmup_s": self.warmup_s,
               "thread_env": {k: os.environ.get(k) for k in machine.THREAD_ENV},
               "env_at_start": self.spec.get("env_at_start")}
        if "torch" in sys.modules:
            torch = sys.modules["torch"]
            out["torch"] = {"version": torch.__version__, "cuda": bool(torch.cuda.is_available()),
                            "threads": torch.get_num_threads()}
        return out

    def handle(self, req: dict) -> dict:
        """One request -> one reply (never raises: errors are replies)."""
        op = req.get("op")
        try:
            if op == "setup":
                return self.setup(req)
            if op == "time":
                if self.fn is None:
                    return {"status": "error", "reason": "no case is set up"}
                s = self.clock.time(self.fn, int(req.get("number", 1)))
                return {"s": s, "pid": os.getpid()}
            if op == "release":
                self.fn = self.clock = None
                gc.collect()
                return {"ok": True}
            return {"status": "error", "reason": f"unknown request {op!r}"}
        except Exception as exc:
            return {"status": "error", "reason": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc()}

    def setup(self, req: dict) -> dict:
        """Set a case up as the runner does in-process (nnx.bench.runner.prepare)."""
        self.fn = self.clock = None
        key = (req.get("suite"), req.get("case"))
        case = self.cases.get(key)
        if case is None:
            return {"status": "error",
                    "reason": f"case {key[1]!r} of suite {key[0]!r} is not in the worker's "
                              f"registry ({self.spec.get('registry')}, suites "
                              f"{self.spec.get('suites') or 'all'})"}
        try:
            fn, clock, first_s, number, per_call = prepare(
                case, self.target, int(req.get("warmup", 2)), float(req.get("sample_s", 0.02)))
        except Skip as exc:
            return {"status": "skipped", "reason": str(exc)}
        self.fn, self.clock = fn, clock
        return {"status": "ok", "first_s": first_s, "number": number, "per_call_s": per_call,
                "clock": clock.kind, "pid": os.getpid()}


def main(spec=None) -> int:
    """Serve one remote target: hello (or fatal), then one reply per request line."""
    if spec is None:  # `python -m nnx.bench.worker '<spec json>'` (nnx imported first)
        spec = json.loads(sys.argv[1])
    out = _protocol_stream()

    def send(obj):
        out.write(json.dumps(obj) + "\n")
        out.flush()

    try:
        worker = Worker(spec)
    except BaseException as exc:  # the parent must hear why, not just see the pipe close
        send({"fatal": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
        return 1
    send(worker.hello())
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
        except ValueError:
            send({"status": "error", "reason": f"bad request {line[:100]!r}"})
            continue
        send(worker.handle(req))
    return 0


if __name__ == "__main__":
    sys.exit(main())
