"""Targets that run in a process of their own: `RemoteTarget`, the parent's end of the pipe to
a worker (`nnx.bench.worker`).

Why: which libraries a process imported, and in which order, changes how its thread pools
behave. PyTorch loads its own OpenMP runtime; loaded next to nnx (which sets OMP_WAIT_POLICY
at import) it made the numba MLP step 2.3-3.2x slower, and a comparison inside one process hid
that, because it measured the mixed process rather than either library as a user runs it. So
the torch targets ("torch", "torch-cuda") always run in a worker, started with the environment
the user started nnx with (`user_environ`: without what `import nnx` set in this process) plus
the run's thread count, and this process never imports torch. Any target can run remote (the
tests run a remote "numpy", since CI has no torch).

The worker rebuilds the same cases from the same registry (same suites, same quick flag) and
looks them up by (suite, name); it does the setup, the first-call timing, the warm-up and the
calibration itself, then answers "time N calls" requests. The runner (nnx.bench.runner) takes a
remote target's sample through the pipe while this process sleeps on it.

Protocol: JSON lines. Requests go to the worker's stdin; one reply line per request comes back
on its stdout (the worker sends its own prints and any library output to stderr):

    (start)                                  -> {"hello": true, "pid", "threads", "torch"?, ...}
                                                or {"fatal": reason, "traceback"}
    {"op": "setup", "suite", "case", "warmup", "sample_s"}
                                             -> {"status": "ok", "first_s", "number",
                                                 "per_call_s", "clock"} or
                                                {"status": "skipped" | "error", "reason"}
    {"op": "time", "number"}                 -> {"s": seconds per call, "pid"} or an error
    {"op": "release"}                        -> {"ok": true}
    (stdin closed)                           -> the worker exits

A worker that exits, hangs past `timeout_s` or answers garbage raises `RemoteError` here (the
runner turns it into an "error" record); the next setup starts a fresh worker.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys

from .registry import TORCH_TARGETS

# What `import nnx` sets in its own process when the user did not (nnx.compat): a worker must
# not inherit these, or PyTorch's OpenMP runtime would load with nnx's settings, not its own.
NNX_IMPORT_DEFAULTS = {"OMP_WAIT_POLICY": "passive", "OPENBLAS_THREAD_TIMEOUT": "4"}
# Every thread variable a worker gets, set to the run's thread count.
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
DEFAULT_REGISTRY = "nnx.bench:default_registry"

# The worker's entry point: modules in `preload` (torch for the torch targets) are imported
# before nnx, so that their runtimes load with the user's environment, not nnx's; that is why
# this is `python -c` and not `python -m nnx.bench.worker` (which imports nnx first).
# `env_at_start` records the thread variables as the worker got them, before any import.
_BOOT = ("import importlib, json, os, sys; spec = json.loads(sys.argv[1]); "
         "spec['env_at_start'] = {k: os.environ.get(k) for k in spec.get('report_env', [])}; "
         "[importlib.import_module(m) for m in spec.get('preload', [])]; "
         "from nnx.bench.worker import main; sys.exit(main(spec))")
REPORT_ENV = THREAD_VARS + tuple(NNX_IMPORT_DEFAULTS) + ("OMP_PROC_BIND", "NUMBA_THREADING_LAYER")


class RemoteError(RuntimeError):
    """The worker died, hung or broke the protocol (the message says which)."""


class WorkerError(RuntimeError):
    """The case raised in the worker; the message is the exception's type and text there."""


def start_environ() -> dict | None:
    """The environment this process was started with (Linux: /proc/self/environ, which later
    changes to os.environ do not touch), or None where it cannot be read."""
    try:
        with open("/proc/self/environ", "rb") as f:
            data = f.read()
    except OSError:
        return None
    out = {}
    for item in data.split(b"\0"):
        key, eq, value = item.partition(b"=")
        if eq and key:
            out[os.fsdecode(key)] = os.fsdecode(value)
    return out


def user_environ(environ=None, started=None) -> dict:
    """`environ` (default: os.environ) without what `import nnx` set: a variable that still
    holds nnx's default gets the value it had when the process started (`started`, default
    `start_environ()`), or is dropped if it had none. Where the start environment is unknown,
    nnx's defaults are dropped. A value the user changed after start-up is kept."""
    env = dict(os.environ if environ is None else environ)
    started = start_environ() if started is None else started
    for key, nnx_value in NNX_IMPORT_DEFAULTS.items():
        if env.get(key) != nnx_value:
            continue
        if started is not None and key in started:
            env[key] = started[key]
        else:
            env.pop(key, None)
    return env


def worker_environ(threads: int, base: dict | None = None) -> dict:
    """The environment of a worker: `base` (default: `user_environ()`) with every thread
    variable set to `threads`, and the directory this nnx was imported from first on
    PYTHONPATH (the worker must import the same nnx)."""
    env = dict(user_environ() if base is None else base)
    env.update({v: str(int(threads)) for v in THREAD_VARS})
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in path if p != root])
    return env


def worker_threads(n: int | None, counts: dict) -> int:
    """The thread count a worker gets: the run's `--threads`, else Numba's count in this
    process (else the BLAS's, else one per CPU), so that torch runs at nnx's count."""
    if n:
        return int(n)
    return int(counts.get("numba") or counts.get("blas") or os.cpu_count() or 1)


