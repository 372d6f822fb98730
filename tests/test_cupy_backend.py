"""Tests of the CuPy/CUDA backend (nnx/kernels/cupy_gpu.py + kernels/cuda/*.cu).

Three layers:

1. Structure, no GPU, no compiler (run everywhere): the module imports without CuPy, the
   backend refuses clearly, the CUDA sources ship as package data, every kernel the Python
   side uses exists with a signature it can marshal, overrides keep the base signatures.
2. Kernel tests against the NumPy reference, run twice through one `make_ops` fixture:
   - "gpu" (`@pytest.mark.gpu`): real CuPy on a CUDA device; skipped with "no CUDA GPU".
   - "emu": the SAME test bodies on the CPU. The .cu sources are compiled with the host C++
     compiler against a small CUDA shim (grid/block indices, `__syncthreads` as a barrier of
     ucontext coroutines, `__shared__` as block-shared statics) and driven through a fake
     `cupy` module backed by NumPy. This checks the kernels' arithmetic, indexing and
     reductions and the Python orchestration (launch geometry, argument types, dtypes, mixed
     precision, loss scaling) without a GPU. It cannot check NVRTC, the PTX half conversions,
     cuBLAS, the memory model or performance: those are what the "gpu" runs are for.
   Outputs are poisoned with NaN before each call (emu: every `empty` is NaN-filled; gpu: a
   NaN-memsetting allocator) so an element a kernel forgets to write shows up as NaN.
3. An NVCC compile check of the sources (skipped where nvcc is missing); the NVRTC compile
   check for sm_80/sm_90 is tests/test_nvrtc_compile.py.

The emulation is strict (tests/fake_cupy.py): its device arrays are not NumPy arrays and refuse
implicit conversion, as CuPy's do, so host/device mix-ups fail here as they would on a GPU.
"""

from __future__ import annotations

import importlib
import importlib.resources
import inspect
import os
import re
import shutil
import subprocess

import cuda_helpers
import numpy
import pytest
from cuda_helpers import H, close, rounded, setup_mode
from nnx.kernels import cupy_gpu
from nnx.kernels.cupy_gpu import CupyOps
from nnx.kernels.reference import ACTIVATIONS, Ops

from nnx import compat
from nnx.errors import BackendUnavailableError

# the shared fixtures (tests/cuda_helpers.py)
emu_cupy = cuda_helpers.emu_cupy
make_ops = cuda_helpers.make_ops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = (1, 3, 33, 257, 1025)
FUSED_ACTS = ("identity", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "softmax")


# =============================================================================================
# 1. structure (no GPU)
# =============================================================================================


def test_module_imports_without_cupy_and_class_exists():
    mod = importlib.import_module("nnx.kernels.cupy_gpu")
    assert mod.CupyOps.xp is compat.cupy  # None where CuPy is missing
    assert mod.CupyOps.name == "cupy" and mod.CupyOps.on_host is False
    assert issubclass(mod.CupyOps, Ops)


@pytest.mark.skipif(compat.has_cupy_gpu(), reason="a CUDA GPU is available here")
def test_creating_cupy_ops_without_gpu_raises_backend_unavailable():
    with pytest.raises(BackendUnavailableError, match="cupy"):
        CupyOps()


@pytest.mark.skipif(compat.has_cupy_gpu(), reason="a CUDA GPU is available here")
def test_get_ops_cupy_names_available_backends_and_pip_extra():
    from nnx.backend import get_ops

    with pytest.raises(BackendUnavailableError) as info:
        get_ops("cupy")
    msg = str(info.value)
    assert "numpy" in msg  # the available backends are listed
    assert "nnx-framework[gpu]" in msg  # and how to install this one


def test_backend_module_helpers_work_without_gpu():
    from nnx.backends import cupy as backend

    info = backend.memory_info()
    assert isinstance(info, dict)
    if not compat.has_cupy_gpu():
        assert info["available"] is False and info["reason"]
        assert backend.devices() == []


def test_cuda_sources_are_package_data():
    root = importlib.resources.files("nnx.kernels.cuda")
    names = {p.name for p in root.iterdir()}
    for f in (*cupy_gpu.MODULE_FILES.values(), cupy_gpu.COMMON_HEADER):
        assert f in names, f"{f} missing from nnx.kernels.cuda"
        assert (root / f).read_text(encoding="utf-8").strip()
    with open(os.path.join(REPO, "pyproject.toml"), encoding="utf-8") as fh:
        pyproject = fh.read()
    assert re.search(r'"nnx\.kernels\.cuda"\s*=\s*\[[^\]]*"\*\.cu"', pyproject)
    assert re.search(r'"nnx\.kernels\.cuda"\s*=\s*\[[^\]]*"\*\.cuh"', pyproject)


