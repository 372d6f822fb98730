"""Where fit / evaluate / predict get their batches: in-memory arrays (`ArrayBatches`), or an
iterable or generator of batches (`SourceBatches`), on a GPU backend with the next batch
prepared in a background thread while the current one trains.

A batch source is any iterable that is not an array: a generator, an iterator, or an object
with `__iter__` (a Dataset, a torch DataLoader). Lists and tuples are array data, as
everywhere in nnx: pass `iter(list_of_batches)` for a list of batches. Each item is `(x, y)` or
`(x, y, sample_weight)` (predict: `x`, `(x,)` or `(x, y, ...)`, whose x is used). Items are
checked like arrays given to fit (dtype, finiteness, targets, weights) and moved to the
backend, batch by batch.

Epochs. A re-iterable object (one without `__next__`) is iterated afresh each epoch; an
iterator or generator can be read once, so successive epochs continue where the previous one
stopped. `steps_per_epoch` (fit) / `steps` (evaluate, predict) caps the batches per epoch;
without it an epoch ends where the source ends (a generator is then used up after one epoch).
A source that runs out before `steps` batches (or a used-up generator at an epoch start)
stops training with a `UserWarning`, as Keras's "Your input ran out of data" does: the
partial epoch is recorded, no further epochs run. An iterator is never read further than
steps_per_epoch * epochs items.

Prefetching, where it helps. On a GPU backend one background thread per source reads the next
items (at most `PREFETCH` ahead: a bounded queue), checks them and moves them to the device, so
the host work and the host-to-device copy overlap the running step; the step stays in the
calling thread, and the thread touches no layer. When fit stops early (EarlyStopping, an
error), up to PREFETCH + 1 items already read are dropped. On CPU backends (numpy, numba) the
items are read and prepared in the calling thread, between steps (`PREFETCH_ON_HOST`): there
a second Python thread competes for the GIL with the step, which takes it back between its
BLAS and Numba calls, and prefetching measured no faster, and much slower on a busy machine (an
MLP 784-256-10 on 2 cores, 141 steps of 128 from a generator: 0.43 s with the thread against
0.40 s without when the cores were free; 1.75 s against 0.74 s while other processes ran).
Either way an exception raised by the source reaches the caller as `BatchSourceError` naming
the batch (the original exception chained, its traceback intact), and a batch that fails a
check raises the check's own error (InputError, ShapeError, ...).
"""

from __future__ import annotations

import queue
import threading
import warnings

import numpy as np

from .errors import InputError, NNXError
from .model_checks import input_dtype

PREFETCH = 2  # batches prepared ahead of the running step (GPU backends)
PREFETCH_ON_HOST = False  # prefetch in a thread on CPU backends too (see the docstring)


class BatchSourceError(NNXError, RuntimeError):
    """The iterable or generator given to fit / evaluate / predict raised while producing a
    batch; the original exception is chained (`__cause__`)."""


def is_batch_source(x) -> bool:
    """Whether `x` is an iterable of batches rather than an array: anything iterable that is
    not a NumPy / backend array, a list or a tuple (those are array data)."""
    if x is None or isinstance(x, (np.ndarray, list, tuple, str, bytes, dict)):
        return False
    if hasattr(x, "__array__") or hasattr(x, "__cuda_array_interface__"):
        return False
    return hasattr(x, "__iter__") or hasattr(x, "__next__")


def split_scale(w_local, w_global, n_local: int, n_global: int):
    """The factor on a process's loss gradient that makes data-parallel training with weights
    equal one process's: the loss of a share is its own weighted mean, sum_l(w l) / W_l, and
    the strategy weighs shares by n_l / n; the global weighted mean sum(w l) / W needs the
    factor (W_l / W) * (n / n_l). None for an empty share (no loss)."""
    if not n_local:
        return None
    local, total = w_local.sum(), w_global.sum()  # 0-d backend arrays: no host sync
    return (local / (total + (total == 0))) * (n_global / n_local)


