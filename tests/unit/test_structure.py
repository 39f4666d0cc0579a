"""Gates: every module imports without side effects, and the layering rules hold."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import mmpo

MODULES = sorted(m.name for m in pkgutil.walk_packages(mmpo.__path__, "mmpo."))


def test_every_module_imports():
    assert len(MODULES) > 20
    for name in MODULES:
        importlib.import_module(name)


def imported_after(module: str) -> set[str]:
    """Top-level packages loaded by importing ``module`` in a fresh interpreter."""
    code = f"import sys, {module}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def mmpo_modules_after(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(m for m in sys.modules if m.startswith('mmpo'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_losses_need_only_torch():
    loaded = imported_after("mmpo.losses")
    assert not loaded & {"transformers", "peft", "accelerate", "datasets", "PIL"}


def test_evaluation_does_not_import_training():
    loaded = mmpo_modules_after("mmpo.evaluation.synthetic")
    assert not any(m.startswith(("mmpo.training", "mmpo.cli")) for m in loaded)


def test_nothing_imports_the_cli():
    """Import every library module in one fresh interpreter; the CLI must not come along."""
    library = [name for name in MODULES if not name.startswith("mmpo.cli")]
    code = ("import importlib, sys\n"
            f"for name in {library!r}:\n"
            "    importlib.import_module(name)\n"
            "    if any(m.startswith('mmpo.cli') for m in sys.modules):\n"
            "        print(name); break\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "", f"{out.strip()} imports mmpo.cli"


def test_evaluation_does_not_import_the_toyworld():
    """The benchmark scorers stand alone: importing every ``mmpo.evaluation`` module loads no
    ``mmpo.toyworld`` module, and no evaluation source names it in an import (lazy ones included)."""
    evaluation = [name for name in MODULES if name.startswith("mmpo.evaluation")]
    assert {"mmpo.evaluation.chair", "mmpo.evaluation.pope", "mmpo.evaluation.amber",
            "mmpo.evaluation.mmhal", "mmpo.evaluation.judge", "mmpo.evaluation.synthetic"} <= set(evaluation)
    code = ("import importlib, sys\n"
            f"for name in {evaluation!r}:\n"
            "    importlib.import_module(name)\n"
            "print(' '.join(m for m in sys.modules if m.startswith('mmpo.toyworld')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "", f"importing mmpo.evaluation loads {out.strip()}"
    root = Path(mmpo.__file__).parent / "evaluation"
    for path in sorted(root.glob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            words = line.split()
            if words[:1] in (["import"], ["from"]) and "toyworld" in line:
                raise AssertionError(f"{path.name}:{number} imports the toyworld: {line.strip()}")
