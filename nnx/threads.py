"""Thread counts that fit the machine, and the OpenMP runtime Numba's parallel kernels run on.

`nnx.compat` calls `configure()` once, at `import nnx`, before it imports Numba; everything here
is a plain function of the environment so that it can run that early (this module imports
nothing of nnx, and neither NumPy nor Numba at module level).

Threads (`plan`, `configure`)
    Each process gets `cores // local ranks` threads for Numba and for the BLAS NumPy links,
    unless the user set them (NUMBA_NUM_THREADS for Numba; OPENBLAS_NUM_THREADS,
    GOTO_NUM_THREADS, OMP_NUM_THREADS or MKL_NUM_THREADS for the BLAS). `cores` is what this
    process may use: its CPU affinity, capped by a cgroup CPU quota. `local ranks` is the number
    of MPI ranks on this host, read from the launcher's environment (MPICH/Hydra, Open MPI,
    MVAPICH2, Slurm); 1 outside a launcher. Why: under `mpiexec -n 2` on 2 cores every rank
    otherwise starts 2 BLAS and 2 Numba threads, 4 busy threads on 2 cores, and a job took 3.3x
    the wall time of one process. The counts are set as environment defaults (read by OpenBLAS
    and Numba when they load, and inherited by child processes) and, where a runtime is already
    loaded, through its own call (`openblas_set_num_threads`, `numba.set_num_threads`).

OpenMP (`isolate_numba_openmp`)
    Numba's "omp" threading layer is a module linked against libgomp. If another OpenMP runtime
    is already in the process's global symbol scope when that module loads (PyTorch loads its
    own libgomp.so.1 globally at `import torch`), the layer's GOMP_parallel binds to it. That
    runtime read OMP_WAIT_POLICY when *it* loaded, before `import nnx` set it to passive, so
    after every parallel Numba kernel its workers spin for about 3 ms (libgomp's default spin
    when the policy is unset) against OpenBLAS's threads: with torch imported first the numba MLP
    step measured 2.3-3.2x slower. The fix is to load the layer with RTLD_DEEPBIND, so that its
    symbols bind to the libgomp it was linked against, loaded now with nnx's settings; when that
    is the very runtime already loaded (one shared libgomp, as in conda environments), Numba's
    kernels run serially in the importing thread instead (`numba.set_num_threads(1)`), which
    costs little at training sizes. `NNX_OPENMP_ISOLATE=0` turns both off.
"""

from __future__ import annotations

import ctypes
import importlib
import math
import os
import sys
import threading

# -- what the user set -------------------------------------------------------------------------
NUMBA_VARS = ("NUMBA_NUM_THREADS",)
# OpenBLAS reads OPENBLAS_NUM_THREADS, then GOTO_NUM_THREADS, then OMP_NUM_THREADS; MKL reads
# MKL_NUM_THREADS, then OMP_NUM_THREADS.
BLAS_VARS = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
# What nnx sets when it chooses the BLAS threads (OMP_NUM_THREADS too: other OpenMP libraries
# of the process, PyTorch's among them, then fit the same share).
BLAS_SET = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

# The number of ranks of this job on this host, per launcher.
LOCAL_SIZE_VARS = (
    ("MPI_LOCALNRANKS", "MPICH/Hydra"),
    ("OMPI_COMM_WORLD_LOCAL_SIZE", "Open MPI"),
    ("MV2_COMM_WORLD_LOCAL_SIZE", "MVAPICH2"),
    ("PALS_LOCAL_SIZE", "Cray PALS"),
)
# Variables that show a launcher started this process (as nnx.distributed.launch reads them).
LAUNCH_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE",
               "PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK",
               "SLURM_STEP_TASKS_PER_NODE")


def _positive_int(text) -> int | None:
    try:
        n = int(str(text).strip())
    except (TypeError, ValueError):
        return None
    return n if n >= 1 else None


