"""The code's shape, as the team agreed it (docs/layout.md): short functions, few parameters, one module
that reads the environment, and imports that only point down (no cycles)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "seqcls"


def _dotted(path: Path) -> str:
    """A module's name below seqcls: "job", "data.readers"; a package's __init__ is the package ("data")."""
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


MODULES = {_dotted(path): ast.parse(path.read_text(), str(path)) for path in sorted(SRC.rglob("*.py"))}
PACKAGES = {_dotted(path) for path in SRC.rglob("__init__.py")} - {"__init__"}
MAX_LINES, MAX_PARAMS, MAX_JOB_RUN_LINES = 60, 7, 70


def functions():
    for module, tree in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield module, node


def params(node: ast.FunctionDef) -> int:
    names = [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs]
    return len([n for n in names if n not in ("self", "cls")])


def test_functions_are_short_and_take_few_parameters() -> None:
    too_long = [f"{m}.{f.name}: {f.end_lineno - f.lineno + 1} lines" for m, f in functions()
                if f.end_lineno - f.lineno + 1 > MAX_LINES and (m, f.name) != ("job", "run")]
    too_many = [f"{m}.{f.name}: {params(f)} parameters" for m, f in functions() if params(f) > MAX_PARAMS]
    assert not too_long and not too_many, too_long + too_many


def test_job_run_reads_top_down_in_one_screen() -> None:
    run = next(f for m, f in functions() if (m, f.name) == ("job", "run"))
    assert run.end_lineno - run.lineno + 1 <= MAX_JOB_RUN_LINES


def _reads_environment(tree: ast.Module) -> list[int]:
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv")
            and isinstance(node.value, ast.Name) and node.value.id == "os"]


def test_only_the_runtime_module_reads_the_environment() -> None:
    readers = {module: lines for module, tree in MODULES.items() if (lines := _reads_environment(tree))}
    # logs sets one default for huggingface_hub (no progress bars on stdout) before transformers loads.
    others = {module for module in readers if module.split(".")[0] != "runtime"}
    assert others <= {"logs"} and len(readers.get("logs", [])) <= 1, readers


def relative_imports(module: str):
    """(line, base package, `from` module or None, imported names) for each relative import in `module`, those
    inside functions included; the base is the package the dots name, as a list of parts."""
    package = module.split(".") if module in PACKAGES else module.split(".")[:-1]
    for node in ast.walk(MODULES[module]):
        if isinstance(node, ast.ImportFrom) and node.level:
            yield node.lineno, package[:len(package) - node.level + 1], node.module, [a.name for a in node.names]


def imports_of(module: str) -> set[str]:
    """The seqcls modules `module` imports, resolved from its relative imports (subpackages included)."""
    found = set()
    for _, base, source, names in relative_imports(module):
        if source:
            target = ".".join(base + source.split("."))
            found.add(target)
            found.update(f"{target}.{name}" for name in names)
        else:
            found.update(".".join(base + [name]) for name in names)
    return found & set(MODULES)


def test_every_relative_import_names_a_module_that_exists() -> None:
    """Lazy imports inside functions too: a module moved into a subpackage must not leave one pointing at its old
    place (serve.csv_lines imported `..artifacts` after artifacts moved to saving/, and only a server test saw it)."""
    targets = [(f"{module}:{line}", ".".join(base + source.split(".")))
               for module in MODULES for line, base, source, _ in relative_imports(module) if source]
    missing = [f"{where}: {target}" for where, target in targets if target not in MODULES]
    assert targets and not missing, missing


def test_imports_form_no_cycle() -> None:
    graph = {module: imports_of(module) - {module} for module in MODULES}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join(path + (module,))}"
        if module not in done:
            for child in graph[module]:
                visit(child, path + (module,))
            done.add(module)

    for module in graph:
        visit(module, ())


@pytest.mark.parametrize("module, must_not_import", [
    ("training.steps", "evaluate"), ("predict", "training"), ("saving", "training"), ("settings", "storage"),
    ("promotion.rule", "promotion.champion"),
])
def test_helpers_live_where_their_users_can_reach_them(module: str, must_not_import: str) -> None:
    inside = [m for m in MODULES if m == module or m.startswith(f"{module}.")]
    reached = {target for m in inside for target in imports_of(m)}
    assert inside and not [t for t in reached if t == must_not_import or t.startswith(f"{must_not_import}.")], reached


def test_the_hf_inference_hook_is_self_contained() -> None:
    """code/inference.py runs in AWS's Hugging Face image, which has torch and transformers but no seqcls."""
    tree = MODULES["serving.hf_inference"]
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    relative = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level]
    assert not relative and imported <= {"__future__", "json", "os", "torch", "transformers"}, (relative, imported)


PROBLEM_TYPE_NAMES = {"single_label", "multi_label", "regression"}


def test_only_the_problem_types_module_names_a_problem_type() -> None:
    """What differs by problem type lives in problem_types.py; elsewhere a type is named by its constant, so a new
    type or metric is one edit. code/inference.py is exempt: it runs without seqcls (the test above)."""
    spelled = [f"{module}:{node.lineno}" for module, tree in MODULES.items()
               if module not in ("problem_types", "serving.hf_inference") for node in ast.walk(tree)
               if isinstance(node, ast.Constant) and node.value in PROBLEM_TYPE_NAMES]
    assert not spelled, spelled


MAX_MODULE_LINES = 420  # "about 400": past it a module holds more than one concern; split it into a subpackage


def test_every_module_is_short_and_says_what_it_owns() -> None:
    long = {m: len((SRC / f"{m.replace('.', '/')}.py").read_text().splitlines()) for m in MODULES if m not in PACKAGES}
    undocumented = [m for m, tree in MODULES.items() if not ast.get_docstring(tree)]
    too_long = {m: n for m, n in long.items() if n > MAX_MODULE_LINES}
    assert not too_long and not undocumented, (too_long, undocumented)


def test_the_layout_doc_names_every_module() -> None:
    """docs/layout.md is where a change goes: a module missing from it is a room nobody can find."""
    layout = (SRC.parents[1] / "docs" / "layout.md").read_text()
    named = [m for m in MODULES if m not in PACKAGES and m not in ("__init__", "__main__")]
    missing = [m for m in named if f"`{m.replace('.', '/')}.py`" not in layout]
    assert not missing, missing
