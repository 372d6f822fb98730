"""Text for language models: a character tokenizer, next-token windows, a bundled corpus.

    tok = nnx.text.CharTokenizer().fit(text)        # the vocabulary: the text's characters
    ids = tok.encode(text)                          # int64 array, one id per character
    x, y = nnx.text.next_token_windows(ids, seq_len=64, stride=32)   # y: x shifted by one
    model.fit(x, y, ...)                            # (N, T) ids -> (N, T, vocab) logits
    tok.decode(model.generate(tok.encode("The "), 200))

A tokenizer travels with a model's checkpoint as JSON metadata (`tok.to_config()`,
`tokenizer_from_config(...)`; `nnx train --model charlm` and `nnx generate` do this), so a
saved language model can be sampled from without its training text.

`sample_text()` is the corpus shipped with the package: nnx's own documentation (the README,
the benchmark notes and the modules' docstrings, assembled by tools/make_docs_text.py), about
150 KB of English with code, for examples and tests that must run offline.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError, ShapeError

SAMPLE_TEXT = "nnx_docs.txt"


class CharTokenizer:
    """One id per distinct character of the text it was fitted on, in sorted order (so the same
    text always gives the same ids). Characters it has not seen are refused by `encode` (an
    InputError naming the character and its position), not silently mapped."""

    def __init__(self, chars=None):
        self.chars: str | None = None
        self._index: dict[str, int] = {}
        if chars is not None:
            self._set(chars)

    def _set(self, chars) -> None:
        if not isinstance(chars, str) or not chars:
            raise InputError(f"CharTokenizer: the vocabulary must be a non-empty str, got "
                             f"{type(chars).__name__} {chars!r:.60}")
        if len(set(chars)) != len(chars):
            raise InputError("CharTokenizer: the vocabulary repeats characters")
        self.chars = chars
        self._index = {c: i for i, c in enumerate(chars)}

    def fit(self, text: str) -> CharTokenizer:
        """Take the vocabulary from `text` (its distinct characters, sorted); returns self."""
        if not isinstance(text, str) or not text:
            raise InputError(f"CharTokenizer.fit: expected a non-empty str, got "
                             f"{type(text).__name__} of length {len(text) if text else 0}")
        self._set("".join(sorted(set(text))))
        return self

    @property
    def vocab_size(self) -> int:
        """The number of distinct characters (needs a fitted tokenizer)."""
        self._require_fitted("vocab_size")
        return len(self.chars)

    def _require_fitted(self, what: str) -> None:
        if self.chars is None:
            raise RuntimeError(f"CharTokenizer.{what}: the tokenizer has no vocabulary yet; call "
                               "fit(text) first")

    def encode(self, text: str) -> np.ndarray:
        """The ids of `text`'s characters, an int64 array of shape (len(text),)."""
        self._require_fitted("encode")
        if not isinstance(text, str):
            raise InputError(f"CharTokenizer.encode: expected a str, got {type(text).__name__}")
        try:
            return np.fromiter((self._index[c] for c in text), dtype=np.int64, count=len(text))
        except KeyError:
            pos = next(i for i, c in enumerate(text) if c not in self._index)
            raise InputError(f"CharTokenizer.encode: character {text[pos]!r} (U+"
                             f"{ord(text[pos]):04X}) at index {pos} is not in the vocabulary of "
                             f"{len(self.chars)} characters the tokenizer was fitted on") from None

    def decode(self, ids) -> str:
        """The text of a sequence of ids (any integer array-like of one dimension)."""
        self._require_fitted("decode")
        ids = ids.get() if hasattr(ids, "__cuda_array_interface__") else np.asarray(ids)
        if ids.ndim != 1:
            raise ShapeError(f"CharTokenizer.decode: expected one sequence of ids (T,), got "
                             f"shape {ids.shape}; decode a batch row by row")
        if ids.size and ids.dtype.kind not in "iu":
            raise InputError(f"CharTokenizer.decode: ids must be integers, got dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.chars)):
            bad = int(ids.max() if ids.max() >= len(self.chars) else ids.min())
            raise InputError(f"CharTokenizer.decode: id {bad} out of range (expected 0 <= id < "
                             f"{len(self.chars)}, the vocabulary size)")
        chars = self.chars
        return "".join(chars[i] for i in ids.tolist())

    # -- persistence (checkpoint metadata) ------------------------------------------------
    def to_config(self) -> dict:
        """A JSON-able description: {"type": "char", "chars": the vocabulary}."""
        self._require_fitted("to_config")
        return {"type": "char", "chars": self.chars}

    @classmethod
    def from_config(cls, config) -> CharTokenizer:
        if not isinstance(config, dict) or config.get("type") != "char" \
                or not isinstance(config.get("chars"), str):
            raise InputError(f"CharTokenizer.from_config: expected {{'type': 'char', 'chars': "
                             f"str}}, got {config!r:.120}")
        return cls(config["chars"])

    def __repr__(self) -> str:
        size = "unfitted" if self.chars is None else f"vocab_size={len(self.chars)}"
        return f"CharTokenizer({size})"

    def __eq__(self, other) -> bool:
        return isinstance(other, CharTokenizer) and self.chars == other.chars

    __hash__ = None


def tokenizer_from_config(config):
    """Rebuild a tokenizer from `to_config()` output (e.g. a checkpoint's metadata)."""
    kind = config.get("type") if isinstance(config, dict) else None
    if kind == "char":
        return CharTokenizer.from_config(config)
    raise InputError(f"unknown tokenizer type {kind!r}; expected one of: char")


def next_token_windows(ids, seq_len: int, stride: int = 1):
    """Training pairs for next-token prediction from one long sequence of ids.

    Returns (x, y), int64 arrays of shape (n, seq_len): x[i] = ids[i * stride : i * stride +
    seq_len] and y[i] = ids[i * stride + 1 : i * stride + seq_len + 1] (the next token at every
    position), n = (len(ids) - seq_len - 1) // stride + 1 windows (the tail that does not fill a
    window is left out). Copies, so x and y can be shuffled and sliced freely."""
    for arg, v in (("seq_len", seq_len), ("stride", stride)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"next_token_windows: {arg} must be a positive int, got {v!r}")
    ids = ids.get() if hasattr(ids, "__cuda_array_interface__") else np.asarray(ids)
    if ids.ndim != 1:
        raise ShapeError(f"next_token_windows: expected one sequence of ids (L,), got shape "
                         f"{ids.shape}")
    if ids.size and ids.dtype.kind not in "iu":
        raise InputError(f"next_token_windows: ids must be integers, got dtype {ids.dtype}")
    if len(ids) < seq_len + 1:
        raise ShapeError(f"next_token_windows: a window of seq_len={seq_len} and its next token "
                         f"need {seq_len + 1} ids, got {len(ids)}")
    windows = np.lib.stride_tricks.sliding_window_view(ids.astype(np.int64), seq_len + 1)
    windows = windows[::stride]
    return np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])


def sample_text() -> str:
    """The corpus shipped with nnx (its own documentation; see the module docstring)."""
    from importlib import resources

    return resources.files("nnx.data").joinpath(SAMPLE_TEXT).read_text(encoding="utf-8")


def split_text(text: str, val_fraction: float = 0.1):
    """(train, validation): the last `val_fraction` of the text held out (a contiguous tail,
    so no validation window overlaps a training one)."""
    if not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise ValueError(f"split_text: val_fraction must be in (0, 1), got {val_fraction!r}")
    cut = int(round(len(text) * (1 - val_fraction)))
    return text[:cut], text[cut:]
