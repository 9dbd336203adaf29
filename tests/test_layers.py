"""The layers hold: the `wecom/` protocol package imports no Django and nothing of the
project, the apps import only downward (the import-linter contracts in pyproject.toml), and
the test-only SDK stand-in does not ship with the production packages.

Two independent checks on `wecom/`, because each misses what the other sees: importing
every module in a fresh interpreter catches Django pulled in through a third-party
dependency; reading the source catches an import that only runs inside a function.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

BASE_DIR = Path(__file__).resolve().parent.parent
WECOM_DIR = BASE_DIR / "wecom"

# Top-level packages `wecom/` must never import: Django and what builds on it, and the
# project's own Django side.
FORBIDDEN_ROOTS = frozenset(
    {"django", "rest_framework", "channels", "celery", "guardian", "apps", "wecom_ai", "tests"}
)


def _wecom_modules() -> list[str]:
    modules = []
    for path in sorted(WECOM_DIR.rglob("*.py")):
        parts = path.relative_to(BASE_DIR).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules.append(".".join(parts))
    return modules


def _is_import_call(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in {"__import__", "import_module"}
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def _is_wecom_forbidden(name: str) -> bool:
    return name.split(".")[0] in FORBIDDEN_ROOTS


def forbidden_imports(
    source: str,
    *,
    filename: str = "<source>",
    is_forbidden: Callable[[str], bool] = _is_wecom_forbidden,
) -> list[str]:
    """Every `import X` / `from X import …` / `import_module("X")` naming a forbidden module,
    wherever it appears (module level, inside functions, under TYPE_CHECKING); `from X
    import y` is checked as both `X` and `X.y`, so `from apps import bots` is seen too."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (
                    isinstance(node.func, ast.Name)
                    and node.func.id in {"__import__", "import_module"}
                )
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            names = [node.args[0].value]
        found += [f"{filename}:{node.lineno}: {name}" for name in names if is_forbidden(name)]
    return found


def test_the_wecom_package_has_modules_to_check():
    modules = _wecom_modules()
    for expected in (
        "wecom.crypto",
        "wecom.messages",
        "wecom.outbound",
        "wecom.simulator",
        "wecom.contacts",
        "wecom.archive.sdk",
        "wecom.archive.decrypt",
    ):
        assert expected in modules


@pytest.mark.slow  # a fresh interpreter per module
@pytest.mark.parametrize("module", _wecom_modules())
def test_wecom_module_imports_without_django(module):
    # Given a fresh interpreter without DJANGO_SETTINGS_MODULE
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    code = (
        f"import sys, {module}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{sorted(FORBIDDEN_ROOTS)!r})\n"
        "assert not bad, bad\n"
    )
    # When only that module is imported
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Then it imports, and neither Django nor the project's Django side came with it
    assert result.returncode == 0, result.stderr


def test_wecom_source_names_no_django_or_project_import():
    violations: list[str] = []
    for path in sorted(WECOM_DIR.rglob("*.py")):
        relative = str(path.relative_to(BASE_DIR))
        violations += forbidden_imports(path.read_text(encoding="utf-8"), filename=relative)
    assert violations == []


@pytest.mark.parametrize(
    "source",
    [
        "from django.conf import settings",
        "import django.db",
        "def f():\n    from apps.bots.models import Bot",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import wecom_ai.settings",
        "import importlib\nimportlib.import_module('django.core.cache')",
        "from rest_framework import serializers",
    ],
)
def test_the_source_check_sees_each_kind_of_forbidden_import(source):
    assert forbidden_imports(source)


@pytest.mark.parametrize(
    "source",
    [
        "import httpx",
        "from wecom.crypto import WeComCrypto",
        "from . import crypto",
        "import djangoish",
    ],
)
def test_the_source_check_lets_allowed_imports_pass(source):
    assert forbidden_imports(source) == []


def test_test_sdk_stand_in_ships_in_no_production_package():
    # The C stand-in of the vendor SDK and its builder live under tests/ only.
    for package in ("apps", "wecom", "wecom_ai"):
        shipped = [
            str(path.relative_to(BASE_DIR))
            for path in (BASE_DIR / package).rglob("*")
            if path.suffix in {".c", ".h", ".so"} or "testsdk" in path.parts
        ]
        assert shipped == []
    assert (BASE_DIR / "tests" / "wecomsdk" / "finance_sdk_test.c").is_file()


@pytest.mark.parametrize("old", ["apps.bots.wecom", "apps.audit.archive"])
def test_old_protocol_paths_are_gone(old):
    assert importlib.util.find_spec(old) is None


CORE_DIR = BASE_DIR / "apps" / "core"
# The kernel sits below every domain app: it may import Django and `wecom/`, never them.
DOMAIN_APPS = ("apps.bots", "apps.knowledge", "apps.audit")


