"""The package's arrows point one way (DESIGN.md section 1): a package imports only packages
listed before it, lazily or not, and no modules import each other in a cycle."""

import ast
import itertools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Lowest first, as in DESIGN.md; `configs` (the experiment files) may use any library package;
# `cli` (the commands' one-line error reporting) imports nothing of mmjax.
ORDER = (
    "cli",
    "parallel",
    "kernels",
    "quantizers",
    "nn",
    "storage",
    "text",
    "data",
    "tokenizers",
    "pretokenize",
    "fourm",
    "convert",
    "eval",
    "configs",
    "train",
    "demo",
)


def _modules() -> dict[str, Path]:
    """{dotted module name: file} for the mmjax package and the configs folder."""
    out = {}
    for path in sorted((ROOT / "mmjax").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in sorted((ROOT / "configs").glob("*.py")):
        out[f"mmjax.configs.{path.stem}".removesuffix(".__init__")] = path
    return out


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("mmjax.")}


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ORDER) else None


def test_every_package_is_placed():
    packages = {_package(m) for m in _modules()} - {None}
    assert packages <= set(ORDER), sorted(packages - set(ORDER))


def test_no_arrow_points_up():
    wrong = []
    for module, path in _modules().items():
        src = _package(module)
        for target in _imports(path, top_level_only=False):
            dst = _package(target)
            if src and dst and dst != src and ORDER.index(dst) > ORDER.index(src):
                wrong.append(f"{module} imports {target} ({src} is below {dst})")
    assert not wrong, "\n".join(wrong)


def test_data_imports_no_model():
    models = ("mmjax.tokenizers", "mmjax.fourm", "mmjax.quantizers", "mmjax.nn")
    for module, path in _modules().items():
        if module.startswith("mmjax.data"):
            found = [t for t in _imports(path, top_level_only=False) if t.startswith(models)]
            assert not found, f"{module} imports {found}"


def test_no_import_cycles():
    modules = _modules()
    graph = {
        m: {t for t in _imports(p, top_level_only=True) if t in modules and t != m}
        for m, p in modules.items()
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            # a package's __init__ importing its own submodules is not a cycle
            if t.startswith(m + "."):
                continue
            if state.get(t) == 1:
                cycle = [*path[path.index(t) :], t] if t in path else [m, t]
                if not any(b.startswith(a + ".") for a, b in itertools.pairwise(cycle)):
                    raise AssertionError("import cycle: " + " -> ".join(cycle))
            elif t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
