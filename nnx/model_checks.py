"""Host-side checks of what a Model's public methods are given, once per call, before any work.

Each check raises nnx's own error naming the argument, what was expected and what came, so that
careless input fails at the call instead of as a NumPy error deep in a kernel, or worse, as a
wrong number:

- integer arguments (epochs, batch_size, seeds, ...) are Python or NumPy integers, never bools
  or floats (`range()` would otherwise say "arg 3 must not be zero", or 2.5 slip through);
- inputs are numeric arrays with a batch axis, finite, and representable in the model's dtype
  (1e39 is finite in float64 but inf in float32; 7e4 is inf in float16): refused here, since a
  cast would turn them into inf and the output into NaN;
- integer and bool inputs are cast to the model's dtype batch by batch (`input_dtype`), so that
  a float32 model never runs in float64 on int64 data; a model whose first layer looks up
  integer ids (Embedding) keeps them as they are;
- weights and buffers given to `set_weights` / `set_buffers` are real numbers (no strings,
  objects, complex or datetimes), finite after the cast to the model's dtype, and a batch
  norm's running variance is >= 0.
"""

from __future__ import annotations

import numbers

import numpy as np

from .errors import InputError, ShapeError
from .hooks import StepHooks
from .layers.embedding import Embedding

SEED_LIMIT = 2**64  # NumPy's generators take any non-negative int; 64 bits is plenty


def check_int(arg: str, value, low: int = 0, owner: str = "") -> int:
    """`value` as an int >= low: Python and NumPy integers are accepted, bools and floats (even
    2.0) refused. Raises ValueError naming `arg` (and `owner`, e.g. "fit")."""
    if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)) \
            or value < low:
        what = "a positive int" if low == 1 else f"an int >= {low}"
        where = f"{owner}: " if owner else ""
        raise ValueError(f"{where}{arg} must be {what}, got {value!r}"
                         + (f" ({type(value).__name__})" if isinstance(value, (bool, float))
                            else ""))
    return int(value)


def check_batch_size(batch_size, owner: str = "") -> int:
    """`batch_size` as a positive int (see check_int); ValueError naming `owner` otherwise."""
    return check_int("batch_size", batch_size, 1, owner)


def check_seed(seed, owner: str):
    """None (a random seed) or an int in [0, 2**64); raises ValueError naming `owner`."""
    if seed is None:
        return None
    if not isinstance(seed, numbers.Integral) or isinstance(seed, (bool, np.bool_)) \
            or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{owner}: seed must be None or an int in [0, 2**64), got {seed!r}")
    return int(seed)


def check_flag(arg: str, value, owner: str = "") -> bool:
    """`value` as a bool (Python or NumPy bools only: 1 or "yes" are refused)."""
    if not isinstance(value, (bool, np.bool_)):
        where = f"{owner}: " if owner else ""
        raise ValueError(f"{where}{arg} must be True or False, got {value!r}")
    return bool(value)


def check_verbose(verbose, owner: str = "") -> int:
    """verbose: an int >= 0 or a bool (True is 1)."""
    if isinstance(verbose, (bool, np.bool_)):
        return int(verbose)
    return check_int("verbose", verbose, 0, owner)


def takes_empty_steps(model) -> bool:
    """Whether a hook of the model's step takes part in steps without samples (overrides
    `empty_step`: a data-parallel rank whose share of a batch is empty); without one, an
    empty batch given to train_step is a mistake."""
    return any(type(h).empty_step is not StepHooks.empty_step for h in model.hooks)


def input_dtype(model):
    """The dtype inputs are cast to before they reach the first layer: the model's dtype, or
    None when the first layer takes integer ids (Embedding), whose ids must stay integers."""
    first = next(iter(model.net.leaves()), None)
    return None if isinstance(first, Embedding) else model.ops.dtype


def _first_index(mask) -> tuple:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def _as_host_array(value, arg: str, ops) -> np.ndarray:
    try:
        return np.asarray(ops.to_host(value) if hasattr(value, "get") else value)
    except (ValueError, TypeError) as exc:  # ragged nested lists and the like
        raise InputError(f"{arg}: expected a numeric array, could not convert a "
                         f"{type(value).__name__} ({exc})") from exc


