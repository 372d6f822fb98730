"""The CUDA shim that runs nnx's kernels on the CPU (tests only), and its compiler.

The .cu sources (as CupyOps hands them to cupy.RawModule) are compiled with the host C++
compiler against a shim: grid/block indices as globals, `__shared__` as block-shared statics,
`__syncthreads` as a barrier of ucontext coroutines (the threads of a block switch there), so
reductions and barriers behave as on a GPU while blocks run one after another. Each kernel gets
two launchers: `emu_<name>(grid, block, args...)` and `emu_range_<name>(grid, first block,
block count, block, args...)`, which runs only some blocks of a (possibly huge) grid.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess

from nnx.kernels import cupy_source as cupy_gpu

EMU_SHIM = r"""
// CUDA shim for running nnx's kernels on the CPU (tests only).
#include <math.h>
#include <stdio.h>
#include <ucontext.h>
#include <functional>
#include <vector>
struct nnx_emu_dim3 { unsigned int x, y, z; };
volatile nnx_emu_dim3 threadIdx = {0, 0, 0}, blockIdx = {0, 0, 0};
volatile nnx_emu_dim3 blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__
namespace nnx_emu {
struct Thread { ucontext_t ctx; int state; };  // 0 runnable, 1 at barrier, 2 done
static ucontext_t sched;
static std::vector<Thread> threads;
static std::vector<char> stacks;
static const size_t kStack = 256 * 1024;
static unsigned cur = 0;
static std::function<void()>* body = nullptr;
static void trampoline() { (*body)(); threads[cur].state = 2; }
}
inline void __syncthreads() {
    nnx_emu::threads[nnx_emu::cur].state = 1;
    swapcontext(&nnx_emu::threads[nnx_emu::cur].ctx, &nnx_emu::sched);
}
inline int atomicOr(int* a, int v) { int o = *a; *a = o | v; return o; }
// Runs the blocks one after another; the threads of a block as coroutines that switch at
// __syncthreads. Returns -1 when some threads of a block finish while others wait at a barrier.
// nnx_emu_launch_range runs only blocks b0 .. b0+nb-1 of a grid of gx blocks: the index-math
// tests place a few blocks at the end of a grid of more than 2^31 threads.
static int nnx_emu_launch_range(unsigned gx, unsigned b0, unsigned nb, unsigned bx,
                                std::function<void()> fn) {
    using namespace nnx_emu;
    if (gx == 0 || bx == 0 || bx > 1024 || b0 + (unsigned long long)nb > gx) return -2;
    gridDim.x = gx;
    blockDim.x = bx;
    threads.assign(bx, Thread());
    if (stacks.size() < bx * kStack) stacks.resize(bx * kStack);
    body = &fn;
    for (unsigned b = b0; b < b0 + nb; ++b) {
        blockIdx.x = b;
        for (unsigned t = 0; t < bx; ++t) {
            getcontext(&threads[t].ctx);
            threads[t].ctx.uc_stack.ss_sp = &stacks[t * kStack];
            threads[t].ctx.uc_stack.ss_size = kStack;
            threads[t].ctx.uc_link = &sched;
            makecontext(&threads[t].ctx, trampoline, 0);
            threads[t].state = 0;
        }
        for (;;) {
            for (unsigned t = 0; t < bx; ++t) {
                if (threads[t].state != 0) continue;
                cur = t;
                threadIdx.x = t;
                swapcontext(&sched, &threads[t].ctx);
            }
            unsigned done = 0;
            for (unsigned t = 0; t < bx; ++t) done += threads[t].state == 2;
            if (done == bx) break;
            if (done) return -1;
            for (unsigned t = 0; t < bx; ++t) threads[t].state = 0;
        }
    }
    return 0;
}
static int nnx_emu_launch(unsigned gx, unsigned bx, std::function<void()> fn) {
    return nnx_emu_launch_range(gx, 0, gx, bx, fn);
}
"""

CTYPES = {"int": ctypes.c_int32, "long long": ctypes.c_int64, "float": ctypes.c_float,
           "double": ctypes.c_double}


class EmuCompiler:
    """Compiles CUDA source (as CupyOps hands it to cupy.RawModule) into a shared library of
    `emu_<kernel>(grid, block, args...)` launchers."""

    def __init__(self, workdir, cxx):
        self.workdir = workdir
        self.cxx = cxx
        self.libs = {}

    def build(self, code: str):
        key = hashlib.sha256(code.encode()).hexdigest()[:16]
        if key in self.libs:
            return self.libs[key]
        sigs = cupy_gpu.parse_signatures(code)
        launchers = []
        for name, params in sigs.items():
            decl = ", ".join(
                f"{'nnx_half_t' if c == 'nnx_half_t' else c}{'*' if p else ''} a{i}"
                for i, (p, c, _n) in enumerate(params)
            )
            call = ", ".join(f"a{i}" for i in range(len(params)))
            launchers.append(
                f'extern "C" int emu_{name}(unsigned gx, unsigned bx, {decl}) '
                f"{{ return nnx_emu_launch(gx, bx, [=]() {{ {name}({call}); }}); }}"
            )
            launchers.append(
                f'extern "C" int emu_range_{name}(unsigned gx, unsigned b0, unsigned nb, '
                f"unsigned bx, {decl}) "
                f"{{ return nnx_emu_launch_range(gx, b0, nb, bx, [=]() {{ {name}({call}); }}); }}"
            )
        src = os.path.join(self.workdir, f"emu_{key}.cpp")
        lib = os.path.join(self.workdir, f"emu_{key}.so")
        with open(src, "w", encoding="utf-8") as fh:
            fh.write(EMU_SHIM + code + "\n" + "\n".join(launchers) + "\n")
        # -O0: the shim's barriers are invisible to an optimizer reasoning about statics
        proc = subprocess.run(
            [self.cxx, "-std=c++17", "-O0", "-fPIC", "-shared", "-w", src, "-o", lib],
            capture_output=True, text=True, timeout=600,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"emulation build failed:\n{proc.stderr[-6000:]}")
        dll = ctypes.CDLL(lib)
        funcs = {}
        for name, params in sigs.items():
            argtypes = [ctypes.c_void_p if p else CTYPES[c] for p, c, _n in params]
            f = getattr(dll, f"emu_{name}")
            f.restype = ctypes.c_int
            f.argtypes = [ctypes.c_uint, ctypes.c_uint] + argtypes
            r = getattr(dll, f"emu_range_{name}")
            r.restype = ctypes.c_int
            r.argtypes = [ctypes.c_uint] * 4 + argtypes
            funcs[name] = (f, params)
            funcs["range:" + name] = (r, params)
        self.libs[key] = (dll, funcs)
        return self.libs[key]


