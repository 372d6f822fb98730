#!/usr/bin/env bash
# The one script to run where a GPU is lent (issue 16, "Where a GPU is lent"): every check that
# needs CUDA, in one go, each step time-boxed so the whole run ends inside a 10-minute command.
#
#   run (device tool): bash tools/gpu_check.sh        (timeout_s about 580)
#
# Writes at most 8 files under $OUT (default ./gpu-check-out), two folders deep at most:
#   device.txt     nvidia-smi, CUDA/CuPy/PyTorch versions, the GPU's description
#   pytest.txt     the `gpu` tests: fp16 rounding first, then capture + TF32, then all of them
#   sanitizer.txt  compute-sanitizer memcheck / racecheck / synccheck on a small fit step, in
#                  fp32, fp16 and bf16
#   big.txt        an elementwise kernel and Adam over more than 2^31 elements (tail checked)
#   profile.txt    100 training steps under torch.profiler (CUPTI sees every CUDA call of the
#                  process): kernel launches and host syncs per step
#   fit.txt        fit / train_step / evaluate with CuPy x and y
#   bench.json     nnx bench (gemm, mlp) against PyTorch on the same GPU
#   bench_extra.txt MLP at B=128 and B=4096, GEMM fp32/TF32/bf16 against the measured peak
# Commit what comes back under benchmarks/results/ with device.txt's description.
set -u
OUT=${OUT:-./gpu-check-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 NNX_BACKEND=cupy
step() {  # step SECONDS FILE COMMAND...: run, append output, never stop the script
    local secs=$1 file=$2
    shift 2
    echo "### $*" >>"$OUT/$file"
    timeout "$secs" "$@" >>"$OUT/$file" 2>&1
    echo "### exit $?" >>"$OUT/$file"
}

# -- the package, without touching the image's packages -----------------------------------
$PY -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$OUT/device.txt" 2>&1 ||
    echo "pip install -e . failed" >>"$OUT/device.txt"

step 60 device.txt nvidia-smi
step 60 device.txt $PY -c "
import cupy, nnx, sys
from nnx.backends import cupy as b
print('python', sys.version.split()[0], 'cupy', cupy.__version__,
      'cuda runtime', cupy.cuda.runtime.runtimeGetVersion(),
      'driver', cupy.cuda.runtime.driverGetVersion())
print(b.devices()); print(b.memory_info())
try:
    import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))
except Exception as e: print('torch:', e)
"

# -- the gpu tests: the fp16 rounding first (device-only PTX), then capture and TF32 --------
step 120 pytest.txt $PY -m pytest -q -p no:cacheprovider -m gpu \
    tests/test_cuda_ops_misc.py -k test_half_conversion_rounding_matches_numpy
step 120 pytest.txt $PY -m pytest -q -p no:cacheprovider -m gpu \
    tests/test_cuda_graphs.py tests/test_cuda_ops_misc.py -k "capture or graph or tf32 or sync"
step 240 pytest.txt $PY -m pytest -q -p no:cacheprovider -m gpu -x \
    tests/test_cupy_backend.py tests/test_cuda_ops_misc.py tests/test_cuda_graphs.py \
    tests/test_cuda_fixes.py tests/test_nvrtc_compile.py

# -- a small fit step under compute-sanitizer ---------------------------------------------
cat >/tmp/nnx_fit_step.py <<'EOF'
import sys, numpy as np, nnx
prec = None if sys.argv[1] == "fp32" else sys.argv[1]
ops = nnx.get_ops("cupy", seed=0, precision=prec)
rng = np.random.default_rng(0)
x = rng.standard_normal((64, 20)).astype(np.float32); y = rng.integers(0, 5, 64)
m = nnx.Sequential([nnx.Dense(20, 32, activation="gelu"), nnx.Dropout(0.1),
                    nnx.Dense(32, 5)], backend=ops, seed=0)
m.compile(nnx.Adam(1e-3), "softmax_cross_entropy", ["accuracy"])
m.fit(x, y, epochs=1, batch_size=32, verbose=0); ops.synchronize(); print("ok", prec)
EOF
if command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck synccheck; do
        for p in fp32 fp16 bf16; do
            step 60 sanitizer.txt compute-sanitizer --tool "$tool" --error-exitcode 9 \
                $PY /tmp/nnx_fit_step.py "$p"
        done
    done
else
    echo "compute-sanitizer not found" >"$OUT/sanitizer.txt"
fi

# -- more than 2^31 elements: an elementwise kernel and Adam, the tail checked ---------------
step 150 big.txt $PY - <<'EOF'
import numpy as np, cupy as cp
from nnx.kernels.cupy_gpu import CupyOps
from nnx.kernels.reference import Ops
n = 2**31 + 4099
ops = CupyOps(seed=0)
x = cp.full((n,), -2.0, dtype=cp.float32); x[-5:] = cp.asarray([1, -1, 2, -3, 4], cp.float32)
y, _ = ops.activation_forward(x, "relu")
print("relu tail", y[-5:].get(), "head", y[:2].get()); del y
p = cp.ones((n,), cp.float32); g = x; m = cp.zeros_like(p); v = cp.zeros_like(p)
ops.adam_update(p, g, m, v, 1, 1e-2, 0.9, 0.999, 1e-8)
ref = np.ones(5, np.float32); gr = x[-5:].get()
Ops().adam_update(ref, gr, np.zeros(5, np.float32), np.zeros(5, np.float32), 1, 1e-2, .9, .999, 1e-8)
print("adam tail", p[-5:].get(), "ref", ref, "ok", np.allclose(p[-5:].get(), ref))
EOF

