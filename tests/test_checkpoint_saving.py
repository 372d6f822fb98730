"""Saving loses nothing (issue 14): a kill -9 mid-save leaves a temporary that the next save
removes (sparing concurrent savers), the mode of a replaced file and symlinks are kept, a missing
directory is reported before training, a resumed run keeps the first run's files; user metadata
round-trips and is validated."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
from checkpoint_helpers import rewrite, small_model

import nnx
from nnx import checkpoint
from nnx.errors import CheckpointError, InputError


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "m.npz"
    small_model().save(path)
    return path


# -- saving loses nothing -------------------------------------------------------------------------
def _temps(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".nnx-ckpt-"))


KILL_MID_SAVE = """
import os, signal, sys
import numpy as np
import nnx
model = nnx.Sequential([nnx.Dense(6, 3)], backend="numpy")
def killed(f, **arrays):
    f.write(b"partial checkpoint")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
np.savez = killed
model.save(sys.argv[1])
"""


def test_kill_9_mid_save_leaves_a_temp_that_the_next_save_removes(tmp_path):
    target = tmp_path / "m.npz"
    proc = subprocess.run([sys.executable, "-c", KILL_MID_SAVE, str(target)],
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    left = _temps(tmp_path)
    assert len(left) == 1 and not target.exists()  # what kill -9 leaves behind
    nnx.Sequential([nnx.Dense(6, 3)], backend="numpy").save(target)
    assert _temps(tmp_path) == [] and target.exists()


def test_stale_temp_rules_spare_live_writers_and_other_files(tmp_path):
    host = checkpoint._host_tag()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        names = {
            "dead": f".nnx-ckpt-{host}-{dead.pid}-0a1b2c3d.tmp",
            "live": f".nnx-ckpt-{host}-{live.pid}-0a1b2c3d.tmp",
            "mine": f".nnx-ckpt-{host}-{os.getpid()}-0a1b2c3d.tmp",
            "other_host": f".nnx-ckpt-00000000-{dead.pid}-0a1b2c3d.tmp",
            "old_style_recent": ".nnx-ckpt-k2j4_x9a.tmp",
            "old_style_stale": ".nnx-ckpt-q8w7e6r5.tmp",
            "stale_live": f".nnx-ckpt-{host}-{live.pid}-99999999.tmp",
            "not_ours": ".nnx-ckpt-notes.txt",
            "user_file": "model.tmp",
        }
        for name in names.values():
            (tmp_path / name).write_bytes(b"x")
        (tmp_path / ".nnx-ckpt-dir.tmp").mkdir()  # not a regular file: never removed
        hour_ago = time.time() - 3600
        for key in ("old_style_stale", "stale_live"):
            os.utime(tmp_path / names[key], (hour_ago, hour_ago))
        nnx.Sequential([nnx.Dense(2, 2)], backend="numpy").save(tmp_path / "m.npz")
        left = {p.name for p in tmp_path.iterdir()}
    finally:
        live.kill()
        live.wait()
    removed = {k for k, n in names.items() if n not in left}
    assert removed == {"dead", "old_style_stale", "stale_live"}
    assert ".nnx-ckpt-dir.tmp" in left and "m.npz" in left


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o600, 0o664])
def test_save_keeps_the_mode_of_the_file_it_replaces(tmp_path, mode):
    path = tmp_path / "m.npz"
    model = nnx.Sequential([nnx.Dense(2, 2)], backend="numpy")
    model.save(path)
    os.chmod(path, mode)
    model.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == mode


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_files_get_0666_minus_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        nnx.Sequential([nnx.Dense(2, 2)], backend="numpy").save(tmp_path / "m.npz")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.npz").stat().st_mode) == 0o666 & ~umask


def test_save_writes_through_a_symlink(tmp_path):
    (tmp_path / "store").mkdir()
    real = tmp_path / "store" / "real.npz"
    link = tmp_path / "latest.npz"
    a = nnx.Sequential([nnx.Dense(2, 2)], backend="numpy", seed=1)
    a.save(real)
    os.chmod(real, 0o644)
    link.symlink_to(real)
    b = nnx.Sequential([nnx.Dense(2, 2)], backend="numpy", seed=2)
    b.save(link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert stat.S_IMODE(real.stat().st_mode) == 0o644
    for w, v in zip(b.get_weights(), nnx.load(real).get_weights()):
        np.testing.assert_array_equal(w, v)
    # a dangling link: the save creates its target
    (tmp_path / "dangling.npz").symlink_to(tmp_path / "store" / "new.npz")
    b.save(tmp_path / "dangling.npz")
    assert (tmp_path / "store" / "new.npz").is_file()
    assert _temps(tmp_path) == [] and _temps(tmp_path / "store") == []


def test_save_into_a_missing_directory_fails_before_writing(tmp_path):
    model = nnx.Sequential([nnx.Dense(2, 2)], backend="numpy")
    with pytest.raises(CheckpointError, match=r"directory .*missing.* does not exist"):
        model.save(tmp_path / "missing" / "m.npz")
    assert not (tmp_path / "missing").exists()  # nothing created
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is not a directory"):
        model.save(tmp_path / "file" / "m.npz")
    (tmp_path / "adir.npz").mkdir()
    with pytest.raises(CheckpointError, match="is a directory"):
        model.save(tmp_path / "adir.npz")


def test_model_checkpoint_checks_its_directory_before_training(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((32, 6)).astype(np.float32), rng.integers(0, 3, 32)
    model = small_model()
    step = model.optimizer.step
    cb = nnx.ModelCheckpoint(tmp_path / "missing" / "ep{epoch}.npz", monitor="loss")
    with pytest.raises(CheckpointError, match="does not exist"):
        model.fit(x, y, epochs=3, callbacks=[cb], verbose=0)
    assert model.optimizer.step == step  # refused before any training
    with pytest.raises(ValueError, match="file name only"):
        nnx.ModelCheckpoint(tmp_path / "{epoch}" / "m.npz")
    cb = nnx.ModelCheckpoint(tmp_path / "ep{epoch}-{val_loss:.2f}.npz", monitor="loss")
    with pytest.raises(ValueError, match="'val_loss' needs validation data"):
        model.fit(x, y, epochs=3, callbacks=[cb], verbose=0)
    assert model.optimizer.step == step


def test_resumed_run_numbers_files_on_and_keeps_the_first_runs(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((32, 6)).astype(np.float32), rng.integers(0, 3, 32)
    model = small_model()
    first = nnx.ModelCheckpoint(tmp_path / "ep{epoch:02d}.npz", monitor="loss")
    model.fit(x, y, epochs=2, callbacks=[first], verbose=0)
    before = {p: (tmp_path / p).read_bytes() for p in ("ep01.npz", "ep02.npz")}
    resumed = nnx.load(tmp_path / "ep02.npz")
    second = nnx.ModelCheckpoint(tmp_path / "ep{epoch:02d}.npz", monitor="loss")
    hist = resumed.fit(x, y, epochs=4, initial_epoch=2, callbacks=[second], verbose=0)
    assert hist.epochs == [2, 3]
    assert second.saved == [str(tmp_path / "ep03.npz"), str(tmp_path / "ep04.npz")]
    for name, data in before.items():
        assert (tmp_path / name).read_bytes() == data
    assert checkpoint.read_header(tmp_path / "ep04.npz")["progress"]["epoch"] == 4


def test_resumed_best_only_run_does_not_replace_a_better_file(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((32, 6)).astype(np.float32), rng.integers(0, 3, 32)
    model = small_model()
    best = tmp_path / "best.npz"
    model.fit(x, y, epochs=10, verbose=0,
              callbacks=[nnx.ModelCheckpoint(best, monitor="loss", save_best_only=True)])
    recorded = checkpoint.read_header(best)["progress"]["best"]
    data = best.read_bytes()
    resumed = nnx.load(best)
    resumed.optimizer.lr = 1e-9  # the resumed run, on other labels, stays worse
    cb = nnx.ModelCheckpoint(best, monitor="loss", save_best_only=True)
    hist = resumed.fit(x, (y + 1) % 3, epochs=12, initial_epoch=10, callbacks=[cb], verbose=0)
    assert min(hist.history["loss"]) > recorded
    assert cb.saved == [] and best.read_bytes() == data
    # a fresh run (initial_epoch 0) starts its own record
    fresh = nnx.ModelCheckpoint(best, monitor="loss", save_best_only=True)
    resumed.fit(x, (y + 1) % 3, epochs=1, callbacks=[fresh], verbose=0)
    assert fresh.saved == [str(best)]


# -- user metadata --------------------------------------------------------------------------------
def test_metadata_round_trips_and_follows_model_checkpoint(tmp_path):
    tok = {"vocab": ["<pad>", "a", "b"], "lower": True, "max_len": 8, "scale": 0.5, "x": None,
           "nested": {"k": [1, 2, [3]]}}
    model = small_model()
    model.save(tmp_path / "m.npz", metadata=tok)
    loaded = nnx.load(tmp_path / "m.npz")
    assert loaded.metadata == tok
    assert nnx.load(tmp_path / "m.npz").metadata is not loaded.metadata
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 6)).astype(np.float32), rng.integers(0, 3, 16)
    loaded.fit(x, y, epochs=1, verbose=0,
               callbacks=[nnx.ModelCheckpoint(tmp_path / "cb.npz", monitor="loss")])
    assert nnx.load(tmp_path / "cb.npz").metadata == tok
    assert small_model().metadata == {}


@pytest.mark.parametrize("bad, match", [
    ([1, 2], "must be a dict"),
    ({"a": float("nan")}, "not a finite number"),
    ({"a": float("inf")}, "not a finite number"),
    ({1: "a"}, "keys must be strings"),
    ({"a": object()}, "not a JSON value"),
    ({"a": np.zeros(3)}, "not a JSON value"),
    ({"a": 10**30}, "64 bits"),
    ({"a": "x" * (9 * 2**20)}, "the limit is"),
])
def test_bad_metadata_is_refused_before_writing(tmp_path, bad, match):
    with pytest.raises(InputError, match=match):
        small_model().save(tmp_path / "m.npz", metadata=bad)
    assert list(tmp_path.iterdir()) == []


def test_deep_or_invalid_metadata_in_a_file_is_a_checkpoint_error(saved, tmp_path):
    deep = {}
    node = deep
    for _ in range(100):
        node["k"] = {}
        node = node["k"]
    path = rewrite(saved, tmp_path / "d.npz", lambda h: h.update(metadata=deep))
    with pytest.raises(CheckpointError, match="invalid metadata.*nested more than 64"):
        nnx.load(path)
    path = rewrite(saved, tmp_path / "l.npz", lambda h: h.update(metadata=[1]))
    with pytest.raises(CheckpointError, match="invalid metadata.*must be a dict"):
        nnx.load(path)