def test_sources_parse_and_every_kernel_has_marshallable_signature():
    index = cupy_gpu.kernel_index()
    assert len(index) >= 30
    for module in cupy_gpu.MODULE_FILES:
        src = cupy_gpu.read_source(module)
        assert src.count("{") == src.count("}")
        # nnx_common.cuh is inlined and nothing else is included: nothing for NVRTC to find
        assert not re.search(r"^\s*#\s*include", src, re.M)
    for name, (_module, params) in index.items():
        assert params, name
        for is_ptr, ctype, _pname in params:
            table = cupy_gpu._POINTER_DTYPES if is_ptr else cupy_gpu._SCALAR_TYPES
            assert ctype in table, (name, ctype)


def test_every_kernel_referenced_in_the_cupy_modules_exists_in_the_sources():
    index = cupy_gpu.kernel_index()
    folder = os.path.dirname(cupy_gpu.__file__)
    text = ""
    for name in sorted(os.listdir(folder)):
        if name.startswith("cupy_") and name.endswith(".py"):
            with open(os.path.join(folder, name), encoding="utf-8") as fh:
                text += fh.read()
    literals = set(re.findall(r'"(nnx_\w+)"', text)) | set(re.findall(r'f"(nnx_[\w{}]+)"', text))
    literals -= set(cupy_gpu._POINTER_DTYPES)  # the C type name nnx_half_t
    assert literals, "no kernel names found in kernels/cupy_*.py"
    variants = ("f32", "f64", "f16", "bf16")
    for lit in literals:
        if lit in index:
            continue
        if "{" in lit:  # f"nnx_softmax_ce_{kind}_{variant}"
            pattern = re.sub(r"\{\w+\}", r"\\w+", lit) + "$"
            assert any(re.match(pattern, n) for n in index), lit
        else:  # a family prefix completed with a variant suffix at run time
            assert lit.endswith("_"), f"{lit} is neither a kernel nor a family prefix"
            present = [v for v in variants if lit + v in index]
            assert present, f"no kernel {lit}<variant> in the sources"
    # every extern "C" kernel is used from Python
    for name in index:
        used = name in literals or any(
            name.startswith(lit) and lit.endswith("_") for lit in literals
        ) or any("{" in lit and re.match(re.sub(r"\{\w+\}", r"\\w+", lit) + "$", name)
                 for lit in literals)
        assert used, f"kernel {name} is never launched"


def test_variant_families_have_consistent_signatures():
    index = cupy_gpu.kernel_index()
    families: dict[str, list] = {}
    for name, (_m, params) in index.items():
        base = re.sub(r"_(f32|f64|f16|bf16)$", "", name)
        families.setdefault(base, []).append(tuple(p[2] for p in params))
    for base, sigs in families.items():
        assert len(set(sigs)) == 1, f"{base}: parameter names differ between variants"


def test_overrides_keep_the_base_signatures():
    checked = 0
    for name, member in vars(CupyOps).items():
        if name.startswith("_") or not callable(member) or not hasattr(Ops, name):
            continue
        base = getattr(Ops, name)
        assert inspect.signature(member) == inspect.signature(base), name
        checked += 1
    assert checked >= 15


def test_launch_helpers():
    assert cupy_gpu._row_threads(1) == 32
    assert cupy_gpu._row_threads(33) == 64
    assert cupy_gpu._row_threads(100000) == cupy_gpu.MAX_ROW_THREADS
    assert cupy_gpu._grid(0, 10) == 1 and cupy_gpu._grid(257, 10) == 2
    assert cupy_gpu._grid(10**9, 10) == 10


def test_kernel_wrapper_checks_argument_types():
    calls = []
    k = cupy_gpu._Kernel(
        "k", ((True, "float", "x"), (False, "long long", "n"), (False, "float", "a")),
        lambda grid, block, args: calls.append((grid, block, args)),
    )
    x = numpy.zeros(4, numpy.float32)
    k(2, 64, x, 4, 0.5)
    (grid, block, args), = calls
    assert grid == (2,) and block == (64,)
    assert type(args[1]) is numpy.int64 and type(args[2]) is numpy.float32
    with pytest.raises(TypeError, match="float32"):
        k(1, 32, numpy.zeros(4, numpy.float64), 4, 0.5)
    with pytest.raises(TypeError, match="C-contiguous"):
        k(1, 32, numpy.zeros((4, 4), numpy.float32).T, 4, 0.5)
    with pytest.raises(TypeError, match="takes 3"):
        k(1, 32, x, 4)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("module", sorted(cupy_gpu.MODULE_FILES))
