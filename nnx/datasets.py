"""MNIST loading: IDX parsing, checksum verification, optional download, bundled sample.

Floor 1: needs only NumPy and the standard library, so data can be loaded without a backend.

MNIST (Yann LeCun, Corinna Cortes, Christopher J. C. Burges) is licensed CC BY-SA 3.0;
the bundled sample (``nnx/data/mnist_sample.npz``) is a subset of it under the same license.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import http.client
import math
import os
import socket
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

try:  # join nnx's error hierarchy when present; this module must also work on its own
    from nnx.errors import NNXError
except ImportError:  # pragma: no cover - only when nnx.errors is absent

    class NNXError(Exception):
        """Base class of nnx's own errors."""


__all__ = [
    "ChecksumError",
    "DatasetNotFoundError",
    "IDXFormatError",
    "MNIST_DIMS",
    "MNIST_FILES",
    "default_data_dir",
    "load_idx",
    "mnist",
]


class IDXFormatError(NNXError, ValueError):
    """A file is not valid IDX (wrong magic, truncated, bad gzip)."""


class ChecksumError(NNXError, ValueError):
    """File content differs from the published MNIST release."""


class DatasetNotFoundError(NNXError, FileNotFoundError):
    """Dataset files are missing and could not be downloaded."""


# name -> (md5 of decompressed content, md5 of the original .gz on the mirrors)
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train-images-idx3-ubyte": (
        "6bbc9ace898e44ae57da46a324031adb",
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    ),
    "train-labels-idx1-ubyte": (
        "a25bea736e30d166cdddb491f175f624",
        "d53e105ee54ea40749a09fcbcd1e9432",
    ),
    "t10k-images-idx3-ubyte": (
        "2646ac647ad5339dbf082846283269ea",
        "9fb629c4189551a2d022fa330f9573f3",
    ),
    "t10k-labels-idx1-ubyte": (
        "27ae3e4e09519cfbb04c329615203637",
        "ec29112dd5afa0611ce80d1b7f02629c",
    ),
}

# name -> dims of that file in the MNIST release. They bound every read: a header that declares
# more is refused before anything is allocated, so a small crafted file cannot expand to GBs.
MNIST_DIMS: dict[str, tuple[int, ...]] = {
    "train-images-idx3-ubyte": (60000, 28, 28),
    "train-labels-idx1-ubyte": (60000,),
    "t10k-images-idx3-ubyte": (10000, 28, 28),
    "t10k-labels-idx1-ubyte": (10000,),
}

MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

# IDX type code -> big-endian NumPy dtype (the IDX spec's full table; MNIST uses 0x08).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IMAGES_MAGIC = 0x00000803  # uint8, 3 dims
_LABELS_MAGIC = 0x00000801  # uint8, 1 dim

_CHUNK = 1 << 20  # bytes per read while streaming a file
# Deflate cannot expand its input more than 1032-fold: a header declaring more than that many
# bytes per byte of gzip data describes a truncated file, whatever the stream would yield.
_MAX_DEFLATE_RATIO = 1032

_DOWNLOAD_TIMEOUT_S = 30.0
_DOWNLOAD_TRIES = 3
_BACKOFF_S = 1.0
_sleep = time.sleep  # indirection so tests can skip the backoff waits
# OS errors that mean "this host cannot be reached at all": retrying seconds later does not help
_UNREACHABLE_ERRNOS = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN}