# -- cores and ranks ---------------------------------------------------------------------------
def _cgroup_quota(root: str = "/sys/fs/cgroup") -> int | None:
    """CPUs allowed by a cgroup CPU quota (v2 cpu.max or v1 cfs_quota_us), rounded up; None
    without a quota."""
    paths = ["/"]
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                parts = line.strip().split(":", 2)
                if len(parts) == 3 and (parts[1] == "" or "cpu" in parts[1].split(",")):
                    paths.insert(0, parts[2])
    except OSError:
        pass
    for rel in paths:
        rel = rel.lstrip("/")
        for path, v1 in ((os.path.join(root, rel, "cpu.max"), False),
                         (os.path.join(root, "cpu", rel, "cpu.cfs_quota_us"), True),
                         (os.path.join(root, "cpu,cpuacct", rel, "cpu.cfs_quota_us"), True)):
            try:
                with open(path) as f:
                    text = f.read().split()
                if v1:
                    with open(path.replace("cfs_quota_us", "cfs_period_us")) as f:
                        text = text + f.read().split()
            except OSError:
                continue
            if len(text) < 2 or text[0] in ("max", "-1"):
                return None
            quota, period = _positive_int(text[0]), _positive_int(text[1])
            if quota and period:
                return max(1, math.ceil(quota / period))
            return None
    return None


def usable_cores() -> tuple[int, str]:
    """(cores this process may use, how that was found): the CPU affinity mask, capped by a
    cgroup CPU quota."""
    try:
        n, source = len(os.sched_getaffinity(0)), "CPU affinity"
    except (AttributeError, OSError):  # not Linux
        n, source = os.cpu_count() or 1, "os.cpu_count()"
    quota = _cgroup_quota()
    if quota is not None and quota < n:
        n, source = quota, "cgroup CPU quota"
    return max(1, n), source


def _slurm_local(env) -> int | None:
    """Tasks of this step on this node, from SLURM_STEP_TASKS_PER_NODE ('2(x3),1') and
    SLURM_NODEID."""
    spec, node = env.get("SLURM_STEP_TASKS_PER_NODE"), str(env.get("SLURM_NODEID", "0"))
    if not spec or not node.isdigit():
        return None
    counts: list[int] = []
    for part in spec.split(","):
        count, _, rep = part.partition("(x")
        n, r = _positive_int(count), (_positive_int(rep.rstrip(")")) if rep else 1)
        if n is None or r is None:
            return None
        counts += [n] * r
    return counts[int(node)] if int(node) < len(counts) else None


def local_ranks(environ=None) -> tuple[int | None, str]:
    """(ranks of this job on this host, where that came from). 1 outside an MPI launcher; None
    under a launcher that says nothing about its local ranks."""
    env = os.environ if environ is None else environ
    for var, who in LOCAL_SIZE_VARS:
        n = _positive_int(env.get(var))
        if n is not None:
            return n, f"{var} ({who})"
    n = _slurm_local(env)
    if n is not None:
        return n, "SLURM_STEP_TASKS_PER_NODE (Slurm)"
    if not any(v in env for v in LAUNCH_VARS):
        return 1, "one process (no MPI launcher)"
    return None, "an MPI launcher that sets none of " + ", ".join(v for v, _ in LOCAL_SIZE_VARS)


# -- the plan ----------------------------------------------------------------------------------
def plan(environ=None, cores: tuple[int, str] | None = None,
         affinity: int | None = None) -> dict:
    """What each library should use in this process, without changing anything.

    Returns {"cores", "cores_source", "local_ranks", "ranks_source", "per_rank",
    "numba": {"threads", "source", "set_by"}, "blas": {...}, "oversubscribed", "env"}: `per_rank`
    is cores // local ranks (at least 1); each library's `threads` is the user's value where they
    set one (`set_by` names the variable), else `per_rank` when nnx should set it, else the
    library's own default (None: one per usable core). `env` holds the variables nnx would set.
    `cores` ((count, source)) and `affinity` (the CPUs the libraries' defaults count) default
    to this process's; tests pass their own.
    """
    env = os.environ if environ is None else environ
    n_cores, cores_source = cores or usable_cores()
    ranks, ranks_source = local_ranks(env)
    per_rank = max(1, n_cores // ranks) if ranks else None
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            affinity = os.cpu_count() or n_cores
    # The libraries' own default is one thread per CPU of the affinity mask: nnx sets a count
    # only where that default does not fit (several local ranks, or a cgroup quota below it).
    choose = per_rank is not None and (ranks > 1 or per_rank != affinity)
    out = {"cores": n_cores, "cores_source": cores_source, "local_ranks": ranks,
           "ranks_source": ranks_source, "per_rank": per_rank, "env": {},
           "oversubscribed": bool(ranks and ranks > n_cores)}
    for lib, names, to_set in (("numba", NUMBA_VARS, NUMBA_VARS), ("blas", BLAS_VARS, BLAS_SET)):
        user = next((v for v in names if _positive_int(env.get(v)) is not None), None)
        if user is not None:
            out[lib] = {"threads": _positive_int(env[user]), "source": f"{user} (user)",
                        "set_by": user}
        elif choose:
            out[lib] = {"threads": per_rank, "source": f"nnx: {n_cores} core"
                        f"{'s' if n_cores != 1 else ''} / {ranks} local rank"
                        f"{'s' if ranks != 1 else ''}", "set_by": "nnx"}
            out["env"].update({v: str(per_rank) for v in to_set if v not in env})
        else:
            why = "one per usable core" if per_rank else ranks_source
            out[lib] = {"threads": per_rank, "source": f"library default ({why})",
                        "set_by": None}
    return out


# -- applying it -------------------------------------------------------------------------------
# The thread-count calls, in the order tried in each library (nnx.kernels.numba_blas uses them
# too, on the OpenBLAS whose GEMM its kernels call).
BLAS_SET_NAMES = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                  "openblas_set_num_threads64_", "openblas_set_num_threads",
                  "MKL_Set_Num_Threads")