class ArrayBatches:
    """The batches of checked host arrays x, y and the loss and metric weights (or None),
    one epoch at a time: shuffled (fit) or in order, split by the model's hooks (fit under
    data parallelism) or whole. The arrays go where the backend keeps a dataset
    (`ops.device_dataset`: on a GPU when they fit) once, not once per epoch."""

    exhausted = False

    def __init__(self, model, x, y, w=None, mw=None, batch_size=32, shuffle=False,
                 split=False):
        ops = model.ops
        self.model, self.n, self.batch_size = model, len(x), batch_size
        self.shuffle, self.split = shuffle, split
        self.x_dtype = input_dtype(model)
        self.xd = ops.device_dataset(x)
        self.yd = None if y is None else ops.device_dataset(y)
        self.wd = None if w is None else ops.device_dataset(w)
        self.mwd = self.wd if mw is w else (None if mw is None else ops.device_dataset(mw))

    def epoch(self, epoch: int = 0):
        """Yields (xb, yb, wb, mwb, n_global, wscale): backend arrays (None where absent), the
        global batch's size, and the factor on this process's loss gradient when the hooks
        split a weighted batch (see `split_scale`), else None."""
        model = self.model
        ops = model.ops
        n = self.n
        order = (model.trainer.shuffle_generator().permutation(n) if self.shuffle
                 else np.arange(n))
        for start in range(0, n, self.batch_size):
            batch = order[start:start + self.batch_size]
            idx = model.hooks.split_batch(batch) if self.split else batch
            xb = ops.take_batch(self.xd, idx)
            if self.x_dtype is not None and xb.dtype != self.x_dtype:
                xb = xb.astype(self.x_dtype)
            yb = None if self.yd is None else model.loss.device_targets(
                ops, ops.take_batch(self.yd, idx))
            wb = None if self.wd is None else ops.take_batch(self.wd, idx)
            mwb = None if self.mwd is None else (wb if self.mwd is self.wd
                                                 else ops.take_batch(self.mwd, idx))
            wscale = None
            if wb is not None and len(idx) != len(batch):
                wscale = split_scale(wb, ops.take_batch(self.wd, batch), len(idx), len(batch))
            yield xb, yb, wb, mwb, len(batch), wscale

    def close(self) -> None:
        """Nothing to release (for symmetry with SourceBatches)."""


_END = object()  # the source ended
_LIMIT = object()  # the prefetcher read as many items as it was allowed to


class _Failure(Exception):
    """What the prefetch thread caught, carried to the caller's thread."""

    def __init__(self, exc, index, in_source):
        super().__init__(str(exc))
        self.exc, self.index, self.in_source = exc, index, in_source


class _Prefetcher:
    """One thread reading `iterator`, preparing each item with `prepare(item, index)` and
    putting the result in a queue of PREFETCH items; at most `limit` items are read."""

    def __init__(self, iterator, prepare, limit=None, first=_END):
        self.queue: queue.Queue = queue.Queue(maxsize=PREFETCH)
        self.stop = threading.Event()
        self.iterator, self.prepare, self.limit, self.first = iterator, prepare, limit, first
        self.thread = threading.Thread(target=self._run, name="nnx-batch-prefetch", daemon=True)
        self.thread.start()

    def _run(self):
        index = 0
        while not self.stop.is_set():
            if self.limit is not None and index >= self.limit:
                self._put(_LIMIT)
                return
            if self.first is not _END:
                item, self.first = self.first, _END
            else:
                try:
                    item = next(self.iterator)
                except StopIteration:
                    self._put(_END)
                    return
                except BaseException as exc:  # the user's code: reported in the caller
                    self._put(_Failure(exc, index, True))
                    return
            try:
                prepared = self.prepare(item, index)
            except BaseException as exc:
                self._put(_Failure(exc, index, False))
                return
            index += 1
            if not self._put(prepared):
                return

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def get(self):
        """The next prepared item, _END or _LIMIT; raises what the thread caught."""
        while True:
            try:
                item = self.queue.get(timeout=0.5)
                break
            except queue.Empty:
                if not self.thread.is_alive() and self.queue.empty():
                    return _END
        if isinstance(item, _Failure):
            raise item
        return item

    def close(self) -> None:
        """Stop the thread (it finishes the item it is reading) and drop what it prepared."""
        self.stop.set()
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        self.thread.join(timeout=2.0)


class _Inline:
    """The items of `iterator`, read and prepared in the calling thread when asked for (the
    interface of _Prefetcher)."""

    def __init__(self, iterator, prepare, limit=None, first=_END):
        self.iterator, self.prepare, self.limit, self.first = iterator, prepare, limit, first
        self.index, self.done = 0, False

    def get(self):
        if self.done:
            return _END
        if self.limit is not None and self.index >= self.limit:
            return _LIMIT
        if self.first is not _END:
            item, self.first = self.first, _END
        else:
            try:
                item = next(self.iterator)
            except StopIteration:
                self.done = True
                return _END
            except Exception as exc:  # the user's code: reported by the caller
                self.done = True
                raise _Failure(exc, self.index, True) from exc
        try:
            prepared = self.prepare(item, self.index)
        except Exception as exc:
            raise _Failure(exc, self.index, False) from exc
        self.index += 1
        return prepared

    def close(self) -> None:
        """Nothing runs in the background."""


