"""nnx.datasets: IDX parsing, MNIST loading and verification, download fallback, sample.

No test touches the network: an autouse fixture makes urlopen fail unless a test patches it.
"""

from __future__ import annotations

import gzip
import io
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import nnx.datasets as ds

REPO = Path(__file__).resolve().parents[1]
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def _real_dir() -> Path:
    env = os.environ.get("NNX_DATA_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data" / "mnist"


REAL = _real_dir()
HAVE_REAL = all((REAL / n).is_file() or (REAL / f"{n}.gz").is_file() for n in ds.MNIST_FILES)
needs_real = pytest.mark.skipif(not HAVE_REAL, reason=f"real MNIST not found in {REAL}")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No network, no writes to the user's cache, no backoff waits."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(ds, "_sleep", lambda s: None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("NNX_DATA_DIR", raising=False)


def _idx_bytes(arr: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, arr.ndim]) + np.array(arr.shape, ">u4").tobytes()
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


# ---------------------------------------------------------------- IDX parsing


@pytest.mark.parametrize("compress", [False, True])
def test_load_idx_round_trip_uint8(tmp_path, compress):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data = _idx_bytes(arr, 0x08)
    path = tmp_path / ("x.idx.gz" if compress else "x.idx")
    path.write_bytes(gzip.compress(data) if compress else data)
    out = ds.load_idx(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, arr)
    out[0, 0, 0] = 99  # ordinary writable array, not a read-only buffer view


@pytest.mark.parametrize("dtype,code", [(np.int32, 0x0C), (np.float32, 0x0D), (np.float64, 0x0E)])
def test_load_idx_other_types_big_endian(tmp_path, dtype, code):
    arr = (
        (np.arange(6) - 2.5).astype(dtype).reshape(3, 2)
        if dtype != np.int32
        else (np.array([[1, -2], [70000, -70000], [0, 5]], dtype))
    )
    path = tmp_path / "v.idx"
    path.write_bytes(_idx_bytes(arr, code))
    out = ds.load_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


