"""`nnx info`: what nnx sees on this machine (the library side is `nnx.sysinfo`)."""

from __future__ import annotations

from nnx.sysinfo import blas_info, collect

__all__ = ["add_parser", "blas_info", "collect", "run"]


def add_parser(sub, help_text):
    p = sub.add_parser("info", help=help_text, description=help_text)
    p.set_defaults(command="info")
    return p


def run(args) -> int:
    for k, v in collect().items():
        if isinstance(v, dict):
            print(f"{k}:")
            for k2, v2 in v.items():
                print(f"  {k2}: {v2}")
        else:
            print(f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}")
    return 0