def default_data_dir() -> Path:
    """Per-user cache dir for MNIST: ``$XDG_CACHE_HOME/nnx/mnist`` or ``~/.cache/nnx/mnist``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nnx" / "mnist"


def _release_bytes(name: str) -> int:
    """Decompressed size of MNIST file ``name`` in the release (header included)."""
    dims = MNIST_DIMS[name]
    return 4 + 4 * len(dims) + math.prod(dims)


def _read_exact(stream, n: int) -> bytes:
    """Up to n bytes from stream (fewer only at its end)."""
    out = b""
    while len(out) < n:
        part = stream.read(n - len(out))
        if not part:
            break
        out += part
    return out


def _read_header(stream, source) -> tuple[int, tuple[int, ...], np.dtype, bytes]:
    """(magic, dims, big-endian dtype, header bytes) of the IDX stream; reads only the header."""
    head = _read_exact(stream, 4)
    if len(head) < 4:
        raise IDXFormatError(
            f"{source}: truncated IDX header: expected at least 4 bytes, got {len(head)}"
        )
    magic = int.from_bytes(head, "big")
    code, ndim = head[2], head[3]
    if head[0] != 0 or head[1] != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise IDXFormatError(
            f"{source}: bad IDX magic number 0x{magic:08X}: expected 0x0000TTNN with type "
            f"code TT in {{{', '.join(f'0x{c:02X}' for c in _IDX_DTYPES)}}} and NN >= 1 dims "
            "(is this an IDX file?)"
        )
    dim_bytes = _read_exact(stream, 4 * ndim)
    if len(dim_bytes) < 4 * ndim:
        raise IDXFormatError(
            f"{source}: truncated IDX header: expected {4 + 4 * ndim} bytes for {ndim} dims, "
            f"got {4 + len(dim_bytes)}"
        )
    dims = tuple(int.from_bytes(dim_bytes[i : i + 4], "big") for i in range(0, 4 * ndim, 4))
    return magic, dims, _IDX_DTYPES[code], head + dim_bytes


def _read_idx(
    path,
    *,
    max_bytes: int | None = None,
    want_magic: tuple[int, str] | None = None,
    release_dims: tuple[int, ...] | None = None,
    md5: bool = False,
    source=None,
) -> tuple[np.ndarray, int, str | None]:
    """Stream one IDX file (raw or gzip, told by its magic) into a native array.

    Returns ``(array, magic, md5 hex of the decompressed content or None)``. Only the header is
    read before the size is known; then exactly that many bytes are read into one preallocated
    buffer, hashed on the way, and the stream must end there. So memory never exceeds the
    declared size, which is refused up front when it is over ``max_bytes``, differs from
    ``release_dims`` (checksum mode), or is more than the file's gzip data can hold.
    ``want_magic``: (magic, file name) the header must carry (images or labels).
    """
    path = Path(path)
    source = path if source is None else source
    with open(path, "rb") as raw:
        size = os.fstat(raw.fileno()).st_size
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
        digest = hashlib.md5(usedforsecurity=False) if md5 else None
        try:
            buf, magic, dims, dtype = _stream_idx(
                stream, source, gz, size, max_bytes, want_magic, release_dims, digest
            )
        except (OSError, EOFError, zlib.error) as exc:
            if not gz:
                raise
            raise IDXFormatError(f"{source}: corrupt or truncated gzip data ({exc})") from exc
        finally:
            if gz:
                stream.close()
    arr = buf.view(dtype)
    if not dtype.isnative:  # swap in place: no second copy of a large file
        arr.byteswap(inplace=True)
    arr = arr.view(dtype.newbyteorder("=")).reshape(dims)
    return arr, magic, (digest.hexdigest() if digest is not None else None)


def _stream_idx(stream, source, gz, size, max_bytes, want_magic, release_dims, digest):
    magic, dims, dtype, header = _read_header(stream, source)
    if want_magic is not None and magic != want_magic[0]:
        raise IDXFormatError(
            f"{source}: IDX magic number 0x{magic:08X}, expected 0x{want_magic[0]:08X} for "
            f"{want_magic[1]}"
        )
    payload = math.prod(dims) * dtype.itemsize
    expected = len(header) + payload
    what = f"dims {dims} of {dtype.name} need {expected} bytes"
    if release_dims is not None and dims != release_dims:
        raise ChecksumError(
            f"{source}: IDX header declares dims {dims}, but this file of the MNIST release has "
            f"dims {release_dims} (file corrupt or not the original release; pass verify=False "
            "to load another IDX file of this kind)"
        )
    if max_bytes is not None and expected > max_bytes:
        raise IDXFormatError(
            f"{source}: IDX header declares {what}, more than the {max_bytes} bytes allowed "
            "(crafted or corrupt header?)"
        )
    if not gz and size != expected:
        kind = "truncated" if size < expected else "trailing bytes in"
        raise IDXFormatError(f"{source}: {kind} IDX file: {what}, got {size}")
    if gz and payload > size * _MAX_DEFLATE_RATIO:
        raise IDXFormatError(
            f"{source}: truncated IDX file: {what}, but {size} bytes of gzip data decompress "
            f"to at most {size * _MAX_DEFLATE_RATIO}"
        )
    if digest is not None:
        digest.update(header)
    buf = np.empty(payload, np.uint8)
    view = memoryview(buf)
    pos = 0
    while pos < payload:
        n = stream.readinto(view[pos : pos + _CHUNK])
        if not n:
            raise IDXFormatError(f"{source}: truncated IDX file: {what}, got {len(header) + pos}")
        if digest is not None:
            digest.update(view[pos : pos + n])
        pos += n
    if stream.read(1):  # one byte more is enough to know: never decompress what follows
        raise IDXFormatError(f"{source}: trailing bytes in IDX file: {what}, got more")
    return buf, magic, dims, dtype


def load_idx(path: str | os.PathLike, max_bytes: int | None = None) -> np.ndarray:
    """Read one IDX file (raw or gzip) into a NumPy array of its declared type and dims.

    The file is streamed: memory holds the declared array and one read chunk, never the whole
    decompressed stream. ``max_bytes`` refuses headers that declare more (before allocating).
    Raises IDXFormatError naming the file on a bad magic number, truncation, trailing data, a
    declared size over the bound, or bad gzip data.
    """
    return _read_idx(path, max_bytes=max_bytes)[0]


def _read_bytes(path: Path, max_bytes: int = 1 << 30) -> bytes:
    """File content, gunzipped when it starts with the gzip magic (the extension may lie);
    refuses content over ``max_bytes``."""
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        try:
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
            data = stream.read(max_bytes + 1)
        except (OSError, EOFError, zlib.error) as exc:
            raise IDXFormatError(f"{path}: corrupt or truncated gzip data ({exc})") from exc
    if len(data) > max_bytes:
        raise IDXFormatError(f"{path}: more than {max_bytes} bytes of content")
    return data


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _expand(path, what: str) -> Path:
    """``Path(path).expanduser()``, with a clear error when ``~user`` names nobody."""
    try:
        return Path(path).expanduser()
    except RuntimeError as exc:  # Path.expanduser: "Could not determine home directory."
        head = os.fspath(path).split(os.sep, 1)[0]
        raise DatasetNotFoundError(
            f"{what}={os.fspath(path)!r}: cannot expand {head!r}: no such user or no home "
            "directory; give the directory as an absolute path"
        ) from exc


def _search_dirs(data_dir) -> list[Path]:
    if data_dir is not None:
        return [_expand(data_dir, "data_dir")]
    dirs = []
    env = os.environ.get("NNX_DATA_DIR")
    if env:
        dirs.append(_expand(env, "NNX_DATA_DIR"))
    cache = default_data_dir()
    if cache not in dirs:
        dirs.append(cache)
    return dirs


def _find(name: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        for candidate in (d / name, d / f"{name}.gz"):  # raw first: no gunzip needed
            if candidate.is_file():
                return candidate
    return None


class _BadContent(Exception):
    """A mirror answered, but not with the MNIST file: another try will not fix it."""


def _unreachable(exc: BaseException) -> bool:
    """Whether exc says the host cannot be reached at all (name resolution failed, no route):
    no retry, and the mirror is skipped for the other files too."""
    if isinstance(exc, urllib.error.HTTPError):
        return False
    reason = getattr(exc, "reason", exc)  # URLError wraps the socket error
    if isinstance(reason, socket.gaierror):
        return True
    return isinstance(reason, OSError) and reason.errno in _UNREACHABLE_ERRNOS


def _permanent(exc: BaseException) -> bool:
    """An HTTP answer that another try will not change (404, 403, ...)."""
    if not isinstance(exc, urllib.error.HTTPError):
        return False
    return 400 <= exc.code < 500 and exc.code not in (408, 429)  # timeout, rate limit: retry


def _fetch(url: str, name: str, dest_dir: Path) -> Path:
    """Download url into dest_dir/name.gz atomically, checking size and checksums."""
    raw_md5, gz_md5 = MNIST_FILES[name]
    # gzip never grows data by more than ~0.1%: anything bigger is not this file
    cap = _release_bytes(name) * 101 // 100 + 65536
    tmp = None
    try:
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp:
            # created only once a mirror answers: offline, no empty directory tree is left
            dest_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest_dir)
            digest = hashlib.md5(usedforsecurity=False)
            total = 0
            with os.fdopen(fd, "wb") as out:
                while chunk := resp.read(_CHUNK):
                    total += len(chunk)
                    if total > cap:
                        raise _BadContent(f"served more than {cap} bytes: not the MNIST file")
                    digest.update(chunk)
                    out.write(chunk)
        if digest.hexdigest() != gz_md5:  # a re-compressed copy of the same data is fine
            try:
                content = _read_idx(tmp, max_bytes=_release_bytes(name), md5=True)[2]
            except IDXFormatError as exc:
                content = f"not MNIST IDX data: {exc}"
            if content != raw_md5:
                raise _BadContent(f"checksum mismatch (content md5 {content})")
        dest = dest_dir / f"{name}.gz"
        os.replace(tmp, dest)
        tmp = None
        return dest
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _download_one(name: str, dest_dir: Path, dead: set, errors: list) -> Path | None:
    """Fetch ``name.gz`` from the mirrors into dest_dir; returns its path, or None (errors
    appended). A transient error is retried with exponential backoff; a host that cannot be
    resolved or reached is not retried and goes into ``dead`` (skipped for later files); a
    download is accepted when the .gz md5 matches the original, or failing that, its
    decompressed content does (a re-compressed mirror copy is still the same data)."""
    for mirror in MIRRORS:
        if mirror in dead:
            continue
        url = mirror + f"{name}.gz"
        for attempt in range(_DOWNLOAD_TRIES):
            if attempt:
                _sleep(_BACKOFF_S * 2 ** (attempt - 1))
            try:
                return _fetch(url, name, dest_dir)
            except _BadContent as exc:
                errors.append(f"{url}: {exc}")
                break
            except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts included
                errors.append(f"{url}: {exc}")
                if _unreachable(exc):
                    dead.add(mirror)
                    break
                if _permanent(exc):
                    break
    return None


def _not_found_message(missing, dirs, reason) -> str:
    files = ", ".join(f"{n}[.gz]" for n in missing)
    looked = ", ".join(str(d) for d in dirs)
    return (
        f"MNIST files not found: {files}. Looked in: {looked}. {reason} To fix: put the four "
        "MNIST IDX files (gzipped or raw) in a directory and set NNX_DATA_DIR=/path/to/that/dir "
        "(or pass data_dir=...), or use the bundled 7000-image sample (mnist(sample=True), "
        "nnx train --data sample)."
    )


def _load_sample() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    path = Path(__file__).resolve().parent / "data" / "mnist_sample.npz"
    if not path.is_file():
        try:  # installed as a zip or similar: ask importlib.resources
            from importlib import resources

            res = resources.files("nnx.data") / "mnist_sample.npz"
            with resources.as_file(res) as p, np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
        except (ModuleNotFoundError, FileNotFoundError) as exc:
            raise DatasetNotFoundError(
                f"bundled MNIST sample not found at {path} (broken installation?)"
            ) from exc
    else:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def _download_missing(missing: list[str], paths: dict, dirs: list[Path]) -> None:
    """Download the missing files into dirs[0]; DatasetNotFoundError with the first network
    error when any stays missing. Stops early once every mirror is unreachable."""
    dead: set[str] = set()
    errors: list[str] = []
    for name in missing:
        if len(dead) == len(MIRRORS):
            break
        paths[name] = _download_one(name, dirs[0], dead, errors)
    still = [n for n in missing if paths[n] is None]
    if still:
        first = errors[0] if errors else "no mirror reachable"
        more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
        offline = " No mirror could be reached (offline?)." if len(dead) == len(MIRRORS) else ""
        raise DatasetNotFoundError(
            _not_found_message(
                still, dirs, f"Download into {dirs[0]} failed: {first}{more}.{offline}"
            )
        )


def mnist(sample: bool = False, data_dir=None, download: bool = True, verify: bool = True):
    """Load MNIST as ``((x_train, y_train), (x_test, y_test))``, x uint8 (N, 28, 28), y uint8.

    Pixels stay raw uint8 (scaling belongs to preprocessing). ``sample=True`` returns the
    bundled class-balanced 6000/1000 subset, which needs neither network nor files. Otherwise
    files are looked up in ``data_dir``, else ``$NNX_DATA_DIR`` then ``default_data_dir()``;
    missing ones are downloaded (``download=True``) into the first of those. ``verify`` checks
    the decompressed content against the published md5s on every call (hashed while the file
    is streamed in, so an edited file is never returned as verified). Reads are bounded by the
    release's sizes: no file may declare more than its release counterpart.
    """
    if sample:
        return _load_sample()
    dirs = _search_dirs(data_dir)
    paths = {name: _find(name, dirs) for name in MNIST_FILES}
    missing = [n for n, p in paths.items() if p is None]
    if missing:
        if not download:
            raise DatasetNotFoundError(
                _not_found_message(missing, dirs, "Download disabled (download=False).")
            )
        _download_missing(missing, paths, dirs)

    arrays = {}
    for name, path in paths.items():
        want = _IMAGES_MAGIC if "images" in name else _LABELS_MAGIC
        arr, _, digest = _read_idx(
            path,
            max_bytes=_release_bytes(name),
            want_magic=(want, name),
            release_dims=MNIST_DIMS[name] if verify else None,
            md5=verify,
        )
        expected = MNIST_FILES[name][0]
        if verify and digest != expected:
            raise ChecksumError(
                f"{path}: md5 of the decompressed content is {digest}, expected {expected} "
                "(file corrupt, truncated or not the original MNIST release; delete it and "
                "download again, or pass verify=False)"
            )
        arrays[name] = arr

    x_train, y_train = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    x_test, y_test = arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"]
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.shape[1:] != (28, 28) or x.shape[0] != y.shape[0]:
            raise IDXFormatError(
                f"MNIST {split} split: expected images (N, 28, 28) and N labels, got images "
                f"{x.shape} and labels {y.shape}"
            )
        if y.size and y.max() > 9:
            raise IDXFormatError(
                f"MNIST {split} labels: expected values 0..9, found {int(y.max())}"
            )
    return (x_train, y_train), (x_test, y_test)