def _is_domain_app(name: str) -> bool:
    return any(name == app or name.startswith(f"{app}.") for app in DOMAIN_APPS)


@pytest.mark.parametrize(
    "source",
    [
        "from apps.bots.models import Bot",
        "import apps.audit.services",
        "from apps import knowledge",
        "def f():\n    from apps.audit.models import AccessLog",
    ],
)
def test_the_core_check_sees_a_domain_app_import(source):
    assert forbidden_imports(source, is_forbidden=_is_domain_app)


@pytest.mark.parametrize(
    "source", ["from apps.core.fields import EncryptedTextField", "from django.db import models"]
)
def test_the_core_check_lets_kernel_and_django_imports_pass(source):
    assert forbidden_imports(source, is_forbidden=_is_domain_app) == []


def test_core_imports_no_domain_app():
    # Given every module of the kernel app
    paths = sorted(CORE_DIR.rglob("*.py"))
    assert CORE_DIR / "fields.py" in paths and CORE_DIR / "admin.py" in paths
    # When their sources are read
    violations: list[str] = []
    for path in paths:
        relative = str(path.relative_to(BASE_DIR))
        source = path.read_text(encoding="utf-8")
        violations += forbidden_imports(source, filename=relative, is_forbidden=_is_domain_app)
    # Then none of them imports a domain app: the dependencies point down to the kernel
    assert violations == []


# --- The import contracts (pyproject.toml, [tool.importlinter]; `lint-imports` in make test) ---

LAYERS = [
    "apps.monitoring | apps.wecomapp | apps.wechat | apps.openai_api",
    "apps.bots",
    "apps.knowledge",
    "apps.audit",
    "apps.inference | apps.directory",
    "apps.core",
]