class SourceBatches:
    """Batches from an iterable or generator (see the module docstring). `what` names the
    caller in messages ("fit", "validation_data", "evaluate", "predict"); `prepare(item,
    index) -> (xb, yb, wb, mwb)` checks one item and moves it to the backend (called in the
    prefetch thread); `first` is an item already read from the source (to build the model
    from), fed back first. `epochs` is how many epochs fit runs (an iterator is read at most
    steps * epochs times)."""

    def __init__(self, model, source, prepare, what, steps=None, epochs=1, split=False,
                 first=_END, first_iterator=None):
        self.model, self.source, self.prepare, self.what = model, source, prepare, what
        self.steps, self.split = steps, split
        self.reiterable = not hasattr(source, "__next__")
        self.exhausted = False
        self._pump = None
        self._first, self._first_iterator = first, first_iterator
        self._reader = _Prefetcher if PREFETCH_ON_HOST or not model.ops.on_host else _Inline
        if not self.reiterable:
            limit = None if steps is None else steps * epochs
            self._pump = self._reader(first_iterator or source, self._prepare_checked, limit,
                                      first)

    def _prepare_checked(self, item, index):
        return self.prepare(item, index)

    def _iterator_for_epoch(self):
        if not self.reiterable:
            return self._pump, False
        if self._first_iterator is not None:
            iterator, first = self._first_iterator, self._first
            self._first_iterator, self._first = None, _END
        else:
            iterator, first = _iterate(self.source, self.what), _END
        return self._reader(iterator, self._prepare_checked, self.steps, first), True

    def epoch(self, epoch: int = 0):
        """Yields (xb, yb, wb, mwb, n_global, wscale) for one epoch (see ArrayBatches.epoch
        and the module docstring)."""
        model = self.model
        pump, own = self._iterator_for_epoch()
        count = 0
        try:
            while self.steps is None or count < self.steps:
                try:
                    item = pump.get()
                except _Failure as failure:
                    raise self._error(failure, epoch) from failure.exc
                if item is _END or item is _LIMIT:
                    if item is _END and (self.steps is not None or count == 0):
                        self._ran_out(count, epoch)
                    break
                xb, yb, wb, mwb = item
                n = int(xb.shape[0])
                wscale = None
                if self.split:
                    idx = model.hooks.split_batch(np.arange(n))
                    if len(idx) != n:
                        w_global = wb
                        xb, yb, wb, mwb = (None if a is None else model.ops.take_batch(a, idx)
                                           for a in (xb, yb, wb, mwb))
                        if wb is not None:
                            wscale = split_scale(wb, w_global, len(idx), n)
                yield xb, yb, wb, mwb, n, wscale
                count += 1
        finally:
            if own:
                pump.close()

    def _error(self, failure, epoch):
        exc = failure.exc
        if not failure.in_source:
            return exc  # our own checks (InputError, ShapeError...) or a backend error
        return BatchSourceError(
            f"{self.what}: the batch source raised {type(exc).__name__} while producing batch "
            f"{failure.index + 1}" + (f" of epoch {epoch + 1}" if self.what == "fit" else "")
            + f": {exc}")

    def _ran_out(self, count, epoch):
        self.exhausted = True
        want = (f"{self.steps} steps" if self.steps is not None
                else "a batch (a generator or iterator is used up after one pass: pass "
                     "steps_per_epoch, or a re-iterable object)")
        where = f" in epoch {epoch + 1}" if self.what == "fit" else ""
        warnings.warn(
            f"{self.what}: the batch source ran out of data after {count} batch(es){where}, "
            f"expected {want}; stopping here. Make sure it can produce at least "
            "steps_per_epoch * epochs batches (e.g. a generator looping `while True`).",
            UserWarning, stacklevel=4)

    def close(self) -> None:
        """Stop the prefetch thread of a single-use source."""
        if self._pump is not None:
            self._pump.close()


def _iterate(source, what):
    try:
        return iter(source)
    except TypeError as exc:
        raise InputError(f"{what}: expected arrays or an iterable of batches, got a "
                         f"{type(source).__name__}") from exc


def first_item(source, what):
    """(iterator, first item) of a batch source, read in the calling thread (to build the
    model from its shapes); BatchSourceError when the source raises, InputError when it is
    empty."""
    iterator = source if hasattr(source, "__next__") else _iterate(source, what)
    try:
        item = next(iterator)
    except StopIteration:
        raise InputError(f"{what}: the batch source produced no batches") from None
    except Exception as exc:
        raise BatchSourceError(f"{what}: the batch source raised {type(exc).__name__} while "
                               f"producing batch 1: {exc}") from exc
    return iterator, item


def unpack(item, what: str, index: int, targets: bool = True):
    """(x, y, sample_weight) of one item ((x, y) or (x, y, w); predict: x alone too)."""
    if isinstance(item, dict):
        raise InputError(f"{what}: batch {index + 1} is a dict; expected a tuple (x, y) or "
                         "(x, y, sample_weight)")
    if isinstance(item, (tuple, list)) and len(item) in (1, 2, 3) and not _is_row(item):
        parts = list(item) + [None] * (3 - len(item))
        if targets and parts[1] is None:
            raise InputError(f"{what}: batch {index + 1} has no targets; expected a tuple "
                             "(x, y) or (x, y, sample_weight)")
        return parts[0], parts[1], parts[2]
    if targets:
        raise InputError(f"{what}: batch {index + 1} must be a tuple (x, y) or (x, y, "
                         f"sample_weight), got a {type(item).__name__}")
    return item, None, None


def _is_row(item) -> bool:
    """A list of plain numbers is array data (one row), not a (x, y) tuple."""
    return isinstance(item, list) and all(isinstance(v, (int, float)) for v in item)
