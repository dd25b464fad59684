"""The package's shape: no import cycles, every import points down the layers (`LAYERS`, as drawn in
docs/architecture.md), nothing below the CLI imports it, no function longer than 80 lines, no class longer
than 200 and no module longer than 400.

Read with the standard library (ast) from the source files, without importing them. Every import
counts, at module level or inside a function; only imports under `if TYPE_CHECKING:` are left out
(they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "softprompt"
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 200
MAX_MODULE_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Line numbers inside `if TYPE_CHECKING:` blocks."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules `name` imports: `from a.b import c` means module a.b.c when that is a module, else a.b."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_the_imports_it_must():
    """The walker itself: known edges (module level, function level, relative, package attribute) are found."""
    graph = import_graph()
    assert "softprompt.scoring.kv_tree" in graph["softprompt.scoring.scorer"]  # `from softprompt.scoring import kv_tree`
    assert "softprompt.training" in graph["softprompt.study.units"]  # `from softprompt.training import train`
    assert "softprompt.analysis.neighbors" in graph["softprompt.study.analysis_units"]  # imported inside a function
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = _cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


# The layers, bottom to top: each top-level module or package of softprompt and the layer it belongs to. A module
# imports only from its own layer or the ones below it (docs/architecture.md draws the same picture).
LAYERS = [
    ("foundations", ["errors", "io", "config", "logging_setup", "host_memory", "threads", "distributed", "locks", "preemption"]),
    ("records", ["records"]),
    ("data and model", ["tasks", "data", "model"]),
    ("scoring", ["scoring"]),
    ("evaluation", ["evaluate", "eval_metrics", "score_store", "generate"]),
    ("runs", ["runs", "peft_interop", "peft_prefix"]),
    ("training", ["training"]),
    ("analysis and report", ["analysis", "report"]),
    ("study", ["study"]),
    ("command line", ["cli"]),
]


def _layer(module: str) -> int | None:
    """The index in LAYERS of `module`'s top-level part (None for the package itself)."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    return next((i for i, (_, tops) in enumerate(LAYERS) if parts[1] in tops), -1)


def test_every_module_has_a_layer():
    unplaced = sorted({name.split(".")[1] for name in import_graph() if _layer(name) == -1})
    assert unplaced == [], f"add these to LAYERS in tests/test_structure.py (and docs/architecture.md): {unplaced}"


def test_imports_point_down_the_layers():
    upward = [
        f"{name} ({LAYERS[_layer(name)][0]}) imports {dep} ({LAYERS[_layer(dep)][0]})"
        for name, deps in sorted(import_graph().items())
        for dep in sorted(deps)
        if _layer(name) is not None and _layer(dep) is not None and _layer(dep) > _layer(name) >= 0
    ]
    assert upward == [], "imports up the layers:\n" + "\n".join(upward)


def test_only_the_cli_imports_the_cli():
    offenders = {
        name: sorted(m for m in deps if m == "softprompt.cli" or m.startswith("softprompt.cli."))
        for name, deps in import_graph().items()
        if not (name == "softprompt.cli" or name.startswith("softprompt.cli."))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def _long_functions() -> list[str]:
    out = []
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                length = (node.end_lineno or node.lineno) - start + 1
                if length > MAX_FUNCTION_LINES:
                    out.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({length} lines)")
    return out


def test_no_function_longer_than_80_lines():
    assert _long_functions() == []


def _long_modules() -> list[str]:
    out = []
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        length = len(path.read_text(encoding="utf-8").splitlines())
        if length > MAX_MODULE_LINES:
            out.append(f"{path.relative_to(SRC)} ({length} lines)")
    return out


def test_no_module_longer_than_400_lines():
    """A module past 400 lines holds more than one concern: split it along its concepts."""
    assert _long_modules() == [], f"modules over {MAX_MODULE_LINES} lines: " + ", ".join(_long_modules())


def _long_classes() -> list[str]:
    out = []
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                length = (node.end_lineno or node.lineno) - start + 1
                if length > MAX_CLASS_LINES:
                    out.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({length} lines)")
    return out


def test_no_class_longer_than_200_lines():
    """A class past 200 lines does several jobs: give the others their own class or module."""
    assert _long_classes() == [], f"classes over {MAX_CLASS_LINES} lines: " + ", ".join(_long_classes())


@pytest.mark.parametrize("module", ["softprompt.config", "softprompt.cli", "softprompt.errors"])
def test_config_and_cli_parser_are_torch_free(module):
    """The schema and the parser import no torch, so `softprompt --help` and config checks start instantly."""
    import subprocess
    import sys

    code = f"import sys, {module}; from softprompt.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