def _importlinter_config() -> dict[str, Any]:
    return tomllib.loads((BASE_DIR / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "importlinter"
    ]


def _lint_imports(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports_command; lint_imports_command()",
            "--no-cache",
            *args,
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_layers_contract_has_the_agreed_order():
    # Loosening the contract (a layer dropped or swapped) must be a visible change here too.
    contracts = {c["id"]: c for c in _importlinter_config()["contracts"]}
    assert contracts["apps-layers"]["type"] == "layers"
    assert contracts["apps-layers"]["layers"] == LAYERS
    forbidden = contracts["wecom-django-free"]
    assert forbidden["source_modules"] == ["wecom"]
    assert {"django", "apps", "wecom_ai", "rest_framework", "channels", "celery"} <= set(
        forbidden["forbidden_modules"]
    )


@pytest.mark.slow  # runs lint-imports in a child Python
def test_the_import_contracts_hold():
    result = _lint_imports(BASE_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def _toml_value(value: Any) -> str:
    # Strings, lists of strings and booleans: their JSON spelling is valid TOML.
    return json.dumps(value)


def _contract_project(tmp_path: Path, modules: dict[str, str]) -> Path:
    """A throw-away project with the real contracts (less the ignores of this repository's
    known moves) over a package tree of the same names, plus `modules`."""
    config = _importlinter_config()
    lines = ["[tool.importlinter]"]
    lines += [
        f"{key} = {_toml_value(value)}" for key, value in config.items() if key != "contracts"
    ]
    for contract in config["contracts"]:
        lines += ["", "[[tool.importlinter.contracts]]"]
        lines += [
            f"{key} = {_toml_value(value)}"
            for key, value in contract.items()
            if key != "ignore_imports"
        ]
    (tmp_path / "pyproject.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    packages = {"wecom", "wecom_ai"} | {
        name.strip() for layer in LAYERS for name in layer.split("|")
    }
    for package in packages:
        directory = tmp_path.joinpath(*package.split("."))
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "__init__.py").write_text("", encoding="utf-8")
        (directory / "models.py").write_text("", encoding="utf-8")
    (tmp_path / "apps" / "__init__.py").write_text("", encoding="utf-8")
    for relative, source in modules.items():
        (tmp_path / relative).write_text(source, encoding="utf-8")
    return tmp_path


# Imports along the agreed direction, present in every tree below.
DOWNWARD = {
    "apps/monitoring/views.py": "from apps.bots import models\nfrom apps.audit import models\n",
    "apps/bots/services.py": "from apps.knowledge import models\nfrom apps.audit import models\n",
    "apps/knowledge/services.py": "from apps.audit.models import *\n",
    "apps/audit/services.py": "import apps.inference.models\nimport apps.directory.models\n",
    "apps/inference/engine.py": "from apps.core import models\n",
    "apps/directory/services.py": "from apps.core import models\nimport wecom.models\n",
    "apps/core/fields.py": "import django.db\nimport wecom.models\n",
    "wecom_ai/urls.py": "import apps.bots.services\nimport django.urls\n",
    "wecom/crypto.py": "import hashlib\nfrom wecom import models\n",
}


@pytest.mark.slow  # runs lint-imports in a child Python
def test_the_contracts_pass_a_tree_that_imports_only_downward(tmp_path):
    # Given a tree whose imports all point down (the control for the test below)
    project = _contract_project(tmp_path, DOWNWARD)
    # When the contracts are checked
    result = _lint_imports(project)
    # Then they hold
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"Contracts: \d+ kept, 0 broken", result.stdout)


@pytest.mark.slow  # runs lint-imports in a child Python
@pytest.mark.parametrize(
    ("module", "source", "reported"),
    [
        # Monitoring reads every app; no app may depend on it.
        (
            "apps/bots/views.py",
            "from apps.monitoring import models\n",
            "apps.bots is not allowed to import apps.monitoring",
        ),
        # The import this issue removed: audit reading bots' models.
        (
            "apps/audit/selectors.py",
            "from apps.bots.models import Bot\n",
            "apps.audit is not allowed to import apps.bots",
        ),
        (
            "apps/knowledge/embedding.py",
            "def load():\n    from apps.bots import models\n",
            "apps.knowledge is not allowed to import apps.bots",
        ),
        (
            "apps/core/admin.py",
            "import apps.audit.models\n",
            "apps.core is not allowed to import apps.audit",
        ),
        (
            "apps/inference/profiles.py",
            "from apps.directory import models\n",
            "apps.inference is not allowed to import apps.directory",
        ),
        (
            "wecom/outbound.py",
            "from django.conf import settings\n",
            "wecom is not allowed to import django",
        ),
        (
            "wecom/contacts.py",
            "from apps.core import models\n",
            "wecom is not allowed to import apps",
        ),
        ("wecom/simulator.py", "import wecom_ai.urls\n", "wecom is not allowed to import wecom_ai"),
    ],
)
def test_the_contracts_reject_an_import_against_the_direction(tmp_path, module, source, reported):
    # Given the downward tree plus one import against the direction
    project = _contract_project(tmp_path, {**DOWNWARD, module: source})
    # When the contracts are checked
    result = _lint_imports(project)
    # Then the check fails and names the offending import
    assert result.returncode == 1, result.stdout + result.stderr
    assert reported in result.stdout
    importer = module.removesuffix(".py").replace("/", ".")
    assert re.search(rf"^-\s+{re.escape(importer)} -> ", result.stdout, re.MULTILINE)


# The floors under the domain apps (issue 10): inference and directory sit side by side
# below bots, knowledge and audit, and the kernel below them all. Each floor may import
# Django, `wecom/` and the floors under it, never one beside or above it.
FLOORS_BELOW = {
    "apps.core": (*DOMAIN_APPS, "apps.inference", "apps.directory"),
    "apps.inference": (*DOMAIN_APPS, "apps.directory"),
    "apps.directory": (*DOMAIN_APPS, "apps.inference"),
}


def _imports_above(floor: str) -> Callable[[str], bool]:
    above = FLOORS_BELOW[floor]
    return lambda name: any(name == app or name.startswith(f"{app}.") for app in above)


@pytest.mark.parametrize(
    ("floor", "source"),
    [
        ("apps.inference", "from apps.knowledge.services.embedding import Embedder"),
        ("apps.inference", "from apps.directory.selectors import Readers"),
        ("apps.directory", "def f():\n    from apps.bots.models import Bot"),
        ("apps.directory", "import apps.inference.engine"),
        ("apps.core", "from apps import inference"),
    ],
)
def test_the_floor_check_sees_an_import_beside_or_above(floor, source):
    assert forbidden_imports(source, is_forbidden=_imports_above(floor))


@pytest.mark.parametrize(
    ("floor", "source"),
    [
        ("apps.inference", "from apps.core.fields import EncryptedTextField"),
        ("apps.inference", "from apps.inference.engine.base import ModelSpec"),
        ("apps.directory", "from wecom.contacts import ContactClient"),
        ("apps.directory", "from apps.directory.models import DirectoryUser"),
    ],
)
def test_the_floor_check_lets_own_and_lower_imports_pass(floor, source):
    assert forbidden_imports(source, is_forbidden=_imports_above(floor)) == []


@pytest.mark.parametrize("floor", sorted(FLOORS_BELOW))
def test_lower_floors_import_nothing_beside_or_above_them(floor):
    # Given every module of the floor's app, migrations included
    root = BASE_DIR.joinpath(*floor.split("."))
    paths = sorted(root.rglob("*.py"))
    assert root / "apps.py" in paths and len(paths) > 3
    # When their sources are read
    violations: list[str] = []
    for path in paths:
        relative = str(path.relative_to(BASE_DIR))
        source = path.read_text(encoding="utf-8")
        violations += forbidden_imports(
            source, filename=relative, is_forbidden=_imports_above(floor)
        )
    # Then none imports an app beside or above it: the dependencies point down
    assert violations == []
