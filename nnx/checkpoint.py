"""Checkpoint files: reading, writing and validating them. Pure I/O: this module knows the file
format, not models (`nnx.model_io` assembles a model from what it reads).

Format: a zip of `.npy` members (what `np.savez` writes) plus a JSON header in the member
`__nnx__` (a uint8 array) that names every other member.

- Atomic: written to a temporary file beside the target, fsynced, then `os.replace`d, so a crash
  mid-save leaves the previous checkpoint intact.
- Safe: no pickle anywhere (object arrays are refused, the architecture is JSON); an untrusted
  file costs bounded memory and time: the header is size- and depth-limited, only the members the
  header names are read (an unknown, duplicated, encrypted or oddly compressed member is
  refused), and each member's `.npy` header (shape, dtype) is checked against what the caller
  expects, and against the member's stored size, before its data is read.
- Portable: arrays are stored as host NumPy arrays; a checkpoint from any backend loads on any.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

from .errors import CheckpointError

FORMAT, VERSION = "nnx-checkpoint", 1
HEADER = "__nnx__"
MAX_HEADER_BYTES = 16 * 2**20
MAX_JSON_DEPTH = 200
MAX_NPY_HEADER = 64 * 1024
_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


# -- writing --------------------------------------------------------------------------------------
def write(path, header: dict, arrays: dict) -> None:
    """Write `header` (JSON-able) and `arrays` (name -> host ndarray) to `path` atomically."""
    path = os.fspath(path)
    if HEADER in arrays:
        raise ValueError(f"array name {HEADER!r} is reserved for the header")
    members = dict(arrays)
    members[HEADER] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".nnx-ckpt-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **members)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


# -- reading --------------------------------------------------------------------------------------
def _json_depth_ok(text: str, limit: int) -> bool:
    depth = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def _reject_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


class Member:
    """One `.npy` member: its zip entry and the shape/dtype its header declares."""

    __slots__ = ("info", "shape", "dtype", "fortran", "offset")

    def __init__(self, info, shape, dtype, fortran, offset):
        self.info, self.shape, self.dtype = info, shape, dtype
        self.fortran, self.offset = fortran, offset

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


class Reader:
    """An open checkpoint: `header` (validated JSON dict) and `members` (name -> Member), read
    without loading any array; `array(name, shape, kinds)` then reads one checked array."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
        except FileNotFoundError:
            raise
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise self.error(f"is corrupt or truncated ({type(exc).__name__}: {exc})") from exc
        try:
            self._index()
            self.header = self._read_header()
        except BaseException:
            self._zip.close()
            raise

    def error(self, what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {self.path!r} {what}")

    def close(self) -> None:
        self._zip.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _index(self) -> None:
        self._infos = {}
        for info in self._zip.infolist():
            if not info.filename.endswith(".npy"):
                raise self.error(f"has an unexpected member {info.filename!r}")
            name = info.filename[:-4]
            if name in self._infos:
                raise self.error(f"has the member {name!r} twice")
            if info.flag_bits & 0x1:
                raise self.error(f"member {name!r} is encrypted")
            if info.compress_type not in _METHODS:
                raise self.error(f"member {name!r} uses unsupported compression "
                                 f"{info.compress_type}")
            self._infos[name] = info
        if HEADER not in self._infos:
            raise self.error(f"is not an nnx checkpoint (no {HEADER} entry)")
        self.members: dict[str, Member] = {}

    def _member(self, name) -> Member:
        if name in self.members:
            return self.members[name]
        info = self._infos.get(name)
        if info is None:
            raise self.error(f"has no array {name!r}")
        try:
            with self._zip.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(
                        f, max_header_size=MAX_NPY_HEADER)
                elif version in ((2, 0), (3, 0)):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(
                        f, max_header_size=MAX_NPY_HEADER)
                else:
                    raise ValueError(f"unsupported .npy version {version}")
                offset = f.tell()
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, SyntaxError) as exc:
            raise self.error(f"member {name!r} is corrupt ({type(exc).__name__}: {exc})") from exc
        if dtype.hasobject or dtype.kind not in "biuf":
            raise self.error(f"member {name!r} has dtype {dtype}; expected a numeric array")
        if not all(isinstance(d, int) and 0 <= d < 2**40 for d in shape):
            raise self.error(f"member {name!r} declares shape {shape}")
        m = Member(info, tuple(shape), dtype, fortran, offset)
        if offset + m.nbytes != info.file_size:
            raise self.error(f"member {name!r} declares shape {m.shape} ({m.nbytes} bytes) but "
                             f"holds {info.file_size - offset} bytes")
        self.members[name] = m
        return m

    def names(self) -> list[str]:
        """Every array member but the header."""
        return [n for n in self._infos if n != HEADER]

    def declared(self, name):
        """(shape, dtype) of a member, from its `.npy` header only."""
        m = self._member(name)
        return m.shape, m.dtype

    def _read_header(self) -> dict:
        m = self._member(HEADER)
        if m.dtype != np.uint8 or len(m.shape) != 1 or m.nbytes > MAX_HEADER_BYTES:
            raise self.error(f"has an invalid header member ({m.dtype}, shape {m.shape})")
        raw = self._read(m)
        try:
            text = raw.tobytes().decode()
            if not _json_depth_ok(text, MAX_JSON_DEPTH):
                raise ValueError(f"nested more than {MAX_JSON_DEPTH} deep")
            header = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise self.error(f"header is not valid JSON ({exc})") from exc
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            fmt = header.get("format") if isinstance(header, dict) else None
            raise self.error(f"is not an nnx checkpoint (format {fmt!r:.80})")
        if header.get("version") != VERSION:
            raise self.error(f"has version {header.get('version')!r:.40}; this nnx reads "
                             f"version {VERSION}")
        return header

    def _read(self, m: Member) -> np.ndarray:
        try:
            with self._zip.open(m.info) as f:
                f.read(m.offset)  # the .npy header (bounded by MAX_NPY_HEADER)
                data = f.read(m.nbytes)
        except (OSError, EOFError, zipfile.BadZipFile, ValueError) as exc:
            raise self.error(f"member {m.info.filename!r} is corrupt or truncated "
                             f"({type(exc).__name__}: {exc})") from exc
        if len(data) != m.nbytes:
            raise self.error(f"member {m.info.filename!r} is truncated")
        arr = np.frombuffer(data, dtype=m.dtype)
        order = "F" if m.fortran else "C"
        return arr.reshape(m.shape, order=order)

    def array(self, name, shape=None, kinds: str = "f", finite: bool = True) -> np.ndarray:
        """The member `name`, checked: shape (when given), dtype kind in `kinds`, finite."""
        m = self._member(name)
        if shape is not None and m.shape != tuple(shape):
            raise self.error(f"array {name!r} has shape {m.shape}, expected {tuple(shape)}")
        if m.dtype.kind not in kinds:
            raise self.error(f"array {name!r} has dtype {m.dtype}, expected kind {kinds!r}")
        arr = self._read(m)
        if finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise self.error(f"array {name!r} contains NaN or inf")
        return arr


def open_checkpoint(path) -> Reader:
    """Open and validate the container and header of a checkpoint (no array is read)."""
    return Reader(path)


# -- header field checks, shared by model_io ------------------------------------------------------
def require(header: dict, key: str, kind, reader: Reader):
    value = header.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise reader.error(f"header field {key!r} must be a {names}, got "
                           f"{type(value).__name__}")
    return value
