"""Text generation throughput: `nnx.generate` on the zoo's character LMs (an LSTM and a small
causal Transformer), against PyTorch doing the same incremental decoding (the LSTM carrying
(h, c), the Transformer with its own preallocated key/value cache).

One call = a 16-token prompt fed in one chunk, then N new tokens sampled one at a time
(temperature 1, from the softmax of the last position's logits), batch 1: the latency-bound
case of interactive generation. Tokens per second = N / median. Each architecture runs at
N = 80 and N = 400: with a cost per token that does not depend on the position, the 400-token
call takes about 5 times the 80-token one (the Transformer's window of 128 positions slides
past its positional table, re-feeding its last 64 tokens every 64 tokens). FLOPs count the
weight GEMMs per token (2 x weights), not the attention over the cache.
"""

from __future__ import annotations

import numpy as np

from nnx.models import charlm

from ..registry import Case, Skip, suite

VOCAB = 96
PROMPT = 16
SIZES = {  # arch -> (full options, quick options)
    "lstm": ({"embed_dim": 64, "hidden": 256}, {"embed_dim": 8, "hidden": 16}),
    "transformer": ({"embed_dim": 128, "depth": 2, "num_heads": 4, "seq_len": 128},
                    {"embed_dim": 16, "depth": 1, "num_heads": 2, "seq_len": 16}),
}


def _weights_per_token(arch, o) -> int:
    """Weights touched by one token's GEMMs (the embedding lookup excluded)."""
    v = VOCAB
    if arch == "lstm":
        return (o["embed_dim"] + o["hidden"]) * 4 * o["hidden"] + o["hidden"] * v
    d = o["embed_dim"]
    return o["depth"] * (4 * d * d + 8 * d * d) + d * v


def _prompt():
    return np.random.default_rng(0).integers(0, VOCAB, size=PROMPT)


# -- PyTorch: the same models, decoding incrementally --------------------------------------------
def _torch_lstm(torch, o):
    nn = torch.nn
    emb, lstm = nn.Embedding(VOCAB, o["embed_dim"]), nn.LSTM(o["embed_dim"], o["hidden"],
                                                             batch_first=True)
    head = nn.Linear(o["hidden"], VOCAB)

    def run(prompt, n, gen):
        with torch.no_grad():
            y, state = lstm(emb(prompt[None]))
            logits = head(y[:, -1])
            for _ in range(n):
                tok = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)
                y, state = lstm(emb(tok), state)
                logits = head(y[:, -1])
    return run


def _torch_transformer(torch, o):
    nn, F = torch.nn, torch.nn.functional
    d, heads, depth, max_len = o["embed_dim"], o["num_heads"], o["depth"], o["seq_len"]
    hd = d // heads
    emb, pos = nn.Embedding(VOCAB, d), nn.Parameter(torch.randn(max_len, d) * 0.02)
    blocks = [nn.ModuleDict({"ln1": nn.LayerNorm(d), "qkv": nn.Linear(d, 3 * d),
                             "out": nn.Linear(d, d), "ln2": nn.LayerNorm(d),
                             "fc1": nn.Linear(d, 4 * d), "fc2": nn.Linear(4 * d, d)})
              for _ in range(depth)]
    ln_f, head = nn.LayerNorm(d), nn.Linear(d, VOCAB)

    def forward(ids, start, caches):
        """ids (1, t) at positions [start, start + t); appends to the per-block caches."""
        t = ids.shape[1]
        x = emb(ids) + pos[start:start + t]
        for b, (kc, vc) in zip(blocks, caches):
            q, k, v = b["qkv"](b["ln1"](x)).view(1, t, 3, heads, hd).permute(2, 0, 3, 1, 4)
            kc[:, :, start:start + t], vc[:, :, start:start + t] = k, v
            a = F.scaled_dot_product_attention(q, kc[:, :, :start + t], vc[:, :, :start + t],
                                               is_causal=t > 1)
            x = x + b["out"](a.transpose(1, 2).reshape(1, t, d))
            x = x + b["fc2"](F.gelu(b["fc1"](b["ln2"](x)), approximate="tanh"))
        return head(ln_f(x[:, -1]))

    def run(prompt, n, gen):
        keep = max_len // 2
        with torch.no_grad():
            seq = prompt.tolist()
            start = 0

            def refeed():
                caches = [(torch.zeros(1, heads, max_len, hd), torch.zeros(1, heads, max_len, hd))
                          for _ in blocks]
                return caches, forward(torch.tensor([seq[start:]]), 0, caches)

            caches, logits = refeed()
            for _ in range(n):
                tok = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
                seq.append(tok)
                if len(seq) - start > max_len:
                    start = len(seq) - keep
                    caches, logits = refeed()
                else:
                    logits = forward(torch.tensor([[tok]]), len(seq) - 1 - start, caches)
    return run


def generate_case(arch: str, n: int, quick: bool) -> Case:
    options = SIZES[arch][1 if quick else 0]

    def setup(t):
        prompt = _prompt()
        if t.kind == "torch":
            torch = t.torch
            if t.device != "cpu":
                raise Skip("the torch yardstick of generation runs on the CPU only")
            torch.manual_seed(0)
            run = (_torch_lstm if arch == "lstm" else _torch_transformer)(torch, options)
            p = torch.as_tensor(prompt)
            gen = torch.Generator().manual_seed(0)
            return lambda: run(p, n, gen)
        from nnx.generate import generate

        model = charlm.build(backend=t.new_ops(), seed=0, vocab_size=VOCAB, arch=arch,
                             **options)
        counter = iter(range(1 << 62))
        return lambda: generate(model, prompt, n, seed=next(counter))

    per_token = _weights_per_token(arch, options)
    return Case(
        name=f"generate {arch} {n} tokens" + (" (quick)" if quick else ""), suite="generate",
        setup=setup, flops=2.0 * per_token * (n + PROMPT), bytes=None,
        params={"arch": arch, "new_tokens": n, "prompt": PROMPT, "batch": 1, "vocab": VOCAB,
                **options, "tokens_per_call": n,
                "flops_note": "weight GEMMs per token only (2 x weights), attention excluded"},
        group=f"generate {arch}", x=n, bound="compute", number=1,
        repeats=3 if quick else 7)


@suite("generate", "text generation tokens/s: char LSTM and causal Transformer, 80 and 400 new "
                   "tokens (incremental decoding)")
def generate_suite(quick: bool):
    counts = (8, 40) if quick else (80, 400)
    return [generate_case(arch, n, quick) for arch in ("lstm", "transformer") for n in counts]


SUITES = (generate_suite,)
