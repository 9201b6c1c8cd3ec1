"""The shape of the package's code: its longest functions and deepest nesting.

    python benchmarks/code_shape.py [--top 10] [--root ernie_compress]

A function's length counts its lines from ``def`` to its last line (docstring included); nesting
counts the compound statements (if/for/while/with/try/match) inside one another within a function,
not counting nested functions' own bodies. The habit the project keeps: no function over ~60 lines,
nesting of at most 3.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

COMPOUND = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith, ast.Try, ast.Match)
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def nesting(node: ast.AST, depth: int = 0) -> int:
    """The deepest compound-statement nesting under ``node`` (nested functions count separately)."""
    deepest = depth
    for child in ast.iter_child_nodes(node):
        if isinstance(child, FUNCTIONS):
            continue
        inner = depth + 1 if isinstance(child, COMPOUND) else depth
        deepest = max(deepest, nesting(child, inner))
    return deepest


def functions(root: Path):
    """(lines, nesting, 'path:line name') of every function under ``root``."""
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, FUNCTIONS):
                yield node.end_lineno - node.lineno + 1, nesting(node), f"{path}:{node.lineno} {node.name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--root", default="ernie_compress")
    args = parser.parse_args()
    found = list(functions(Path(args.root)))
    print(f"{len(found)} functions; over 60 lines: {sum(n > 60 for n, _, _ in found)}; "
          f"nesting over 3: {sum(d > 3 for _, d, _ in found)}")
    print("longest:")
    for lines, depth, where in sorted(found, reverse=True)[:args.top]:
        print(f"  {lines:4d} lines  nesting {depth}  {where}")
    print("deepest:")
    for lines, depth, where in sorted(found, key=lambda f: (-f[1], -f[0]))[:args.top]:
        print(f"  nesting {depth}  {lines:4d} lines  {where}")


if __name__ == "__main__":
    main()
