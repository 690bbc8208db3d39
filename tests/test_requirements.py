"""The install files cover what the code imports, and agree with each other and the metadata.

CI runs the README's commands in a fresh virtual environment (.ci/run), which catches a missing
requirement only on the paths the demo runs; this reads every import of the bundle, its scripts
and configs, so that a script that imports a package requirements.txt lacks fails here (the test
environment has more installed: requirements-dev.txt pulled scipy in through medpy, which hid its
absence from requirements.txt).
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import sys
from pathlib import Path

from tests.conftest import REPO

LOCAL_PACKAGES = {"bundle", "scripts"}


def requirements(path: Path) -> dict[str, str]:
    """Requirement lines of a file (``-r``/``-c`` lines and comments skipped): normalised name ->
    version specifier."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)", line)
        assert match, f"{path.name}: cannot read {line!r}"
        found[normalise(match.group(1))] = match.group(3).replace(" ", "")
    return found


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def checked_first(tree: ast.AST) -> set[str]:
    """Modules a file asks ``find_spec`` about: optional, imported only where installed."""
    return {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "attr", getattr(node.func, "id", None)) == "find_spec"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }


def imported_modules() -> dict[str, set[str]]:
    """Top-level modules imported anywhere in bundle/, scripts/ or the configs, with the files
    (optional ones, :func:`checked_first`, left out)."""
    found: dict[str, set[str]] = {}
    for path in sorted([*REPO.glob("bundle/**/*.py"), *REPO.glob("scripts/**/*.py")]):
        tree = ast.parse(path.read_text())
        optional = checked_first(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                if name.split(".")[0] not in optional:
                    found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(REPO)))
    for path in sorted(REPO.glob("configs/*.yaml")):
        for name in re.findall(r"\$import ([A-Za-z_][\w.]*)", path.read_text()):
            found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(REPO)))
    return found


def test_requirements_cover_every_import_of_the_bundle_and_scripts():
    required = set(requirements(REPO / "requirements.txt"))
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for module, files in imported_modules().items():
        if module in sys.stdlib_module_names or module in LOCAL_PACKAGES or module == "__future__":
            continue
        names = {normalise(d) for d in distributions.get(module, [module])}
        if not names & required:
            missing.append(f"{module} ({', '.join(sorted(names))}) imported by {sorted(files)}")
    assert not missing, "not in requirements.txt: " + "; ".join(missing)


def test_pins_agree_across_requirements_constraints_and_metadata():
    bundle = requirements(REPO / "requirements.txt")
    constraints = requirements(REPO / "constraints-monailabel.txt")
    metadata = json.loads((REPO / "configs" / "metadata.json").read_text())
    # the MONAI Label install keeps the versions the bundle is tested with
    assert bundle["torch"] == constraints["torch"] == f"=={metadata['pytorch_version']}"
    assert constraints["numpy"] == f"=={metadata['numpy_version']}"
    assert constraints["jsonschema"] == bundle["jsonschema"]
    assert bundle["monai"] == f"=={metadata['monai_version']}"
    # the model zoo's list of packages: every exactly pinned one but torch, monai and numpy
    listed = {normalise(k): f"=={v}" for k, v in metadata["required_packages_version"].items()}
    pinned = {
        name: spec
        for name, spec in bundle.items()
        if spec.startswith("==") and name not in {"torch", "monai", "numpy"}
    }
    assert listed == pinned


def test_server_requirements_leave_the_pins_to_the_constraints():
    """The DICOM packages' versions are constraints (why: in constraints-monailabel.txt), so the
    server list names them without versions; and nothing there is installed twice."""
    server = requirements(REPO / "requirements-monailabel-server.txt")
    constraints = requirements(REPO / "constraints-monailabel.txt")
    no_deps = requirements(REPO / "requirements-monailabel.txt")
    for name in ("pydicom", "pynetdicom", "dicomweb-client"):
        assert server[name] == "" and constraints[name]
    assert not set(no_deps) & set(server)
    text = (REPO / "requirements-monailabel-server.txt").read_text()
    assert "-r requirements.txt" in text and "-c constraints-monailabel.txt" in text