def test_load_idx_wrong_magic(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(ds.IDXFormatError, match="bad.idx.*magic number 0x12340801"):
        ds.load_idx(path)


def test_load_idx_unknown_type_code(tmp_path):
    path = tmp_path / "code.idx"
    path.write_bytes(b"\x00\x00\x07\x01" + b"\x00\x00\x00\x01" + b"\x00")
    with pytest.raises(ds.IDXFormatError, match="magic"):
        ds.load_idx(path)


def test_load_idx_truncated_reports_expected_and_actual(tmp_path):
    data = _idx_bytes(np.zeros((4, 5), np.uint8), 0x08)
    path = tmp_path / "short.idx"
    path.write_bytes(data[:-3])
    with pytest.raises(ds.IDXFormatError, match=r"short.idx: truncated.*need 32 bytes, got 29"):
        ds.load_idx(path)


def test_load_idx_truncated_header(tmp_path):
    path = tmp_path / "hdr.idx"
    path.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(ds.IDXFormatError, match="hdr.idx: truncated IDX header"):
        ds.load_idx(path)


def test_load_idx_trailing_bytes(tmp_path):
    path = tmp_path / "long.idx"
    path.write_bytes(_idx_bytes(np.zeros(3, np.uint8), 0x08) + b"\x00")
    with pytest.raises(ds.IDXFormatError, match="trailing"):
        ds.load_idx(path)


def test_load_idx_truncated_gzip(tmp_path):
    blob = gzip.compress(_idx_bytes(np.arange(1000, dtype=np.uint8), 0x08))
    path = tmp_path / "cut.idx.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ds.IDXFormatError, match="cut.idx.gz.*gzip"):
        ds.load_idx(path)


# ---------------------------------------------------------------- real MNIST


@pytest.fixture(scope="module")
def real_mnist():
    return ds.mnist(data_dir=REAL, download=False, verify=True)


@needs_real
def test_real_mnist_loads_and_verifies(real_mnist):
    (x_tr, y_tr), (x_te, y_te) = real_mnist
    assert x_tr.shape == (60000, 28, 28) and x_te.shape == (10000, 28, 28)
    assert y_tr.shape == (60000,) and y_te.shape == (10000,)
    assert x_tr.dtype == y_tr.dtype == x_te.dtype == y_te.dtype == np.uint8
    assert np.bincount(y_tr, minlength=10).tolist() == TRAIN_COUNTS
    assert np.bincount(y_te, minlength=10).sum() == 10000
    assert x_tr.max() == 255 and x_tr.min() == 0


@needs_real
def test_real_mnist_found_through_env_var(monkeypatch):
    monkeypatch.setenv("NNX_DATA_DIR", str(REAL))
    (_, y_tr), _ = ds.mnist(download=False)
    assert y_tr.shape == (60000,)


def _copy_with_corrupt_labels(src: Path, dst: Path) -> None:
    """Links to three real files plus a test-label file with one label changed."""
    dst.mkdir()
    for name in ds.MNIST_FILES:
        path = ds._find(name, [src])
        if name == "t10k-labels-idx1-ubyte":
            data = bytearray(ds._read_bytes(path))
            data[8] = (data[8] + 1) % 10  # still a valid label: only the checksum can tell
            (dst / name).write_bytes(bytes(data))
        else:
            (dst / path.name).symlink_to(path)


@needs_real
def test_corrupted_copy_fails_verification(tmp_path):
    bad = tmp_path / "bad"
    _copy_with_corrupt_labels(REAL, bad)
    with pytest.raises(ds.ChecksumError) as info:
        ds.mnist(data_dir=bad, download=False, verify=True)
    msg = str(info.value)
    assert "t10k-labels-idx1-ubyte" in msg
    assert ds.MNIST_FILES["t10k-labels-idx1-ubyte"][0] in msg  # expected md5 named
    # verify=False loads it anyway (a deliberate opt-out)
    _, (_, y_te) = ds.mnist(data_dir=bad, download=False, verify=False)
    assert y_te.shape == (10000,)


@needs_real
def test_wrong_file_kind_is_rejected(tmp_path):
    """Labels where images belong: caught by the expected magic even without md5s."""
    d = tmp_path / "swapped"
    d.mkdir()
    for name in ds.MNIST_FILES:
        path = ds._find(name, [REAL])
        (d / path.name).symlink_to(path)
    os.unlink(d / ds._find("t10k-images-idx3-ubyte", [d]).name)
    labels = ds._read_bytes(ds._find("t10k-labels-idx1-ubyte", [d]))
    (d / "t10k-images-idx3-ubyte").write_bytes(labels)
    with pytest.raises(ds.IDXFormatError, match="expected 0x00000803"):
        ds.mnist(data_dir=d, download=False, verify=False)


# ---------------------------------------------------------------- missing files, download


def test_missing_files_no_network_raises_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ds.DatasetNotFoundError) as info:
        ds.mnist(data_dir=empty)  # download=True, but urlopen fails (autouse fixture)
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "NNX_DATA_DIR" in msg and str(empty) in msg
    for name in ds.MNIST_FILES:
        assert name in msg
    assert "network disabled" in msg
    assert not any(empty.iterdir()), "a failed download must leave no partial files"


def test_missing_files_download_disabled_lists_all_dirs(tmp_path, monkeypatch):
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    monkeypatch.setenv("NNX_DATA_DIR", str(env_dir))
    called = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: called.append(a))
    with pytest.raises(ds.DatasetNotFoundError) as info:
        ds.mnist(download=False)
    msg = str(info.value)
    assert str(env_dir) in msg and str(ds.default_data_dir()) in msg and "NNX_DATA_DIR" in msg
    assert not called