BLAS_GET_NAMES = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
                  "openblas_get_num_threads64_", "openblas_get_num_threads",
                  "MKL_Get_Max_Threads")


def mapped_libraries(match) -> list[str]:
    """Paths of the shared objects mapped into this process whose file name satisfies
    `match(lowercase name)` (Linux: /proc/self/maps; [] elsewhere), in load order."""
    paths: list[str] = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if line.count(" ") >= 5 else ""
                if ".so" in path and path not in paths and match(os.path.basename(path).lower()):
                    paths.append(path)
    except OSError:
        pass
    return paths


def _blas_functions(names) -> list:
    out = []
    for path in mapped_libraries(lambda n: "openblas" in n or "mkl_rt" in n):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in names:
            fn = getattr(lib, name, None)
            if fn is not None:
                out.append(fn)
                break
    return out


def blas_timeout_at_load(environ=None) -> int | None:
    """OPENBLAS_THREAD_TIMEOUT as the loaded OpenBLAS read it (its workers spin about 2**n
    cycles after each call before they sleep): the environment's value if an OpenBLAS is
    already mapped into this process (28, OpenBLAS's default, when unset), None when none is
    loaded yet (it will read the environment when it loads) or the value is not a number."""
    env = os.environ if environ is None else environ
    if not mapped_libraries(lambda n: "openblas" in n):
        return None
    raw = env.get("OPENBLAS_THREAD_TIMEOUT")
    if raw is None:
        return 28
    try:
        return int(raw)
    except ValueError:
        return None


# An OpenBLAS that loaded before nnx read OPENBLAS_THREAD_TIMEOUT then; these exported calls make
# it read its environment again and restart its worker threads (the same shutdown / init pair it
# runs itself after a fork), so that nnx's short timeout applies after all.
_BLAS_RESTART = ("openblas_read_env", "blas_thread_shutdown_", "blas_thread_init",
                 "openblas_thread_timeout")


def restart_blas_workers(environ=None) -> bool:
    """Have every OpenBLAS already mapped into this process re-read its environment and restart
    its worker threads, so that OPENBLAS_THREAD_TIMEOUT (now in the environment) applies: its
    workers then sleep right after each GEMM instead of spinning ~0.1 s (measured: 0.111 s of
    CPU per GEMM before, 0 after). True when every one of them then reports that timeout; False
    when none is mapped, one lacks the calls, NNX_BLAS_RESTART=0, or this is not the main thread.
    Call it only while no other thread is inside the BLAS (nnx does, once, at import; an import
    from another thread, while the main one may be running GEMMs, declines)."""
    env = os.environ if environ is None else environ
    if env.get("NNX_BLAS_RESTART", "1").strip() == "0":
        return False
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        want = int(env.get("OPENBLAS_THREAD_TIMEOUT", ""))
    except ValueError:
        return False
    paths = mapped_libraries(lambda n: "openblas" in n)
    libs = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            return False
        if not all(hasattr(lib, name) for name in _BLAS_RESTART):
            return False
        libs.append(lib)
    for lib in libs:
        lib.openblas_read_env()
        lib.blas_thread_shutdown_()
        lib.blas_thread_init()
    return bool(libs) and all(lib.openblas_thread_timeout() == want for lib in libs)


