"""Gates: every module imports without side effects, and the layering rules hold.

:data:`LAYERS` is the layer list, bottom up (the README points here). A module may import its own
layer and those below it, never one above. On top of that:

* nothing under ``mmpo.methods`` imports ``training``, ``data``, ``evaluation``, ``toyworld`` or ``cli``;
  each paper's maths (:data:`METHOD_MATHS`) imports only the standard library, torch, the bottom modules
  (:data:`MATHS_MAY_IMPORT`) and other maths or options modules of ``mmpo.methods``;
* ``mmpo.data`` imports neither ``training`` nor ``evaluation``; ``mmpo.evaluation`` not ``training``;
* the library never imports ``mmpo.toyworld``, ``mmpo.testing`` or ``mmpo.cli``, and CLI subcommands
  do not import each other.

Each import gate checks both what a fresh interpreter loads and the source text (lazy imports inside
functions included), and names the module and the import line that break it.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import mmpo

MODULES = sorted(m.name for m in pkgutil.walk_packages(mmpo.__path__, "mmpo."))
ROOT = Path(mmpo.__file__).parent


def source_of(module: str) -> Path:
    """The file of ``mmpo.x.y``: ``x/y.py`` or ``x/y/__init__.py`` under the package."""
    path = ROOT.joinpath(*module.split(".")[1:])
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def import_statements(module: str) -> list[tuple[int, str, list[str], str]]:
    """Every import statement in ``module``'s source, lazy ones inside functions included, as
    ``(line number, module, names, source line)``: ``import a.b`` gives ``("a.b", [])``,
    ``from a import b, c`` gives ``("a", ["b", "c"])``; relative imports are resolved to absolute names."""
    path = source_of(module)
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, [], lines[node.lineno - 1].strip()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.append((node.lineno, base, [alias.name for alias in node.names], lines[node.lineno - 1].strip()))
    return found


def imports_of(module: str) -> list[tuple[int, str, str]]:
    """``(line number, imported module, source line)`` per module an import statement of ``module``
    may load: ``from package import name`` lists ``package`` and ``package.name`` (``name`` may be a module)."""
    return [(number, name, line) for number, base, names, line in import_statements(module)
            for name in [base, *(f"{base}.{n}" for n in names)]]


def offending_imports(modules: list[str], forbidden: tuple[str, ...]) -> list[str]:
    """``"path:line imports X: <line>"`` for every import statement in ``modules`` of a module that is,
    or is under, one of ``forbidden``."""
    prefixes = tuple(f"{name}." for name in forbidden)
    problems = {}
    for module in modules:
        for number, name, line in imports_of(module):
            if name in forbidden or name.startswith(prefixes):
                where = f"{source_of(module).relative_to(ROOT.parent)}:{number}"
                problems.setdefault(where, f"{where} imports {name}: {line}")
    return list(problems.values())


def loaded_on_import(modules: list[str], forbidden: tuple[str, ...]) -> str:
    """Import ``modules`` one by one in a fresh interpreter; ``""``, or which of them first loads a
    module under ``forbidden`` and which modules those are."""
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            f"    bad = sorted(m for m in sys.modules if m in {forbidden!r} or m.startswith({tuple(f'{p}.' for p in forbidden)!r}))\n"
            "    if bad:\n"
            "        print(f'importing {name} loads {\" \".join(bad)}'); break\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def assert_never_imports(modules: list[str], forbidden: tuple[str, ...]) -> None:
    """Neither at run time nor in the source text does any of ``modules`` import ``forbidden``."""
    assert modules
    problems = offending_imports(modules, forbidden)
    assert problems == [], "\n".join(problems)
    loaded = loaded_on_import(modules, forbidden)
    assert loaded == "", loaded


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


def test_every_import_names_something_that_exists():
    """Each import of an mmpo module in mmpo's source, lazy ones inside functions included (which
    importing the module does not run), names a module that exists and names in it that exist: a
    module moved or renamed leaves no stale import behind."""
    problems = []
    for module in MODULES:
        for number, base, names, line in import_statements(module):
            if not base.startswith("mmpo"):
                continue
            where = f"{source_of(module).relative_to(ROOT.parent)}:{number}"
            try:
                target = importlib.import_module(base)
            except ImportError as error:
                problems.append(f"{where}: {line} ({error})")
                continue
            missing = [n for n in names if not hasattr(target, n)
                       and not (hasattr(target, "__path__") and importlib.util.find_spec(f"{base}.{n}"))]
            if missing:
                problems.append(f"{where}: {line} ({base} has no {', '.join(missing)})")
    assert problems == [], "\n".join(problems)


#: The layers, bottom up: a module may import modules of its own layer and the layers below.
LAYERS = (
    ("mmpo.types", "mmpo.checks", "mmpo.progress", "mmpo.io", "mmpo.yamlfile", "mmpo.hub", "mmpo.chat_http", "mmpo.plots"),
    ("mmpo.prompting", "mmpo.logprobs", "mmpo.lm_head", "mmpo.forward", "mmpo.models"),
    ("mmpo.generation", "mmpo.scoring"),
    ("mmpo.methods",),
    ("mmpo.data",),
    ("mmpo.evaluation", "mmpo.report"),
    ("mmpo.training",),
    ("mmpo.toyworld", "mmpo.testing"),
    ("mmpo.cli",),
)

#: Each paper's maths: torch only.
METHOD_MATHS = ("mmpo.methods.dpo", "mmpo.methods.aspo.loss", "mmpo.methods.adavip.loss",
                "mmpo.methods.dama.factors", "mmpo.methods.dama.controller")
#: What the maths may import besides the standard library and torch: the shared bottom modules, and
#: the maths and options of ``mmpo.methods`` (never a method's data pipeline).
MATHS_MAY_IMPORT = ("mmpo.types", "mmpo.logprobs", "mmpo.checks", *METHOD_MATHS, "mmpo.methods.aspo.config",
                    "mmpo.methods.dama.config", "mmpo.methods.adavip.config")
METHOD_PACKAGES = ("mmpo.methods", "mmpo.methods.aspo", "mmpo.methods.dama", "mmpo.methods.adavip")


def layer_of(module: str) -> int:
    for index, layer in enumerate(LAYERS):
        if any(module == name or module.startswith(f"{name}.") for name in layer):
            return index
    raise AssertionError(f"{module} is in no layer of LAYERS: add it")


def test_every_module_is_in_a_layer_and_imports_no_layer_above_its_own():
    problems = []
    for module in MODULES:
        if module == "mmpo":
            continue
        mine = layer_of(module)
        for number, name, line in imports_of(module):
            if name.startswith("mmpo.") and name in MODULES and layer_of(name) > mine:
                problems.append(f"{source_of(module).relative_to(ROOT.parent)}:{number} imports {name} "
                                f"(layer {layer_of(name)} above its {mine}): {line}")
    assert problems == [], "\n".join(problems)


def test_methods_import_nothing_above_them():
    methods = [name for name in MODULES if name.startswith("mmpo.methods")]
    assert {"mmpo.methods.dama.controller", "mmpo.methods.adavip.vision_rejected", "mmpo.methods.aspo.units"} <= set(methods)
    assert_never_imports(methods, ("mmpo.training", "mmpo.data", "mmpo.evaluation", "mmpo.toyworld", "mmpo.cli"))


def test_method_maths_need_only_torch():
    """Every method's training-step maths runs with torch alone: in the source of each module of
    :data:`METHOD_MATHS` each import is the standard library, torch or :data:`MATHS_MAY_IMPORT`, and
    importing every method package in a fresh interpreter loads nothing heavier."""
    assert set(METHOD_MATHS) <= set(MODULES)
    problems = []
    for module in [*METHOD_MATHS, *METHOD_PACKAGES]:
        for number, name, line in imports_of(module):
            top = name.split(".")[0]
            if name.startswith("mmpo"):
                ok = name in ("mmpo", "mmpo.methods", *METHOD_PACKAGES) or any(
                    name == m or name.startswith(f"{m}.") for m in MATHS_MAY_IMPORT)
            else:
                ok = top in sys.stdlib_module_names or top == "torch"
            if not ok:
                problems.append(f"{source_of(module).relative_to(ROOT.parent)}:{number} imports {name}: {line}")
    assert problems == [], "\n".join(problems)
    for package in METHOD_PACKAGES:
        loaded = imported_after(package)
        assert not loaded & {"transformers", "peft", "accelerate", "datasets", "PIL", "safetensors"}, package
        extra = {m for m in mmpo_modules_after(package) if not m.startswith(MATHS_MAY_IMPORT)}
        assert extra <= {"mmpo", *METHOD_PACKAGES}, f"{package} loads {sorted(extra)}"


def test_data_imports_neither_training_nor_evaluation():
    """Building and reading training data needs no trainer and no benchmark code: model loading is
    :mod:`mmpo.models`, batched generation the neutral :mod:`mmpo.generation`."""
    data = [name for name in MODULES if name.startswith("mmpo.data")]
    assert {"mmpo.data.construct.noisy_pairs", "mmpo.data.construct.claim_judges"} <= set(data)
    assert_never_imports(data, ("mmpo.training", "mmpo.evaluation"))


def test_evaluation_does_not_import_training():
    evaluation = [name for name in MODULES if name.startswith("mmpo.evaluation")]
    assert "mmpo.evaluation.synthetic" in evaluation
    assert_never_imports(evaluation, ("mmpo.training", "mmpo.cli"))


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


def test_the_library_does_not_import_the_toyworld():
    """The library stands alone: importing every module outside ``mmpo.toyworld``, ``mmpo.testing``
    and ``mmpo.cli`` (the benchmark scorers, the data pipelines, training, ...) loads no module of the
    synthetic world or of the test fixtures, and none names one in an import. The synthetic world's
    ground-truth stand-ins for the AdaViP stages live in ``mmpo.toyworld.annotations``; the CLI wires them in."""
    library = [name for name in MODULES if not name.startswith(("mmpo.cli", "mmpo.toyworld", "mmpo.testing"))]
    assert {"mmpo.evaluation.chair", "mmpo.evaluation.pope", "mmpo.evaluation.amber", "mmpo.evaluation.mmhal",
            "mmpo.evaluation.judge", "mmpo.evaluation.synthetic", "mmpo.methods.adavip.vision_steps",
            "mmpo.methods.adavip.vision_rejected", "mmpo.io"} <= set(library)
    assert_never_imports(library, ("mmpo.toyworld", "mmpo.testing"))


def test_the_synthetic_world_does_not_import_the_test_fixtures():
    toyworld = [name for name in MODULES if name.startswith("mmpo.toyworld")]
    assert_never_imports(toyworld, ("mmpo.testing",))


def test_construct_modules_share_helpers_through_io_not_each_other():
    """A construction pipeline imports a sibling only for the step interfaces it composes
    (``self_pairs``: the claim-judge protocol the judges of ``claim_judges`` implement); shared helpers
    (image keys, the resume journal, atomic files) come from ``mmpo.io``."""
    construct = [name for name in MODULES if name.startswith("mmpo.data.construct.")]
    steps = ("mmpo.data.construct.self_pairs",)
    for module in construct:
        siblings = tuple(name for name in construct if name != module and name not in steps)
        problems = offending_imports([module], siblings)
        assert problems == [], "\n".join(problems)


def test_cli_subcommands_do_not_import_each_other():
    """Each ``mmpo.cli.X`` stands on the library alone; only ``mmpo.cli.main`` knows them all (it
    dispatches by name). What two subcommands share (checkpoint loading, the download switch, the
    cache directory) lives in the library: ``mmpo.models``, ``mmpo.hub``, ``mmpo.io``."""
    cli = [name for name in MODULES if name.startswith("mmpo.cli.")]
    assert {"mmpo.cli.evaluate", "mmpo.cli.noisy_pairs", "mmpo.cli.main"} <= set(cli)
    for module in cli:
        if module == "mmpo.cli.main":
            continue
        others = tuple(name for name in cli if name != module)
        problems = offending_imports([module], others)
        assert problems == [], "\n".join(problems)
        loaded = loaded_on_import([module], others)
        assert loaded == "", loaded
