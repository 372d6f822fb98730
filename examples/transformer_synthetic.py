"""Train a small Transformer encoder classifier on a synthetic task that needs attention:
"is the first token repeated later in the sequence?" (nnx/models/transformer.py).

    python examples/transformer_synthetic.py --backend numba --epochs 8

The data come from a seeded NumPy generator (balanced labels; a fresh test set from another
seed). A bag-of-tokens or per-position model stays at 50%: the answer needs the first token
compared with every later one, which one attention layer can do. Prints per-epoch time, loss and
test accuracy, and the final test accuracy.
"""

from __future__ import annotations

from _common import fit_and_report, parser, save_if_asked, warm_up  # examples/_common.py

import nnx
from nnx.models import transformer


def main(argv=None) -> dict:
    p = parser(__doc__, epochs=8, batch_size=64, lr=1e-3, data=False)
    p.add_argument("--train", type=int, default=20000, help="training sequences")
    p.add_argument("--test", type=int, default=4000, help="test sequences")
    p.add_argument("--seq-len", type=int, default=16)
    p.add_argument("--vocab", type=int, default=16)
    p.add_argument("--dim", type=int, default=32, help="embed_dim")
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--mlp", type=int, default=64, help="mlp_dim")
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--pool", choices=["mean", "first", "last"], default="mean")
    args = p.parse_args(argv)

    xtr, ytr = transformer.synthetic_repeat_task(args.train, args.seq_len, args.vocab,
                                                 seed=args.seed)
    xte, yte = transformer.synthetic_repeat_task(args.test, args.seq_len, args.vocab,
                                                 seed=args.seed + 1)
    model = transformer.build(
        backend=args.backend, seed=args.seed, vocab_size=args.vocab, seq_len=args.seq_len,
        embed_dim=args.dim, num_heads=args.heads, mlp_dim=args.mlp, depth=args.depth,
        num_classes=2, pool=args.pool,
    )
    warm_note = warm_up(model)
    model.compile(nnx.Adam(args.lr), transformer.LOSS, ["accuracy"])
    print(f"Transformer encoder ({args.depth} blocks, dim {args.dim}, {args.heads} heads, "
          f"{model.count_params():,} parameters) on 'first token repeated?': {len(xtr)} train / "
          f"{len(xte)} test sequences of {args.seq_len} tokens (vocab {args.vocab}); backend "
          f"{model.backend}, batch {args.batch_size}, {args.epochs} epochs"
          + warm_note,
          flush=True)
    hist, times = fit_and_report(model, (xtr, ytr), (xte, yte), args)
    result = model.evaluate(xte, yte)
    print(f"final test accuracy {result['accuracy']:.4f}  test loss {result['loss']:.4f}")
    save_if_asked(model, args.save)
    return {"test": result, "epoch_times": times}


if __name__ == "__main__":
    main()
