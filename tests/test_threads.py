"""Threads that fit the machine (nnx.threads) and the oversubscription monitor
(nnx.thread_monitor): the plan per launcher, what is set and what is left to the user, the plan
under a real `mpiexec`, and the monitor's warning and (opt-in) adaptation."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import nnx
from nnx import threads
from nnx.thread_monitor import LoadProbe, ThreadMonitor

MPICH_2 = {"PMI_SIZE": "2", "PMI_RANK": "0", "MPI_LOCALNRANKS": "2", "MPI_LOCALRANKID": "0"}


# -- the plan ----------------------------------------------------------------------------------
def test_one_process_leaves_the_library_defaults():
    p = threads.plan({}, cores=(8, "CPU affinity"), affinity=8)
    assert (p["local_ranks"], p["per_rank"], p["env"]) == (1, 8, {})
    assert p["numba"]["set_by"] is None and p["blas"]["set_by"] is None
    assert p["numba"]["threads"] == 8 and not p["oversubscribed"]


def test_mpich_ranks_share_the_cores():
    p = threads.plan(dict(MPICH_2), cores=(2, "CPU affinity"), affinity=2)
    assert p["local_ranks"] == 2 and "MPI_LOCALNRANKS" in p["ranks_source"]
    assert p["numba"] == {"threads": 1, "source": "nnx: 2 cores / 2 local ranks",
                          "set_by": "nnx"}
    assert p["blas"]["threads"] == 1 and p["blas"]["set_by"] == "nnx"
    assert p["env"] == {"NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.mark.parametrize("env, local, cores, want", [
    ({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}, 4, 16, 4),
    ({"MV2_COMM_WORLD_SIZE": "3", "MV2_COMM_WORLD_LOCAL_SIZE": "3"}, 3, 16, 5),
    ({"SLURM_STEP_TASKS_PER_NODE": "2(x3),1", "SLURM_NODEID": "3", "PMI_SIZE": "7"}, 1, 8, 8),
    ({"SLURM_STEP_TASKS_PER_NODE": "2(x3),1", "SLURM_NODEID": "1", "PMI_SIZE": "7"}, 2, 8, 4),
])
def test_local_ranks_of_each_launcher(env, local, cores, want):
    p = threads.plan(env, cores=(cores, "CPU affinity"), affinity=cores)
    assert p["local_ranks"] == local and p["per_rank"] == want


def test_user_settings_win_per_library():
    env = {**MPICH_2, "OPENBLAS_NUM_THREADS": "3"}
    p = threads.plan(env, cores=(4, "CPU affinity"), affinity=4)
    assert p["blas"] == {"threads": 3, "source": "OPENBLAS_NUM_THREADS (user)",
                         "set_by": "OPENBLAS_NUM_THREADS"}
    assert p["numba"]["threads"] == 2 and "OPENBLAS_NUM_THREADS" not in p["env"]
    # OMP_NUM_THREADS is a BLAS setting too (OpenBLAS and MKL read it); Numba ignores it
    p = threads.plan({**MPICH_2, "OMP_NUM_THREADS": "2"}, cores=(4, "x"), affinity=4)
    assert p["blas"]["set_by"] == "OMP_NUM_THREADS" and p["numba"]["set_by"] == "nnx"
    p = threads.plan({**MPICH_2, "NUMBA_NUM_THREADS": "4"}, cores=(4, "x"), affinity=4)
    assert p["numba"]["threads"] == 4 and p["blas"]["threads"] == 2
    assert p["env"] == {"OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2",
                        "MKL_NUM_THREADS": "2"}


def test_more_ranks_than_cores_is_oversubscribed_with_one_thread_each():
    env = {"PMI_SIZE": "4", "MPI_LOCALNRANKS": "4"}
    p = threads.plan(env, cores=(2, "CPU affinity"), affinity=2)
    assert p["per_rank"] == 1 and p["oversubscribed"]


def test_a_launcher_without_local_ranks_changes_nothing():
    p = threads.plan({"PMI_SIZE": "2", "PMI_RANK": "1"}, cores=(2, "CPU affinity"), affinity=2)
    assert p["local_ranks"] is None and p["env"] == {}
    assert "sets none of" in p["ranks_source"] and p["numba"]["set_by"] is None


def test_a_cgroup_quota_below_the_affinity_is_chosen_for(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads._cgroup_quota(str(tmp_path)) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads._cgroup_quota(str(tmp_path)) is None
    p = threads.plan({}, cores=(2, "cgroup CPU quota"), affinity=16)
    assert p["numba"]["threads"] == 2 and p["env"]["NUMBA_NUM_THREADS"] == "2"


def test_configure_sets_defaults_and_keeps_the_users():
    env = {**MPICH_2, "MKL_NUM_THREADS": "7"}
    state = dict(threads._STATE)
    try:
        p = threads.configure(env)
    finally:
        threads._STATE.clear()
        threads._STATE.update(state)
    assert env["MKL_NUM_THREADS"] == "7"  # a BLAS variable set by the user: BLAS is theirs
    assert p["blas"]["set_by"] == "MKL_NUM_THREADS" and "OPENBLAS_NUM_THREADS" not in env
    per = p["per_rank"]
    assert env["NUMBA_NUM_THREADS"] == str(per)


def test_status_and_summary_describe_this_process():
    st = threads.status()
    assert st["now"]["numba"] == nnx.compat.numba.get_num_threads()
    assert st["openmp"]["state"] in ("not needed", "isolated", "serial", "too late", "off",
                                     "not omp", "unsupported", "failed")
    line = threads.summary()
    assert line.startswith("threads: numba ") and "BLAS" in line and "cores" in line


def test_set_blas_threads_changes_the_loaded_blas():
    before = threads.blas_threads()
    if before is None:
        pytest.skip("no OpenBLAS/MKL found among the loaded libraries")
    try:
        assert threads.set_blas_threads(1) and threads.blas_threads() == 1
    finally:
        threads.set_blas_threads(before)
    assert threads.blas_threads() == before


# -- under a real mpiexec ------------------------------------------------------------------------
MPIEXEC = shutil.which("mpiexec") or shutil.which(os.path.join(os.path.dirname(sys.executable),
                                                               "mpiexec"))


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec is not installed (pip install mpich)")
def test_each_rank_takes_its_share_of_the_cores():
    code = ("import nnx, numba; from nnx import threads; "
            "print('RESULT', numba.get_num_threads(), threads.blas_threads(), "
            "repr(threads.summary()))")
    env = {k: v for k, v in os.environ.items()
           if k not in threads.BLAS_VARS + threads.NUMBA_VARS}
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", code], env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    rows = [ln.split(None, 3) for ln in done.stdout.splitlines() if ln.startswith("RESULT")]
    assert len(rows) == 2
    cores = threads.usable_cores()[0]
    want = max(1, cores // 2)
    for _, numba_n, blas_n, line in rows:
        assert int(numba_n) == want
        if blas_n != "None":
            assert int(blas_n) == want
        plural = "s" if cores != 1 else ""
        assert "2 local ranks" in line and f"nnx: {cores} core{plural} / 2 local ranks" in line


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec is not installed (pip install mpich)")
def test_nnx_info_under_mpiexec_says_what_was_chosen():
    env = {k: v for k, v in os.environ.items()
           if k not in threads.BLAS_VARS + threads.NUMBA_VARS}
    env["NUMBA_NUM_THREADS"] = "1"  # the user's choice stays the user's
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m", "nnx.cli", "info"],
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("local_ranks: 2 (MPI_LOCALNRANKS") == 2
    assert done.stdout.count("numba: 1 (NUMBA_NUM_THREADS (user))") == 2
    cores = threads.usable_cores()[0]
    chosen = (f"{max(1, cores // 2)} (nnx: {cores} core{'s' if cores != 1 else ''} / 2 local "
              f"ranks)")
    assert done.stdout.count(f"  blas: {chosen}") == 2  # the threads section
    assert done.stdout.count(f"  threads: {chosen}") == 2  # the blas section


# -- the monitor ---------------------------------------------------------------------------------
class FixedLoad(LoadProbe):
    """A probe on which other processes always use `others` CPUs, with a clock that advances
    `tick` seconds per reading (no real clocks involved)."""

    def __init__(self, others, tick=10.0):
        super().__init__()
        self.value, self.t, self.tick = others, 0.0, tick

    def clock(self):
        self.t += self.tick
        return self.t

    def snap(self):
        return (self.clock(), 0, 0.0)

    def others(self, a, b):
        return self.value


def _fit_with(monitor, epochs=2):
    model = nnx.Sequential([nnx.Dense(6, 4, activation="relu"), nnx.Dense(4, 3)],
                           backend="numpy", seed=0)
    model.compile(nnx.Adam(1e-2), "softmax_cross_entropy", [])
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 6)).astype(np.float32), rng.integers(0, 3, 40)
    model.fit(x, y, epochs=epochs, batch_size=8, verbose=0, callbacks=[monitor])
    return model


def test_monitor_warns_in_the_progress_output_when_others_take_the_cores():
    out = io.StringIO()
    mon = ThreadMonitor(stream=out, adapt=False, probe=FixedLoad(1.8))
    mon.cores = 2
    before = threads.blas_threads()
    _fit_with(mon)
    text = out.getvalue()
    assert "host oversubscribed during epoch 1" in text and "epoch 2" in text
    assert "other processes used up to 1.8 of" in text and "OPENBLAS_NUM_THREADS=1" in text
    assert mon.events and all(action == "" for _, _, action in mon.events)
    assert threads.blas_threads() == before  # without adapt nothing changes


def test_monitor_windows_span_epochs_shorter_than_a_window():
    """Epochs of 5 batches take 0.25 s of the probe's clock here, windows 0.5 s: a window that
    restarted with every epoch never ended (the monitor was blind on small data sets)."""
    out = io.StringIO()
    mon = ThreadMonitor(stream=out, interval_s=0.5, probe=FixedLoad(1.8, tick=0.05))
    _fit_with(mon, epochs=4)
    assert mon.events and "host oversubscribed during epoch" in out.getvalue()


def test_monitor_stays_silent_on_a_quiet_host():
    out = io.StringIO()
    mon = ThreadMonitor(stream=out, probe=FixedLoad(0.0))
    _fit_with(mon)
    assert "oversubscribed" not in out.getvalue() and mon.events == []


def test_monitor_adapts_the_blas_threads_and_restores_them():
    before = threads.blas_threads()
    if before is None or before < 2:
        pytest.skip("needs a loaded OpenBLAS/MKL with >= 2 threads to lower")
    out = io.StringIO()
    mon = ThreadMonitor(stream=out, adapt=True, probe=FixedLoad(0.0))
    try:
        mon.on_train_begin({})
        mon.cores = before
        mon.window(before - 0.5)  # others leave half a core: one BLAS thread
        assert threads.blas_threads() == 1 and mon.blas_now == 1
        assert f"BLAS threads {before} -> 1" in out.getvalue()
        mon.window(0.0)
        assert threads.blas_threads() == 1  # one quiet window is not enough
        mon.window(0.0)
        assert threads.blas_threads() == before and mon.blas_now == before
        assert "no longer oversubscribed" in out.getvalue()
    finally:
        threads.set_blas_threads(before)


def test_monitor_prints_the_plan_when_nnx_chose_it():
    saved = dict(threads._STATE)
    try:
        threads._STATE.clear()
        threads._STATE.update(threads.plan(dict(MPICH_2), cores=(2, "CPU affinity"),
                                           affinity=2))
        out = io.StringIO()
        mon = ThreadMonitor(stream=out, probe=FixedLoad(0.0))
        mon.on_train_begin({})
        assert out.getvalue().startswith("threads: numba ")
        assert "(nnx: 2 cores / 2 local ranks)" in out.getvalue()
        quiet = io.StringIO()
        ThreadMonitor(stream=quiet, probe=FixedLoad(0.0), show_plan=False).on_train_begin({})
        assert quiet.getvalue() == ""
    finally:
        threads._STATE.clear()
        threads._STATE.update(saved)
    out = io.StringIO()  # a plan of library defaults: nothing to say
    ThreadMonitor(stream=out, probe=FixedLoad(0.0)).on_train_begin({})
    if nnx.compat.openmp_state["state"] not in ("isolated", "serial"):
        assert out.getvalue() == ""


def test_monitor_options_are_checked():
    with pytest.raises(ValueError, match="interval_s must be a number >= 0.1 seconds, got 0"):
        ThreadMonitor(interval_s=0)
    with pytest.raises(ValueError, match="margin must be a number of CPUs"):
        ThreadMonitor(margin=-1)


def test_load_probe_counts_other_processes_only():
    probe = LoadProbe()
    if not probe.ok:
        pytest.skip("no /proc/stat here")
    a = probe.snap()
    x = 0.0
    for i in range(200000):  # this process's own work is not "others"
        x += i * 0.5
    b = probe.snap()
    others = probe.others(a, b)
    assert others is not None and 0.0 <= others <= (os.cpu_count() or 1)
