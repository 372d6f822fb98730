"""Checkpoint files: reading, writing and validating them. Pure I/O: this module knows the file
format, not models (`nnx.model_io` assembles a model from what it reads).

Format: a zip of `.npy` members (what `np.savez` writes) plus a JSON header in the member
`__nnx__` (a uint8 array) that names every other member.

- Atomic: written to a temporary file beside the target, fsynced, then `os.replace`d, so a crash
  mid-save leaves the previous checkpoint intact. A temporary file is named
  `.nnx-ckpt-<host>-<pid>-<random>.tmp`; a process killed mid-save (kill -9) leaves one behind,
  and the next save into that directory removes those of its own pattern whose writer is gone
  (same host, process no longer running) or that were last written more than STALE_AFTER_S
  ago (another host's, or an older nnx's `.nnx-ckpt-<random>.tmp`). A concurrent saver's file
  (a live process, recently written) is left alone.
- Faithful to the file it replaces: the new file keeps the permission bits of the one it
  replaces (a new file gets 0666 & ~umask, like any file the user creates), and a save to a
  symlink writes through it to its target (the link stays a link). The destination directory
  is checked before anything is written (`destination`), and never created: a missing
  directory is reported by the caller at once (ModelCheckpoint: before the first epoch).
- Safe: no pickle anywhere (object arrays are refused, the architecture is JSON); an untrusted
  file costs bounded memory and time: the zip's directory is bounded (MAX_MEMBERS entries,
  MAX_DIRECTORY_BYTES) before zipfile indexes it, the header is size- and depth-limited, only
  the members the header names are read (an unknown, duplicated, encrypted or oddly compressed
  member is refused, so a 1 GiB member of zeros in a 1 MB file is never inflated), and each
  member's `.npy` header (shape, dtype) is checked against what the caller expects, and against
  the member's stored size, before its data is read. Whatever zipfile or zlib raise on a damaged
  file (BadZipFile, NotImplementedError, zlib.error, ...) becomes a CheckpointError.
- Portable: arrays are stored as host NumPy arrays; a checkpoint from any backend loads on any.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
import stat
import struct
import time
import zipfile
import zlib

import numpy as np

from .errors import CheckpointError, InputError

FORMAT, VERSION = "nnx-checkpoint", 1
HEADER = "__nnx__"
MAX_HEADER_BYTES = 16 * 2**20
MAX_JSON_DEPTH = 200
MAX_NPY_HEADER = 64 * 1024
MAX_MEMBERS = 200_000  # arrays in one checkpoint (a model's parameters, buffers, state)
MAX_DIRECTORY_BYTES = 64 * 2**20  # the zip's central directory
_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_ENCRYPTED = 0x1 | 0x40 | 0x2000  # encrypted, strong encryption, masked local header
_UNSUPPORTED = 0x20  # compressed patched data
# What zipfile and zlib raise on a damaged archive: NotImplementedError for flags and versions
# it cannot read (also in a local header, which is only seen when a member is opened),
# zlib.error for corrupt deflate data, struct.error for short records.
_ZIP_ERRORS = (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError,
               zlib.error, struct.error, OverflowError)
MAX_METADATA_BYTES = 8 * 2**20  # user metadata (Model.save(path, metadata=...)) as JSON
MAX_METADATA_DEPTH = 64
TEMP_PREFIX, TEMP_SUFFIX = ".nnx-ckpt-", ".tmp"
STALE_AFTER_S = 600.0  # a temporary file untouched this long is an abandoned save
# Ours: .nnx-ckpt-<8 hex of the host name>-<pid>-<random>.tmp; an older nnx's (mkstemp):
# .nnx-ckpt-<random>.tmp. Nothing else is ever removed.
_TEMP_RE = re.compile(r"^\.nnx-ckpt-(?:(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]{1,10})-)?"
                      r"[a-z0-9_]+\.tmp$")


# -- writing --------------------------------------------------------------------------------------
def write(path, header: dict, arrays: dict) -> None:
    """Write `header` (JSON-able) and `arrays` (name -> host ndarray) to `path` atomically (see
    the module docstring: mode kept, symlinks written through, stale temporaries removed)."""
    target = destination(path)
    if HEADER in arrays:
        raise ValueError(f"array name {HEADER!r} is reserved for the header")
    members = dict(arrays)
    members[HEADER] = np.frombuffer(json.dumps(header, allow_nan=False).encode(), dtype=np.uint8)
    directory = os.path.dirname(target)
    remove_stale_temps(directory)
    fd, tmp = _create_temp(directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **members)
            _keep_mode(f.fileno(), target)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
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


def destination(path) -> str:
    """The file a save to `path` writes: `path`, or the file a symlink at `path` points to.
    Checks, before any work, that its directory exists and is writable and that it is not a
    directory itself; raises CheckpointError naming `path` otherwise. (Callers that save
    later, such as a training command's --save, call this up front.)"""
    path = os.fspath(path)
    if not isinstance(path, str) or not path:
        raise CheckpointError(f"checkpoint path must be a non-empty path, got {path!r}")
    target = os.path.realpath(path)
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        what = "is not a directory" if os.path.exists(directory) else "does not exist"
        raise CheckpointError(f"cannot save checkpoint {path!r}: directory {directory!r} {what}"
                              " (create it first)")
    if os.path.islink(target):
        raise CheckpointError(f"cannot save checkpoint {path!r}: its symlinks form a loop")
    if os.path.isdir(target):
        raise CheckpointError(f"cannot save checkpoint {path!r}: it is a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot save checkpoint {path!r}: directory {directory!r} is not "
                              "writable")
    return target


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _create_temp(directory: str) -> tuple[int, str]:
    """A new temporary file in `directory`: (fd, path). Created with mode 0666, so the
    process's umask applies as for any new file (mkstemp would make it 0600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) \
        | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        name = (f"{TEMP_PREFIX}{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"
                f"{TEMP_SUFFIX}")
        path = os.path.join(directory, name)
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary checkpoint file in {directory!r}")


def _keep_mode(fd: int, target: str) -> None:
    """Give the new file the permission bits of the file it replaces (if any)."""
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return
    if hasattr(os, "fchmod"):
        os.fchmod(fd, stat.S_IMODE(st.st_mode))


def _writer_alive(pid: int) -> bool:
    if os.name != "posix":  # os.kill(pid, 0) is not a probe there: rely on the age rule
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def remove_stale_temps(directory, now: float | None = None) -> list[str]:
    """Remove abandoned temporary files of interrupted saves from `directory` (only regular
    files named by our own pattern): those of a process of this host that no longer runs, and
    any last written more than STALE_AFTER_S ago. Returns the removed paths."""
    now = time.time() if now is None else now
    me, mypid, removed = _host_tag(), os.getpid(), []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if m is None:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        pid = int(m.group("pid")) if m.group("pid") else None
        gone = m.group("host") == me and pid not in (None, mypid) and not _writer_alive(pid)
        if gone or now - st.st_mtime > STALE_AFTER_S:
            try:
                os.unlink(entry.path)
                removed.append(entry.path)
            except OSError:
                pass
    return removed


# -- user metadata ------------------------------------------------------------------------------
def check_metadata(metadata, error=None) -> dict:
    """A validated deep copy of `metadata`: a dict with string keys whose values are str, int,
    finite float, bool, None, lists (tuples become lists) and such dicts, nested at most
    MAX_METADATA_DEPTH deep and at most MAX_METADATA_BYTES as JSON. Raises `error(message)`
    (default InputError) naming the first offending key path."""
    error = error or InputError
    if not isinstance(metadata, dict):
        raise error(f"metadata must be a dict, got {type(metadata).__name__}")
    _check_json_value(metadata, "metadata", 0, error)
    try:
        text = json.dumps(metadata, allow_nan=False)
    except (ValueError, TypeError, RecursionError) as exc:
        raise error(f"metadata cannot be stored as JSON ({exc})") from exc
    if len(text.encode()) > MAX_METADATA_BYTES:
        raise error(f"metadata is {len(text.encode())} bytes as JSON; the limit is "
                    f"{MAX_METADATA_BYTES}")
    return json.loads(text)


def _check_json_value(value, where: str, depth: int, error) -> None:
    if depth > MAX_METADATA_DEPTH:
        raise error(f"{where}: nested more than {MAX_METADATA_DEPTH} deep")
    if value is None or isinstance(value, (str, bool)):
        return
    if isinstance(value, int):
        if abs(value) >= 2**63:
            raise error(f"{where}: int {value:.3g} does not fit in 64 bits")
        return
    if isinstance(value, float):
        if not np.isfinite(value):
            raise error(f"{where}: {value} is not a finite number")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise error(f"{where}: keys must be strings, got {k!r:.40}")
            _check_json_value(v, f"{where}[{k!r:.40}]", depth + 1, error)
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_json_value(v, f"{where}[{i}]", depth + 1, error)
        return
    raise error(f"{where}: {type(value).__name__} is not a JSON value (str, int, float, bool, "
                "None, list, dict)")


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
            self._check_directory_size()
            self._zip = zipfile.ZipFile(self.path)
        except (FileNotFoundError, CheckpointError):
            raise
        except _ZIP_ERRORS as exc:
            raise self.error(f"is corrupt or truncated ({type(exc).__name__}: {exc})") from exc
        try:
            self._index()
            self.header = self._read_header()
        except BaseException:
            self._zip.close()
            raise

    def _check_directory_size(self) -> None:
        """Refuse a zip whose central directory (as its end record declares it) has more than
        MAX_MEMBERS entries or MAX_DIRECTORY_BYTES: zipfile builds an object per entry before
        anything else can be checked (a 50 MB file of empty entries would cost ~1 GB)."""
        end_record = getattr(zipfile, "_EndRecData", None)
        if end_record is None:  # a Python without it: zipfile's own reading is the bound
            return
        with open(self.path, "rb") as f:
            rec = end_record(f)
        if not rec:
            return  # not a zip: ZipFile says so
        entries, size = rec[zipfile._ECD_ENTRIES_TOTAL], rec[zipfile._ECD_SIZE]
        if entries > MAX_MEMBERS or size > MAX_DIRECTORY_BYTES:
            raise self.error(f"declares {entries} members in a {size}-byte directory; the limits "
                             f"are {MAX_MEMBERS} members and {MAX_DIRECTORY_BYTES} bytes")

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
            if info.flag_bits & _ENCRYPTED:
                raise self.error(f"member {name!r} is encrypted")
            if info.flag_bits & _UNSUPPORTED:
                raise self.error(f"member {name!r} uses unsupported zip features (flags "
                                 f"{info.flag_bits:#06x})")
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
        except (*_ZIP_ERRORS, SyntaxError) as exc:
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
        version = header.get("version")
        if type(version) is not int or version != VERSION:
            raise self.error(f"has version {header.get('version')!r:.40}; this nnx reads "
                             f"version {VERSION}")
        return header

    def _read(self, m: Member) -> np.ndarray:
        try:
            with self._zip.open(m.info) as f:
                f.read(m.offset)  # the .npy header (bounded by MAX_NPY_HEADER)
                data = f.read(m.nbytes)
        except _ZIP_ERRORS as exc:
            raise self.error(f"member {m.info.filename!r} is corrupt or truncated "
                             f"({type(exc).__name__}: {exc})") from exc
        if len(data) != m.nbytes:
            raise self.error(f"member {m.info.filename!r} is truncated")
        arr = np.frombuffer(data, dtype=m.dtype)
        order = "F" if m.fortran else "C"
        return arr.reshape(m.shape, order=order)

    def array(self, name, shape=None, kinds: str = "f", finite: bool = True,
              nonnegative: bool = False) -> np.ndarray:
        """The member `name`, checked: shape (when given), dtype kind in `kinds`, finite, and
        >= 0 with `nonnegative` (a variance, Adam's second moment)."""
        m = self._member(name)
        if shape is not None and m.shape != tuple(shape):
            raise self.error(f"array {name!r} has shape {m.shape}, expected {tuple(shape)}")
        if m.dtype.kind not in kinds:
            raise self.error(f"array {name!r} has dtype {m.dtype}, expected kind {kinds!r}")
        arr = self._read(m)
        if finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise self.error(f"array {name!r} contains NaN or inf")
        if nonnegative and arr.size and arr.min() < 0:
            raise self.error(f"array {name!r} must be >= 0, has {arr.min()}")
        return arr


def open_checkpoint(path) -> Reader:
    """Open and validate the container and header of a checkpoint (no array is read)."""
    return Reader(path)


def read_header(path) -> dict:
    """The validated header of a checkpoint (no array is read)."""
    with Reader(path) as reader:
        return reader.header


# -- header field checks, shared by model_io ------------------------------------------------------
def require(header: dict, key: str, kind, reader: Reader):
    value = header.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise reader.error(f"header field {key!r} must be a {names}, got "
                           f"{type(value).__name__}")
    return value
