"""Imports go one way: core <- schemas <- analysis, engine <- io <- jobs <- flows <- cli.

Every module of the package is parsed (no import needed) and each ``surfflows`` import it
makes at run time is checked against the layer table below. Imports under
``if TYPE_CHECKING:`` load nothing at run time and are not checked. A second test imports the
documents, builders and core in a fresh interpreter and checks that torch stays unloaded
(``mrun`` and the builders must start without it); a third runs ``surfflows build`` with
nothing to do and checks that neither torch nor pymatgen nor jobflow is loaded. Job makers
(``make`` returns a Job) live in ``jobs``, Flow makers in ``flows``, and a job module imports
nothing of ``io`` or ``reports`` that reads a store or a reference set: jobs read only their
inputs.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import surfflows

PACKAGE = Path(surfflows.__file__).parent

#: The layers each layer may import (besides itself). ``settings`` and ``stores`` open the
#: database from the local settings: only builders, io, reports and the CLI may use them.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "schemas": {"core"},
    "analysis": {"core", "schemas"},
    "engine": {"core", "schemas"},
    "io": {"core", "schemas", "analysis", "engine", "settings", "stores"},
    "reports": {"core", "schemas", "analysis", "settings", "stores"},
    "jobs": {"core", "schemas", "analysis", "engine", "io", "reports"},
    "flows": {"core", "schemas", "analysis", "engine", "io", "reports", "jobs"},
    "builders": {"core", "schemas", "analysis", "io", "reports", "settings", "stores"},
    "cli": {
        "core",
        "schemas",
        "analysis",
        "engine",
        "io",
        "reports",
        "jobs",
        "flows",
        "builders",
        "settings",
        "stores",
    },
    "settings": {"core"},
    "stores": {"settings"},
    "__init__": set(),
}


#: All a job module may import of io and reports: checkpoint bytes in and out, and plots.
JOB_IO_AND_REPORTS = {
    "surfflows.io.registry",
    "surfflows.reports.plots",
    "surfflows.reports.chemsys_plots",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(tree: ast.AST) -> set[str]:
    """Names of the ``surfflows`` modules a module imports at run time (lazy imports too)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("surfflows"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("surfflows"):
                found.add(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def all_imports() -> dict[str, set[str]]:
    return {
        module_name(path): runtime_imports(ast.parse(path.read_text(), filename=str(path)))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def test_every_module_is_in_a_layer():
    unknown = {m for m in all_imports() if layer(m) not in ALLOWED}
    assert not unknown, f"modules outside the layer table: {sorted(unknown)}"


def test_imports_go_one_way():
    wrong = set()
    for module, imports in all_imports().items():
        for target in imports:
            source_layer, target_layer = layer(module), layer(target)
            if target_layer == "__init__" and target != "surfflows":
                continue
            if target_layer != source_layer and target_layer not in ALLOWED[source_layer]:
                wrong.add((module, target))
    assert not wrong, "imports going the wrong way:\n" + "\n".join(
        f"  {a} -> {b}" for a, b in sorted(wrong)
    )


def test_jobs_read_only_their_inputs():
    wrong = {
        (module, target)
        for module, imports in all_imports().items()
        if layer(module) == "jobs"
        for target in imports
        if layer(target) in ("io", "reports") and target not in JOB_IO_AND_REPORTS
    }
    assert not wrong, "jobs importing store or file readers:\n" + "\n".join(
        f"  {a} -> {b}" for a, b in sorted(wrong)
    )


def _make_returns(tree: ast.AST) -> dict[str, str]:
    """Class name -> the return annotation of its ``make`` method, for every class with one."""
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "make" and item.returns:
                    found[node.name] = ast.unparse(item.returns)
    return found


def test_job_makers_in_jobs_and_flow_makers_in_flows():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        for name, returns in _make_returns(ast.parse(path.read_text())).items():
            expected = "flows" if returns == "Flow" else "jobs"
            if layer(module) != expected:
                wrong.append(f"{module}.{name} (make -> {returns}) belongs in {expected}")
    assert not wrong, "\n".join(wrong)


def test_jobs_never_reach_the_settings():
    """No job, flow, engine, document or core module imports settings or stores, even
    through the modules it imports: a jobflow-remote worker has no surfflows settings."""
    imports = all_imports()

    def reached(module: str, seen: set[str]) -> set[str]:
        for target in imports.get(module, ()):
            if target not in seen:
                seen.add(target)
                reached(target, seen)
        return seen

    wrong = {
        module: sorted(reached(module, set()) & {"surfflows.settings", "surfflows.stores"})
        for module in imports
        if layer(module) in ("core", "schemas", "engine", "jobs", "flows")
    }
    assert not {m: r for m, r in wrong.items() if r}


def test_documents_analysis_builders_and_core_load_no_torch():
    code = (
        "import sys, pkgutil, importlib, surfflows.core, surfflows.schemas, surfflows.analysis\n"
        "for pkg in (surfflows.core, surfflows.schemas, surfflows.analysis):\n"
        "    for info in pkgutil.iter_modules(pkg.__path__):\n"
        "        importlib.import_module(f'{pkg.__name__}.{info.name}')\n"
        "import surfflows.builders, surfflows.cli\n"
        "print(sorted(m for m in ('torch', 'chgnet', 'sevenn') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]", f"loaded: {out}"


def test_a_build_with_nothing_to_do_loads_neither_torch_nor_the_physics(tmp_path):
    """``surfflows build`` with nothing new (the torch threads setting given, as on a
    cluster) imports no torch, CHGNet, pymatgen or jobflow: they cost seconds at each start."""
    code = (
        "import sys\n"
        "from surfflows.cli import app\n"
        "try:\n    app(['build'], standalone_mode=False)\n"
        "finally:\n"
        "    heavy = ('torch', 'chgnet', 'pymatgen.core', 'jobflow')\n"
        "    print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(PACKAGE.parent),
        "SURFFLOWS_DB_DIR": str(tmp_path / "db"),
        "SURFFLOWS_SETTINGS_FILE": str(tmp_path / "no_settings.yaml"),
        "SURFFLOWS_TORCH_THREADS": "1",
    }
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout
    assert out.strip().splitlines()[-1] == "[]", f"loaded: {out}"
