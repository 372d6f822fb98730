"""TransformerEncoderBlock: self-attention and an MLP, each in a residual branch with LayerNorm,
built by composition (Chain, Residual, LayerNorm, MultiHeadSelfAttention, Dense, Dropout).

Pre-LN (`norm_first=True`, the default; GPT-2 / ViT, trains stably without warm-up):

    x = x + Dropout(MHSA(LN1(x)))
    x = x + Dropout(Dense(mlp_dim -> D)(GELU(Dense(D -> mlp_dim)(LN2(x)))))

Post-LN (`norm_first=False`, the original Transformer and PyTorch's default):

    x = LN1(x + Dropout(MHSA(x)))
    x = LN2(x + Dropout(MLP(x)))

(A pre-LN stack usually ends with a final LayerNorm, added by the model, not by the block.)
The block is a container: `block.body` is the Chain above, its leaves are ordinary layers (named
"<block name>/ln1", "/attn", "/drop1", "/ln2", "/fc1", "/fc2", "/drop2"), and the parameters
(get_weights order) are those leaves' in the order of the formula: pre-LN ln1.gamma, ln1.beta,
attn.Wq, bq, Wk, bk, Wv, bv, Wo, bo, ln2.gamma, ln2.beta, fc1.W, fc1.b, fc2.W, fc2.b; post-LN
the same with each LayerNorm after its branch. Its config is the hyperparameters only.
"""

from __future__ import annotations

from . import decode
from .attention import MultiHeadSelfAttention
from .base import Layer
from .compose import Residual
from .container import Chain
from .dense import Dense
from .dropout import Dropout
from .layernorm import LayerNorm


class TransformerEncoderBlock(Layer):
    """TransformerEncoderBlock(embed_dim, num_heads, mlp_dim, dropout=0.0, causal=False,
    norm_first=True, activation="gelu"): one encoder block over (N, T, embed_dim) sequences
    (self-attention and an MLP, each in a residual branch with LayerNorm; see the module
    docstring); the output has the input's shape. `embed_dim=None` is inferred from the input
    shape when the model is built (the body is assembled then)."""

    inferable = "embed_dim"

    def __init__(self, embed_dim: int | None, num_heads: int, mlp_dim: int,
                 dropout: float = 0.0, causal: bool = False, norm_first: bool = True,
                 activation: str = "gelu", name: str | None = None):
        super().__init__(name)
        if not isinstance(mlp_dim, int) or isinstance(mlp_dim, bool) or mlp_dim < 1:
            raise ValueError(f"TransformerEncoderBlock {self.name!r}: mlp_dim must be a positive "
                             f"int, got {mlp_dim!r}")
        self._check_positive_ints(num_heads=num_heads)
        self.num_heads, self.mlp_dim = num_heads, mlp_dim
        self.dropout, self.causal = float(dropout), bool(causal)
        self.norm_first, self.activation = bool(norm_first), activation
        self.embed_dim, self.body = None, None
        if embed_dim is not None:
            self._check_positive_ints(embed_dim=embed_dim)
            self.set_input_size(embed_dim)

    def set_input_size(self, value):
        """Set embed_dim and assemble the body from the hyperparameters (None: no body yet)."""
        self.embed_dim = value
        self.body = None if value is None else self._build_body(value)

    def size_from_input(self, input_shape):
        if len(input_shape) != 2:
            raise self._expect("input of shape", "(batch, time, embed_dim)",
                               f"shape {(None, *input_shape)}")
        return int(input_shape[-1])

    def infer(self, input_shape):
        """embed_dim from the input shape (assembling the body), then the body's shapes."""
        super().infer(input_shape)
        return self.body.infer(tuple(input_shape))

    def _build_body(self, embed_dim):
        num_heads, mlp_dim, dropout, causal = (self.num_heads, self.mlp_dim, self.dropout,
                                               self.causal)
        activation = self.activation
        nm = self.name
        attn = MultiHeadSelfAttention(embed_dim, num_heads, causal, name=f"{nm}/attn")
        mlp = [Dense(embed_dim, mlp_dim, activation, name=f"{nm}/fc1"),
               Dense(mlp_dim, embed_dim, name=f"{nm}/fc2")]
        drop1, drop2 = Dropout(dropout, name=f"{nm}/drop1"), Dropout(dropout, name=f"{nm}/drop2")
        ln1 = LayerNorm(embed_dim, name=f"{nm}/ln1")
        ln2 = LayerNorm(embed_dim, name=f"{nm}/ln2")
        if self.norm_first:
            parts = [Residual(Chain([ln1, attn, drop1], name=f"{nm}/attn_branch"),
                              name=f"{nm}/res1"),
                     Residual(Chain([ln2, *mlp, drop2], name=f"{nm}/mlp_branch"),
                              name=f"{nm}/res2")]
        else:
            parts = [Residual(Chain([attn, drop1], name=f"{nm}/attn_branch"), name=f"{nm}/res1"),
                     ln1,
                     Residual(Chain([*mlp, drop2], name=f"{nm}/mlp_branch"), name=f"{nm}/res2"),
                     ln2]
        return Chain(parts, name=f"{nm}/body")

    def sublayers(self):
        return [self.body] if self.body is not None else []

    def call(self, x, training):
        self._require_sizes()
        return self.body.begin_update(x, training)

    def init_decode_state(self, batch, capacity):
        """Incremental decoding (causal blocks): the body's state (see nnx.layers.decode)."""
        return decode.init_state(self.body, batch, capacity)

    def decode_step(self, x, state):
        """One decoding step of the body on `x` with `state`; returns (y, the new state)."""
        return decode.step(self.body, x, state)

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {"embed_dim": self.embed_dim, "num_heads": self.num_heads,
                "mlp_dim": self.mlp_dim, "dropout": self.dropout, "causal": self.causal,
                "norm_first": self.norm_first, "activation": self.activation, "name": self.name}
