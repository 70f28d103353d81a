import ast
import pathlib

import jax

import bon_jax


def test_version_and_fake_devices():
    assert bon_jax.__version__
    assert jax.device_count() == 8
    assert jax.devices()[0].platform == "cpu"


# ------------------------------------------------------------------------------------------------
# The import graph: no cycles, and each layer imports only from the layers below it.

# Bottom to top. A module belongs to the longest prefix listed here that names it or a package above it;
# it may import its own component and the layers below its own, nothing beside or above. A new module
# outside every prefix fails `test_imports_go_downward` until it is placed.
LAYERS = (
    ("bon_jax.xla_cpu",),  # the XLA:CPU flag the package sets on import, before anything else
    ("bon_jax", "bon_jax.errors"),
    ("bon_jax.parallel", "bon_jax.bon", "bon_jax.distinct", "bon_jax.metrics", "bon_jax.sandbox", "bon_jax.provenance"),
    ("bon_jax.models",),  # the decoder, its cache, masks, configs and params
    ("bon_jax.train.checkpoint",),  # orbax checkpoints, and a model's params saved / loaded
    ("bon_jax.models.checkpoints",),  # released checkpoint formats, and bon_jax's own params
    ("bon_jax.tokenizer", "bon_jax.logprobs", "bon_jax.objectives", "bon_jax.tasks"),
    ("bon_jax.sampling", "bon_jax.exact", "bon_jax.data", "bon_jax.train"),
    ("bon_jax.verifiers",),
    ("bon_jax.config",),
    ("bon_jax.pipeline",),
    ("bon_jax.cli",),
)

# Imports of bon_jax modules inside a function hide the import graph; they are allowed only here.
# The command-line entry points defer the pipeline (and jax) until the command line has been checked.
DEFERRED_OK_IN = ("bon_jax.cli",)
DEFERRED_OK = {
    # GGUF support is optional (the `gguf` extra) and its reader sits in models.checkpoints, which loads jax
    # and orbax: importing the tokenizer stays light.
    ("bon_jax.tokenizer", "bon_jax.models.checkpoints.gguf_file"),
}

PACKAGE_DIR = pathlib.Path(bon_jax.__file__).parent


def _module_names(package_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    names = {}
    for path in package_dir.rglob("*.py"):
        parts = ("bon_jax",) + path.relative_to(package_dir).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _imports(module: str, path: pathlib.Path, modules) -> list[tuple[str, int, bool]]:
    """(imported bon_jax module, line, inside a function) for every import statement of `path`.

    `from X import name` imports the module X.name when there is one, else X; relative imports are resolved.
    """
    is_package = path.name == "__init__.py"
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = module.split(".")[: len(module.split(".")) - child.level + (1 if is_package else 0)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in child.names]
            else:
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
                continue
            for target in targets:
                while target and target not in modules:  # `import bon_jax.x.y` of a name, or a package
                    target = target.rpartition(".")[0]
                if target.split(".")[0] == "bon_jax" and target != module:
                    found.append((target, child.lineno, in_function))

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


def _graph(package_dir: pathlib.Path = PACKAGE_DIR):
    """Edges module -> imported module, each with where it is written ('bon_jax.x:12'): the imports as
    written, and the same with the packages each one runs first (importing a.b.c runs a/__init__ and
    a/b/__init__, except those of packages the importer is in); and the imports inside functions."""
    modules = _module_names(package_dir)
    written: dict[str, dict[str, str]] = {m: {} for m in modules}
    run: dict[str, dict[str, str]] = {m: {} for m in modules}
    deferred = []
    for module, path in sorted(modules.items()):
        for target, line, in_function in _imports(module, path, modules):
            where = f"{module}:{line}"
            written[module].setdefault(target, where)
            for t in [a for a in _ancestors(target) if a not in _ancestors(module) and a != module] + [target]:
                run[module].setdefault(t, where)
            if in_function:
                deferred.append((module, target, where))
    return written, run, deferred


def _layer_of(module: str) -> tuple[int, str] | None:
    best = None
    for rank, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if module == p or (p != "bon_jax" and module.startswith(p + ".")):
                if best is None or len(p) > len(best[1]):
                    best = (rank, p)
    return best


def _cycles(edges) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return out


def import_problems(package_dir: pathlib.Path = PACKAGE_DIR) -> list[str]:
    written, run, deferred = _graph(package_dir)
    problems = []
    for module in sorted(written):
        if _layer_of(module) is None:
            problems.append(f"{module} is in no layer of LAYERS: place it")
    for module, targets in sorted(written.items()):
        mine = _layer_of(module)
        for target, where in sorted(targets.items()):
            theirs = _layer_of(target)
            if mine is None or theirs is None or theirs[1] == mine[1]:
                continue
            if theirs[0] >= mine[0]:
                problems.append(f"{where} imports {target}: layer {mine[1]} may import only layers below it")
    for component in _cycles(run):
        ring = ", ".join(f"{a} -> {b} ({run[a][b]})" for a in component for b in run[a] if b in component)
        problems.append(f"import cycle among {component}: {ring}")
    for module, target, where in sorted(set(deferred)):
        if not module.startswith(DEFERRED_OK_IN) and (module, target) not in DEFERRED_OK:
            problems.append(f"{where} imports {target} inside a function: import it at the top of the module")
    return problems


def test_imports_go_downward_without_cycles():
    problems = import_problems()
    assert not problems, "\n".join(problems)


def test_import_checker_catches_a_cycle_an_upward_and_a_deferred_import(tmp_path):
    package = tmp_path / "bon_jax"
    for name, text in {
        "__init__.py": "",
        "errors.py": "",
        "models/__init__.py": "from bon_jax.models import layers\n",
        "models/layers.py": "from bon_jax.pipeline import run\n",  # upward
        "pipeline/__init__.py": "",
        "pipeline/run.py": "from bon_jax import models\n",
        "tasks/__init__.py": "",
        "tasks/a.py": "def f():\n    from bon_jax.data import b\n",  # deferred and upward
        "data/__init__.py": "",
        "data/b.py": "import bon_jax.tasks.a\n",
        "stray.py": "",
    }.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    problems = "\n".join(import_problems(package))
    assert "bon_jax.stray is in no layer" in problems
    assert "bon_jax.models.layers:1 imports bon_jax.pipeline.run: layer bon_jax.models" in problems
    assert "bon_jax.tasks.a:2 imports bon_jax.data.b: layer bon_jax.tasks" in problems
    assert "import cycle among ['bon_jax.models', 'bon_jax.models.layers', 'bon_jax.pipeline.run']" in problems
    assert "bon_jax.tasks.a:2 imports bon_jax.data.b inside a function" in problems
