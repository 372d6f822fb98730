"""Collective timeouts: a rank that stalls (or skips a collective the others make) ends the job
with a report instead of leaving the others waiting forever.

`nnx.distributed.init(timeout=SECONDS)` (else `NNX_DIST_TIMEOUT`, else 600 s; 0 or "off" waits
forever). Every collective of an `MPICommunicator` is non-blocking underneath (MPI_Iallreduce,
MPI_Ibcast, ...) and waited for by `Watchdog.wait`: in MPI_Wait, while a service thread on each
rank (it needs MPI_THREAD_MULTIPLE, mpi4py's default) watches the deadline. When a wait passes
the timeout, that rank asks every other rank where it is, over a control communicator of its
own (point-to-point messages, so a question never mixes with the job's collectives), prints a
report to stderr and aborts the job (MPI_Abort, exit status `EXIT_STATUS`). The report names
the collective (its kind, number on its communicator, buffer, and the code that called it) and,
per rank, whether it arrived; for a rank that did not, where it is instead: in another
collective, outside nnx's collectives (with the line its main thread is executing, e.g. a
`time.sleep` in a callback), finished with its script (it made fewer collectives: one
`train_step` fewer), or not answering at all.

The answers come from the service threads, so a rank stalled in Python code still says where it
is. Without MPI_THREAD_MULTIPLE there is no thread: a wait polls its request (a short spin, then
sleeps of up to a millisecond) and watches the deadline itself, and only ranks that are waiting
too answer questions. The thread also watches NCCL operations (recorded CUDA events), whose
hangs show up in a stream synchronization rather than in a wait of ours. A rank whose script
ends tells the others ("left"), so that they can name it. Asked by a rank whose timeout expired,
a rank that is waiting too prints which collective it waited in before the job ends.

Costs: a non-blocking start and MPI_Wait (measured as fast as the blocking collective), the
bookkeeping of one small object per collective, and a thread that wakes every 50 ms. The
deadline is checked at those wake-ups: a timeout expires up to 50 ms late.
"""

from __future__ import annotations

import atexit
import math
import os
import sys
import threading
import time
import traceback

from .. import compat

DEFAULT_TIMEOUT = 600.0
TIMEOUT_ENV = "NNX_DIST_TIMEOUT"
EXIT_STATUS = 75  # EX_TEMPFAIL: resuming from a checkpoint may well succeed
TAG_CTL, TAG_REPLY = 20046, 20047  # below the MPI minimum of MPI_TAG_UB (32767)
_OFF = ("0", "off", "none", "inf", "never")
_POLL_S = 0.05  # how often the service thread looks for questions
_SPIN_S = 0.002  # busy polling before a wait starts sleeping
_MAX_SLEEP_S = 0.001
# Frames of these files are the machinery of a wait, not where the program is.
_OWN_FILES = tuple(os.path.join("nnx", "distributed", f) for f in
                   ("watchdog.py", "mpi.py", "comm.py", "nccl.py")) + ("threading.py",)


def resolve_timeout(timeout=None) -> float | None:
    """Seconds a collective may wait (a positive float), or None (wait forever).

    `timeout`: None reads `NNX_DIST_TIMEOUT` (default `DEFAULT_TIMEOUT`); 0 or math.inf turn it
    off. Raises ValueError / TypeError naming the argument or the variable and its value."""
    source = "timeout"
    if timeout is None:
        text = os.environ.get(TIMEOUT_ENV, "").strip()
        if not text:
            return DEFAULT_TIMEOUT
        source = TIMEOUT_ENV
        if text.lower() in _OFF:
            return None
        try:
            timeout = float(text)
        except ValueError:
            raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds (or 0 / 'off' to wait "
                             f"forever), got {text!r}") from None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds (or 0 to wait forever), got "
                        f"{type(timeout).__name__} {timeout!r}")
    timeout = float(timeout)
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"{source} must be a positive number of seconds (or 0 to wait "
                         f"forever), got {timeout!r}")
    return None if timeout == 0 or math.isinf(timeout) else timeout