def test_sources_compile_with_nvcc(module, tmp_path):
    src = tmp_path / f"{module}.cu"
    src.write_text(cupy_gpu.read_source(module), encoding="utf-8")
    proc = subprocess.run(
        ["nvcc", "-ptx", "-arch=compute_75", "-std=c++14", "-Werror", "all-warnings",
         str(src), "-o", str(tmp_path / f"{module}.ptx")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ptx = (tmp_path / f"{module}.ptx").read_text()
    for name, (mod, _params) in cupy_gpu.kernel_index().items():
        if mod == module:
            assert f".entry {name}(" in ptx, name


DENSE_SHAPES = [(1, 1, 1), (3, 33, 3), (33, 3, 257), (257, 17, 33), (5, 8, 1025)]
MODES = ["float32", "float64", "fp16", "bf16"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("activation", FUSED_ACTS)
@pytest.mark.parametrize("shape", DENSE_SHAPES)
def test_dense_forward_backward_matches_reference(make_ops, mode, activation, shape):
    n, k, m = shape
    ops, ref, dt, tol = setup_mode(make_ops, mode)
    rng = numpy.random.default_rng(n * 1000 + k + m)
    x = rng.standard_normal((n, k)).astype(dt)
    W = (rng.standard_normal((k, m)) / numpy.sqrt(k)).astype(dt)
    b = rng.standard_normal(m).astype(dt)
    dy = rng.standard_normal((n, m)).astype(dt)
    xr, Wr = rounded(x, mode).astype(dt), rounded(W, mode).astype(dt)
    dyr = rounded(dy, mode).astype(dt)

    y, saved = ops.dense_forward(ops.asarray(x), ops.asarray(W), ops.asarray(b), activation)
    y_ref, saved_ref = ref.dense_forward(xr, Wr, b, activation)
    close(H(ops, y), y_ref, tol)
    if saved_ref is None:
        assert saved is None
    else:
        close(H(ops, saved), saved_ref, tol)
    if mode == "fp16":
        assert y.dtype == numpy.float16

    # backward into poisoned views of a flat gradient buffer
    gdt = numpy.float32 if mode in ("fp16", "bf16") else dt
    grads = ops.asarray(numpy.full(k * m + m, numpy.nan, gdt))
    dW_out, db_out = grads[: k * m].reshape(k, m), grads[k * m:]
    dx, dW, db = ops.dense_backward(
        ops.asarray(dyr).astype(y.dtype), ops.asarray(x), ops.asarray(W), saved, activation,
        True, dW_out, db_out,
    )
    # the reference from the same (rounded) saved values the device kept
    saved_h = None if saved is None else H(ops, saved).astype(dt)
    dx_ref, dW_ref, db_ref = ref.dense_backward(dyr, xr, Wr, saved_h, activation)
    close(H(ops, dW_out), dW_ref, tol)
    close(H(ops, db_out), db_ref, tol)
    close(H(ops, dx), dx_ref, tol)
    close(H(ops, dW), dW_ref, tol)  # returned and written into the flat buffer
    _, _, db2 = ops.dense_backward(
        ops.asarray(dyr).astype(y.dtype), ops.asarray(x), ops.asarray(W), saved, activation,
        False,
    )
    close(H(ops, db2), db_ref, tol)


@pytest.mark.parametrize("mode", ["float32", "float64"])
def test_dense_leading_dims_and_no_bias(make_ops, mode):
    ops, ref, dt, tol = setup_mode(make_ops, mode)
    rng = numpy.random.default_rng(1)
    x = rng.standard_normal((2, 3, 5)).astype(dt)
    W = rng.standard_normal((5, 7)).astype(dt)
    y, saved = ops.dense_forward(ops.asarray(x), ops.asarray(W), None, "relu")
    y_ref, _ = ref.dense_forward(x, W, None, "relu")
    assert y.shape == (2, 3, 7)
    close(H(ops, y), y_ref, tol)
    dy = rng.standard_normal((2, 3, 7)).astype(dt)
    dx, dW, db = ops.dense_backward(ops.asarray(dy), ops.asarray(x), ops.asarray(W), saved, "relu")
    saved_ref = ref.dense_forward(x, W, None, "relu")[1]
    dx_ref, dW_ref, db_ref = ref.dense_backward(dy, x, W, saved_ref, "relu")
    assert dx.shape == x.shape
    close(H(ops, dx), dx_ref, tol)
    close(H(ops, dW), dW_ref, tol)
    close(H(ops, db), db_ref, tol)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("activation", [a for a in ACTIVATIONS if a != "identity"])
@pytest.mark.parametrize("size", SIZES)
def test_activation_forward_backward(make_ops, mode, activation, size):
    ops, ref, dt, tol = setup_mode(make_ops, mode)
    rng = numpy.random.default_rng(size)
    act_dt = numpy.float16 if mode == "fp16" else dt
    x = (3 * rng.standard_normal((2, size))).astype(act_dt)
    dy = rng.standard_normal((2, size)).astype(act_dt)
    y, saved = ops.activation_forward(ops.asarray(x, dtype=act_dt), activation)
    xr = x.astype(dt)  # bf16 mode rounds outputs, not inputs, of elementwise kernels
    y_ref, saved_ref = ref.activation_forward(xr, activation)
    close(H(ops, y), y_ref, tol)
    dx = ops.activation_backward(ops.asarray(dy, dtype=act_dt), saved, activation)
    dx_ref = ref.activation_backward(
        dy.astype(dt),
        H(ops, saved).astype(dt), activation,
    )
    close(H(ops, dx), dx_ref, tol)


LABEL_KINDS = ["int32", "int64", "onehot", "soft"]
CE_SHAPES = [(1, 1), (3, 3), (33, 257), (3, 1025), (257, 33)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", LABEL_KINDS)
@pytest.mark.parametrize("shape", CE_SHAPES)
def test_softmax_cross_entropy_matches_reference(make_ops, mode, kind, shape):
    n, c = shape
    ops, ref, dt, tol = setup_mode(make_ops, mode)
    rng = numpy.random.default_rng(n + 7 * c)
    act_dt = numpy.float16 if mode == "fp16" else dt
    logits = (4 * rng.standard_normal((n, c))).astype(act_dt)
    labels = rng.integers(0, c, size=n)
    if kind in ("int32", "int64"):
        target = labels.astype(kind)
    elif kind == "onehot":
        target = numpy.eye(c, dtype=dt)[labels]
    else:
        p = rng.random((n, c))
        target = (p / p.sum(axis=1, keepdims=True)).astype(dt)
    loss, grad = ops.softmax_cross_entropy(ops.asarray(logits, dtype=act_dt), ops.asarray(target))
    lr = logits.astype(numpy.float32) if mode == "fp16" else logits  # bf16: inputs as given
    loss_ref, grad_ref = ref.softmax_cross_entropy(lr, target)
    assert getattr(loss, "ndim", 0) == 0
    if compat.cupy is not None and ops.xp is compat.cupy:
        assert isinstance(loss, compat.cupy.ndarray)  # stays on the device: no sync
    close(ops.to_float(loss), float(loss_ref), tol)
    assert grad.dtype == act_dt
    close(H(ops, grad), grad_ref, tol)


def test_softmax_cross_entropy_bad_label_gives_nan_row(make_ops):
    ops = make_ops(seed=0)
    logits = ops.asarray(numpy.zeros((3, 4), numpy.float32))
    loss, grad = ops.softmax_cross_entropy(logits, ops.asarray(numpy.array([0, 9, 1], numpy.int64)))
    g = H(ops, grad)
    assert numpy.isnan(ops.to_float(loss))
    assert numpy.isnan(g[1]).all() and numpy.isfinite(g[[0, 2]]).all()


@pytest.mark.parametrize("size", (*SIZES, 100003))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "opts",
    [dict(momentum=0.0), dict(momentum=0.9), dict(momentum=0.9, nesterov=True, weight_decay=0.01)],
)
def test_sgd_update_several_steps(make_ops, size, dtype, opts):
    ops, ref = make_ops(seed=0, dtype=dtype), Ops(dtype=dtype)
    rng = numpy.random.default_rng(size)
    p = rng.standard_normal(size).astype(dtype)
    v = numpy.zeros(size, dtype)
    P, V = ops.asarray(p), ops.asarray(v)
    for _ in range(4):
        g = rng.standard_normal(size).astype(dtype)
        ops.sgd_update(P, ops.asarray(g), V, 0.05, **opts)
        ref.sgd_update(p, g, v, 0.05, **opts)
    tol = 1e-12 if dtype == "float64" else 2e-6
    close(H(ops, P), p, tol)
    close(H(ops, V), v, tol)


@pytest.mark.parametrize("size", (*SIZES, 100003))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("wd,decoupled", [(0.0, False), (0.01, False), (0.01, True)])
def test_adam_and_adamw_several_steps(make_ops, size, dtype, wd, decoupled):
    ops, ref = make_ops(seed=0, dtype=dtype), Ops(dtype=dtype)
    rng = numpy.random.default_rng(size + 1)
    p = rng.standard_normal(size).astype(dtype)
    m, v = numpy.zeros(size, dtype), numpy.zeros(size, dtype)
    P, M, Vd = ops.asarray(p), ops.asarray(m), ops.asarray(v)
    for step in range(1, 6):
        g = rng.standard_normal(size).astype(dtype)
        ops.adam_update(P, ops.asarray(g), M, Vd, step, 1e-2, 0.9, 0.999, 1e-8, wd, decoupled)
        ref.adam_update(p, g, m, v, step, 1e-2, 0.9, 0.999, 1e-8, wd, decoupled)
    tol = 1e-12 if dtype == "float64" else 2e-5
    close(H(ops, P), p, tol)
    close(H(ops, M), m, tol)
    close(H(ops, Vd), v, tol)
