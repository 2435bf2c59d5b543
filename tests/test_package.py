"""Package contracts: imports run one way down the data flow; registered names are literal."""

import ast
import sys
from pathlib import Path

import pytest

import mvq
from mvq.priors import PRIORS, list_priors
from mvq.registry import Registry
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
    """The package or top-level module a module belongs to: ``mvq.priors.common`` ->
    ``mvq.priors``, ``mvq.tokens`` -> ``mvq.tokens``."""
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
    "(top)": "quantizers tokens",
    "apply_tokenizer": "data pixels pretrained token_files tokenizers tokens training",
    "cli": (
        "apply_tokenizer data demo errors evaluate priors report runconfig sample sweep "
        "token_files tokenizers train_prior train_tokenizer training viz"
    ),
    "data": "errors pixels registry",
    "demo": (
        "data evaluate metrics pixels priors report runconfig sample token_files tokenizers "
        "train_prior train_tokenizer training"
    ),
    "errors": "",
    "evaluate": (
        "data errors metrics pixels pretrained priors registry sample tokenizers tokens training"
    ),
    "losses": "metrics",
    "mask_schedules": "",
    "metrics": "data errors pixels",
    "model_card": "",
    "nets": "",
    "pixels": "",
    "pretrained": "errors model_card registry",
    "priors": "mask_schedules pretrained registry tokens",
    "quantizers": "nets registry tokens",
    "registry": "errors",
    "report": "data pretrained training viz",
    "runconfig": "data errors priors registry tokenizers training",
    "sample": "errors pixels pretrained priors sampling token_files tokenizers tokens train_prior",
    "sampling": "mask_schedules priors tokens",
    "sweep": (
        "metrics pretrained priors runconfig sweep_results tokenizers train_tokenizer training"
    ),
    "sweep_results": "",
    "token_files": "pretrained tokenizers tokens",
    "tokenizers": "data losses nets pixels pretrained quantizers registry tokens",
    "tokens": "",
    "train_prior": "priors runconfig token_files tokens train_tokenizer training",
    "train_tokenizer": "data errors pixels pretrained runconfig tokenizers training",
    "training": "errors pretrained",
    "viz": "data errors pixels pretrained quantizers tokenizers tokens training",
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


@pytest.mark.parametrize("unit", ["mvq.tokens", "mvq.mask_schedules", "mvq.pixels"])
def test_the_token_contract_and_schedules_import_only_torch(unit: str) -> None:
    deps = set().union(*(d for m, d in IMPORTS.items() if _unit(m) == unit))
    roots = {d.split(".")[0] for d in deps}
    assert roots <= set(sys.stdlib_module_names) | {"torch"}, roots


@pytest.mark.parametrize(
    ("unit", "forbidden"),
    [
        ("mvq.quantizers", {"mvq.tokenizers", "mvq.priors", "mvq.sampling", "mvq.token_files"}),
        ("mvq.tokenizers", {"mvq.priors", "mvq.sampling", "mvq.token_files"}),
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
