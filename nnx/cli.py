"""The `nnx` command: train | info | bench | profile.

Each subcommand lives in `nnx/commands/<name>.py` with `add_parser(subparsers, help)` (returning
its parser) and `run(args)`, imported only when the command line names it (so `nnx info` does
not load matplotlib).

Exit codes: 0 done; 2 an invalid command line, refused before any work with one line naming the
flag (`nnx train: error: argument --epochs: expected an integer >= 1, got -1`); 1 an error
raised while working, printed as one line `nnx: error: ...`. `--debug` (before or after the
command name) or `NNX_DEBUG=1` shows the Python traceback instead. Under mpiexec with nnx's
abort hooks installed, errors propagate to them so that every rank stops.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from nnx.commands._args import UsageError

# name -> help line. To add a command: write nnx/commands/<name>.py (add_parser + run) and add
# one line here; the order is the order of `nnx --help`.
COMMANDS = {
    "train": "train a model (default: an MLP on the embedded MNIST sample)",
    "info": "versions, BLAS, available backends and GPU devices",
    "bench": "run the benchmark suites and compare backends",
    "profile": "per-layer and per-kernel time of a training run",
    "generate": "sample text from a language model checkpoint (nnx train --model charlm --save)",
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: raises UsageError, which `main` prints and turns into exit
    code 2 (argparse's own handling prints the usage block first and calls sys.exit)."""

    def error(self, message):
        raise UsageError(message, prog=self.prog)


def _module(name):
    return importlib.import_module(f"nnx.commands.{name}")


def _debug_env() -> bool:
    return os.environ.get("NNX_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def _one_line(exc: BaseException) -> str:
    """The error as one line; the type is named unless it is one of nnx's own or an OSError
    (whose messages already say what failed), since a bare KeyError('x') says nothing."""
    from nnx.errors import NNXError

    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, (NNXError, OSError)):
        return text
    return f"{type(exc).__name__}: {text} (run with --debug for the traceback)"


def _distributed_abort_hooks() -> bool:
    """Whether nnx.distributed installed its abort-all-ranks hooks (a multi-rank job)."""
    return bool(getattr(sys.excepthook, "_nnx_distributed", False))


def main(argv=None) -> int:
    """Run the command line argv (default sys.argv[1:]); returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _Parser(prog="nnx", description="nnx: one model, three backends")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (also NNX_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, help_text in COMMANDS.items():
        if name == wanted:
            p = _module(name).add_parser(sub, help_text)
            if p is not None:  # --debug after the command name too; SUPPRESS keeps a top-level one
                p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                               help="show the Python traceback of an error (also NNX_DEBUG=1)")
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(f"{exc.prog}: error: {exc}", file=sys.stderr)
        return 2
    if args.command is None:
        parser.print_help()
        return 2
    debug = args.debug or _debug_env()
    try:
        return int(_module(args.command).run(args) or 0)
    except UsageError as exc:  # refused by the command's own checks, still before any work
        print(f"{exc.prog or 'nnx ' + args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug or _distributed_abort_hooks():
            raise
        print("nnx: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug or _distributed_abort_hooks():
            raise
        print(f"nnx: error: {_one_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
