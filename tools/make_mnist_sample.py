"""Build ``nnx/data/mnist_sample.npz``: a class-balanced, seeded subset of MNIST.

The sample lets tests, examples and ``mnist(sample=True)`` run on real digits without the
network or the 11 MB of full data. Selection: 600 images per class from the 60k training
set and 100 per class from the 10k test set, drawn with a fixed seed and shuffled, so the
same sources always give the same arrays. The zip is written with fixed timestamps, so the
file itself is byte-for-byte reproducible too (``np.savez_compressed`` stamps the current
time). MNIST is CC BY-SA 3.0 (LeCun, Cortes, Burges); the sample is under the same license.

Usage: python tools/make_mnist_sample.py [SOURCE_DIR] [-o OUT] [--seed N]
SOURCE_DIR defaults to $NNX_DATA_DIR, else ../shared/data/mnist relative to the repo root.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nnx.datasets import mnist  # noqa: E402  (needs the repo on sys.path first)

MAX_BYTES = 2 * 1024 * 1024
SEED = 20240601
# (train per class, test per class); the fallback keeps the file under MAX_BYTES
SIZES = ((600, 100), (500, 100))


def balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices with exactly per_class of each label 0..9, in shuffled order."""
    picks = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        if idx.size < per_class:
            raise SystemExit(f"class {c} has {idx.size} images, need {per_class}")
        picks.append(rng.choice(idx, size=per_class, replace=False))
    out = np.concatenate(picks)
    rng.shuffle(out)
    return out


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Same layout as np.savez_compressed, but with fixed zip timestamps (reproducible bytes)."""
    tmp = path.with_suffix(".npz.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_src = os.environ.get("NNX_DATA_DIR") or str(REPO.parent / "shared" / "data" / "mnist")
    parser.add_argument("source", nargs="?", default=default_src, help="dir with MNIST IDX files")
    parser.add_argument("-o", "--out", default=str(REPO / "nnx" / "data" / "mnist_sample.npz"))
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)

    # verify=True: the md5 check pins the source, so seed + source => identical sample
    (x_tr, y_tr), (x_te, y_te) = mnist(data_dir=args.source, download=False, verify=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for n_train, n_test in SIZES:
        rng = np.random.default_rng(args.seed)
        i_tr = balanced_indices(y_tr, n_train, rng)
        i_te = balanced_indices(y_te, n_test, rng)
        arrays = {
            "x_train": x_tr[i_tr],
            "y_train": y_tr[i_tr],
            "x_test": x_te[i_te],
            "y_test": y_te[i_te],
        }
        write_npz(out, arrays)
        size = out.stat().st_size
        if size <= MAX_BYTES:
            break
        print(f"{n_train * 10}/{n_test * 10} sample is {size} bytes > {MAX_BYTES}; reducing")
    else:
        raise SystemExit(f"sample still {size} bytes > {MAX_BYTES}")
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(
        f"wrote {out}: {size} bytes, sha256 {digest}, "
        + ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in arrays.items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
