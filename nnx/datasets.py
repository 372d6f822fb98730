"""MNIST loading: IDX parsing, checksum verification, optional download, bundled sample.

Floor 1: needs only NumPy and the standard library, so data can be loaded without a backend.

MNIST (Yann LeCun, Corinna Cortes, Christopher J. C. Burges) is licensed CC BY-SA 3.0;
the bundled sample (``nnx/data/mnist_sample.npz``) is a subset of it under the same license.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import tempfile
import time
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

_DOWNLOAD_TIMEOUT_S = 30.0
_DOWNLOAD_TRIES = 3
_BACKOFF_S = 1.0
_sleep = time.sleep  # indirection so tests can skip the backoff waits

# (realpath, mtime_ns, size, expected md5) of files already verified in this process:
# hashing 47 MB on every call is wasted work once a file is known good.
_verified: set[tuple[str, int, int, str]] = set()


def default_data_dir() -> Path:
    """Per-user cache dir for MNIST: ``$XDG_CACHE_HOME/nnx/mnist`` or ``~/.cache/nnx/mnist``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nnx" / "mnist"


def _read_bytes(path: Path) -> bytes:
    """File content, gunzipped when it starts with the gzip magic (the extension may lie)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise IDXFormatError(f"{path}: corrupt or truncated gzip data ({exc})") from exc
    return data


def _parse_idx(data: bytes, source: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Parse IDX bytes into a native-endian array; returns (array, magic)."""
    if len(data) < 4:
        raise IDXFormatError(
            f"{source}: truncated IDX header: expected at least 4 bytes, got {len(data)}"
        )
    magic = int.from_bytes(data[:4], "big")
    code, ndim = data[2], data[3]
    if data[0] != 0 or data[1] != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise IDXFormatError(
            f"{source}: bad IDX magic number 0x{magic:08X}: expected 0x0000TTNN with type "
            f"code TT in {{{', '.join(f'0x{c:02X}' for c in _IDX_DTYPES)}}} and NN >= 1 dims "
            "(is this an IDX file?)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXFormatError(
            f"{source}: truncated IDX header: expected {header} bytes for {ndim} dims, "
            f"got {len(data)}"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    dtype = _IDX_DTYPES[code]
    expected = header + int(np.prod(dims, dtype=object)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "trailing bytes in"
        raise IDXFormatError(
            f"{source}: {what} IDX file: dims {dims} of {dtype.name} need {expected} bytes, "
            f"got {len(data)}"
        )
    arr = np.frombuffer(data, dtype, offset=header).reshape(dims)
    # frombuffer is read-only and big-endian; hand back an ordinary writable native array
    return arr.astype(dtype.newbyteorder("="), copy=True), magic


def load_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (raw or gzip) into a NumPy array of its declared type and dims.

    Raises IDXFormatError naming the file on a bad magic number, truncation or bad gzip.
    """
    return _parse_idx(_read_bytes(Path(path)), path)[0]


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _verify(path: Path, data: bytes, expected: str) -> None:
    st = path.stat()
    key = (os.path.realpath(path), st.st_mtime_ns, st.st_size, expected)
    if key in _verified:
        return
    actual = _md5(data)
    if actual != expected:
        raise ChecksumError(
            f"{path}: md5 of the decompressed content is {actual}, expected {expected} "
            "(file corrupt, truncated or not the original MNIST release; delete it and "
            "download again, or pass verify=False)"
        )
    _verified.add(key)


def _search_dirs(data_dir) -> list[Path]:
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    dirs = []
    env = os.environ.get("NNX_DATA_DIR")
    if env:
        dirs.append(Path(env).expanduser())
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


def _download_one(name: str, dest_dir: Path) -> Path:
    """Fetch ``name.gz`` from the mirrors into dest_dir atomically; returns its path.

    Retries each mirror with exponential backoff; a download is accepted when the .gz md5
    matches the original, or failing that, its decompressed content does (a re-compressed
    mirror copy is still the same data).
    """
    raw_md5, gz_md5 = MNIST_FILES[name]
    dest = dest_dir / f"{name}.gz"
    errors = []
    for mirror in MIRRORS:
        url = mirror + f"{name}.gz"
        for attempt in range(_DOWNLOAD_TRIES):
            if attempt:
                _sleep(_BACKOFF_S * 2 ** (attempt - 1))
            tmp = None
            try:
                dest_dir.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest_dir)
                with (
                    os.fdopen(fd, "wb") as out,
                    urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp,
                ):
                    shutil.copyfileobj(resp, out)
                with open(tmp, "rb") as f:
                    blob = f.read()
                if _md5(blob) != gz_md5:
                    try:
                        content_md5 = _md5(gzip.decompress(blob))
                    except (OSError, EOFError, zlib.error):
                        content_md5 = "not gzip"
                    if content_md5 != raw_md5:
                        # bad content: another try at this mirror will not fix it
                        errors.append(f"{url}: checksum mismatch (content md5 {content_md5})")
                        break
                os.replace(tmp, dest)
                tmp = None
                return dest
            except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts included
                errors.append(f"{url}: {exc}")
            finally:
                if tmp is not None and os.path.exists(tmp):
                    os.unlink(tmp)
    raise OSError("; ".join(errors))


def _not_found_message(missing, dirs, reason) -> str:
    files = ", ".join(f"{n}[.gz]" for n in missing)
    looked = ", ".join(str(d) for d in dirs)
    return (
        f"MNIST files not found: {files}. Looked in: {looked}. {reason} "
        "Put the four MNIST IDX files (gzipped or raw) in a directory and set "
        "NNX_DATA_DIR=/path/to/that/dir (or pass data_dir=...); or use mnist(sample=True) "
        "for the bundled 7000-image subset."
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


def mnist(sample: bool = False, data_dir=None, download: bool = True, verify: bool = True):
    """Load MNIST as ``((x_train, y_train), (x_test, y_test))``, x uint8 (N, 28, 28), y uint8.

    Pixels stay raw uint8 (scaling belongs to preprocessing). ``sample=True`` returns the
    bundled class-balanced 6000/1000 subset, which needs neither network nor files. Otherwise
    files are looked up in ``data_dir``, else ``$NNX_DATA_DIR`` then ``default_data_dir()``;
    missing ones are downloaded (``download=True``) into the first of those. ``verify`` checks
    the decompressed content against the published md5s.
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
        failures = []
        for name in missing:
            try:
                paths[name] = _download_one(name, dirs[0])
            except OSError as exc:
                failures.append(f"{name}: {exc}")
        if failures:
            still = [n for n in missing if paths[n] is None]
            raise DatasetNotFoundError(
                _not_found_message(
                    still, dirs, f"Download into {dirs[0]} failed ({'; '.join(failures)})."
                )
            )

    arrays = {}
    for name, path in paths.items():
        data = _read_bytes(path)
        if verify:
            _verify(path, data, MNIST_FILES[name][0])
        arr, magic = _parse_idx(data, path)
        want = _IMAGES_MAGIC if "images" in name else _LABELS_MAGIC
        if magic != want:
            raise IDXFormatError(
                f"{path}: IDX magic number 0x{magic:08X}, expected 0x{want:08X} for {name}"
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
