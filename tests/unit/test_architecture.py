"""The import rules of docs/architecture.md, checked on the source (the AST, not a grep).

Each layer may import only the layers listed for it; a use case that decides (triage,
acknowledge, chase) never reaches IMAP or SMTP: the adapters are for the use cases that
talk to a server (ingest, send) and for the runtime that wires them.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "keepword"

# The leaf modules at the top of the package, importable from anywhere.
BASE = {"config", "errors", "clock", "retry"}

# layer -> the keepword layers it may import (besides itself and BASE).
ALLOWED: dict[str, set[str]] = {
    "domain": set(),
    "mail": {"domain"},
    "store": {"domain", "mail"},
    "adapters": set(),
    "backtest": {"domain"},
    "pipeline": {"domain", "mail", "store", "adapters"},
    "runtime": {"domain", "mail", "store", "adapters", "pipeline"},
    "cli": {"domain", "mail", "store", "adapters", "pipeline", "runtime", "backtest"},
}

# Third-party packages that are I/O: never in the functional core.
SHELL_PACKAGES = {"sqlalchemy", "alembic", "imapclient", "aiosmtplib", "apscheduler", "jinja2"}

# The use cases that talk to a mail server, and the adapters each really uses.
ADAPTERS_OF_USE_CASE: dict[str, set[str]] = {
    "ingest": {"imap", "credentials"},
    "prefetch": {"imap", "credentials"},  # ingest's worker process
    "send": {"imap", "smtp", "credentials", "metrics"},
}


def _module(path: Path) -> str:
    return ".".join(path.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


MODULES = {_module(p): _imports(p) for p in sorted(SRC.rglob("*.py"))}


def _keepword_layers(imports: set[str]) -> dict[str, str]:
    """Imported keepword module -> its layer (sub-packages only; BASE modules skipped)."""
    return {
        name: name.split(".")[1]
        for name in imports
        if name.startswith("keepword.") and name.split(".")[1] in ALLOWED
    }


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_what_the_picture_allows(layer: str) -> None:
    wrong = {
        f"{module} imports {name}"
        for module, imports in MODULES.items()
        if module.split(".")[1:2] == [layer]
        for name, target in _keepword_layers(imports).items()
        if target != layer and target not in ALLOWED[layer]
    }
    assert not wrong, sorted(wrong)


def test_the_functional_core_does_no_io() -> None:
    wrong = {
        f"{module} imports {name}"
        for module, imports in MODULES.items()
        if module.startswith("keepword.domain")
        for name in imports
        if name.split(".")[0] in SHELL_PACKAGES
    }
    assert not wrong, sorted(wrong)


def test_no_use_case_imports_an_adapter_it_does_not_use() -> None:
    wrong = set()
    for module, imports in MODULES.items():
        if not module.startswith("keepword.pipeline."):
            continue
        use_case = module.split(".")[2]
        allowed = ADAPTERS_OF_USE_CASE.get(use_case, set())
        for name in imports:
            parts = name.split(".")
            if len(parts) < 3 or parts[0] != "keepword":
                continue
            adapter = parts[1] == "adapters" and parts[2] not in allowed
            # A deciding use case reaching a server's use case gets its adapters too.
            via_use_case = (
                not allowed and parts[1] == "pipeline" and parts[2] in ADAPTERS_OF_USE_CASE
            )
            if adapter or via_use_case:
                wrong.add(f"{module} imports {name}")
    assert not wrong, sorted(wrong)


def test_no_module_shadows_a_standard_library_name() -> None:
    shadows = {
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if path.stem in sys.stdlib_module_names
    }
    assert not shadows, sorted(shadows)


def test_the_rules_see_every_layer() -> None:
    """A new sub-package must be placed in the picture (and in ALLOWED) first."""
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(ALLOWED)


# Functions in src that may take 7 or more parameters (issue 11: at most 5; today none). A use case
# takes a MailboxContext; a step of the drain, the IDLE watcher or the chase plan takes
# its own context object. Lower it when one of them goes; never raise it.
MAX_WIDE_FUNCTIONS = 0  # was 28, then 5 (issue 11); now none
WIDE = 7


def _parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """Every parameter (positional, keyword-only, *args, **kwargs) but self and cls."""
    args = node.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
    return [n for n in names if n not in ("self", "cls")]


def wide_functions(root: Path = SRC) -> list[str]:
    """`path:line name (n)` of every function under root with WIDE or more parameters."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                count = len(_parameters(node))
                if count >= WIDE:
                    where = f"{path.relative_to(root)}:{node.lineno}"
                    found.append(f"{where} {node.name} ({count})")
    return found


def test_few_functions_take_seven_or_more_parameters() -> None:
    wide = wide_functions()
    assert len(wide) <= MAX_WIDE_FUNCTIONS, wide


def test_the_parameter_count_sees_every_kind_of_parameter(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(
        "def f(a, /, b, *c, d, **e): ...\n"
        "class K:\n"
        "    def g(self, a, b, c, d, e, f): ...\n"  # six without self
        "    async def h(self, a, b, c, *, d, e, f, g): ...\n"
    )
    assert wide_functions(tmp_path) == ["m.py:4 h (7)"]  # f: five; g: six