def check_x(model, x, arg: str = "x", allow_empty: bool = True):
    """`x` as a checked host array (a device array of a GPU backend is passed through): numeric,
    with a batch axis, finite, within the range of the model's dtype; with `allow_empty`
    False, at least one sample."""
    ops = model.ops
    if hasattr(x, "__cuda_array_interface__") and not ops.on_host:
        return x  # already on the device; skip the host scan
    x = _as_host_array(x, arg, ops)
    if x.dtype.kind not in "fiub":
        raise InputError(f"{arg}: expected a numeric array, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ShapeError(f"{arg}: expected a batch of shape (N, features...), got {x.shape}")
    if not allow_empty and len(x) == 0:
        raise InputError(f"{arg}: no samples (shape {x.shape}); at least one is needed")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = _first_index(~np.isfinite(x))
        raise InputError(f"{arg} contains NaN or inf (first at index {bad})")
    target = input_dtype(model)
    if target is not None and x.size and x.dtype.kind in "fiu" and _may_overflow(x.dtype, target):
        fmax = float(np.finfo(target).max)
        lo, hi = x.min(), x.max()
        if hi > fmax or lo < -fmax:
            idx = _first_index((x > fmax) | (x < -fmax))
            raise InputError(
                f"{arg}: value {x[idx].item()!r} at index {idx} is beyond the range of the model's "
                f"dtype {np.dtype(target)} (largest finite {fmax:.4g}): it would become inf "
                "and the output NaN; scale the inputs"
            )
    return x


def _may_overflow(src: np.dtype, target) -> bool:
    fmax = float(np.finfo(target).max)
    if src.kind == "f":
        return src.itemsize > np.dtype(target).itemsize
    return float(np.iinfo(src).max) > fmax


def check_targets(model, x, y, arg: str):
    """`y` against `x` (same number of samples) and the loss (its own checks)."""
    y = model.ops.to_host(y) if hasattr(y, "get") else _as_host_array(y, arg, model.ops)
    if np.ndim(y) == 0:
        raise ShapeError(f"{arg}: expected one target per sample (an array of shape (N, ...)), "
                         f"got a scalar {np.asarray(y).item()!r:.40}")
    if len(x) != len(y):
        raise ShapeError(f"{arg}: x has {len(x)} samples but y has {len(y)}")
    return y


def check_validation_data(validation_data):
    """(x_val, y_val, sample_weight_val or None) from a tuple or list of two or three."""
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
        got = (f"a {type(validation_data).__name__} of {len(validation_data)} item(s)"
               if isinstance(validation_data, (tuple, list))
               else f"a {type(validation_data).__name__}")
        raise ValueError(f"validation_data must be a tuple (x_val, y_val), got {got} (also "
                         "accepted: (x_val, y_val, sample_weight_val), an iterable of batches)")
    return (*validation_data, None)[:3]


def check_weights(model, weights) -> list:
    """The arrays for `set_weights`, checked and cast to the model's dtype on the host."""
    views = model.store.views()
    weights = list(weights)
    if len(weights) != len(views):
        raise ValueError(f"set_weights: expected {len(views)} arrays, got {len(weights)}")
    out = []
    for (layer, name), w in zip(views, weights):
        target = layer.params[name]
        out.append(_checked_array(model, f"set_weights: {layer.name}.{name}", w,
                                  tuple(target.shape), target.dtype))
    return out


def check_buffers(model, buffers: dict) -> dict:
    """The arrays for `set_buffers` (name -> array), checked and cast on the host; a running
    variance must be >= 0 (a negative one gives NaN outputs through its square root)."""
    out = {}
    for layer in model.layers:
        for k, v in layer.buffers.items():
            key = f"{layer.name}/{k}"
            if key not in buffers:
                raise ValueError(f"set_buffers: missing {key}")
            arr = _checked_array(model, f"set_buffers: {key}", buffers[key], tuple(v.shape),
                                 v.dtype)
            if k == "running_var" and arr.size and arr.min() < 0:
                idx = _first_index(arr < 0)
                raise InputError(f"set_buffers: {key} must be >= 0 (a variance), got "
                                 f"{arr[idx].item()!r} at index {idx}")
            out[key] = arr
    return out


def _checked_array(model, what: str, value, shape: tuple, dtype) -> np.ndarray:
    arr = _as_host_array(value, what, model.ops)
    if arr.dtype.kind not in "fiu":
        raise InputError(f"{what} must be an array of real numbers, got dtype {arr.dtype}")
    if arr.shape != shape:
        raise ShapeError(f"{what} expects shape {shape}, got {arr.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        cast = arr.astype(np.dtype(dtype), copy=False)
    if cast.dtype.kind == "f" and not np.isfinite(cast).all():
        idx = _first_index(~np.isfinite(cast))
        raise InputError(f"{what} contains a value that is not finite in {np.dtype(dtype)}: "
                         f"{arr[idx].item()!r} at index {idx}")
    return cast


def check_sample_weight(model, w, n: int, output_shape: tuple, arg: str = "sample_weight"):
    """`w` as a float64 host array of shape (N,) (one weight per sample) or (N, T) (one per
    position of a per-position output, e.g. a padding mask): finite and >= 0. Raises
    InputError / ShapeError naming `arg`."""
    w = _as_host_array(w, arg, model.ops)
    if w.dtype.kind not in "fiub":
        raise InputError(f"{arg}: expected numbers, got dtype {w.dtype}")
    positions = model.loss.positions((n, *output_shape))
    allowed = [tuple(positions[:1])] + ([tuple(positions[:2])] if len(positions) >= 2 else [])
    if w.shape not in allowed:
        raise ShapeError(f"{arg}: expected shape {' or '.join(map(str, allowed))} (a weight per "
                         f"sample{', or per position' if len(allowed) > 1 else ''}), got "
                         f"{w.shape}")
    w = w.astype(np.float64, copy=False)
    if w.size and not np.isfinite(w).all():
        raise InputError(f"{arg} contains NaN or inf (first at index "
                         f"{_first_index(~np.isfinite(w))})")
    if w.size and w.min() < 0:
        idx = _first_index(w < 0)
        raise InputError(f"{arg}: weights must be >= 0, got {w[idx].item()!r} at index {idx}")
    return w


def class_weights(model, y, class_weight, output_shape: tuple, arg: str = "class_weight"):
    """Per-sample (or per-position) weights from `class_weight` {class: weight} and checked
    targets `y`, as Keras: the class of a target is its label, the argmax of a one-hot row, or
    the rounded value of a single binary column; classes missing from the dict weigh 1.
    Needs a classification loss; raises ValueError / InputError naming `arg`."""
    if not isinstance(class_weight, dict) or not class_weight:
        raise ValueError(f"{arg} must be a non-empty dict {{class: weight}}, got "
                         f"{type(class_weight).__name__}")
    if not model.loss.has_accuracy:
        raise ValueError(f"{arg} needs a classification loss, not {model.loss.name}")
    table = {}
    for k, v in class_weight.items():
        if not isinstance(k, numbers.Integral) or isinstance(k, (bool, np.bool_)) or k < 0:
            raise ValueError(f"{arg}: classes must be ints >= 0, got {k!r}")
        if not isinstance(v, numbers.Real) or isinstance(v, (bool, np.bool_)) \
                or not np.isfinite(v) or v < 0:
            raise ValueError(f"{arg}: the weight of class {k} must be a finite number >= 0, "
                             f"got {v!r}")
        table[int(k)] = float(v)
    y = np.asarray(y)
    n = len(y)
    full = (n, *output_shape)
    if y.shape == full and output_shape and output_shape[-1] > 1:
        labels = y.argmax(axis=-1)  # one-hot / probabilities (or multi-label: Keras's rule)
    elif y.shape == full and output_shape and output_shape[-1] == 1:
        labels = np.rint(y[..., 0])
    else:
        labels = np.rint(y) if y.dtype.kind == "f" else y
    labels = labels.astype(np.int64)
    if labels.ndim > 2:
        raise ShapeError(f"{arg}: class weights give one weight per sample or per position "
                         f"(N,) or (N, T); these targets have classes of shape {labels.shape}")
    lut = np.ones(max(max(table), int(labels.max(initial=0))) + 1)
    for k, v in table.items():
        lut[k] = v
    return lut[np.clip(labels, 0, None)]


def check_validation_split(validation_split, n: int) -> int:
    """The number of training samples that `validation_split` (a float in (0, 1): the last
    fraction of the data, before shuffling, as Keras) leaves; both parts must be non-empty."""
    if not isinstance(validation_split, numbers.Real) or isinstance(validation_split, bool) \
            or not 0 < validation_split < 1:
        raise ValueError(f"fit: validation_split must be a number in (0, 1), got "
                         f"{validation_split!r}")
    split_at = int(n * (1.0 - float(validation_split)))
    if split_at < 1 or split_at >= n:
        raise ValueError(f"fit: validation_split={validation_split} of {n} samples leaves "
                         f"{split_at} for training and {n - split_at} for validation; both "
                         "need at least one")
    return split_at


def check_input_shape(input_shape, owner: str) -> tuple:
    """One sample's shape (without the batch axis) as a tuple of positive ints; ValueError
    naming `owner` otherwise (a bare int means (int,))."""
    if isinstance(input_shape, numbers.Integral) and not isinstance(input_shape, bool):
        input_shape = (input_shape,)
    if not isinstance(input_shape, (tuple, list)) or not all(
            isinstance(d, numbers.Integral) and not isinstance(d, (bool, np.bool_)) and d >= 1
            for d in input_shape):
        raise ValueError(f"{owner} must be a tuple of positive ints (one sample's shape, "
                         f"without the batch axis), got {input_shape!r}")
    return tuple(int(d) for d in input_shape)