def blas_threads() -> int | None:
    """The thread count of the BLAS loaded in this process (None: none loaded, or unknown)."""
    for fn in _blas_functions(BLAS_GET_NAMES):
        fn.restype = ctypes.c_int
        return int(fn())
    return None


def set_blas_threads(n: int) -> bool:
    """Set the loaded BLAS's thread count now (OpenBLAS, MKL); False when none is loaded."""
    fns = _blas_functions(BLAS_SET_NAMES)
    for fn in fns:
        fn.argtypes = [ctypes.c_int]
        fn(int(n))
    return bool(fns)


_STATE: dict = {}


def configure(environ=None) -> dict:
    """Apply `plan()` to this process: set the environment defaults it names and, where NumPy
    (its BLAS) or Numba is already loaded, their thread counts now. Called once by nnx.compat at
    `import nnx`; returns the plan with what was applied ("applied": {library: how}). Never
    raises: a failure is recorded under "error"."""
    env = os.environ if environ is None else environ
    try:
        p = plan(env)
    except Exception as exc:  # a broken /proc must not break `import nnx`
        _STATE.update({"error": f"thread plan failed: {exc!r}"})
        return dict(_STATE)
    applied = {}
    for k, v in p["env"].items():
        env.setdefault(k, v)
    if p["env"]:
        applied["env"] = ", ".join(f"{k}={v}" for k, v in p["env"].items())
    if p["blas"]["set_by"] == "nnx" and "numpy" in sys.modules:
        # NumPy's BLAS read its variables when it loaded, before nnx: set the count directly
        if set_blas_threads(p["blas"]["threads"]):
            applied["blas"] = "openblas_set_num_threads (BLAS already loaded)"
    if p["numba"]["set_by"] == "nnx" and "numba" in sys.modules:
        numba = sys.modules["numba"]
        try:
            n = min(p["numba"]["threads"], int(numba.config.NUMBA_NUM_THREADS))
            numba.set_num_threads(n)
            applied["numba"] = "numba.set_num_threads (Numba imported before nnx: this thread)"
        except Exception as exc:
            applied["numba"] = f"not applied: {exc!r}"
    p["applied"] = applied
    _STATE.clear()
    _STATE.update(p)
    return p


# -- the OpenMP runtime of Numba's parallel kernels --------------------------------------------
def _is_openmp(name: str) -> bool:
    return name.startswith(("libgomp", "libiomp", "libomp"))


def openmp_libraries() -> list[str]:
    """Paths of the OpenMP runtimes mapped into this process (Linux), in load order."""
    return mapped_libraries(_is_openmp)


_OPENMP: dict = {"state": "not checked"}


def _numba_would_use_omp(numba) -> tuple[bool, str]:
    layer = str(numba.config.THREADING_LAYER).lower()
    if layer in ("tbb", "workqueue", "safe", "forksafe"):
        return False, f"Numba's threading layer is {layer!r} (NUMBA_THREADING_LAYER)"
    if layer in ("default", "threadsafe"):
        order = [b for b in numba.config.THREADING_LAYER_PRIORITY if b != "workqueue"]
        if order and order[0] == "tbb":
            # as Numba itself decides: a TBB that is new enough, and its layer module loads
            parallel = importlib.import_module("numba.np.ufunc.parallel")
            check = getattr(parallel, "_check_tbb_version_compatible", None)
            try:
                if check is not None:
                    check()
                importlib.import_module("numba.np.ufunc.tbbpool")
                return False, "Numba's threading layer will be TBB"
            except (ImportError, OSError):
                pass
    return True, ""


