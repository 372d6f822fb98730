"""Text generation: `generate(model, prompt, max_new_tokens, ...)` (also `model.generate`).

For models that map token ids (N, T) to per-position logits (N, T, vocab): a character-level
LSTM, a causal Transformer. The prompt is fed in one chunk, then one token at a time, through
the layers' decode steps (`nnx.layers.decode`): recurrent layers carry their states, causal
attention keeps a key/value cache preallocated up to the context length, so each new token
costs about the same wherever it sits. The decoding state belongs to this call; nothing is
stored on the model.

Context. A model with a positional table of max_len positions sees at most max_len tokens.
When the sequence outgrows it, the window slides: the last max_len // 2 tokens are fed again
from position 0 into fresh state (the cost of one chunk, once every max_len // 2 tokens), so
the cost per token stays bounded. Recurrent models have no such bound and never slide.

Sampling, per sequence and step, on the host in float64: logits / temperature, then the
`top_k` largest kept, then the smallest set of most likely tokens whose probability reaches
`top_p`, then one draw from a NumPy generator seeded with `seed`, so a seeded call gives the
same tokens every time on a backend (the backends' logits agree to rounding, so they give the
same tokens unless two candidates tie to within it). `top_k=1` or `temperature=0` is greedy
(argmax).

`use_cache=False` computes each step's logits by running the whole current window through
`forward` instead (the reference the cached path is tested against; its cost grows with the
window).
"""

from __future__ import annotations

import numpy as np

from .errors import InputError, ShapeError
from .layers import decode
from .layers.decode import DecodeError


def generate(model, prompt, max_new_tokens: int, temperature: float = 1.0, top_k=None,
             top_p=None, seed=None, *, use_cache: bool = True):
    """Continue `prompt` by `max_new_tokens` sampled tokens; returns prompt + new ids (int64).

    `prompt`: token ids, one sequence (T,) or a batch (N, T), T >= 1 (a str must be encoded
    first, e.g. with `nnx.text.CharTokenizer`). The result has the prompt's layout: (T + new,)
    or (N, T + new). `temperature` > 0 (0: greedy); `top_k` a positive int or None; `top_p` in
    (0, 1] or None; `seed` an int for reproducible sampling (None: fresh entropy).
    Raises DecodeError naming the layer when the model cannot generate (not causal, no
    per-position output, a layer without a decode step), and when its output is not
    per-position logits over the vocabulary its input takes."""
    ids, single = _check_prompt(prompt)
    _check_int("max_new_tokens", max_new_tokens, 0)
    greedy = _check_sampling(temperature, top_k, top_p)
    net, ops = model.net, model.ops
    n, t0 = ids.shape
    total = t0 + int(max_new_tokens)
    context = decode.context_length(net)
    capacity = total if context is None else min(context, total)
    keep = None if context is None else max(1, context // 2)
    # The structure is checked before anything is computed (and the state is the cache).
    state = decode.init_state(net, n, capacity)
    out = np.empty((n, total), dtype=np.int64)
    out[:, :t0] = ids
    if max_new_tokens:
        rng = np.random.default_rng(seed)
        runner = _Cached(net, ops, n, capacity, state) if use_cache else _Uncached(net, ops)
        start = 0 if context is None else max(0, t0 - context)
        logits = runner.prefill(out[:, start:t0])
        vocab = _check_logits(model, logits, n, t0 - start)
        for i in range(t0, total):
            last = ops.to_host(logits[:, -1]).astype(np.float64)
            out[:, i] = _sample(last, temperature, top_k, top_p, greedy, rng)
            if i + 1 == total:
                break
            if context is not None and i + 1 - start > context:  # slide the window
                start = i + 1 - keep
                logits = runner.prefill(out[:, start:i + 1])
            else:
                logits = runner.step(out[:, i:i + 1], out[:, start:i + 1])
            if logits.shape[-1] != vocab:
                raise ShapeError(f"generate: the model's vocabulary changed from {vocab} to "
                                 f"{logits.shape[-1]} between steps")
    return out[0] if single else out


class _Cached:
    """Incremental decoding: the prompt (or a slid window) in one chunk, then one token per
    step, through the layers' decode steps."""

    def __init__(self, net, ops, n, capacity, state):
        self.net, self.ops, self.n, self.capacity = net, ops, n, capacity
        self.state = state
        self.fresh = True

    def prefill(self, window):
        if not self.fresh:
            self.state = decode.init_state(self.net, self.n, self.capacity)
        self.fresh = False
        y, self.state = decode.step(self.net, self.ops.asarray(window), self.state)
        return y

    def step(self, token, window):
        y, self.state = decode.step(self.net, self.ops.asarray(token), self.state)
        return y


class _Uncached:
    """The reference: every step runs the whole current window through `forward`."""

    def __init__(self, net, ops):
        self.net, self.ops = net, ops

    def prefill(self, window):
        return self.net.forward(self.ops.asarray(window), training=False)

    def step(self, token, window):
        return self.prefill(window)


# -- checks -----------------------------------------------------------------------------------
def _check_prompt(prompt):
    if isinstance(prompt, str):
        raise InputError("generate: prompt must be token ids, got a str; encode it first "
                         "(e.g. nnx.text.CharTokenizer().fit(text).encode(prompt))")
    ids = prompt.get() if hasattr(prompt, "__cuda_array_interface__") else np.asarray(prompt)
    if ids.dtype.kind == "f" and ids.size and np.array_equal(ids, np.round(ids)):
        ids = ids.astype(np.int64)
    if ids.dtype.kind not in "iu" and ids.size:
        raise InputError(f"generate: prompt must hold integer token ids, got dtype {ids.dtype}")
    if ids.ndim not in (1, 2) or ids.shape[-1] < 1 or (ids.ndim == 2 and ids.shape[0] < 1):
        raise ShapeError(f"generate: prompt must have shape (T,) or (N, T) with T >= 1 and "
                         f"N >= 1, got shape {ids.shape}")
    if ids.min() < 0:
        raise InputError(f"generate: prompt token ids must be >= 0, got {int(ids.min())}")
    single = ids.ndim == 1
    return ids.reshape(1, -1).astype(np.int64) if single else ids.astype(np.int64), single


def _check_int(arg, value, low):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"generate: {arg} must be an int >= {low}, got {value!r}")


