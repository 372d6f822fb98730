"""`nnx train --model charlm|char_transformer [--text PATH] [--seq-len N]`: the text side of
`nnx train`, for zoo models whose INPUT is "text" (nnx/models/charlm.py).

The text (default: the corpus shipped with nnx, its own documentation) gives the vocabulary (a
`nnx.text.CharTokenizer`), its last 10% is held out, and both parts are cut into next-token
windows of --seq-len characters. Training reports the validation loss in nats per character,
prints a sample, and --save writes the model with its tokenizer in the checkpoint's metadata,
which `nnx generate CHECKPOINT` reads back. --data does not apply to text models.

`nnx/commands/train.py` calls `add_arguments(parser)` when it builds its parser, and hands a
text model to `run(args, zoo)`; `refuse_text_flags` keeps the text flags off MNIST models.
"""

from __future__ import annotations

import sys
import time

from nnx.commands._args import POSITIVE_INT, UsageError, file_destination, model_options


def add_arguments(p) -> None:
    """The flags of text models, added to `nnx train`'s parser."""
    p.add_argument("--text", default=None, metavar="PATH",
                   help="text models (charlm, char_transformer): a UTF-8 text file to train on "
                   "(default: nnx's own documentation, bundled)")
    p.add_argument("--seq-len", type=POSITIVE_INT, default=None,
                   help="text models: window length in characters (default 128)")


def is_text_model(zoo) -> bool:
    return getattr(zoo, "INPUT", None) == "text"


def refuse_text_flags(args, name: str) -> None:
    """UsageError when --text / --seq-len are given for a model that does not read text."""
    for flag, value in (("--text", getattr(args, "text", None)),
                        ("--seq-len", getattr(args, "seq_len", None))):
        if value is not None:
            raise UsageError(f"argument {flag}: model {name!r} trains on MNIST, not on text "
                             "(text models: charlm, char_transformer)")


def run(args, zoo) -> int:
    import math

    import nnx
    from nnx.generate import generate

    options = model_options(zoo, args.model, args.hidden, args.dropout)
    if args.save:
        file_destination("--save", args.save)
    text = None
    if args.text is not None:
        try:
            text = zoo.read_text(args.text)
        except OSError as exc:
            raise UsageError(f"argument --text: cannot read {args.text}: {exc}") from exc
    seq_len = args.seq_len or 128
    tok, (xtr, ytr), (xva, yva) = zoo.load_data(text, seq_len=seq_len)
    model = zoo.build(backend=args.backend, seed=args.seed, vocab_size=tok.vocab_size,
                      seq_len=seq_len, **options)
    opt = {"adam": nnx.Adam, "adamw": nnx.AdamW, "sgd": nnx.SGD}[args.optimizer](lr=args.lr)
    if args.distributed:
        import nnx.distributed

        opt = nnx.distributed.DistributedOptimizer(opt, nnx.distributed.init())
    model.compile(opt, zoo.LOSS)
    if not model.is_chief:
        import os

        sys.stdout = open(os.devnull, "w")
    print(f"nnx train: model {args.model} ({model.count_params():,} parameters), backend "
          f"{model.backend}, text {args.text or 'nnx docs (bundled)'}: vocabulary "
          f"{tok.vocab_size}, {len(xtr)} train / {len(xva)} validation windows of {seq_len}, "
          f"{args.epochs} epochs, batch {args.batch_size}")
    t0 = time.perf_counter()
    model.fit(xtr, ytr, epochs=args.epochs, batch_size=args.batch_size,
              validation_data=(xva, yva), verbose=0 if args.quiet else 1)
    train_s = time.perf_counter() - t0
    result = model.evaluate(xva, yva)
    print(f"validation {result['loss']:.4f} nats/char ({result['loss'] / math.log(2):.3f} "
          f"bits/char), accuracy {result.get('accuracy', float('nan')):.3f}  (training "
          f"{train_s:.1f}s)")
    sample = generate(model, tok.encode(tok.decode(xva[0, :16])), 200, temperature=0.8,
                      seed=args.seed)
    print(f"sample (temperature 0.8):\n{tok.decode(sample)}")
    if args.save:
        model.save(args.save, metadata={"tokenizer": tok.to_config(), "zoo_model": args.model,
                                        "seq_len": seq_len})
        print(f"saved to {args.save} (sample from it: nnx generate {args.save} --prompt ...)")
    return 0
