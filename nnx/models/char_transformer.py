"""Character-level causal Transformer language model: `nnx.models.charlm` with
arch="transformer" (Embedding -> PositionalEmbedding(seq_len) -> `depth` causal pre-LN blocks ->
LayerNorm -> Dense(embed_dim, vocab)); the same data (`load_data`) and loss."""

from __future__ import annotations

from .charlm import INPUT, LOSS, TARGET, load_data, read_text

__all__ = ["INPUT", "LOSS", "TARGET", "build", "load_data", "read_text"]


def build(backend=None, seed=0, dtype="float32", vocab_size: int = 96, seq_len: int = 128,
          embed_dim: int = 128, depth: int = 2, num_heads: int = 4, dropout: float = 0.0):
    """`charlm.build(arch="transformer", ...)` (see nnx.models.charlm)."""
    from .charlm import build as build_charlm

    return build_charlm(backend, seed, dtype, vocab_size, "transformer", seq_len=seq_len,
                        embed_dim=embed_dim, depth=depth, num_heads=num_heads, dropout=dropout)
