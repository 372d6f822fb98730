"""The `nnx` command: train | info | bench | profile.

Each subcommand lives in `nnx/commands/<name>.py` with `add_parser(subparsers)` and `run(args)`,
imported only when the command line names it (so `nnx info` does not load matplotlib)."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "train": "train a model (default: an MLP on the embedded MNIST sample)",
    "info": "versions, BLAS, available backends and GPU devices",
    "bench": "run the benchmark suites and compare backends",
    "profile": "per-layer and per-kernel time of a training run",
}


def _module(name):
    return importlib.import_module(f"nnx.commands.{name}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="nnx", description="nnx: one model, three backends")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = argv[0] if argv and argv[0] in COMMANDS else None
    for name, help_text in COMMANDS.items():
        if name == wanted:
            _module(name).add_parser(sub, help_text)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(_module(args.command).run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
