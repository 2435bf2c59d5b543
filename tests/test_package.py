"""Package contracts: imports run one way down the data flow; registered names are literal."""

import ast
import sys
from pathlib import Path

import pytest

import mvq
from mvq.core.registry import Registry
from mvq.priors import PRIORS, list_priors
from mvq.tokenizers import ARCHITECTURES, TOKENIZERS, VARIANTS, list_tokenizers

SRC = Path(mvq.__file__).parent


def _module(path: Path) -> str:
    """``src/mvq/priors/common.py`` -> ``mvq.priors.common`` (a package is its ``__init__``)."""
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, lazy and ``TYPE_CHECKING`` imports included."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            if node.module == "mvq":  # from mvq import tokens
                out |= {f"mvq.{alias.name}" for alias in node.names}
    return out


def _unit(module: str) -> str:
    """The package (or top-level module) a module belongs to: ``mvq.priors.common`` ->
    ``mvq.priors``, ``mvq.core.tokens`` -> ``mvq.core``, ``mvq.cli`` -> ``mvq.cli``."""
    return ".".join(module.split(".")[:2])


IMPORTS = {_module(p): _imports(p) for p in sorted(SRC.rglob("*.py"))}
UNITS: dict[str, set[str]] = {}
for _name, _deps in IMPORTS.items():
    UNITS.setdefault(_unit(_name), set()).update(
        _unit(d) for d in _deps if d.startswith("mvq.") and _unit(d) != _unit(_name)
    )


# The allowed arrows between the library's units (a package or a top-level module; "(top)"
# is mvq/__init__), read "unit: what it may import". A new import across units, or a new
# unit, is a deliberate edit of this table; imports must not form a circle.
ALLOWED = {
    "(top)": "core quantizers",  # re-exports the quantizers and Tokens
    "core": "",  # tokens, token files, registry, errors, pixels, devices, saved models
    "nets": "",  # networks only
    "data": "core",
    "quantizers": "core nets",
    "tokenizers": "core data losses nets quantizers",
    "priors": "core",
    "training": "core data priors tokenizers",  # the trainer, the tokenizer and prior jobs
    "sampling": "core priors tokenizers training",
    "metrics": "core data",
    "losses": "metrics",
    "eval": "core data metrics priors sampling tokenizers",
    "report": "core data quantizers tokenizers training",
    "experiments": "core data eval metrics priors report sampling tokenizers training",
    "cli": "core data eval experiments priors report sampling tokenizers training",
}


def _full(unit: str) -> str:
    return "mvq" if unit == "(top)" else f"mvq.{unit}"


def test_every_unit_imports_only_what_the_table_allows() -> None:
    """The table covers every unit, and each imports no unit beyond its arrows."""
    assert set(UNITS) == {_full(u) for u in ALLOWED}, "add the new unit to ALLOWED"
    for unit, deps in ALLOWED.items():
        extra = UNITS[_full(unit)] & set(UNITS) - {_full(d) for d in deps.split()}
        assert not extra, f"{unit} imports {sorted(extra)}, which ALLOWED does not let it"


def test_the_allowed_arrows_form_no_circle() -> None:
    graph = {_full(u): {_full(d) for d in deps.split()} for u, deps in ALLOWED.items()}
    done: set[str] = set()

    def visit(unit: str, path: tuple[str, ...]) -> None:
        assert unit not in path, f"circle: {' -> '.join((*path, unit))}"
        if unit in done:
            return
        for dep in graph.get(unit, ()):
            visit(dep, (*path, unit))
        done.add(unit)

    for unit in graph:
        visit(unit, ())


@pytest.mark.parametrize(
    "module", ["mvq.core.tokens", "mvq.priors.mask_schedules", "mvq.core.pixels"]
)
def test_the_token_contract_and_schedules_import_only_torch(module: str) -> None:
    roots = {d.split(".")[0] for d in IMPORTS[module]}
    assert roots <= set(sys.stdlib_module_names) | {"torch"}, roots


@pytest.mark.parametrize(
    ("unit", "forbidden"),
    [
        ("mvq.quantizers", {"mvq.tokenizers", "mvq.priors", "mvq.sampling", "mvq.training"}),
        ("mvq.tokenizers", {"mvq.priors", "mvq.sampling", "mvq.core.token_files"}),
        ("mvq.priors", {"mvq.sampling", "mvq.tokenizers", "mvq.quantizers"}),
    ],
)
def test_imports_run_down_the_data_flow(unit: str, forbidden: set[str]) -> None:
    assert not UNITS[unit] & forbidden