def isolate_numba_openmp(numba, foreign: list[str], environ=None) -> dict:
    """Make Numba's OpenMP threading layer run on a runtime loaded with nnx's settings when an
    OpenMP runtime (`foreign`: paths mapped before nnx set OMP_WAIT_POLICY) is already in the
    process. Returns {"state", "detail", "foreign", "runtime"}; `state` is one of "not needed",
    "isolated", "serial" (shared runtime: this thread's Numba kernels made serial),
    "off" (NNX_OPENMP_ISOLATE=0), "too late" (Numba's threads already started), "unsupported"
    (not Linux/glibc), "not omp" (another threading layer), "failed"."""
    env = os.environ if environ is None else environ
    out = {"foreign": list(foreign), "runtime": None}

    def done(state, detail=""):
        out.update(state=state, detail=detail)
        _OPENMP.clear()
        _OPENMP.update(out)
        return dict(out)

    if not foreign:
        return done("not needed", "no OpenMP runtime was loaded before nnx")
    if str(env.get("NNX_OPENMP_ISOLATE", "1")).strip().lower() in ("0", "false", "no", "off"):
        return done("off", "NNX_OPENMP_ISOLATE=0")
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    if getattr(parallel, "_is_initialized", False) or "numba.np.ufunc.omppool" in sys.modules:
        return done("too late", "Numba's threading layer was loaded before nnx was imported")
    uses_omp, why = _numba_would_use_omp(numba)
    if not uses_omp:
        return done("not omp", why)
    if not hasattr(os, "RTLD_DEEPBIND") or not sys.platform.startswith("linux"):
        return done("unsupported", "RTLD_DEEPBIND needs Linux with glibc")
    before = set(openmp_libraries())
    flags = sys.getdlopenflags()
    try:
        sys.setdlopenflags(flags | os.RTLD_DEEPBIND)
        importlib.import_module("numba.np.ufunc.omppool")
    except ImportError as exc:  # no libgomp on this machine: Numba picks another layer
        return done("not omp", f"Numba's OpenMP layer does not load: {exc}")
    except Exception as exc:
        return done("failed", repr(exc))
    finally:
        sys.setdlopenflags(flags)
    new = [p for p in openmp_libraries() if p not in before]
    if new:
        out["runtime"] = new[0]
        return done("isolated", "Numba's OpenMP layer binds to its own runtime, loaded with "
                                "nnx's OMP_WAIT_POLICY")
    # the layer's libgomp is the runtime already loaded: nothing to bind to but it
    try:
        numba.set_num_threads(1)
    except Exception as exc:
        return done("failed", f"shared OpenMP runtime, and numba.set_num_threads(1): {exc!r}")
    out["runtime"] = foreign[0]
    return done("serial", "Numba's OpenMP layer shares a runtime loaded before nnx: Numba "
                          "kernels run serially in the importing thread")


def openmp_status() -> dict:
    """What `isolate_numba_openmp` did at `import nnx` (see there)."""
    return dict(_OPENMP)


# -- reporting ---------------------------------------------------------------------------------
def status() -> dict:
    """The thread plan of this process and the counts in force now: for `nnx info`, the
    benchmarks and the first line of a training log."""
    out = dict(_STATE) if _STATE else plan()
    out = {k: v for k, v in out.items() if k != "env"}
    now = {"blas": blas_threads()}
    numba = sys.modules.get("numba")
    if numba is not None:
        try:
            now["numba"] = int(numba.get_num_threads())
        except Exception:
            now["numba"] = None
    out["now"] = now
    out["openmp"] = openmp_status()
    return out


def summary() -> str:
    """One line: the thread counts in force and why, e.g. "threads: numba 1, BLAS 1 (nnx: 2
    cores / 2 local ranks)"."""
    s = status()
    if "error" in s and "numba" not in s:
        return f"threads: {s['error']}"
    now = s["now"]
    parts = []
    for lib, label in (("numba", "numba"), ("blas", "BLAS")):
        n = now.get(lib) or (s.get(lib) or {}).get("threads")
        src = (s.get(lib) or {}).get("source", "")
        parts.append(f"{label} {n if n is not None else '?'}"
                     + (f" ({src})" if src and not src.startswith("library default") else ""))
    line = f"threads: {', '.join(parts)}; {s.get('cores')} cores ({s.get('cores_source')})"
    if s.get("local_ranks") and s["local_ranks"] > 1:
        line += f", {s['local_ranks']} local ranks"
    if s.get("oversubscribed"):
        line += "; more local ranks than cores: oversubscribed"
    omp = s.get("openmp", {})
    if omp.get("state") in ("isolated", "serial", "too late", "failed"):
        line += f"; OpenMP {omp['state']}"
    return line
