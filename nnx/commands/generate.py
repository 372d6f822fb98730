"""`nnx generate CHECKPOINT --prompt "..." --tokens N --temperature T --top-k K`: sample text from
a language model saved with its tokenizer (by `nnx train --model charlm --save PATH`, or
`model.save(path, metadata={"tokenizer": tok.to_config()})`).

Values are checked while the command line is parsed (exit code 2, one line naming the flag); a
checkpoint that cannot be read or has no tokenizer, and a prompt with characters outside the
tokenizer's vocabulary, are refused the same way before anything is generated.
"""

from __future__ import annotations

from nnx.commands._args import (
    NON_NEGATIVE,
    POSITIVE_INT,
    SEED,
    UsageError,
    backend_name,
    float_range,
    int_range,
)

TOP_P = float_range(0.0, 1.0, lo_open=True)


def add_parser(sub, help_text):
    p = sub.add_parser("generate", help=help_text, description=help_text)
    p.add_argument("checkpoint", help="a model saved with its tokenizer in the metadata")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--tokens", type=int_range(0), default=200,
                   help="new tokens (characters) to sample (default 200)")
    p.add_argument("--temperature", type=NON_NEGATIVE, default=0.8,
                   help=">= 0; 0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=POSITIVE_INT, default=None,
                   help="sample among the K most likely tokens (1: greedy)")
    p.add_argument("--top-p", type=TOP_P, default=None,
                   help="nucleus sampling: the most likely tokens up to this mass, in (0, 1]")
    p.add_argument("--seed", type=SEED, default=None, help="for a reproducible sample")
    p.add_argument("--samples", type=POSITIVE_INT, default=1, help="independent continuations")
    p.add_argument("--backend", default=None, type=backend_name,
                   help="numpy | numba | cupy (default: NNX_BACKEND or numpy)")
    p.set_defaults(command="generate")
    return p


def run(args) -> int:
    import os

    import numpy as np

    import nnx
    from nnx.errors import InputError
    from nnx.generate import generate
    from nnx.text import tokenizer_from_config

    if not os.path.isfile(args.checkpoint):
        raise UsageError(f"argument CHECKPOINT: no such file: {args.checkpoint}")
    model = nnx.load(args.checkpoint, backend=args.backend)
    config = (getattr(model, "metadata", None) or {}).get("tokenizer")
    if config is None:
        raise UsageError(f"argument CHECKPOINT: {args.checkpoint} has no tokenizer in its "
                         "metadata; save the model with model.save(path, metadata={'tokenizer': "
                         "tokenizer.to_config()}) (nnx train --model charlm --save does)")
    tok = tokenizer_from_config(config)
    try:
        prompt = tok.encode(args.prompt)
    except InputError as exc:
        raise UsageError(f"argument --prompt: {exc}") from exc
    if not len(prompt):
        raise UsageError("argument --prompt: expected at least one character")
    ids = generate(model, np.tile(prompt, (args.samples, 1)), args.tokens,
                   temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   seed=args.seed)
    for k, row in enumerate(ids):
        if args.samples > 1:
            print(f"--- sample {k + 1} ---")
        print(tok.decode(row))
    return 0