def test_nothing_in_the_library_imports_the_cli() -> None:
    importers = [m for m, deps in IMPORTS.items() if m != "mvq.cli" and "mvq.cli" in deps]
    assert not importers


def test_packages_import_each_other_without_circles() -> None:
    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for dep in UNITS.get(todo.pop(), ()):
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        return seen

    circles = sorted((a, b) for a, deps in UNITS.items() for b in deps if a in reachable(b))
    assert not circles


def test_every_registered_name_is_literal_in_the_source() -> None:
    text = "\n".join(p.read_text() for p in SRC.rglob("*.py"))
    missing = [n for n in list_tokenizers() + list_priors() if f'"{n}"' not in text]
    assert not missing


def test_each_tokenizer_variant_row_matches_its_name() -> None:
    arch = {cls: name for name, cls in ARCHITECTURES.items()}
    for name, cls, dataset, s, k in VARIANTS:
        assert name == f"{arch[cls]}_{dataset}_s{s}_k{k}"
    assert sorted(row[0] for row in VARIANTS) == list_tokenizers()


@pytest.mark.parametrize(
    ("registry", "tiny"),
    [(TOKENIZERS, {"channels": 16, "res_channels": 8}), (PRIORS, {"primary_grid": (2, 2)})],
    ids=["tokenizers", "priors"],
)
def test_each_registry_entry_names_the_class_its_factory_builds(
    registry: Registry, tiny: dict
) -> None:
    for name in registry.names():
        entry = registry.entry(name)
        model = entry.factory(**tiny)
        assert (type(model), type(model.config)) == (entry.cls, entry.config_class), name


def test_no_caller_reads_a_class_from_a_variant_name() -> None:
    """The registry entry says what a name builds (``entry(name).cls``), not its prefix."""
    readers = [p.name for p in SRC.rglob("*.py") if 'split("_")[0]' in p.read_text()]
    assert not readers


def test_no_module_shadows_a_package_and_every_package_says_what_it_owns() -> None:
    """The top level holds packages (the stages of the data flow) and ``cli``; no ``x.py``
    sits beside a package ``x/`` anywhere; each package opens with a docstring."""
    assert {p.name for p in SRC.glob("*.py")} == {"__init__.py", "cli.py"}
    for folder in [SRC, *(p for p in SRC.rglob("*") if (p / "__init__.py").is_file())]:
        modules = {p.stem for p in folder.glob("*.py")}
        packages = {p.name for p in folder.iterdir() if (p / "__init__.py").is_file()}
        assert not modules & packages, f"{folder}: {sorted(modules & packages)}"
        assert ast.get_docstring(ast.parse((folder / "__init__.py").read_text())), folder


def test_the_readme_map_names_every_package_with_its_allowed_imports() -> None:
    """The Design notes' package table lists each unit once, with ALLOWED's arrows."""
    readme = (SRC.parents[1] / "README.md").read_text()
    table = readme.split("The package, in the order data flows through it", 1)[1]
    table = table.split("\n\n", 2)[1]  # the paragraph after the sentence
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    named: dict[str, str] = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        for unit, deps in zip(cells[0].split(", "), cells[2].split("; "), strict=False):
            named[unit.strip("`").removesuffix("/").removesuffix(".py")] = deps
    units = {u for u in ALLOWED if u != "(top)"}
    assert set(named) == units, sorted(set(named) ^ units)
    for unit, deps in named.items():
        want = set(ALLOWED[unit].split())
        got = set() if deps == "nothing" else {d.strip() for d in deps.split(",")}
        assert got == want or deps in ("all", "all of the above"), (unit, got, want)


def test_make_install_leaves_bytecode_for_what_the_commands_import() -> None:
    """`make install` writes bytecode for the Makefile's WARM modules and all they import (uv
    does not, and where PYTHONDONTWRITEBYTECODE is set every process would recompile torch)."""
    import importlib
    import importlib.util
    import re

    repo = Path(__file__).resolve().parents[1]
    if Path(sys.prefix).resolve() != (repo / ".venv").resolve():
        pytest.skip("not the venv that `make install` builds")
    text = (repo / "Makefile").read_text()
    warm = re.search(r"^WARM := ((?:.*\\\n)*.*)$", text, re.M)
    assert warm, "the Makefile names the modules it writes bytecode for (WARM)"
    names = warm.group(1).replace("\\\n", " ").split()
    assert "mvq.experiments.demo" in names
    modules = [importlib.import_module(n) for n in names] + [importlib.import_module("torch")]
    missing = [
        m.__name__
        for m in modules
        if not Path(importlib.util.cache_from_source(m.__file__ or "")).is_file()
    ]
    assert not missing, f"no bytecode for {missing}: run `make bytecode`"
