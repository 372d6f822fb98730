"""Transformer encoder classifiers, and the synthetic task that needs attention.

`build()` with its defaults reads MNIST row by row (INPUT = "rows": 28 timesteps of 28 pixels,
so `nnx train --model transformer` works): Dense(28, D) projects each row to a token, then
learned positions, `depth` pre-LN TransformerEncoderBlocks, a final LayerNorm, mean pooling over
time and Dense(D, classes). With `vocab_size=V` the front end is Embedding(V, D) instead, for
integer token sequences such as `synthetic_repeat_task`'s.

`synthetic_repeat_task(n, seq_len, vocab_size, seed)`: "is the first token repeated later in the
sequence?" (balanced binary labels). Answering needs to compare the first token with every
later one: a model without token mixing (bag of tokens, per-position MLP) stays at chance, one
attention layer suffices.
"""

from __future__ import annotations

LOSS = "softmax_cross_entropy"
INPUT = "rows"
TARGET = "labels"


def build(backend=None, seed=0, dtype="float32", vocab_size: int | None = None,
          seq_len: int = 28, input_dim: int = 28, embed_dim: int = 64, num_heads: int = 4,
          mlp_dim: int = 128, depth: int = 2, num_classes: int = 10, dropout: float = 0.0,
          pool: str = "mean", causal: bool = False):
    import nnx
    from nnx.layers.embedding import Embedding
    from nnx.layers.layernorm import LayerNorm
    from nnx.layers.positional import PositionalEmbedding
    from nnx.layers.sequence_pool import SequencePool
    from nnx.layers.transformer import TransformerEncoderBlock

    if vocab_size is None:
        front = nnx.Dense(input_dim, embed_dim, name="tokens")
    else:
        front = Embedding(vocab_size, embed_dim, name="tokens")
    layers = [front, PositionalEmbedding(seq_len, embed_dim, name="positions")]
    for i in range(depth):
        layers.append(TransformerEncoderBlock(embed_dim, num_heads, mlp_dim, dropout=dropout,
                                              causal=causal, name=f"block{i + 1}"))
    layers += [LayerNorm(embed_dim, name="final_norm"), SequencePool(pool, name="pool"),
               nnx.Dense(embed_dim, num_classes, name="head")]
    return nnx.Sequential(layers, backend=backend, seed=seed, dtype=dtype, name="transformer")


def synthetic_repeat_task(n: int, seq_len: int = 16, vocab_size: int = 16, seed: int = 0):
    """(x (n, seq_len) int64 tokens, y (n,) int64): y = 1 iff x[i, 0] occurs again in
    x[i, 1:]. Half the labels are 1; positives hold at least one copy of the first token at a
    random later position, negatives none (later tokens equal to it are redrawn)."""
    import numpy as np

    if seq_len < 2 or vocab_size < 2:
        raise ValueError("synthetic_repeat_task needs seq_len >= 2 and vocab_size >= 2")
    rng = np.random.default_rng(seed)
    x = rng.integers(0, vocab_size, size=(n, seq_len), dtype=np.int64)
    y = rng.integers(0, 2, size=n, dtype=np.int64)
    first = x[:, :1]
    rest = x[:, 1:]
    clash = (rest == first) & (y[:, None] == 0)
    shift = rng.integers(1, vocab_size, size=rest.shape, dtype=np.int64)
    rest[clash] = ((first + shift) % vocab_size)[clash]
    pos = rng.integers(1, seq_len, size=n)
    rows = np.flatnonzero(y == 1)
    x[rows, pos[rows]] = x[rows, 0]
    return x, y
