"""Distributed faults, in this process with fakes (no MPI): the collective timeout's value and
watchdog (the wait, the questions to the other ranks, the report) and the messages of
check_same_fit (shapes, first differing row, first non-finite element). The mpiexec runs (a
stalled rank, one step fewer) are in tests/test_distributed.py; the GPU path's fakes in
tests/test_distributed_gpu_path.py."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import nnx.distributed as dist
from nnx.distributed import consistency, watchdog
from nnx.distributed.watchdog import TAG_CTL, TAG_REPLY, Watchdog, resolve_timeout

LAUNCH_VARS = dist.launch.SIZE_VARS + dist.launch.RANK_VARS


# -- the timeout's value --------------------------------------------------------------------------
def test_resolve_timeout(monkeypatch):
    monkeypatch.delenv("NNX_DIST_TIMEOUT", raising=False)
    assert resolve_timeout() == watchdog.DEFAULT_TIMEOUT == 600.0
    assert resolve_timeout(15) == 15.0 and resolve_timeout(0.5) == 0.5
    assert resolve_timeout(0) is None and resolve_timeout(float("inf")) is None
    monkeypatch.setenv("NNX_DIST_TIMEOUT", "42")
    assert resolve_timeout() == 42.0
    assert resolve_timeout(7) == 7.0  # the argument wins
    for off in ("0", "off", "OFF", "none"):
        monkeypatch.setenv("NNX_DIST_TIMEOUT", off)
        assert resolve_timeout() is None
    monkeypatch.setenv("NNX_DIST_TIMEOUT", "ten")
    with pytest.raises(ValueError, match=r"NNX_DIST_TIMEOUT must be a number.*'ten'"):
        resolve_timeout()
    monkeypatch.setenv("NNX_DIST_TIMEOUT", "-3")
    with pytest.raises(ValueError, match=r"NNX_DIST_TIMEOUT must be a positive.*-3"):
        resolve_timeout()
    with pytest.raises(ValueError, match=r"timeout must be a positive.*-1"):
        resolve_timeout(-1)
    with pytest.raises(ValueError, match="nan"):
        resolve_timeout(float("nan"))
    with pytest.raises(TypeError, match="timeout must be a number.*str"):
        resolve_timeout("10")
    with pytest.raises(TypeError, match="bool"):
        resolve_timeout(True)


def test_init_checks_the_timeout_in_a_world_of_one(monkeypatch):
    for var in LAUNCH_VARS + ("NNX_DISTRIBUTED",):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(dist.launch, "_WORLD", {})
    comm = dist.init(timeout=30)
    assert comm.timeout is None  # a world of one never waits
    comm.set_timeout(5)
    assert dist.init(timeout=10) is comm
    with pytest.raises(ValueError, match="timeout must be a positive"):
        dist.init(timeout=-2)


# -- the watchdog, with a fake MPI ---------------------------------------------------------------
class Aborted(Exception):
    pass


class FakeStatus:
    def __init__(self):
        self.source = None

    def Get_source(self):
        return self.source


class FakeMPI:
    ANY_SOURCE = -1
    THREAD_MULTIPLE = 3
    Status = FakeStatus

    def __init__(self, level=3):
        self.level = level

    def Query_thread(self):
        return self.level

    def Is_finalized(self):
        return False


class Sent:
    def Test(self):
        return True


class FakeCtl:
    """The control communicator of rank 0: questions to the peers are answered at once from
    `peers` (rank -> state dict, or None: silent)."""

    def __init__(self, peers):
        self.peers = peers
        self.inbox: list = []  # (source, tag, message)
        self.sent: list = []  # (dest, tag, message)
        self.lock = threading.Lock()

    def Iprobe(self, source, tag, status):
        with self.lock:
            for src, t, _msg in self.inbox:
                if t == tag and source in (-1, src):
                    status.source = src
                    return True
        return False

    def recv(self, source, tag):
        with self.lock:
            for i, (src, t, msg) in enumerate(self.inbox):
                if t == tag and src == source:
                    del self.inbox[i]
                    return msg
        raise AssertionError("recv without a message")

    def isend(self, obj, dest, tag):
        with self.lock:
            self.sent.append((dest, tag, obj))
            state = self.peers.get(dest)
            if tag == TAG_CTL and obj.get("type") == "query" and state is not None:
                self.inbox.append((dest, TAG_REPLY, state))
        return Sent()


class FakeWorld:
    def __init__(self, size, peers):
        self.size, self.ctl = size, FakeCtl(peers)

    def Get_rank(self):
        return 0

    def Get_size(self):
        return self.size

    def Dup(self):
        return self.ctl


class Stuck:
    """An mpi4py request that never completes."""

    def Test(self):
        return False


def _abort(code):
    raise Aborted(code)


def _state(seqs, current=None, last=None, where=None):
    return {"rank": 1, "seqs": seqs, "current": current, "last": last, "where": where or []}


def _op_summary(seq, kind="allreduce", age=3.0, ended=None, cid="world"):
    return {"cid": cid, "seq": seq, "kind": kind, "detail": "", "age": age, "ended": ended}


def test_a_wait_past_the_timeout_reports_who_did_not_arrive(capsys):
    peers = {
        1: _state({"world": 4}, last=_op_summary(4, ended=9.0),
                  where=["train.py:31 in on_batch_end: time.sleep(600)"]),
        2: _state({"world": 5}, current=_op_summary(5)),  # waits in the same collective
        3: None,  # does not answer
    }
    world = FakeWorld(4, peers)
    wd = Watchdog(world, FakeMPI(level=0), 0.2, _abort, threaded=False)
    try:
        cid = wd.register("world")
        for _ in range(4):
            wd.enter(cid, "allreduce")
        op = wd.enter(cid, "allreduce", "float64[400], sum")
        with pytest.raises(Aborted) as info:
            wd.wait(Stuck(), op)
    finally:
        wd.close()
    assert info.value.args == (watchdog.EXIT_STATUS,)
    err = capsys.readouterr().err
    assert "rank 0 of 4: collective timeout: waited" in err
    assert "in allreduce #5 on communicator 'world' (float64[400], sum) (timeout 0.2 s)" in err
    assert "rank 0 (this rank) is at tests/test_distributed_faults.py" in err
    assert "rank 1 did not arrive: it is outside nnx's collectives for 9.0 s (4 started on " \
           "'world'), at train.py:31 in on_batch_end: time.sleep(600)" in err
    assert "rank 2 arrived" in err
    assert "rank 3 did not arrive: it did not answer" in err
    assert "ranks that did not arrive: 1, 3" in err
    assert "NNX_DIST_TIMEOUT" in err
    queries = [(d, m) for d, t, m in world.ctl.sent if t == TAG_CTL and m["type"] == "query"]
    assert sorted(d for d, _ in queries) == [1, 2, 3] and all(m["expired"] for _, m in queries)


def test_a_rank_whose_script_ended_is_named():
    o = _op_summary(17)
    text, arrived = watchdog.describe_rank(1, {"type": "left", "seqs": {"world": 16}}, o)
    assert not arrived
    assert "its script ended after 16 collective(s) on 'world' (this one is #17)" in text
    text, arrived = watchdog.describe_rank(1, _state({"world": 17},
                                                     current=_op_summary(17, "barrier")), o)
    assert not arrived and "waits in barrier #17 instead" in text
    text, arrived = watchdog.describe_rank(
        1, _state({"world": 3, "world.dup1": 9}, current=_op_summary(9, cid="world.dup1")), o)
    assert not arrived and "in allreduce #9 on 'world.dup1'" in text
    assert watchdog.describe_rank(1, _state({"world": 18}), o)[1]  # already went on


def test_a_left_note_answers_for_its_rank(capsys):
    """A rank that ended its script tells the others; they do not ask it."""
    world = FakeWorld(2, {})
    wd = Watchdog(world, FakeMPI(level=0), 0.2, _abort, threaded=False)
    try:
        world.ctl.inbox.append((1, TAG_CTL, {"type": "left", "seqs": {"world": 2}}))
        cid = wd.register("world")
        for _ in range(2):
            wd.enter(cid, "allreduce")
        with pytest.raises(Aborted):
            wd.wait(Stuck(), wd.enter(cid, "allreduce"))
    finally:
        wd.close()
    err = capsys.readouterr().err
    assert "rank 1 did not arrive: its script ended after 2 collective(s)" in err
    assert not [m for _d, _t, m in world.ctl.sent if m.get("type") == "query"]


def test_the_service_thread_says_where_the_main_thread_is():
    world = FakeWorld(2, {})
    wd = Watchdog(world, FakeMPI(level=3), 30.0, _abort)
    try:
        assert wd.threaded and wd._thread is not None
        world.ctl.inbox.append((1, TAG_CTL, {"type": "query", "expired": False}))
        end = time.monotonic() + 20
        while not any(t == TAG_REPLY for _d, t, _m in world.ctl.sent):
            assert time.monotonic() < end, "the service thread did not answer"
            time.sleep(0.01)  # the line the answer shows
    finally:
        wd.close()
    (dest, _tag, state), = [s for s in world.ctl.sent if s[1] == TAG_REPLY]
    assert dest == 1 and state["current"] is None
    assert "test_distributed_faults.py" in state["where"][0] and "time.sleep" in \
        state["where"][0]
    left = [(d, m) for d, t, m in world.ctl.sent if m.get("type") == "left"]
    assert [d for d, _ in left] == [1]  # close() told rank 1 that this script ended
    assert not wd._thread.is_alive()


def test_the_service_thread_expires_a_wait_blocked_in_mpi_wait(capsys):
    """With MPI_THREAD_MULTIPLE the main thread waits in MPI_Wait (full speed) and the service
    thread watches its deadline, asks the others and aborts."""
    ended = threading.Event()
    codes = []

    def abort(code):
        codes.append(code)
        ended.set()

    class Blocked:
        def Test(self):
            return False

        def Wait(self):  # MPI_Wait never returns: MPI_Abort ends the process
            assert ended.wait(30), "the watchdog did not abort"
            raise Aborted(codes[0])

    peers = {1: _state({"world": 0}, where=["job.py:9 in <module>: input()"])}
    wd = Watchdog(FakeWorld(2, peers), FakeMPI(level=3), 0.3, abort)
    try:
        assert wd._thread is not None
        with pytest.raises(Aborted):
            wd.wait(Blocked(), wd.enter(wd.register("world"), "bcast", "object size, root 0"))
    finally:
        wd.close()
    assert codes == [watchdog.EXIT_STATUS]
    err = capsys.readouterr().err
    assert "rank 0 of 2: collective timeout: waited" in err
    assert "bcast #1 on communicator 'world' (object size, root 0)" in err
    assert "rank 1 did not arrive: it is outside nnx's collectives (0 started on 'world'), at " \
           "job.py:9 in <module>: input()" in err


def test_no_timeout_waits_with_mpi_wait():
    class Req:
        waited = False

        def Wait(self):
            self.waited = True

    wd = Watchdog(FakeWorld(2, {}), FakeMPI(level=3), None, _abort)
    try:
        assert wd._thread is None  # nothing to serve without a timeout
        req = Req()
        wd.wait(req, wd.enter("world", "barrier"))
        assert req.waited and wd.last.kind == "barrier" and wd.current is None
    finally:
        wd.close()


# -- check_same_fit's messages --------------------------------------------------------------------
def _summaries(data, arrays):
    out, details = [], []
    for x, y in arrays:
        if data == "replicated":
            out.append({"plan": [1, 8, True, 0], "x": list(consistency.fingerprint(x)),
                        "y": list(consistency.fingerprint(y))})
            details.append({"x": consistency.describe_array(x),
                            "y": consistency.describe_array(y)})
        else:
            out.append({"plan": [1, 8, True, 0], "x": [len(x)], "y": [len(y)]})
    return out, (details if data == "replicated" else None)


def test_fit_differences_name_the_array_shape_row_and_nan():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 20)), rng.integers(0, 3, 40)
    bad = x.copy()
    bad[37, 2] = np.nan  # a row fingerprint() does not sample
    msg = consistency.fit_difference_message("replicated", *_summaries(
        "replicated", [(x, y), (bad, y)]))
    assert "rank 1: x" in msg and "different data" in msg
    assert "rank 1's x has a non-finite value (nan) first at index (37, 2)" in msg
    bad[3, 5] = np.inf  # and one it samples
    msg = consistency.fit_difference_message("replicated", *_summaries(
        "replicated", [(x, y), (bad, y)]))
    assert "rank 1: x differs from rank 0's (shape (40, 20) float64) first at row 3" in msg
    assert "non-finite value (inf) first at index (3, 5)" in msg
    msg = consistency.fit_difference_message("replicated", *_summaries(
        "replicated", [(x, y), (x[:39], y[:39])]))
    assert "rank 1: x has shape (39, 20) float64, rank 0's has shape (40, 20) float64" in msg
    assert "rank 1: y has shape (39,) int64, rank 0's has shape (40,) int64" in msg
    msg = consistency.fit_difference_message("replicated", *_summaries(
        "replicated", [(x, y), (x.astype(np.float32), y)]))
    assert "rank 1: x has shape (40, 20) float32, rank 0's has shape (40, 20) float64" in msg
    summaries, details = _summaries("replicated", [(x, y), (x, y)])
    summaries[1]["plan"] = [1, 16, True, 0]
    msg = consistency.fit_difference_message("replicated", summaries, details)
    assert "rank 1: batch_size=16 (rank 0: 8)" in msg and "rank 1: x" not in msg
    msg = consistency.fit_difference_message("sharded", *_summaries(
        "sharded", [(x, y), (x[:30], y[:30])]))
    assert "rank 1: x has 30 samples, rank 0's has 40" in msg and "shard()" in msg