def detail_text(detail) -> str:
    """A collective's detail as reports show it. `detail` is a string, or a tuple (dtype,
    elements, op, kind, more) formatted only when a report needs it (formatting a dtype costs
    more than the rest of a collective's bookkeeping)."""
    if not isinstance(detail, tuple):
        return detail or ""
    dtype, size, op, kind, more = detail
    text = f"{kind or getattr(dtype, 'name', dtype)}[{size}]"
    return ", ".join(t for t in (text, op, more) if t)


class Op:
    """One collective of one communicator: its number there (`seq`, counted alike on every
    rank), what it is (`kind`, `detail`: see detail_text), and when it started, began to be
    waited for and ended (time.monotonic)."""

    __slots__ = ("cid", "seq", "kind", "detail", "t_start", "t_wait", "t_end")

    def __init__(self, cid: str, seq: int, kind: str, detail=""):
        self.cid, self.seq, self.kind, self.detail = cid, seq, kind, detail
        self.t_start, self.t_wait, self.t_end = time.monotonic(), None, None

    def describe(self) -> str:
        detail = detail_text(self.detail)
        return f"{self.kind} #{self.seq} on communicator {self.cid!r}" + \
            (f" ({detail})" if detail else "")

    def summary(self) -> dict:
        now = time.monotonic()
        return {"cid": self.cid, "seq": self.seq, "kind": self.kind,
                "detail": detail_text(self.detail), "age": now - (self.t_wait or self.t_start),
                "ended": None if self.t_end is None else now - self.t_end}


