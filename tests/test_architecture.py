"""The package tree is the architecture: layers import only downwards, no cycles, short modules.

sources of log-weights (sampling, sources) -> pure estimators -> analysis -> output; see the
README's "Layout" section and each package's docstring.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "evalkit"

FOUNDATION = {"_version", "_interrupts", "errors", "atomic", "noise", "units"}
ALLOWED = {  # package -> the evalkit packages (besides the foundation) it may import
    "data": set(),
    "estimators": set(),
    "models": set(),
    "sampling": {"data", "estimators", "models"},
    "sources": {"data", "estimators", "models", "sampling"},
    "analysis": {"data", "estimators", "models", "sampling", "sources"},
    "output": {"analysis", "estimators"},
}
# The one reach upwards: the results' convenience writers (EstimateResult.save, SweepResult.figures/
# save/report) import evalkit.output when called.
UPWARD_ON_CALL = {("analysis.sweep_result", "output"), ("analysis.estimate_result", "output"),
                  ("analysis.compare_result", "output")}


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        name = ".".join(("evalkit",) + path.relative_to(ROOT).with_suffix("").parts)
        yield name.removesuffix(".__init__"), path


MODULES = dict(_modules())


def _imports(name, path):
    """``(target module, at module level)`` for every evalkit import in the file."""
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
            if not target or not target.startswith("evalkit"):
                continue
            for alias in node.names:
                full = f"{target}.{alias.name}"
                yield (full if full in MODULES else target), id(node) in top_level
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("evalkit."):
                    yield alias.name, id(node) in top_level


def _package(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


GRAPH = {name: {target for target, _ in _imports(name, path) if target in MODULES and target != name}
         for name, path in MODULES.items()}


def test_no_import_cycles_between_evalkit_modules():
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert cycles == []


def test_layers_import_only_downwards():
    wrong = []
    for name, path in MODULES.items():
        package = _package(name)
        if package not in ALLOWED:
            continue
        for target, at_top in _imports(name, path):
            other = _package(target)
            if other in FOUNDATION or other == package or other in ALLOWED[package]:
                continue
            short = name.removeprefix("evalkit.")
            if (short, other) in UPWARD_ON_CALL and not at_top:
                continue
            wrong.append(f"{short} imports {target}")
    assert wrong == []


def test_modules_and_functions_are_short():
    long_modules, long_functions = [], []
    for name, path in MODULES.items():
        text = path.read_text()
        if len(text.splitlines()) > 500:
            long_modules.append(name)
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body[1:] if ast.get_docstring(node) and len(node.body) > 1 else node.body
                if node.end_lineno - body[0].lineno + 1 > 80:  # code lines, the docstring not counted
                    long_functions.append(f"{name}.{node.name}")
    assert long_modules == [] and long_functions == []


def test_every_package_says_what_it_may_import():
    for package in ALLOWED:
        doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text())) or ""
        assert "May import" in doc, package
