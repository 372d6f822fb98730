"""Character-level language model: token ids (N, T) -> next-character logits (N, T, vocab).

`build(arch="lstm")` (the default): Embedding(vocab, embed_dim) -> LSTM(embed_dim, hidden,
return_sequences=True) -> Dense(hidden, vocab). `build(arch="transformer")` (also the zoo model
`char_transformer`): Embedding -> PositionalEmbedding(seq_len) -> `depth` causal pre-LN
TransformerEncoderBlocks -> LayerNorm -> Dense(embed_dim, vocab); seq_len is its context.
Both generate text through `nnx.generate` (incremental decoding: the LSTM carries its state,
the attention keeps a key/value cache).

Data: `load_data(text)` fits a `nnx.text.CharTokenizer` on the whole text (so the validation
tail has no unknown characters), holds out its last `val_fraction` (contiguous, no overlap with
training windows) and cuts both parts into next-token windows (`nnx.text.next_token_windows`):
x (n, seq_len) ids, y the same shifted by one. The loss is softmax cross-entropy at every
position; its value is nats per character. Without a text, the corpus shipped with nnx
(`nnx.text.sample_text()`, its own documentation) is used.
"""

from __future__ import annotations

LOSS = "softmax_cross_entropy"
INPUT = "text"  # token ids (N, T), from load_data
TARGET = "next_tokens"  # (N, T): the next id at every position
ARCHS = ("lstm", "transformer")


def build(backend=None, seed=0, dtype="float32", vocab_size: int = 96, arch: str = "lstm",
          seq_len: int = 128, embed_dim: int | None = None, hidden: int = 256, depth: int = 2,
          num_heads: int = 4, dropout: float = 0.0):
    """The model (see the module docstring). `embed_dim` defaults to 64 for the LSTM and 128
    for the transformer; `hidden` is the LSTM's width (the transformer's MLP is 4 * embed_dim);
    `seq_len` is the transformer's context (its positional table)."""
    import nnx
    from nnx.layers.embedding import Embedding
    from nnx.layers.layernorm import LayerNorm
    from nnx.layers.lstm import LSTM
    from nnx.layers.positional import PositionalEmbedding
    from nnx.layers.transformer import TransformerEncoderBlock

    if arch not in ARCHS:
        from nnx.errors import unknown

        raise unknown("charlm arch", arch, ARCHS)
    if arch == "lstm":
        d = embed_dim or 64
        layers = [Embedding(vocab_size, d, name="tokens"),
                  LSTM(d, hidden, return_sequences=True, name="lstm")]
        if dropout:
            layers.append(nnx.Dropout(dropout, name="dropout"))
        layers.append(nnx.Dense(hidden, vocab_size, name="head"))
        name = "charlm"
    else:
        d = embed_dim or 128
        layers = [Embedding(vocab_size, d, name="tokens"),
                  PositionalEmbedding(seq_len, d, name="positions")]
        layers += [TransformerEncoderBlock(d, num_heads, 4 * d, dropout=dropout, causal=True,
                                           name=f"block{i + 1}") for i in range(depth)]
        layers += [LayerNorm(d, name="final_norm"), nnx.Dense(d, vocab_size, name="head")]
        name = "char_transformer"
    return nnx.Sequential(layers, backend=backend, seed=seed, dtype=dtype, name=name)


def load_data(text: str | None = None, seq_len: int = 128, stride: int | None = None,
              val_fraction: float = 0.1):
    """(tokenizer, (x_train, y_train), (x_val, y_val)) from `text` (default: the corpus shipped
    with nnx). Windows of `seq_len` ids start every `stride` characters (default seq_len // 2);
    see the module docstring."""
    from nnx import text as text_mod

    if text is None:
        text = text_mod.sample_text()
    tok = text_mod.CharTokenizer().fit(text)
    train, val = text_mod.split_text(text, val_fraction)
    stride = stride or max(1, seq_len // 2)
    xtr, ytr = text_mod.next_token_windows(tok.encode(train), seq_len, stride)
    xva, yva = text_mod.next_token_windows(tok.encode(val), seq_len, seq_len)
    return tok, (xtr, ytr), (xva, yva)


def read_text(path: str) -> str:
    """A text file's content (UTF-8; undecodable bytes replaced), for `--text PATH`."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()