def test_default_data_dir_respects_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert ds.default_data_dir() == tmp_path / "c" / "nnx" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert ds.default_data_dir() == Path.home() / ".cache" / "nnx" / "mnist"


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@needs_real
def test_download_from_second_mirror_after_retries(tmp_path, monkeypatch):
    """Mirror 1 is down; mirror 2 serves re-compressed files, accepted by content md5."""
    served = {}
    for name in ds.MNIST_FILES:
        path = ds._find(name, [REAL])
        gz = path.read_bytes()
        if gz[:2] != b"\x1f\x8b":
            gz = gzip.compress(gz, compresslevel=1)
        assert ds._md5(gz) != ds.MNIST_FILES[name][1]  # not the mirrors' original .gz
        served[name] = gz
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append(url)
        assert timeout is not None, "downloads must use a timeout"
        if url.startswith(ds.MIRRORS[0]):
            raise urllib.error.URLError("mirror down")
        return _FakeResponse(served[url.rsplit("/", 1)[1][: -len(".gz")]])

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    dest = tmp_path / "dl"
    (_, y_tr), (x_te, _) = ds.mnist(data_dir=dest)
    assert np.bincount(y_tr).tolist() == TRAIN_COUNTS and x_te.shape == (10000, 28, 28)
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{n}.gz" for n in ds.MNIST_FILES)
    assert sum(u.startswith(ds.MIRRORS[0]) for u in calls) == 4 * ds._DOWNLOAD_TRIES
    # second call finds the files: no more downloads
    calls.clear()
    ds.mnist(data_dir=dest)
    assert calls == []


def test_download_with_wrong_content_is_rejected(tmp_path, monkeypatch):
    junk = gzip.compress(b"not mnist at all")
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: _FakeResponse(junk))
    dest = tmp_path / "dl"
    with pytest.raises(ds.DatasetNotFoundError, match="checksum mismatch"):
        ds.mnist(data_dir=dest)
    assert list(dest.iterdir()) == []


# ---------------------------------------------------------------- bundled sample


def test_sample_loads_balanced_real_images():
    sample_file = REPO / "nnx" / "data" / "mnist_sample.npz"
    assert sample_file.stat().st_size <= 2 * 1024 * 1024
    (x_tr, y_tr), (x_te, y_te) = ds.mnist(sample=True)
    n_tr, n_te = len(y_tr), len(y_te)
    assert n_tr in (6000, 5000) and n_te == 1000
    assert x_tr.shape == (n_tr, 28, 28) and x_te.shape == (n_te, 28, 28)
    assert x_tr.dtype == y_tr.dtype == x_te.dtype == y_te.dtype == np.uint8
    assert np.bincount(y_tr, minlength=10).tolist() == [n_tr // 10] * 10
    assert np.bincount(y_te, minlength=10).tolist() == [n_te // 10] * 10
    assert x_tr.max() == 255 and x_tr.min() == 0
    # real digits: roughly 19% of MNIST pixels are non-zero, and no image is blank
    assert 0.1 < (x_tr > 0).mean() < 0.3
    assert (x_tr.reshape(n_tr, -1).max(axis=1) > 0).all()
    assert len({img.tobytes() for img in x_tr}) == n_tr  # drawn without replacement


def test_sample_ignores_missing_data_dir(tmp_path):
    (x_tr, _), _ = ds.mnist(sample=True, data_dir=tmp_path / "nowhere", download=False)
    assert x_tr.ndim == 3


@needs_real
def test_sample_is_a_subset_of_real_mnist(real_mnist):
    (x_s, y_s), (xt_s, yt_s) = ds.mnist(sample=True)
    (x_tr, y_tr), (x_te, y_te) = real_mnist
    train = {img.tobytes(): lab for img, lab in zip(x_tr, y_tr, strict=True)}
    test = {img.tobytes(): lab for img, lab in zip(x_te, y_te, strict=True)}
    assert all(train.get(img.tobytes()) == lab for img, lab in zip(x_s, y_s, strict=True))
    assert all(test.get(img.tobytes()) == lab for img, lab in zip(xt_s, yt_s, strict=True))
