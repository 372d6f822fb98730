"""Assemble nnx/data/nnx_docs.txt, the text corpus shipped with nnx (`nnx.text.sample_text()`):
the project's own documentation, so that the character-level language model examples and tests
run offline on text whose license is the project's.

    python tools/make_docs_text.py [--out nnx/data/nnx_docs.txt]

Contents, in this order: README.md, benchmarks/README.md, then for every module of nnx/ and
kernels/ (sorted by path) its docstring and its classes' and functions' docstrings, each module
under a line with its path. Whitespace at line ends is stripped and runs of blank lines are
squeezed; the result is deterministic for a given source tree.
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def docstrings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    doc = ast.get_docstring(tree)
    if doc:
        out.append(doc)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) > 40:
                kind = "class" if isinstance(node, ast.ClassDef) else "def"
                out.append(f"{kind} {node.name}: {doc}")
    return out


def assemble(root: Path = ROOT) -> str:
    parts = [(root / "README.md").read_text(encoding="utf-8"),
             (root / "benchmarks" / "README.md").read_text(encoding="utf-8")]
    for folder in ("nnx", "kernels"):
        for path in sorted((root / folder).rglob("*.py")):
            docs = docstrings(path)
            if docs:
                parts.append(f"# {path.relative_to(root).as_posix()}\n\n" + "\n\n".join(docs))
    text = "\n\n".join(p.strip() for p in parts) + "\n"
    text = "\n".join(line.rstrip() for line in text.splitlines()) + "\n"
    return re.sub(r"\n{3,}", "\n\n", text)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "nnx" / "data" / "nnx_docs.txt"))
    args = p.parse_args(argv)
    text = assemble()
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"wrote {args.out}: {len(text):,} characters, {len(set(text))} distinct")


if __name__ == "__main__":
    main()