# -- 100 steps under torch.profiler: launches and host syncs per step ------------------------
step 150 profile.txt $PY - <<'EOF'
import collections, numpy as np, torch, nnx
from torch.profiler import ProfilerActivity, profile
torch.zeros(1, device="cuda")
ops = nnx.get_ops("cupy", seed=0)
rng = np.random.default_rng(0)
x = ops.asarray(rng.standard_normal((128, 784))); y = ops.asarray(rng.integers(0, 10, 128))
m = nnx.Sequential([nnx.Dense(784, 512, activation="relu"), nnx.Dense(512, 256, activation="relu"),
                    nnx.Dense(256, 10)], backend=ops, seed=0)
m.compile(nnx.Adam(1e-3), "softmax_cross_entropy")
for _ in range(5): m.trainer.step(x, y)
ops.synchronize()
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for _ in range(100): m.trainer.step(x, y)
    ops.synchronize()
c = collections.Counter(e.name for e in prof.events())
launch = sum(v for k, v in c.items() if "LaunchKernel" in k or "cuLaunch" in k or "GemmEx" in k)
sync = sum(v for k, v in c.items() if "Synchronize" in k or "cudaMemcpy" in k and "Async" not in k)
print("per step: launches", launch / 100, "syncs", sync / 100)
for k, v in c.most_common(40): print(v, k)
EOF

# -- fit with CuPy x and y ------------------------------------------------------------------
step 90 fit.txt $PY - <<'EOF'
import numpy as np, cupy as cp, nnx
for prec in (None, "fp16", "bf16"):
    ops = nnx.get_ops("cupy", seed=0, precision=prec)
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.standard_normal((512, 20)).astype(np.float32))
    y = cp.asarray((rng.standard_normal(512) > 0).astype(np.int64))
    m = nnx.Sequential([nnx.Dense(20, 32, activation="relu"), nnx.Dense(32, 2)], backend=ops, seed=0)
    m.compile(nnx.Adam(1e-2), "softmax_cross_entropy", ["accuracy"])
    h = m.fit(x, y, epochs=3, batch_size=64, verbose=0, validation_data=(x, y))
    print(prec, h.history["loss"], m.train_step(x[:64], y[:64]), m.evaluate(x, y))
EOF

# -- benchmarks against PyTorch on the same GPU --------------------------------------------
step 150 bench_extra.txt nnx bench --suite gemm mlp --backends cupy torch-cuda --repeats 5 \
    --no-plots --out /tmp/nnx-bench
cp /tmp/nnx-bench/bench.json "$OUT/bench.json" 2>/dev/null
step 120 bench_extra.txt $PY - <<'EOF'
import time, numpy as np, cupy as cp, torch, nnx
def cuda_time(fn, n=20):
    fn(); torch.cuda.synchronize(); cp.cuda.Device().synchronize()
    s, e = cp.cuda.Event(), cp.cuda.Event(); s.record()
    for _ in range(n): fn()
    e.record(); e.synchronize(); return cp.cuda.get_elapsed_time(s, e) / 1e3 / n
N = 8192
for name, dt, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                       ("bf16", torch.bfloat16, False)):
    torch.backends.cuda.matmul.allow_tf32 = tf32
    a = torch.randn(N, N, device="cuda", dtype=dt); b = torch.randn(N, N, device="cuda", dtype=dt)
    t = cuda_time(lambda: a @ b)
    print(f"torch GEMM {name} {N}^3: {2 * N**3 / t / 1e12:.1f} TFLOP/s")
for tf32 in (False, True):
    ops = nnx.get_ops("cupy", seed=0, tf32=tf32)
    x, w = ops.asarray(np.random.rand(N, N)), ops.asarray(np.random.rand(N, N))
    t = cuda_time(lambda: ops.dense_forward(x, w, None, "identity"))
    print(f"nnx GEMM fp32 tf32={tf32} {N}^3: {2 * N**3 / t / 1e12:.1f} TFLOP/s")
for B in (128, 4096):
    for prec in (None, "bf16", "fp16"):
        ops = nnx.get_ops("cupy", seed=0, precision=prec)
        m = nnx.Sequential([nnx.Dense(784, 512, activation="relu"),
                            nnx.Dense(512, 256, activation="relu"), nnx.Dense(256, 10)],
                           backend=ops, seed=0)
        m.compile(nnx.Adam(1e-3), "softmax_cross_entropy")
        x = ops.asarray(np.random.rand(B, 784)); y = ops.asarray(np.random.randint(0, 10, B))
        t = cuda_time(lambda: m.trainer.step(x, y), 50)
        print(f"nnx MLP step B={B} precision={prec}: {t * 1e3:.3f} ms")
    tm = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256),
                             torch.nn.ReLU(), torch.nn.Linear(256, 10)).cuda()
    opt = torch.optim.Adam(tm.parameters(), 1e-3)
    tx = torch.rand(B, 784, device="cuda"); ty = torch.randint(0, 10, (B,), device="cuda")
    def tstep():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(tm(tx), ty).backward(); opt.step()
    print(f"torch MLP step B={B}: {cuda_time(tstep, 50) * 1e3:.3f} ms")
EOF
ls -la "$OUT"