class RemoteTarget:
    """A target whose cases run in a worker process (see the module docstring).

    `name`: the target the worker runs (an nnx backend, "torch" or "torch-cuda"); `label`: the
    name its records carry (default `name`; a test runs "numpy" in and out of process side by
    side). `suites`, `quick`, `registry` ("module:attribute" of a SuiteRegistry, or of a
    function returning one): how the worker rebuilds the cases. `threads`: the worker's thread
    count. `environ`: the worker's base environment (default `user_environ()`). `warmup`:
    compile an nnx backend's kernels in the worker first (reported in `info["warmup_s"]`).
    """

    remote = True

    def __init__(self, name: str, threads: int, suites=None, quick: bool = False,
                 registry: str = DEFAULT_REGISTRY, environ: dict | None = None,
                 label: str | None = None, warmup: bool = False, timeout_s: float = 900.0,
                 max_starts: int = 4):
        self.target = name
        self.name = label or name
        self.kind = "torch" if name in TORCH_TARGETS else "nnx"
        self.threads = int(threads)
        self.suites = list(suites) if suites else None
        self.quick = bool(quick)
        self.registry = registry
        self.environ = environ
        self.warmup = warmup
        self.timeout_s = timeout_s
        self.max_starts = max_starts
        self.on_device = name == "torch-cuda"
        self.info: dict = {}
        self.proc = None
        self.starts = 0
        self.broken: str | None = None  # why no worker can be started (then none is tried)
        self._buf = b""

    def __repr__(self):
        return f"RemoteTarget({self.target!r}, pid={self.pid})"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    @property
    def pid(self) -> int | None:
        """The worker's process id (None when none is running)."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    # -- the process ----------------------------------------------------------------------
    def start(self) -> dict:
        """Start the worker (if none is running) and return its hello; raises RemoteError."""
        if self.pid is not None:
            return self.info
        if self.broken:
            raise RemoteError(self.broken)
        if self.starts >= self.max_starts:
            self.broken = f"worker for {self.target!r} failed {self.starts} times; not restarted"
            raise RemoteError(self.broken)
        self.starts += 1
        spec = {"target": self.target, "suites": self.suites, "quick": self.quick,
                "threads": self.threads, "registry": self.registry, "warmup": self.warmup,
                "preload": ["torch"] if self.kind == "torch" else [],
                "report_env": list(REPORT_ENV)}
        env = worker_environ(self.threads, self.environ)
        self._buf = b""
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", _BOOT, json.dumps(spec)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         env=env)
        except OSError as exc:
            self.broken = f"cannot start a worker: {exc}"
            raise RemoteError(self.broken) from exc
        hello = self._reply()
        if "fatal" in hello:
            self.broken = f"worker for {self.target!r} did not start: {hello['fatal']}"
            self._kill()
            raise RemoteError(self.broken)
        self.info = hello
        self.on_device = bool(hello.get("on_device", self.on_device))
        return hello

    def close(self) -> None:
        """Let the worker exit (closing its stdin), killing it if it does not within 10 s."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()

    def _kill(self) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        status = proc.wait()
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        return status

    def _reply(self) -> dict:
        """The next line from the worker, parsed; the worker is killed and RemoteError raised
        when it exits, stays silent past `timeout_s` or sends something else."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            ready, _, _ = select.select([fd], [], [], self.timeout_s)
            if not ready:
                self._kill()
                raise RemoteError(f"worker for {self.target!r} sent nothing for "
                                  f"{self.timeout_s:.0f} s (killed)")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                status = self._kill()
                raise RemoteError(f"worker for {self.target!r} exited (status {status})")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            out = json.loads(line)
            if not isinstance(out, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            self._kill()
            raise RemoteError(f"worker for {self.target!r} broke the protocol: "
                              f"{line[:200]!r}") from exc
        return out

    def request(self, **req) -> dict:
        """Send one request, return the worker's reply (starting the worker if needed)."""
        self.start()
        try:
            self.proc.stdin.write(json.dumps(req).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            status = self._kill()
            raise RemoteError(f"worker for {self.target!r} exited (status {status})") from exc
        return self._reply()

    # -- what the runner calls ------------------------------------------------------------
    def setup(self, case, warmup: int, sample_s: float) -> dict:
        """Set `case` up in the worker (setup, timed first call, warm-up, calibration):
        {"status": "ok", "first_s", "number", "per_call_s", "clock"}, or {"status": "skipped"
        | "error", "reason"}. A dead or broken worker gives an "error" reply, not an
        exception."""
        try:
            return self.request(op="setup", suite=case.suite, case=case.name, warmup=warmup,
                                sample_s=sample_s)
        except RemoteError as exc:
            return {"status": "error", "reason": f"RemoteError: {exc}"}

    def time(self, number: int) -> float:
        """Seconds per call of `number` back-to-back calls of the case set up last; raises
        RemoteError (the worker died) or WorkerError (the case raised)."""
        reply = self.request(op="time", number=int(number))
        if "s" not in reply:
            raise WorkerError(reply.get("reason") or f"bad reply {reply!r}")
        return float(reply["s"])

    def release(self) -> None:
        """Drop the case set up last (its arrays) in the worker; a dead worker is left dead."""
        if self.pid is None:
            return
        try:
            self.request(op="release")
        except RemoteError:
            pass

    def sync(self) -> None:
        """Nothing to wait for here: the worker synchronizes its device around every sample."""
