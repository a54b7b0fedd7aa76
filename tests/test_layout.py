"""The package's shape: the public API at its face, imports that point down the data flow,
and a wheel that carries every subpackage."""

import ast
import configparser
import re
import subprocess
import sys

from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "gpt2_lightning"

# The public API (README, "Python API").
PUBLIC_API = ["GPTConfig", "GPTModel", "KVCache", "load_pretrained", "convert_hf_state_dict", "load_model",
              "generate", "format_prompt", "extract_response", "load_records", "split_records",
              "InstructionDataset", "InstructionCollator", "InstructionDataModule", "InstructionTuner",
              "masked_lm_loss", "download", "ChatModel", "SamplingParams", "Run", "ExecutionPlan",
              "PreferenceDataset", "PreferenceCollator", "PreferenceDataModule", "PreferenceTuner",
              "sequence_logprobs", "preference_loss"]

# The stages in the order of the data flow; a module may import its own stage and those before it.
LAYERS = [
    {"errors", "io", "fetch", "devices", "resources", "backends"},
    {"model"},
    {"data"},
    {"generation"},
    {"train"},
    {"export"},
    {"chat_model"},
    {"evaluate"},
    {"apps", "__main__"},
]


def test_every_public_name_is_importable_from_the_package_face_as_what_it_names():
    # In a fresh process that first imports every module: a subpackage named like an API
    # function (generate, download) would replace the function on the package.
    code = (
        "import importlib, pkgutil, types, gpt2_lightning\n"
        "for m in pkgutil.walk_packages(gpt2_lightning.__path__, 'gpt2_lightning.'):\n"
        "    if not m.name.endswith('__main__'): importlib.import_module(m.name)\n"
        f"for name in {PUBLIC_API!r}:\n"
        "    value = getattr(gpt2_lightning, name)\n"
        "    assert not isinstance(value, types.ModuleType), name\n"
        "    assert value.__name__ == name and value.__module__.startswith('gpt2_lightning.'), name\n"
        "assert sorted(gpt2_lightning.__all__) == sorted([*" f"{PUBLIC_API!r}" ", '__version__'])\n"
        f"from gpt2_lightning import {', '.join(PUBLIC_API)}\n"
        "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_importing_the_package_face_does_not_import_lightning():
    code = "import sys, gpt2_lightning; gpt2_lightning.GPTModel; print('lightning' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.stdout.strip() == "False", result.stderr[-2000:]


def stage(module: str) -> str:
    """``gpt2_lightning.data.records`` -> ``data``; ``gpt2_lightning.io`` -> ``io``."""
    return module.split(".")[1] if module.count(".") else ""


def layer(name: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if name in names)


def project_imports(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gpt2_lightning"):
            if node.module != "gpt2_lightning":
                yield node.module
            else:  # submodules; other names (__version__) are constants of the face
                yield from (f"gpt2_lightning.{a.name}" for a in node.names
                            if (PACKAGE / a.name).is_dir() or (PACKAGE / f"{a.name}.py").is_file())
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("gpt2_lightning."))


def test_imports_only_point_down_the_data_flow():
    backwards = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts == ("__init__",):
            continue  # the package face lists the API of every stage
        own = parts[0]
        for target in project_imports(path):
            if layer(stage(target)) > layer(own):
                backwards.append(f"{path.relative_to(REPO_ROOT)} imports {target}")
    assert backwards == []
    stages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert stages | modules == set().union(*LAYERS)  # every stage and bottom module has its place


def test_the_model_and_the_loss_import_no_kernel_of_a_backend():
    # They take a backend's kernels through their hooks; only the interface is theirs to import.
    kernels = [f"{path.relative_to(REPO_ROOT)} imports {target}"
               for folder in ("model", "train") for path in sorted((PACKAGE / folder).rglob("*.py"))
               for target in project_imports(path)
               if target.startswith("gpt2_lightning.backends.") and target.split(".")[2] not in ("plan", "base")]
    assert kernels == []


def environment_writes(tree: ast.AST) -> list[int]:
    """Lines that set a process environment variable (``os.environ[...] =``, ``os.putenv``, ...)."""
    lines = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(t, ast.Subscript) and "environ" in ast.unparse(t.value) for t in targets):
            lines.append(node.lineno)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (
                node.func.attr == "putenv" or ("environ" in ast.unparse(node.func.value)
                                               and node.func.attr in ("update", "setdefault", "__setitem__"))):
            lines.append(node.lineno)
    return lines


def test_the_package_writes_no_environment_variable():
    assert environment_writes(ast.parse("import os\nos.environ['X'] = '1'\nos.environ.update(Y='2')")) == [2, 3]
    writes = {str(path.relative_to(REPO_ROOT)): lines for path in sorted(PACKAGE.rglob("*.py"))
              if (lines := environment_writes(ast.parse(path.read_text())))}
    assert writes == {}


def test_setup_cfg_ships_every_subpackage_the_configs_and_the_sample_data():
    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    listed = set(setup["options"]["packages"].split())
    subpackages = {".".join(p.parent.relative_to(REPO_ROOT).parts) for p in PACKAGE.rglob("__init__.py")}
    assert subpackages <= listed
    assert "gpt2_lightning.conf = conf" in setup["options"]["package_dir"]
    assert "gpt2_lightning.sample_data = data" in setup["options"]["package_dir"]
    assert setup["options.entry_points"]["console_scripts"].split() == ["gpt2", "=", "gpt2_lightning.apps.cli:command"]


def imported_packages(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"gpt2_lightning"}


def normalized(distribution: str) -> str:
    """A distribution's name as pip compares them (PEP 503): lm_eval and lm-eval are one."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def declared(requirements: str) -> set[str]:
    return {normalized(re.split(r"[<>=!~ ;\[]", line.strip())[0]) for line in requirements.splitlines()
            if line.strip() and not line.strip().startswith("#")}


def test_every_package_the_library_imports_is_declared_and_optional_ones_load_late():
    import importlib.metadata

    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    core = declared(setup["options"]["install_requires"])
    optional = set().union(*(declared(v) for k, v in setup["options.extras_require"].items() if k != "dev"))
    distributions = importlib.metadata.packages_distributions()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        top_level = imported_packages(ast.Module(body=[n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))],
                                                 type_ignores=[]))
        for name in imported_packages(tree):
            provided = {normalized(d) for d in distributions[name]}
            assert provided & (core | optional), f"{path.name} imports {name}, declared nowhere"
            if not provided & core:  # an extra's package: imported where it is used, with a clear error
                assert name not in top_level, f"{path.name} imports the optional {name} at the top"
