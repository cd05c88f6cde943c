"""The house rules of docs/architecture.md, checked on the code itself.

Imports are read with ``ast`` (module-level and inside functions); the
server's request paths are also run in a fresh interpreter to see which
modules they really load.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

pytest_plugins = ["server_fixtures"]

ROOT = Path(__file__).resolve().parents[1]

# What each part may import from mosaic/ and server/ (prefixes), at module level.
READ_SIDE = ("mosaic", "mosaic.bundle", "mosaic.errors", "mosaic.query", "mosaic.store",
             "mosaic.knn", "mosaic.colour", "mosaic.strips", "mosaic.progress", "mosaic.iiif",
             "mosaic.quality", "mosaic.duplicates")
ALLOWED = {
    "read side": (READ_SIDE, READ_SIDE),
    "mosaic.pipeline": (READ_SIDE + ("mosaic.pipeline",), READ_SIDE + ("mosaic.pipeline",)),
    # The poster decodes sources and re-grids subsets only for the CLI, inside functions.
    "mosaic.poster": (READ_SIDE + ("mosaic.poster",),
                      READ_SIDE + ("mosaic.poster", "mosaic.pipeline.grid",
                                   "mosaic.pipeline.thumbnail")),
    "mosaic.cli": (None, None),  # the CLI may import anything: it is the top
    # A query image (POST .../similar) must be decoded and embedded by the pipeline's own
    # code to land where the bundle's images did: that route alone imports it, inside itself.
    "server": (READ_SIDE + ("mosaic.poster", "server"),
               READ_SIDE + ("mosaic.poster", "server", "mosaic.pipeline.decode")),
}


def _part(module: str) -> str:
    for part in ("mosaic.pipeline", "mosaic.poster", "mosaic.cli", "server"):
        if module == part or module.startswith(part + "."):
            return part
    return "read side"


def _modules() -> dict[str, Path]:
    found = {}
    for package in ("mosaic", "server"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(path: Path, module: str) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every mosaic/server import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] in ("mosaic", "server"):
                out.append((name, id(node) in top_level))
    return out


def _allowed(name: str, prefixes) -> bool:
    if prefixes is None:
        return True
    modules = _modules()
    # "from mosaic.pipeline import grid" names mosaic.pipeline.grid: judge the module.
    while name not in modules and "." in name:
        name = name.rpartition(".")[0]
    return any(name == p or name.startswith(p + ".") for p in prefixes if p != "mosaic") \
        or name == "mosaic"


def test_each_part_imports_only_what_architecture_md_allows():
    problems = []
    for module, path in _modules().items():
        top_rule, lazy_rule = ALLOWED[_part(module)]
        for name, top in _imports(path, module):
            if not _allowed(name, top_rule if top else lazy_rule):
                problems.append(f"{module} imports {name}{'' if top else ' (in a function)'}")
    assert not problems, "\n".join(problems)


def test_no_import_cycles():
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name, top in _imports(path, module):
            while name not in modules and "." in name:
                name = name.rpartition(".")[0]
            if top and name in modules and name != module:
                targets.add(name)
        graph[module] = targets
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1 and nxt != "mosaic":
                raise AssertionError("import cycle: " + " -> ".join(trail + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_layout_is_the_documented_one():
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    for folder in ("mosaic/pipeline/", "mosaic/poster/", "mosaic/cli/", "server/", "static/",
                   "tests/", "bench/"):
        assert folder in doc, folder
    assert not list((ROOT / "mosaic").glob("poster_*.py"))
    stages = {p.stem for p in (ROOT / "mosaic" / "pipeline").glob("*.py")}
    assert {"collect", "decode", "embed", "reduce", "grid", "render", "index",
            "metadata"} <= stages


REQUESTS = """
import json, sys
from server import create_app
client = create_app({"TESTING": True}, out_dir=sys.argv[1]).test_client()
paths = ["/", "/c/test", "/api/collections", "/api/collections/test",
         "/api/collections/test/items/0", "/api/collections/test/items/0/neighbors",
         "/api/collections/test/search?q=red", "/api/collections/test/random?n=3",
         "/api/collections/test/facets", "/api/collections/test/export.csv",
         "/collections/test/grid.i32", "/collections/test/overview.jpg",
         "/collections/test/tiles/map.dzi", "/collections/test/thumbs/0.jpg",
         "/api/collections/test/poster.png?dpi=20&q=red",
         "/api/collections/test/poster.pdf?dpi=20"]
statuses = {p: client.get(p).status_code for p in paths}
print(json.dumps({"statuses": statuses, "modules": sorted(sys.modules)}))
"""


def test_request_paths_load_no_decoder_grid_or_model(server_bundle):
    """Every kind of request, a filtered poster included, in a fresh interpreter."""
    result = subprocess.run([sys.executable, "-c", REQUESTS, str(server_bundle.parent)],
                            capture_output=True, text=True, cwd=ROOT, timeout=300, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(status in (200, 304) for status in report["statuses"].values()), report
    loaded = report["modules"]
    assert not [m for m in loaded if m.startswith(("mosaic.pipeline", "mosaic.cli"))], loaded
    assert not [m for m in loaded if m.split(".")[0] in ("tensorflow", "keras", "openTSNE",
                                                        "umap", "sklearn")]
