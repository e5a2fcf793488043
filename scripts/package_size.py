"""The package's size without theory/, as the architecture issue counts it.

    python scripts/package_size.py [--files]

Lines (blank, docstring, comment, code), functions (methods and nested ones included) and the
functions whose body is a single call using every parameter (pass-through candidates).
"""

import ast
import statistics
import sys
from pathlib import Path


def docstring_lines(tree: ast.Module) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        kinds = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        if isinstance(node, kinds) and node.body and isinstance(node.body[0], ast.Expr):
            value = node.body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                out.update(range(node.body[0].lineno, node.body[0].end_lineno + 1))
    return out


def single_call(fn: ast.FunctionDef) -> bool:
    body = [
        b for b in fn.body if not (isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant))
    ]
    if len(body) != 1 or not isinstance(body[0], (ast.Return, ast.Expr)):
        return False
    if not isinstance(body[0].value, ast.Call) or fn.decorator_list:
        return False
    params = {a.arg for a in fn.args.args + fn.args.kwonlyargs}
    used = {n.id for n in ast.walk(body[0].value) if isinstance(n, ast.Name)}
    return bool(params) and params <= used


def main() -> None:
    total = {"lines": 0, "blank": 0, "docstring": 0, "comment": 0, "functions": 0}
    sizes, passing = [], []
    for path in sorted(Path("softmaso").rglob("*.py")):
        if "theory" in path.parts:
            continue
        text = path.read_text()
        lines, tree = text.splitlines(), ast.parse(text)
        fns = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        row = {
            "lines": len(lines),
            "blank": sum(not line.strip() for line in lines),
            "docstring": len(docstring_lines(tree)),
            "comment": sum(line.strip().startswith("#") for line in lines),
            "functions": len(fns),
        }
        sizes += [fn.end_lineno - fn.lineno + 1 for fn in fns]
        passing += [f"{path}:{fn.lineno} {fn.name}" for fn in fns if single_call(fn)]
        for key in total:
            total[key] += row[key]
        if "--files" in sys.argv:
            print(f"{path}: {row}")
    code = total["lines"] - total["blank"] - total["docstring"] - total["comment"]
    print(f"softmaso/ without theory/: {total}, code lines {code}")
    print(f"median function {statistics.median(sizes)} lines; single-call bodies: {len(passing)}")
    if "--files" in sys.argv:
        print("\n".join(passing))


if __name__ == "__main__":
    main()
