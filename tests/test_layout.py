"""The house: the package's import graph has no loop, and the command line's entry points
(the config, the refusals, --help) do not import torch."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "otpe_cli"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The otpe_cli modules a file imports, anywhere in it (functions included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("otpe_cli"):
                found.add(target)
                for alias in node.names:  # from . import kernels: the module kernels
                    found.add(f"{target}.{alias.name}")
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("otpe_cli")}
    return found


def test_the_import_graph_of_otpe_cli_has_no_loop():
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: {m for m in imports_of(path) if m in modules and m != name}
             for name, path in modules.items()}
    # a package's __init__ that only re-exports lazily imports nothing at import time
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                loop = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import loop: " + " → ".join(loop))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_the_command_line_s_checks_and_help_do_not_import_torch():
    code = ("import sys\n"
            "import otpe_cli.cli, otpe_cli.config\n"
            "from otpe_cli.launch import argv\n"
            "assert argv.problem(['algorithm=otpee']).startswith('algorithm=otpee')\n"
            "assert argv.problem(['model.depth=3']) is None\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
