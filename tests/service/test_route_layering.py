"""Routes are thin: they parse, call the service layer, shape the response. They never import another
route module, never query the database themselves (service.storage.store does) and reach the app's state only
through service.api.deps. Outside the storage modules nothing in service/ builds a query. Checked on the
source with ast, so a new module cannot quietly break it."""

from __future__ import annotations

import ast
import pathlib

import pytest

SERVICE = pathlib.Path(__file__).resolve().parents[2] / "service"
ROUTES = SERVICE / "api" / "routes"
ROUTE_FILES = sorted(p for p in ROUTES.glob("*.py") if p.name != "__init__.py")
# Session methods that run queries or change rows; a route hands its session to service.storage.store instead.
QUERY_METHODS = {"execute", "scalars", "scalar", "query", "get", "add", "delete", "merge", "refresh"}


def _tree(path: pathlib.Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imported_modules(tree: ast.Module) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # a relative import inside routes/ is a route importing a route
                out.append("service.api.routes." + (node.module or ""))
            elif node.module == "service.api.routes":
                out.extend(f"service.api.routes.{a.name}" for a in node.names)
            else:
                out.append(node.module or "")
    return out


def _is_storage(path: pathlib.Path) -> bool:
    """The storage package: the data-access functions, the token table's, the ORM and sessions, the blobs."""
    return path.relative_to(SERVICE).parts[0] == "storage"


SERVICE_FILES = sorted(p for p in SERVICE.rglob("*.py") if not _is_storage(p))


def _session_queries(tree: ast.Module) -> list[str]:
    return [f"line {n.lineno}: {n.func.value.id}.{n.func.attr}(...)" for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name)
            and n.func.value.id in {"session", "s"} and n.func.attr in QUERY_METHODS]


def test_there_are_route_modules_to_check():
    assert {"analyses.py", "evaluations.py", "frontiers.py", "plans.py"} <= {p.name for p in ROUTE_FILES}


@pytest.mark.parametrize("path", ROUTE_FILES, ids=lambda p: p.name)
def test_routes_never_import_routes(path):
    routes = [m for m in _imported_modules(_tree(path)) if m.startswith("service.api.routes")]
    assert routes == [], f"{path.name} imports {routes}; move the shared code to a service-layer module"


@pytest.mark.parametrize("path", ROUTE_FILES, ids=lambda p: p.name)
def test_routes_run_no_queries_and_read_no_app_state(path):
    tree = _tree(path)
    sqlalchemy = [m for m in _imported_modules(tree) if m.startswith("sqlalchemy") and m != "sqlalchemy.orm"]
    assert sqlalchemy == [], f"{path.name} imports {sqlalchemy}; queries belong in service.storage.store"
    orm_names = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "sqlalchemy.orm"
                 for a in n.names}
    assert orm_names <= {"Session"}, f"{path.name} imports {orm_names} from sqlalchemy.orm"
    queries = _session_queries(tree)
    assert queries == [], f"{path.name} queries the session itself: {queries}"
    state = [n.lineno for n in ast.walk(tree)
             if isinstance(n, ast.Attribute) and n.attr == "state" and isinstance(n.value, ast.Attribute)
             and n.value.attr == "app"]
    assert state == [], f"{path.name} reads app.state on lines {state}; add a dependency in service.api.deps"


@pytest.mark.parametrize("path", SERVICE_FILES, ids=lambda p: str(p.relative_to(SERVICE)))
def test_queries_live_only_in_the_storage_modules(path):
    tree = _tree(path)
    sqlalchemy = [m for m in _imported_modules(tree) if m.startswith("sqlalchemy") and m != "sqlalchemy.orm"]
    assert sqlalchemy == [], f"{path.relative_to(SERVICE)} imports {sqlalchemy}; queries belong in service.storage.store"
    queries = _session_queries(tree)
    assert queries == [], f"{path.relative_to(SERVICE)} queries the session itself: {queries}"
