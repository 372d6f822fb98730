"""16-bit gradient compression (`compression="fp16" | "bf16"`): float arrays are packed into
16 bits before a reduction (half the bytes on the wire) and unpacked into the original buffer
after it. bfloat16 has no NumPy dtype: its bits travel as uint16 and are added by a
user-defined MPI op (`nnx.distributed.mpi`) or natively by NCCL.

Also the array helpers the package shares: NumPy or CuPy arrays, with no import of CuPy unless
a CuPy array is seen.
"""

from __future__ import annotations

import numpy as np

COMPRESSIONS = {None: None, "none": None, "fp16": "fp16", "float16": "fp16",
                "bf16": "bf16", "bfloat16": "bf16"}


def check_compression(compression):
    """The canonical kind (None, "fp16" or "bf16") of a `compression` argument."""
    key = compression.lower() if isinstance(compression, str) else compression
    if key not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; expected one of: None, 'fp16', "
                         f"'bf16'")
    return COMPRESSIONS[key]


# -- array helpers ------------------------------------------------------------------------------
def is_device(x) -> bool:
    return hasattr(x, "__cuda_array_interface__")


def is_array(x) -> bool:
    if isinstance(x, np.generic):
        return False
    return isinstance(x, np.ndarray) or is_device(x)


def xp_of(x):
    """numpy, or cupy for a CuPy array."""
    if is_device(x):
        import cupy

        return cupy
    return np


def to_host(x) -> np.ndarray:
    return x.get() if is_device(x) else np.asarray(x)


# -- packing ------------------------------------------------------------------------------------
_SIGN_CLEAR = 0x7FFFFFFF
_EXP_ALL = 0x7F800000   # float32 infinity: above it (sign cleared) is a NaN
_BF16_QUIET = 0x0040    # the top mantissa bit of a bfloat16: set in every NaN we produce


def to_bf16(x):
    """float array -> bfloat16 bits (uint16), rounded to nearest even. A NaN stays a quiet NaN
    with its sign (rounding its bits would carry into the exponent and the sign: 0x7FFFFFFF
    would become -0.0)."""
    xp = xp_of(x)
    u = xp.ascontiguousarray(x, dtype=xp.float32).view(xp.uint32)
    nan = (u & xp.uint32(_SIGN_CLEAR)) > xp.uint32(_EXP_ALL)
    rounded = ((u + (((u >> 16) & 1) + xp.uint32(0x7FFF))) >> 16).astype(xp.uint16)
    quiet = ((u >> 16) | xp.uint32(_BF16_QUIET)).astype(xp.uint16)
    return xp.where(nan, quiet, rounded)  # no host sync (no `if nan.any()`) on a GPU


def from_bf16(bits, out) -> None:
    """bfloat16 bits -> out (any float dtype), in place."""
    xp = xp_of(bits)
    out[...] = (bits.astype(xp.uint32) << 16).view(xp.float32)


def compress(buf, kind):
    """The 16-bit copy of a float buffer that travels instead of it."""
    if kind == "fp16":
        return buf.astype(xp_of(buf).float16)
    return to_bf16(buf)


def decompress(low, buf, kind) -> None:
    """Unpack a reduced 16-bit copy into the original buffer, in place."""
    if kind == "fp16":
        buf[...] = low
    else:
        from_bf16(low, buf)
