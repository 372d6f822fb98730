"""Subcommands of the `nnx` CLI, one module each: add_parser(subparsers, help) and run(args)."""
