"""The import layers of mxd (README, Layout): a module imports only from its own layer or the layers
below it, and no door imports another door. Read from the source with `ast`, every import counted,
the ones inside functions too (an import put off to dodge a cycle is still an upward dependency)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "mxd"

# Lowest first. A module belongs to the longest prefix listed; every module must belong somewhere.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("pure", ("mxd", "mxd.config", "mxd.errors", "mxd.smtpcodes", "mxd.address", "mxd.ids", "mxd.netcheck",
              "mxd.timefmt", "mxd.mime", "mxd.client", "mxd.mailpolicy", "mxd.trust", "mxd.reports", "mxd.tlsreport",
              "mxd.stspolicy")),
    ("io", ("mxd.resolver", "mxd.db", "mxd.authn", "mxd.dkimsign", "mxd.keys", "mxd.secretbox", "mxd.smtpclient",
            "mxd.dnsrecords", "mxd.defences", "mxd.certs")),
    ("tables", ("mxd.store", "mxd.ingest")),
    ("rules", ("mxd.policy", "mxd.retention", "mxd.domaincheck", "mxd.sending", "mxd.delivery.bounces",
               "mxd.delivery.dsn", "mxd.delivery.mxhosts", "mxd.webhook_target",
               "mxd.delivery.tlspolicy", "mxd.delivery.mtasts", "mxd.delivery.dane", "mxd.delivery.tlsrpt")),
    ("service", ("mxd.access", "mxd.service")),
    ("workers", ("mxd.pipeline", "mxd.workerpool", "mxd.worker", "mxd.delivery.scheduler", "mxd.webhook_sender",
                 "mxd.report_reader", "mxd.tls_reporter", "mxd.certs.renewal")),
    ("doors", ("mxd.smtpserver", "mxd.api")),
    ("wiring", ("mxd.daemon", "mxd.cli", "mxd.api.app")),
]

# Doors: no module of one imports a module of another. What they share (the SMTP base, the HTTP
# plumbing, the OpenAPI document) is not a door.
DOORS: dict[str, tuple[str, ...]] = {
    "MX": ("mxd.smtpserver.mx",),
    "submission": ("mxd.smtpserver.submission",),
    "/api": ("mxd.api.rest",),
    "/v1": ("mxd.api.v1",),
    "MCP": ("mxd.api.mcp",),
    "CLI": ("mxd.cli",),
}


def _module_of(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(name: str) -> bool:
    rel = Path(*name.split("."))
    return (ROOT.parent / rel).with_suffix(".py").exists() or (ROOT.parent / rel / "__init__.py").exists()


def imports_of(path: Path, module: str) -> set[str]:
    """Every mxd module `path` imports (`from mxd.x import y` names mxd.x.y when y is a module)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "mxd")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            if base.split(".")[0] != "mxd":
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if _exists(full) else base)
    found.discard(module)
    return found


def _longest(name: str, table: dict[str, tuple[str, ...]] | list[tuple[str, tuple[str, ...]]]) -> str | None:
    best, best_len = None, -1
    for key, prefixes in (table.items() if isinstance(table, dict) else table):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = key, len(prefix)
    return best


RANK = {name: i for i, (name, _) in enumerate(LAYERS)}
MODULES = {_module_of(p): p for p in sorted(ROOT.rglob("*.py"))}


def test_every_module_has_a_layer() -> None:
    assert [m for m in MODULES if _longest(m, LAYERS) is None] == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_and_doors_stay_apart(module: str) -> None:
    layer = _longest(module, LAYERS)
    door = _longest(module, DOORS)
    wrong = []
    for target in sorted(imports_of(MODULES[module], module)):
        target_layer = _longest(target, LAYERS)
        if target_layer is not None and RANK[target_layer] > RANK[layer]:
            wrong.append(f"{target} ({target_layer}) is above {layer}")
        target_door = _longest(target, DOORS)
        if door and target_door and target_door != door:
            wrong.append(f"{target} is the {target_door} door; {module} is the {door} door")
    assert wrong == [], f"{module}: " + "; ".join(wrong)


def test_the_rule_catches_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: an import of a door from the store is found and judged upward."""
    fake = ROOT / "store" / "models.py"
    names = imports_of(fake, "mxd.store.models")
    assert all(_longest(n, LAYERS) is not None for n in names)
    probe = tmp_path / "probe.py"
    probe.write_text("from mxd.api import mcp\nimport mxd.daemon\ndef f():\n    from mxd.service import mail\n")
    assert {"mxd.api.mcp", "mxd.daemon"} <= imports_of(probe, "mxd.store.probe")
    assert RANK[_longest("mxd.api.mcp", LAYERS)] > RANK["tables"]
    assert _longest("mxd.api.v1.messages", DOORS) == "/v1" != _longest("mxd.api.rest.send", DOORS)


def private_uses(path: Path, module: str) -> list[str]:
    """Private names (`_x`) this module takes from another mxd module: `from mxd.m import _x`, or `m._x`
    where `m` names an imported mxd module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bound: dict[str, str] = {}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "mxd":
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"from {node.module} import {alias.name}")
                elif _exists(full):
                    bound[alias.asname or alias.name] = full
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "mxd" and alias.asname:
                    bound[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                and node.attr.startswith("_") and not node.attr.startswith("__") and bound[node.value.id] != module):
            found.append(f"{bound[node.value.id]}.{node.attr}")
    return found


def test_no_private_name_crosses_a_module() -> None:
    crossing = {m: private_uses(p, m) for m, p in MODULES.items()}
    assert {m: uses for m, uses in crossing.items() if uses} == {}


@pytest.mark.parametrize("package", ["mxd.api.rest", "mxd.api.v1"])
def test_resource_files_do_not_import_each_other(package: str) -> None:
    """A dialect's resource files share through the service layer (and /v1 through its `shapes`), not through
    each other; only the package's __init__ gathers them."""
    shared = {f"{package}.shapes"}
    wrong = {m: sorted(t for t in imports_of(MODULES[m], m) if t.startswith(package + ".") and t not in shared)
             for m in MODULES if m.startswith(package + ".")}
    assert {m: t for m, t in wrong.items() if t} == {}
