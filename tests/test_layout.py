"""The floor plan holds: the serving core's plain-Python parts import without torch, the engine's
folders import one way (no cycle), and the playground and app use only the engine's public names."""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import engine

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "engine"
# Folders import only from folders of a lower rank: serving -> ar / vocoder -> kernels -> models.
RANK = {"serving": 4, "ar": 3, "vocoder": 3, "kernels": 2, "models": 1}
TORCH_FREE = ["engine.params", "engine.serving.request", "engine.serving.kv_cache", "engine.serving.scheduler"]


def _imports(path: Path) -> set[str]:
    """Every module `path` imports (absolute names; `from engine import x` as engine.x)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _part(module: str) -> str | None:
    """The folder (or top-level module) of the engine a dotted name belongs to."""
    parts = module.split(".")
    if parts[0] != "engine" or len(parts) < 2:
        return None
    return parts[1] if (ENGINE / parts[1]).is_dir() or (ENGINE / f"{parts[1]}.py").exists() else None


def _graph() -> dict[str, set[str]]:
    """Which parts of the engine (folders and top-level modules) each part imports."""
    graph: dict[str, set[str]] = {}
    for path in sorted(ENGINE.rglob("*.py")):
        own = path.relative_to(ENGINE).parts[0].removesuffix(".py")
        if own == "__init__":
            continue  # the public face imports everything by design
        graph.setdefault(own, set()).update(p for p in map(_part, _imports(path)) if p not in (None, own))
    return graph


def test_scheduler_kv_manager_and_request_state_import_without_torch() -> None:
    script = textwrap.dedent(f"""
        import importlib.abc, sys, types

        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch.") or name in ("numpy", "triton"):
                    raise ImportError(f"{{name}} is blocked in this test")
                return None

        sys.meta_path.insert(0, NoTorch())
        package = types.ModuleType("engine")  # the folders alone, without the package's public face
        package.__path__ = [{str(ENGINE)!r}]
        sys.modules["engine"] = package
        for name in {TORCH_FREE!r}:
            importlib.import_module(name)
        assert "torch" not in sys.modules
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", "import importlib\n" + script], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


def test_engine_folders_import_one_way() -> None:
    graph = _graph()
    wrong = [f"{a} imports {b}" for a, targets in graph.items() for b in targets
             if a in RANK and b in RANK and RANK[b] >= RANK[a]]
    assert not wrong, "imports against the floor plan: " + ", ".join(sorted(wrong))


def test_no_import_cycle_between_the_engines_parts() -> None:
    graph, done, path = _graph(), set(), []

    def visit(node: str) -> None:
        if node in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(node):], node]))
        if node in done:
            return
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        path.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)


def test_models_are_plain_torch() -> None:
    for path in sorted((ENGINE / "models").glob("*.py")):
        assert not any(n == "triton" or n.startswith("triton.") for n in _imports(path)), path


def test_playground_and_app_use_only_the_engines_public_names() -> None:
    public = set(engine.__all__)
    wrong = []
    for path in [ROOT / "app.py", *sorted((ROOT / "playground").rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "engine":
                if node.module != "engine":
                    wrong.append(f"{path.relative_to(ROOT)}: from {node.module} import ...")
                wrong += [f"{path.relative_to(ROOT)}: {a.name}" for a in node.names if a.name not in public]
            elif isinstance(node, ast.Import):
                wrong += [f"{path.relative_to(ROOT)}: import {a.name}" for a in node.names
                          if a.name.split(".")[0] == "engine"]
    assert not wrong, "imports beyond engine.__all__:\n" + "\n".join(wrong)


def test_every_public_name_exists() -> None:
    assert all(hasattr(engine, name) for name in engine.__all__)
