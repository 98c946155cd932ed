"""The import rules of the layout (AST scan of every module; see the README's Layout table).

- ``j4r/`` imports nothing from ``pipeline``, ``flows``, ``ray`` or ``prefect``;
- only modules in ``pipeline/runtime/`` import ``ray``; only ``flows/`` imports ``prefect``;
- no module under ``flows/`` imports the CLI, the CLI does not import ``flows``, and the library
  (``pipeline/`` outside ``cli/``) imports neither;
- no folder of ``pipeline/`` holds more than 12 modules;
- importing the ``derain`` parser or the flow definitions loads neither torch nor ray.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULES_PER_FOLDER = 12


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions count)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = (
        module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    )
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def modules_under(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def imports_of(folder: str) -> dict[str, set[str]]:
    return {module_name(p): imported_modules(p) for p in modules_under(folder)}


def within(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def offenders(folder: str, forbidden: tuple[str, ...], allowed_in: tuple[str, ...] = ()):
    return {
        module: sorted(n for n in names if within(n, *forbidden))
        for module, names in imports_of(folder).items()
        if not within(module, *allowed_in) and any(within(n, *forbidden) for n in names)
    }


def test_j4r_imports_nothing_from_the_pipeline_flows_ray_or_prefect():
    assert offenders("j4r", ("pipeline", "flows", "ray", "prefect")) == {}


@pytest.mark.parametrize("folder", ["pipeline", "flows", "j4r"])
def test_only_the_runtime_folder_imports_ray(folder):
    assert offenders(folder, ("ray",), allowed_in=("pipeline.runtime",)) == {}


def test_only_flows_import_prefect():
    assert offenders("pipeline", ("prefect",)) == {}
    assert offenders("j4r", ("prefect",)) == {}


def test_flows_and_cli_never_import_each_other_and_the_library_imports_neither():
    assert offenders("flows", ("pipeline.cli",)) == {}
    assert offenders("pipeline/cli", ("flows",)) == {}
    assert offenders("pipeline", ("pipeline.cli", "flows"), allowed_in=("pipeline.cli",)) == {}


def test_no_folder_of_the_pipeline_is_crowded():
    for folder in [ROOT / "pipeline", *(p for p in (ROOT / "pipeline").iterdir() if p.is_dir())]:
        modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
        assert len(modules) <= MAX_MODULES_PER_FOLDER, f"{folder}: {len(modules)} modules"


def test_the_scan_sees_lazy_imports():
    sample = ROOT / "pipeline" / "runtime" / "runners.py"
    names = imported_modules(sample)
    assert "pipeline.runtime.ray_runner" in names  # imported inside build_runner


def test_cli_and_flow_definitions_load_neither_torch_nor_ray():
    code = (
        "import sys\n"
        "import pipeline.cli.main, flows.archive, flows.train\n"
        "pipeline.cli.main.build_parser()\n"
        "heavy = [m for m in ('torch', 'ray') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