def main_thread_location(limit: int = 3) -> list[str]:
    """Where the main thread is: its innermost `limit` frames outside the waiting machinery,
    innermost first, as 'file:line in function: code', and then the innermost frame outside
    nnx (the caller's own code) when it is not among them."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    if frame is None:
        return []
    out, own = [], False
    for fs in reversed(traceback.extract_stack(frame)):
        if fs.filename.endswith(_OWN_FILES):
            continue
        outside = not _in_package(fs.filename)
        if len(out) < limit or (outside and not own):
            code = f": {fs.line.strip()}" if fs.line else ""
            out.append(f"{_short(fs.filename)}:{fs.lineno} in {fs.name}{code}")
            own = own or outside
        if len(out) >= limit and own:
            break
    return out


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PACKAGE_PARENT = os.path.dirname(_PACKAGE_DIR)


def _in_package(path: str) -> bool:
    try:
        return os.path.commonpath([os.path.abspath(path), _PACKAGE_DIR]) == _PACKAGE_DIR
    except ValueError:
        return False


def _short(path: str) -> str:
    """nnx's files from the package (nnx/training.py), others relative to the working
    directory when below it."""
    try:
        if os.path.commonpath([path, _PACKAGE_PARENT]) == _PACKAGE_PARENT:
            return os.path.relpath(path, _PACKAGE_PARENT)
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if not rel.startswith("..") else path


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.1f} s"


def format_report(rank: int, size: int, op: Op | dict, waited: float, timeout: float,
                  answers: dict, location: list[str], device: bool = False) -> str:
    """The text a rank prints when its wait in `op` passed `timeout`: the collective, where
    this rank is, and per other rank (`answers`: rank -> its state dict, "left" note, or None
    when it did not answer) whether it arrived and where it is instead."""
    o = op.summary() if isinstance(op, Op) else op
    what = op.describe() if isinstance(op, Op) else \
        f"{o['kind']} #{o['seq']} on communicator {o['cid']!r}" + \
        (f" ({o['detail']})" if o["detail"] else "")
    head = (f"[nnx.distributed] rank {rank} of {size}: collective timeout: "
            + (f"the NCCL operation {what} has not completed on the GPU after {_fmt_s(waited)}"
               if device else f"waited {_fmt_s(waited)} in {what}")
            + f" (timeout {timeout:g} s)")
    lines = [head]
    if location:
        lines.append(f"  rank {rank} (this rank) is at " + "\n      called from ".join(location))
    missing = []
    for r in sorted(answers):
        text, arrived = describe_rank(r, answers[r], o)
        lines.append(f"  rank {r} {text}")
        if not arrived:
            missing.append(r)
    if missing:
        lines.append(f"  ranks that did not arrive: {', '.join(map(str, missing))}")
    lines.append(f"  aborting all ranks (exit status {EXIT_STATUS}). Set the timeout with "
                 f"nnx.distributed.init(timeout=SECONDS) or {TIMEOUT_ENV}=SECONDS (0: no "
                 "timeout).")
    return "\n".join(lines) + "\n"


def describe_rank(r: int, state, o: dict) -> tuple[str, bool]:
    """(text, arrived) for rank `r` seen from a rank waiting in collective `o`."""
    cid, seq = o["cid"], o["seq"]
    if state is None:
        return ("did not arrive: it did not answer (stalled outside nnx's collectives with "
                "no service thread, as without MPI_THREAD_MULTIPLE; stuck in native code that "
                "holds the GIL; or its process is gone)"), False
    done = state.get("seqs", {}).get(cid, 0)  # collectives it started on that communicator
    where = state.get("where") or []
    at = f", at {where[0]}" if where else ""
    last = state.get("last")
    last_text = (f"; its last was {last['kind']} #{last['seq']} on {last['cid']!r}, ended "
                 f"{_fmt_s(last['ended'])} ago" if last and last.get("ended") is not None
                 else "")
    if state.get("type") == "left":
        return (f"did not arrive: its script ended after {done} collective(s) on {cid!r} "
                f"(this one is #{seq}): it made fewer collectives than this rank (e.g. one "
                "train_step or batch fewer), or stopped on an error without aborting the job"
                ), False
    cur = state.get("current")
    if cur is not None and cur["cid"] == cid and cur["seq"] == seq:
        if cur["kind"] == o["kind"]:
            return f"arrived (waiting {_fmt_s(cur['age'])})", True
        return (f"did not arrive: it waits in {cur['kind']} #{cur['seq']} instead (the ranks "
                f"called different collectives){at}"), False
    if cur is not None:
        return (f"did not arrive: it has waited {_fmt_s(cur['age'])} in {cur['kind']} "
                f"#{cur['seq']} on {cur['cid']!r} ({done} started on {cid!r}){at}"), False
    if done >= seq:
        return f"arrived, then went on ({done} collectives started on {cid!r}){at}", True
    idle = f" for {_fmt_s(last['ended'])}" if last and last.get("ended") is not None else ""
    return (f"did not arrive: it is outside nnx's collectives{idle} ({done} started on {cid!r})"
            f"{at}{last_text}"), False


class Watchdog:
    """The collective timeout of one communicator and its duplicates (see the module docstring).

    `comm`: the mpi4py communicator whose ranks are reported; `timeout`: seconds or None;
    `abort(code)`: ends the job. `threaded` (default: MPI_THREAD_MULTIPLE) starts the service
    thread. A duplicate registers itself with `register(name)` and numbers its own
    collectives."""

    def __init__(self, comm, MPI, timeout: float | None, abort, threaded: bool | None = None):
        self.MPI = MPI
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.timeout = timeout
        self._abort = abort
        self.seqs: dict[str, int] = {}
        self.current: Op | None = None  # the collective the main thread waits in
        self.last: Op | None = None
        self.left: dict[int, dict] = {}  # ranks whose script ended: rank -> their note
        self.device_ops: list = []  # (Op, event, device id) of NCCL operations in flight
        self.on_abort: list = []  # called before the job is aborted (NCCL communicators)
        self._lock = threading.Lock()
        self._sends: list = []
        self._printed = False
        self._expired = False
        self._closed = False
        self.ctl = comm.Dup()  # questions and answers only: point-to-point, two tags
        if threaded is None:
            threaded = MPI.Query_thread() == MPI.THREAD_MULTIPLE
        self.threaded = bool(threaded) and self.size > 1
        self._stop = threading.Event()
        self._thread = None
        self.set_timeout(timeout)
        atexit.register(self.close)  # after mpi4py's import: runs before MPI_Finalize

    def set_timeout(self, timeout: float | None) -> None:
        """Change the timeout (seconds or None); starts the service thread when needed."""
        self.timeout = timeout
        if timeout is not None and self.threaded and self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._serve_forever, daemon=True,
                                            name="nnx-distributed-watchdog")
            self._thread.start()

    # -- bookkeeping of collectives -------------------------------------------------------
    def register(self, name: str) -> str:
        with self._lock:
            self.seqs.setdefault(name, 0)
        return name

    def enter(self, cid: str, kind: str, detail="") -> Op:
        """Count a collective that is starting on communicator `cid`."""
        seq = self.seqs.get(cid, 0) + 1
        self.seqs[cid] = seq
        return Op(cid, seq, kind, detail)

    def wait(self, req, op: Op) -> None:
        """Wait for the mpi4py request `req` of collective `op`, within the timeout: in
        MPI_Wait (full speed, the GIL released) while the service thread watches the deadline,
        or, without that thread, in a polling loop that watches it itself."""
        if self.timeout is None or self._thread is not None:
            op.t_wait = time.monotonic()
            self.current = op
            req.Wait()
        elif not req.Test():
            self._poll(req, op)
        op.t_end = time.monotonic()
        self.current, self.last = None, op

    def _poll(self, req, op: Op) -> None:
        t0 = op.t_wait = time.monotonic()
        deadline = None if self.timeout is None else t0 + self.timeout
        spin_until, delay, next_service = t0 + _SPIN_S, 0.0, t0
        self.current = op
        while not req.Test():
            now = time.monotonic()
            if now >= spin_until:
                time.sleep(delay)
                delay = min(delay * 2 or 5e-5, _MAX_SLEEP_S)
            if deadline is not None and now > deadline:
                self.expire(op, now - t0)
            if not self.threaded and now >= next_service:
                self.service()
                next_service = now + _POLL_S

    def device_op(self, op: Op, event, device: int) -> None:
        """Watch an NCCL operation until its CUDA `event` completes (service thread only)."""
        if self._thread is not None and self.timeout is not None:
            with self._lock:
                self.device_ops.append((op, event, device))

    # -- answering questions ------------------------------------------------------------------
    def state(self) -> dict:
        """What this rank tells a rank that asks where it is."""
        cur, last = self.current, self.last
        return {"rank": self.rank, "seqs": dict(self.seqs),
                "current": cur.summary() if cur is not None else None,
                "last": last.summary() if last is not None else None,
                "where": main_thread_location()}

    def service(self) -> None:
        """Answer the questions that have arrived, and record "left" notes."""
        MPI, ctl = self.MPI, self.ctl
        status = MPI.Status()
        while ctl.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_CTL, status=status):
            src = status.Get_source()
            msg = ctl.recv(source=src, tag=TAG_CTL)
            if msg.get("type") == "left":
                self.left[src] = msg
            elif msg.get("type") == "query":
                self._sends.append(ctl.isend(self.state(), dest=src, tag=TAG_REPLY))
                if msg.get("expired") and self.current is not None and not self._printed:
                    self._printed = True
                    _write(f"[nnx.distributed] rank {self.rank} of {self.size}: waited "
                           f"{_fmt_s(time.monotonic() - self.current.t_start)} in "
                           f"{self.current.describe()} when rank {src}'s collective timeout "
                           f"expired; rank {src} reports which ranks did not arrive\n")
        self._sends = [r for r in self._sends if not r.Test()]

    def _serve_forever(self) -> None:
        while not self._stop.wait(_POLL_S):
            try:
                self.service()
                self._check_device_ops()
                self._check_main_wait()
            except Exception as exc:  # MPI going down under us: stop answering
                if not self._stop.is_set() and not self._closed:
                    _write(f"[nnx.distributed] rank {self.rank}: the collective watchdog "
                           f"stopped: {exc!r}\n")
                return

    def _check_main_wait(self) -> None:
        """Expire the main thread's wait once it has lasted longer than the timeout."""
        cur, timeout = self.current, self.timeout
        if cur is None or timeout is None or cur.t_wait is None:
            return
        waited = time.monotonic() - cur.t_wait
        if waited > timeout and self.current is cur:
            self.expire(cur, waited)

    def _check_device_ops(self) -> None:
        if not self.device_ops:
            return
        with self._lock:
            ops, self.device_ops = self.device_ops, []
        pending = [(op, event, device) for op, event, device in ops
                   if not _event_done(event, device)]
        with self._lock:
            self.device_ops = pending + self.device_ops
        if pending and self.timeout is not None:
            op = pending[0][0]
            age = time.monotonic() - op.t_start
            if age > self.timeout:
                self.expire(op, age, device=True)

    # -- expiry -----------------------------------------------------------------------------
    def ask_everyone(self, grace: float) -> dict:
        """Every other rank's state (None for those that did not answer within `grace` s;
        the "left" note of those whose script ended)."""
        ctl, MPI = self.ctl, self.MPI
        answers: dict = {r: self.left[r] for r in self.left}
        asked = [r for r in range(self.size) if r != self.rank and r not in answers]
        for r in asked:
            try:
                self._sends.append(ctl.isend({"type": "query", "expired": True}, dest=r,
                                             tag=TAG_CTL))
            except Exception:  # that rank's process is gone
                answers[r] = None
        end = time.monotonic() + grace
        status = MPI.Status()
        while time.monotonic() < end and any(r not in answers for r in asked):
            if ctl.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_REPLY, status=status):
                src = status.Get_source()
                answers[src] = ctl.recv(source=src, tag=TAG_REPLY)
                continue
            self.service()  # the other waiting ranks ask this one meanwhile
            for r in list(self.left):  # a note that arrives now answers for its rank
                answers.setdefault(r, self.left[r])
            time.sleep(0.005)
        for r in asked:
            answers.setdefault(r, None)
        return answers

    def expire(self, op: Op, waited: float, device: bool = False) -> None:
        """Report and end the job (called once: from the service thread, or from the polling
        loop without one)."""
        with self._lock:
            if self._expired:
                return
            self._expired = True
        grace = min(5.0, max(1.0, (self.timeout or 3.0) / 3))
        location = main_thread_location(4)
        try:
            answers = self.ask_everyone(grace)
        except Exception as exc:  # pragma: no cover - the report goes out without answers
            answers = {r: None for r in range(self.size) if r != self.rank}
            location.append(f"(asking the other ranks failed: {exc!r})")
        _write(format_report(self.rank, self.size, op, waited, self.timeout or 0.0, answers,
                             location, device))
        time.sleep(0.5)  # let the other waiting ranks' lines out before the job goes down
        for fn in self.on_abort:
            try:
                fn()
            except Exception:  # pragma: no cover - best effort (NCCL abort)
                pass
        self._abort(EXIT_STATUS)

    # -- the end ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the service thread and tell the other ranks that this rank's script ended
        (at exit, before MPI_Finalize)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(1.0)
        if self._expired or self.size == 1:
            return
        try:
            if self.MPI.Is_finalized():
                return
            note = {"type": "left", "seqs": dict(self.seqs)}
            reqs = [self.ctl.isend(note, dest=r, tag=TAG_CTL)
                    for r in range(self.size) if r != self.rank]
            end = time.monotonic() + 1.0
            while not all(q.Test() for q in reqs) and time.monotonic() < end:
                time.sleep(0.001)
        except Exception:  # pragma: no cover - MPI already unusable: nothing to tell
            pass


def _event_done(event, device) -> bool:
    try:
        if device is None:
            return bool(event.done)
        with compat.cupy.cuda.Device(device):
            return bool(event.done)
    except Exception:  # pragma: no cover - a context torn down: nothing to wait for
        return True


def _write(text: str) -> None:
    sys.stdout.flush()
    sys.stderr.write(text)
    sys.stderr.flush()
