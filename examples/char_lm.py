"""Train a character-level language model and sample text from it (LSTM or causal Transformer).

    python examples/char_lm.py --arch lstm --backend numba          # a few minutes on 2 cores
    python examples/char_lm.py --arch transformer --backend numpy
    python examples/char_lm.py --text my_book.txt --epochs 20 --save lm.npz
    nnx generate lm.npz --prompt "The " --tokens 300 --temperature 0.8

The text defaults to the corpus shipped with nnx (its own documentation, ~200 KB); `--text
PATH` takes any UTF-8 file. Its characters are the vocabulary (nnx.text.CharTokenizer), the last
10% is held out, and both parts are cut into windows of `--seq-len` characters whose targets
are the next character at every position (nnx.text.next_token_windows). The loss is softmax
cross-entropy per position, so the reported validation loss is in nats per character (divide by
ln 2 = 0.693 for bits). After training, the script samples from a prompt at a few temperatures
(`model.generate`: incremental decoding, the LSTM carries its state and the Transformer keeps a
key/value cache), reports generation speed in tokens/s and the time ratio of 400 to 80 new
tokens (about 5 when each token costs the same), and with --save writes the model with its
tokenizer (read back by `nnx generate`).
"""

from __future__ import annotations

import math
import time

from _common import parser, warm_up  # examples/_common.py

import nnx
from nnx.generate import generate
from nnx.models import charlm

DEFAULTS = {  # per architecture: epochs, batch, lr, seq_len, model options
    "lstm": (8, 32, 6e-3, 64, {"embed_dim": 64, "hidden": 256}),
    "transformer": (12, 32, 3e-3, 64, {"embed_dim": 64, "depth": 2, "num_heads": 4}),
}


def measure_speed(model, prompt_ids, counts=(80, 400)) -> dict:
    """Seconds to generate each count of new tokens (the best of two runs)."""
    generate(model, prompt_ids, 4, seed=0)  # first-call costs (JIT, allocation) apart
    out = {}
    for n in counts:
        best = math.inf
        for _ in range(2):
            t0 = time.perf_counter()
            generate(model, prompt_ids, n, seed=0)
            best = min(best, time.perf_counter() - t0)
        out[n] = best
    return out


def main(argv=None) -> dict:
    p = parser(__doc__, epochs=0, batch_size=0, lr=0.0, data=False)
    p.add_argument("--arch", choices=sorted(DEFAULTS), default="lstm")
    p.add_argument("--text", default=None, metavar="PATH",
                   help="a UTF-8 text file (default: nnx's own documentation, bundled)")
    p.add_argument("--seq-len", type=int, default=0, help="window length (default per arch)")
    p.add_argument("--prompt", default="The model ")
    p.add_argument("--tokens", type=int, default=300, help="characters to sample per temperature")
    p.add_argument("--temperatures", default="0.5,0.8,1.0")
    args = p.parse_args(argv)
    epochs, batch, lr, seq_len, options = DEFAULTS[args.arch]
    args.epochs = args.epochs or epochs
    args.batch_size = args.batch_size or batch
    args.lr = args.lr or lr
    seq_len = args.seq_len or seq_len

    text = charlm.read_text(args.text) if args.text else None
    tok, (xtr, ytr), (xva, yva) = charlm.load_data(text, seq_len=seq_len)
    model = charlm.build(backend=args.backend, seed=args.seed, vocab_size=tok.vocab_size,
                         arch=args.arch, seq_len=seq_len, **options)
    warm_note = warm_up(model)
    steps = args.epochs * math.ceil(len(xtr) / args.batch_size)
    schedule = nnx.CosineDecay(args.lr, decay_steps=steps, min_lr=args.lr / 10,
                               warmup_steps=min(100, steps // 10))
    model.compile(nnx.Adam(schedule), charlm.LOSS)
    print(f"char LM ({args.arch}, {model.count_params():,} parameters), backend {model.backend}: "
          f"{args.text or 'nnx docs (bundled)'}, vocabulary {tok.vocab_size}, "
          f"{len(xtr)} training / {len(xva)} validation windows of {seq_len}, batch "
          f"{args.batch_size}, {args.epochs} epochs" + warm_note, flush=True)
    t0 = time.perf_counter()
    hist = model.fit(xtr, ytr, epochs=args.epochs, batch_size=args.batch_size,
                     validation_data=(xva, yva), verbose=1)
    train_s = time.perf_counter() - t0
    val = hist.history["val_loss"][-1]
    print(f"validation {val:.3f} nats/char ({val / math.log(2):.3f} bits/char), training "
          f"{train_s:.0f}s")

    prompt = tok.encode(args.prompt)
    samples = {}
    for temp in (float(t) for t in args.temperatures.split(",")):
        ids = generate(model, prompt, args.tokens, temperature=temp, top_k=None, seed=args.seed)
        samples[temp] = tok.decode(ids)
        print(f"\n--- temperature {temp} ---\n{samples[temp]}")
    speed = measure_speed(model, prompt)
    ratio = speed[400] / speed[80]
    print(f"\ngeneration: {80 / speed[80]:,.0f} tokens/s for 80 new tokens, {400 / speed[400]:,.0f}"
          f" for 400; time ratio 400 / 80 = {ratio:.2f} (5 = constant cost per token)")
    if args.save:
        model.save(args.save, metadata={"tokenizer": tok.to_config()})
        print(f"saved to {args.save} (with its tokenizer: nnx generate {args.save} --prompt ...)")
    return {"val_nats_per_char": val, "train_s": train_s, "samples": samples,
            "tokens_per_s": {n: n / s for n, s in speed.items()}, "ratio_400_80": ratio}


if __name__ == "__main__":
    main()
