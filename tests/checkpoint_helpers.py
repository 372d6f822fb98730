"""Helpers of the checkpoint tests: a small trained model, reading and rewriting checkpoint
members, and writing crafted zips (duplicates, raw deflate payloads)."""

from __future__ import annotations

import io
import json
import struct
import tracemalloc
import warnings
import zipfile
import zlib

import numpy as np
import pytest

import nnx
from nnx.errors import CheckpointError


def small_model(**kw):
    model = nnx.Sequential([nnx.Dense(6, 4, "relu", name="d1"), nnx.BatchNorm1d(4, name="bn"),
                            nnx.Dense(4, 3, name="d2")], backend="numpy", **kw)
    model.compile(nnx.Adam(1e-2), "softmax_cross_entropy")
    model.train_step(np.linspace(-1, 1, 24, dtype=np.float32).reshape(4, 6),
                     np.array([0, 1, 2, 0]))
    return model


def members_of(path) -> dict:
    """name (without .npy) -> the member's raw .npy bytes."""
    with zipfile.ZipFile(path) as z:
        return {i.filename[:-4]: z.read(i) for i in z.infolist()}


def header_of(path) -> dict:
    return json.loads(bytes(np.load(io.BytesIO(members_of(path)["__nnx__"]))).decode())


def npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def npy_header(shape, descr="<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False,
                                               "shape": tuple(shape)})
    return buf.getvalue()


def header_npy(header: dict | str) -> bytes:
    text = header if isinstance(header, str) else json.dumps(header)
    return npy(np.frombuffer(text.encode(), dtype=np.uint8))


def write_zip(path, entries, method=zipfile.ZIP_STORED):
    """A zip of (name, bytes) entries, duplicates allowed (zipfile warns, we want them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(path, "w", method) as z:
            for name, data in entries:
                z.writestr(name, data)
    return path


def rewrite(src, out, edit_header=None, replace=None, extra=()):
    """`src` with its header edited and members replaced (name -> npy bytes) or added."""
    members = members_of(src)
    if edit_header is not None:
        h = header_of(src)
        edit_header(h)
        members["__nnx__"] = header_npy(h)
    members.update(replace or {})
    entries = [(k + ".npy", v) for k, v in members.items()] + list(extra)
    return write_zip(out, entries)


def raw_zip(path, entries):
    """A zip written by hand: entries are (name, method, crc, usize, payload) with the payload
    already compressed, so that a 1 GiB member can be stored as 1 MB of deflate data."""
    out, central = bytearray(), bytearray()
    for name, method, crc, usize, payload in entries:
        nm = name.encode()
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 33, crc,
                           len(payload), usize, len(nm), 0) + nm + payload
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 33, crc,
                               len(payload), usize, len(nm), 0, 0, 0, 0, 0, offset) + nm
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central),
                      len(out), 0)
    path.write_bytes(bytes(out + central + end))
    return path


def deflated_zeros(prefix: bytes, nbytes: int):
    """(deflate payload, crc, size) of `prefix` + nbytes zeros, built from self-contained
    full-flush blocks (1 MiB of zeros is ~1 KB of deflate data)."""
    mib = b"\0" * 2**20
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    crc = zlib.crc32(prefix)
    for _ in range(nbytes // 2**20):
        crc = zlib.crc32(mib, crc)
    return head + block * (nbytes // 2**20) + tail, crc, len(prefix) + nbytes


def load_peak(path):
    """Load `path` expecting CheckpointError; returns (error, peak traced bytes)."""
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError) as info:
            nnx.load(path)
        return info.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
