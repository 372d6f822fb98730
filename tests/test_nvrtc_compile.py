"""Every CUDA module compiled by NVRTC, as CupyOps compiles it, for sm_80 and sm_90, without a GPU.

The CPU emulation cannot see device-only code (`#if defined(__CUDA_ARCH__)` branches: the PTX
half-precision conversions). NVRTC compiles exactly that code and needs no GPU: NVIDIA's
`nvidia-cuda-nvrtc-cu12` (CUDA 12) or `nvidia-cuda-nvrtc` (CUDA 13) wheel installs the library
anywhere (`pip install -e ".[nvrtc]"`). Without it these tests skip with that reason.

Checks, per module and architecture: the compile succeeds with C++11 and NO warning (ptxas
included: a real-architecture CUBIN is built), every `extern "C"` kernel is an entry of the
PTX, and the device branch converts float -> half with round-to-nearest-even (`cvt.rn`): a flip
to `cvt.rz` (truncation) passes every emulated test but fails here.
"""

from __future__ import annotations

import ctypes
import re

import pytest
from nnx.kernels import cupy_source

from nnx import compat

ARCHS = ("80", "90")
LIB = compat.nvrtc_library()
pytestmark = pytest.mark.skipif(
    LIB is None,
    reason="NVRTC not installed: pip install nvidia-cuda-nvrtc-cu12 (or the [nvrtc] extra)",
)


class Nvrtc:
    """The few NVRTC calls a compile needs, through ctypes (no CUDA Python bindings)."""

    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p

    def _check(self, rc, what, log=""):
        if rc != 0:
            msg = self.lib.nvrtcGetErrorString(rc).decode()
            raise AssertionError(f"{what}: {msg}\n{log}")

    def version(self) -> tuple[int, int]:
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "version")
        return major.value, minor.value

    def compile(self, source: str, name: str, options: list[str], want: str) -> tuple[bytes, str]:
        """(PTX or CUBIN bytes, log) of `source` compiled with `options`."""
        prog = ctypes.c_void_p()
        self._check(self.lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(),
                                                name.encode(), 0, None, None), "create")
        try:
            opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
            rc = self.lib.nvrtcCompileProgram(prog, len(options), opts)
            size = ctypes.c_size_t()
            self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            self.lib.nvrtcGetProgramLog(prog, buf)
            log = buf.value.decode(errors="replace")
            self._check(rc, f"compile {name} {options}", log)
            get_size = getattr(self.lib, f"nvrtcGet{want}Size")
            get = getattr(self.lib, f"nvrtcGet{want}")
            self._check(get_size(prog, ctypes.byref(size)), f"{want} size")
            out = ctypes.create_string_buffer(size.value)
            self._check(get(prog, out), want)
            return out.raw, log
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))


@pytest.fixture(scope="module")
def nvrtc():
    return Nvrtc(LIB)


def _options(arch_flag: str) -> list[str]:
    return [*cupy_source.NVRTC_OPTIONS, arch_flag, "--std=c++11"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("module", sorted(cupy_source.MODULE_FILES))
def test_module_compiles_for_the_architecture_without_warnings(nvrtc, module, arch):
    source = cupy_source.read_source(module)
    ptx, log = nvrtc.compile(source, f"{module}.cu", _options(f"--gpu-architecture=compute_{arch}"),
                             "PTX")
    assert "warning" not in log.lower(), log
    text = ptx.decode(errors="replace")
    for name, (mod, _params) in cupy_source.kernel_index().items():
        if mod == module:
            assert re.search(rf"\.entry {name}\s*\(", text), f"{name} missing from the PTX"
    if module == "dense":  # the fp16 kernels' device branch: round to nearest even
        assert "cvt.rn.f16.f32" in text
        assert not re.search(r"cvt\.r[zmp]\.f16\.f32", text), "float -> half must round to nearest"
    if nvrtc.version() >= (11, 2):  # the real architecture: ptxas runs too
        cubin, log = nvrtc.compile(source, f"{module}.cu",
                                   _options(f"--gpu-architecture=sm_{arch}"), "CUBIN")
        assert cubin[:4] == b"\x7fELF" and "warning" not in log.lower(), log
