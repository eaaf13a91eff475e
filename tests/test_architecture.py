"""The code keeps to docs/architecture.md: who may import whom, no import cycles, light modules stay light.

The rules are read from the document itself (its package table and its list of light modules), so the
document and the code cannot drift apart. Imports are read with `ast`, all of them, also those inside
functions: a lazy import is still a dependency.
"""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "architecture.md"
PACKAGES = ("kernel", "models", "chat", "arena", "training", "evaluation", "app")
PROJECT = set(PACKAGES) | {"inference", "tests"}  # the names an import of this project starts with
HEAVY = ("torch", "transformers", "peft", "gradio")
NO_HEAVY = ("kernel", "arena")  # packages that import no heavy library at all
GRADIO_ONLY_IN = ("app", "tests")


# --- reading the document ---------------------------------------------------------------------------------------

def doc_table() -> dict[str, set[str]]:
    """{unit: the packages it may import} from the table's rows (`kernel/`, `inference.py`, ...)."""
    allowed = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        unit = cells[0].strip("`")
        allowed[unit] = set(re.findall(r"`([a-z_]+)`", cells[2])) if cells[2] != "anything" else None
    return allowed


def doc_light_modules() -> list[str]:
    section = DOC.read_text(encoding="utf-8").split("## Light modules", 1)[1].split("\n## ", 1)[0]
    bullets = [line for line in section.splitlines() if line.startswith(("- ", "  "))]
    names = re.findall(r"`([a-z_.*]+)`", "\n".join(bullets))
    kernel = sorted(f"kernel.{p.stem}" for p in (REPO / "kernel").glob("*.py") if p.stem != "__init__")
    return [m for name in names for m in (kernel if name == "kernel.*" else [name])]


# --- reading the code -------------------------------------------------------------------------------------------

def unit_files(unit: str) -> list[Path]:
    path = REPO / unit.rstrip("/")
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names taken from it) for every import in the file, relative imports resolved; [] for `import a.b`."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.append((base, [alias.name for alias in node.names]))
    return found


def top_names(path: Path) -> set[str]:
    return {module.split(".")[0] for module, _ in imports(path)}


def module_edges(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules this file loads: `from a import b` loads a.b when that is a module, else a itself."""
    edges = set()
    for module, names in imports(path):
        submodules = {f"{module}.{name}" for name in names} & set(modules)
        edges |= submodules
        if len(submodules) < len(names) or not names:
            edges.add(module)
    return edges & set(modules) - {module_name(path)}


def project_modules() -> dict[str, Path]:
    files = [p for package in PACKAGES for p in (REPO / package).rglob("*.py")] + [REPO / "inference.py"]
    return {module_name(p): p for p in files}


# --- the rules --------------------------------------------------------------------------------------------------

def test_every_package_imports_only_what_the_document_allows():
    table = doc_table()
    assert set(PACKAGES) <= {unit.rstrip("/") for unit in table}, "a package is missing from docs/architecture.md"
    wrong = []
    for unit, allowed in table.items():
        if allowed is None:
            continue
        own = unit.rstrip("/").removesuffix(".py")
        for path in unit_files(unit):
            used = top_names(path) & PROJECT - {own}
            wrong += [f"{path.relative_to(REPO)} imports {name}" for name in sorted(used - allowed)]
    assert not wrong, "imports the table in docs/architecture.md does not allow:\n" + "\n".join(wrong)


def test_no_import_cycles_between_modules():
    modules = project_modules()
    graph = {name: module_edges(path, modules) for name, path in modules.items()}
    cycles = strongly_connected(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(sorted(c)) for c in cycles)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; the components with more than one module are the cycles."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_heavy_libraries_stay_where_the_document_says():
    wrong = []
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            used = top_names(path) & set(HEAVY)
            if package in NO_HEAVY:
                wrong += [f"{path.relative_to(REPO)} imports {name}" for name in sorted(used)]
            elif "gradio" in used and package not in GRADIO_ONLY_IN:
                wrong.append(f"{path.relative_to(REPO)} imports gradio")
    assert not wrong, "\n".join(wrong)


def test_light_modules_import_without_torch():
    light = doc_light_modules()
    assert "evaluation.judge" in light and "kernel.errors" in light  # the list was read
    code = ("import importlib, json, sys\n"
            f"for name in {light!r}:\n    importlib.import_module(name)\n"
            f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [], f"{light} pulled in heavy libraries"
