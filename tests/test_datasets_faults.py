"""nnx.datasets against hostile files and a hostile network (issue 14): bounded streaming reads,
checksums verified on every load, short offline errors, no directories left behind, and a
seeded fuzz of byte flips and truncations that must end in nnx's own errors.

No test touches the network: urlopen is replaced in every test."""

from __future__ import annotations

import errno
import gzip
import io
import os
import shutil
import socket
import tracemalloc
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest

import nnx.datasets as ds
from nnx.errors import NNXError

REPO = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("NNX_DATA_DIR") or REPO.parent / "shared" / "data" / "mnist")
HAVE_REAL = all((REAL / n).is_file() or (REAL / f"{n}.gz").is_file() for n in ds.MNIST_FILES)
needs_real = pytest.mark.skipif(not HAVE_REAL, reason=f"real MNIST not found in {REAL}")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No network, no writes to the user's cache; backoff waits are recorded, not slept."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    sleeps = []
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(ds, "_sleep", sleeps.append)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("NNX_DATA_DIR", raising=False)
    return sleeps


def _idx(arr: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, arr.ndim]) + np.array(arr.shape, ">u4").tobytes()
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def _gzip_with_zeros(prefix: bytes, n_zeros: int) -> bytes:
    """gzip of prefix + n_zeros zero bytes, built without holding the zeros in memory."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip container
    parts = [c.compress(prefix)]
    block = bytes(1 << 20)
    for _ in range(n_zeros >> 20):
        parts.append(c.compress(block))
    parts.append(c.compress(bytes(n_zeros & ((1 << 20) - 1))))
    parts.append(c.flush())
    return b"".join(parts)


def _peak_bytes(fn) -> tuple[int, BaseException | None]:
    tracemalloc.start()
    err = None
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - returned to the caller to check
        err = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, err


def _small_mnist(d: Path, n: int = 10, gz: bool = True) -> None:
    """Four tiny IDX files with MNIST's kinds (images (n, 28, 28), labels (n,))."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ds.MNIST_FILES:
        n_here = n if "train" in name else n // 2
        if "images" in name:
            arr = rng.integers(0, 256, (n_here, 28, 28), dtype=np.uint8)
        else:
            arr = rng.integers(0, 10, n_here, dtype=np.uint8)
        data = _idx(arr)
        if gz:
            (d / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (d / name).write_bytes(data)


# ---------------------------------------------------------------- memory bounds


def test_trailing_gzip_bomb_is_not_decompressed(tmp_path):
    """A 30 KB .gz expanding to 30 MB after a valid IDX body was decompressed whole."""
    body = _idx(np.arange(1000, dtype=np.uint16).astype(np.uint8))
    path = tmp_path / "bomb.idx.gz"
    path.write_bytes(_gzip_with_zeros(body, 30 << 20))
    assert path.stat().st_size < 100_000
    peak, err = _peak_bytes(lambda: ds.load_idx(path))
    assert isinstance(err, ds.IDXFormatError) and "trailing bytes" in str(err)
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB while reading a 1000-byte array"


def test_mnist_bounds_each_file_by_the_release(tmp_path):
    """verify=False: a header declaring more than the release's file is refused before any
    allocation; a trailing bomb in the labels file is never expanded."""
    d = tmp_path / "m"
    _small_mnist(d)
    big = bytes([0, 0, 8, 3]) + np.array([10**6, 28, 28], ">u4").tobytes()
    (d / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(big + bytes(1000)))
    peak, err = _peak_bytes(lambda: ds.mnist(data_dir=d, download=False, verify=False))
    assert isinstance(err, ds.IDXFormatError), err
    assert "more than the 47040016 bytes allowed" in str(err)
    assert peak < 4 << 20
    # with verify, the declared dims must be the release's: a checksum error before reading
    with pytest.raises(ds.ChecksumError, match=r"declares dims \(1000000, 28, 28\).*60000"):
        ds.mnist(data_dir=d, download=False, verify=True)

    _small_mnist(d)
    labels = _idx(np.zeros(10, np.uint8))
    (d / "train-labels-idx1-ubyte.gz").write_bytes(_gzip_with_zeros(labels, 30 << 20))
    peak, err = _peak_bytes(lambda: ds.mnist(data_dir=d, download=False, verify=False))
    assert isinstance(err, ds.IDXFormatError) and "trailing" in str(err), err
    assert peak < 8 << 20


def test_header_beyond_what_gzip_can_hold_is_refused_unallocated(tmp_path):
    path = tmp_path / "claim.idx.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + (10**9).to_bytes(4, "big") + b"xy"))
    peak, err = _peak_bytes(lambda: ds.load_idx(path))
    assert isinstance(err, ds.IDXFormatError) and "decompress to at most" in str(err)
    assert peak < 1 << 20
    small = tmp_path / "small.idx"
    small.write_bytes(_idx(np.zeros(1000, np.uint8)))
    with pytest.raises(ds.IDXFormatError, match="more than the 100 bytes allowed"):
        ds.load_idx(small, max_bytes=100)
    assert ds.load_idx(small, max_bytes=1008).shape == (1000,)


# ---------------------------------------------------------------- checksums


@needs_real
def test_in_place_edit_with_restored_mtime_is_caught(tmp_path):
    """The verified-file cache was keyed on (path, mtime, size): an edit that kept both was
    returned as verified. Now the content is hashed on every load."""
    d = tmp_path / "copy"
    d.mkdir()
    for name in ds.MNIST_FILES:
        src = ds._find(name, [REAL])
        if name == "t10k-labels-idx1-ubyte":
            (d / name).write_bytes(ds._read_bytes(src))
        else:
            (d / src.name).symlink_to(src)
    ds.mnist(data_dir=d, download=False)
    labels = d / "t10k-labels-idx1-ubyte"
    st = labels.stat()
    data = bytearray(labels.read_bytes())
    data[8] = (data[8] + 1) % 10
    with open(labels, "r+b") as f:  # same inode, same size
        f.write(data)
    os.utime(labels, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert labels.stat().st_mtime_ns == st.st_mtime_ns and labels.stat().st_size == st.st_size
    with pytest.raises(ds.ChecksumError, match="t10k-labels-idx1-ubyte"):
        ds.mnist(data_dir=d, download=False)


# ---------------------------------------------------------------- offline


def _count_urlopen(monkeypatch, exc):
    calls = []

    def fake(url, timeout=None):
        calls.append(url)
        raise exc

    monkeypatch.setattr(urllib.request, "urlopen", fake)
    return calls


@pytest.mark.parametrize(
    "exc",
    [
        urllib.error.URLError(socket.gaierror(socket.EAI_NONAME, "Name or service not known")),
        urllib.error.URLError(OSError(errno.ENETUNREACH, "Network is unreachable")),
    ],
    ids=["dns", "no-route"],
)
def test_offline_fails_fast_and_short(tmp_path, monkeypatch, _offline, exc):
    """Offline, every URL was tried 3 times with backoff (26 s) and listed in the error."""
    calls = _count_urlopen(monkeypatch, exc)
    dest = tmp_path / "a" / "b" / "mnist"
    monkeypatch.setenv("NNX_DATA_DIR", str(dest))
    with pytest.raises(ds.DatasetNotFoundError) as info:
        ds.mnist()
    assert len(calls) == len(ds.MIRRORS)  # each host once, then every file gives up
    assert _offline == []  # no backoff waits
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 1200
    for name in ds.MNIST_FILES:  # what is missing
        assert name in msg
    assert str(dest) in msg and str(ds.default_data_dir()) in msg  # where it looked
    assert "NNX_DATA_DIR" in msg and "sample" in msg  # how to fix it
    assert calls[0] in msg and msg.count("https://") == 1  # the first network error only
    assert "offline" in msg
    assert not (tmp_path / "a").exists(), "an empty directory tree was left behind"


def test_http_404_is_not_retried(tmp_path, monkeypatch, _offline):
    calls = _count_urlopen(
        monkeypatch, urllib.error.HTTPError("u", 404, "Not Found", None, None)
    )
    with pytest.raises(ds.DatasetNotFoundError, match="404"):
        ds.mnist(data_dir=tmp_path / "dl")
    assert len(calls) == len(ds.MIRRORS) * len(ds.MNIST_FILES) and _offline == []
    assert not (tmp_path / "dl").exists()


def test_transient_errors_are_still_retried(tmp_path, monkeypatch, _offline):
    calls = _count_urlopen(monkeypatch, urllib.error.URLError(TimeoutError("timed out")))
    with pytest.raises(ds.DatasetNotFoundError, match=r"timed out.*more errors"):
        ds.mnist(data_dir=tmp_path / "dl")
    assert len(calls) == len(ds.MIRRORS) * len(ds.MNIST_FILES) * ds._DOWNLOAD_TRIES
    assert len(_offline) == len(ds.MIRRORS) * len(ds.MNIST_FILES) * (ds._DOWNLOAD_TRIES - 1)


class _Endless(io.RawIOBase):
    """A response that never ends (a hostile or broken mirror)."""

    def readable(self):
        return True

    def readinto(self, b):
        b[:] = bytes(len(b))
        return len(b)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_download_size_is_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: _Endless())
    dest = tmp_path / "dl"
    with pytest.raises(ds._BadContent, match="served more than"):
        ds._fetch("https://mirror/t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte", dest)
    assert list(dest.iterdir()) == []  # the partial file is removed


def test_downloaded_gzip_bomb_is_checked_streaming(tmp_path, monkeypatch):
    blob = _gzip_with_zeros(_idx(np.zeros(10000, np.uint8)), 30 << 20)
    monkeypatch.setattr(
        urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(blob)
    )
    dest = tmp_path / "dl"
    peak, err = _peak_bytes(
        lambda: ds._fetch("https://m/t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte", dest)
    )
    assert isinstance(err, ds._BadContent) and "checksum mismatch" in str(err), err
    assert peak < 8 << 20
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("where", ["env", "arg"])
def test_unknown_user_in_data_dir_is_a_clear_error(monkeypatch, where):
    """NNX_DATA_DIR='~nouser/x' raised RuntimeError('Could not determine home directory.')."""
    value = "~nnx-no-such-user-31337/x"
    if where == "env":
        monkeypatch.setenv("NNX_DATA_DIR", value)
        call = ds.mnist
    else:

        def call():
            return ds.mnist(data_dir=value)

    with pytest.raises(ds.DatasetNotFoundError) as info:
        call()
    msg = str(info.value)
    assert ("NNX_DATA_DIR" if where == "env" else "data_dir") in msg
    assert "~nnx-no-such-user-31337" in msg and "absolute path" in msg


# ---------------------------------------------------------------- fuzz


def _mutations(blob: bytes, rng: np.random.Generator, n: int):
    for i in range(n):
        data = bytearray(blob)
        if i % 3 == 0:
            yield bytes(data[: int(rng.integers(0, len(data)))])  # truncation
            continue
        for _ in range(int(rng.integers(1, 4))):  # 1-3 byte flips, header-heavy
            pos = int(rng.integers(0, min(len(data), 40))) if rng.random() < 0.6 else int(
                rng.integers(0, len(data))
            )
            data[pos] ^= 1 << int(rng.integers(0, 8))
        yield bytes(data)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_fuzzed_idx_files_end_in_nnx_errors(tmp_path, compress):
    """Seeded: a few hundred flips/truncations; each loads or raises nnx's IDXFormatError."""
    arr = np.random.default_rng(1).integers(0, 256, (6, 7, 5), dtype=np.uint8)
    blob = _idx(arr)
    blob = gzip.compress(blob) if compress else blob
    rng = np.random.default_rng(14)
    path = tmp_path / "f.idx"
    loaded = 0
    for data in _mutations(blob, rng, 200):
        path.write_bytes(data)
        try:
            out = ds.load_idx(path)
        except ds.IDXFormatError:
            continue
        loaded += 1
        assert out.size * out.itemsize <= max(len(data), 1) * ds._MAX_DEFLATE_RATIO
    assert loaded < 200


def test_fuzzed_mnist_directories_end_in_nnx_errors(tmp_path):
    d = tmp_path / "m"
    _small_mnist(d)
    rng = np.random.default_rng(1414)
    names = sorted(p.name for p in d.iterdir())
    originals = {n: (d / n).read_bytes() for n in names}
    for victim in names:  # 30 mutations of each file, the others intact
        for data in _mutations(originals[victim], rng, 30):
            (d / victim).write_bytes(data)
            for verify in (False, True):
                try:
                    ds.mnist(data_dir=d, download=False, verify=verify)
                except NNXError:
                    pass
        (d / victim).write_bytes(originals[victim])


def test_read_bytes_is_bounded(tmp_path):
    path = tmp_path / "z.gz"
    path.write_bytes(_gzip_with_zeros(b"", 5 << 20))
    with pytest.raises(ds.IDXFormatError, match="more than 1000 bytes"):
        ds._read_bytes(path, max_bytes=1000)
    shutil.copy(path, tmp_path / "copy.gz")
    assert len(ds._read_bytes(tmp_path / "copy.gz")) == 5 << 20