def _check_sampling(temperature, top_k, top_p) -> bool:
    """Validate the sampling arguments; True when decoding is greedy."""
    if not isinstance(temperature, (int, float, np.floating)) or isinstance(temperature, bool) \
            or not np.isfinite(temperature) or temperature < 0:
        raise ValueError(f"generate: temperature must be a finite number >= 0 (0: greedy), got "
                         f"{temperature!r}")
    if top_k is not None:
        _check_int("top_k", top_k, 1)
    if top_p is not None and (not isinstance(top_p, (int, float, np.floating))
                              or isinstance(top_p, bool) or not 0 < top_p <= 1):
        raise ValueError(f"generate: top_p must be a number in (0, 1] or None, got {top_p!r}")
    return temperature == 0 or top_k == 1


def _check_logits(model, logits, n, t):
    """The vocabulary size, after checking that the output is per-position logits over the
    ids the model takes."""
    if logits.ndim != 3 or tuple(logits.shape[:2]) != (n, t) or logits.shape[-1] < 2:
        raise DecodeError(f"generate: {model.describe()} must map token ids (N, T) to "
                          f"per-position logits (N, T, vocab); for ids of shape ({n}, {t}) it "
                          f"output shape {tuple(logits.shape)}")
    vocab = int(logits.shape[-1])
    takes = next((leaf.num_embeddings for leaf in model.net.leaves()
                  if hasattr(leaf, "num_embeddings")), None)
    if takes is not None and vocab > takes:
        raise DecodeError(f"generate: {model.describe()} outputs logits over {vocab} tokens but "
                          f"its embedding takes ids < {takes}: a sampled id could not be fed "
                          "back")
    return vocab


# -- sampling ---------------------------------------------------------------------------------
def _sample(logits, temperature, top_k, top_p, greedy, rng):
    """One token id per row of `logits` (N, V) float64 (see the module docstring)."""
    if greedy:
        return logits.argmax(axis=-1)
    z = logits / temperature
    v = z.shape[-1]
    if top_k is not None and top_k < v:
        kth = np.argsort(-z, axis=-1, kind="stable")[:, top_k:]
        np.put_along_axis(z, kth, -np.inf, axis=-1)
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1:
        order = np.argsort(-p, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(p, order, axis=-1)
        before = np.cumsum(sorted_p, axis=-1) - sorted_p  # mass of the more likely tokens
        drop = before >= top_p  # keeps the most likely token, and each until top_p is reached
        np.put_along_axis(p, order, np.where(drop, 0.0, sorted_p), axis=-1)
        p /= p.sum(axis=-1, keepdims=True)
    cdf = np.cumsum(p, axis=-1)
    u = rng.random(len(p)) * cdf[:, -1]
    picks = (cdf <= u[:, None]).sum(axis=-1)
    return np.minimum(picks, v - 1)
