"""The OpenAPI document: every route of the app described, nothing described that is not served, a valid
OpenAPI 3.1 document served at /openapi.json without a token."""
from __future__ import annotations

import json
import re

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator

from mxd.api import openapi
from mxd.api.app import create_app
from mxd.store import tokens
from tests.support.asgi import in_process_api


@pytest.fixture(scope="module")
def routes():
    return create_app(None).routes       # the routes do not touch the context until a request comes


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The API in process (tests/support/asgi.py): these tests only read what it serves."""
    with in_process_api(tmp_path_factory.mktemp("openapi") / "data") as app:
        yield app


def test_every_route_is_described_and_every_description_is_a_route(routes):
    served = openapi.documented_routes(routes)
    described = set(openapi.BY_KEY)
    assert sorted(served - described) == []      # a new route needs an entry in mxd/api/openapi.py OPS
    assert sorted(described - served) == []      # an entry whose route is gone
    assert len(openapi.OPS) == len(openapi.BY_KEY)


def test_route_walk_sees_mounts_and_skips_head():
    from starlette.routing import Mount, Route

    async def h(request):   # pragma: no cover - never called
        return None
    walked = openapi.app_routes([Route("/a", h), Mount("/m", routes=[Route("/b/{n:int}", h, methods=["POST"])])])
    assert walked == {("GET", "/a"), ("POST", "/m/b/{n}")}


def test_api_v1_aliases_are_folded_into_v1(routes):
    walked = openapi.app_routes(routes)
    documented = openapi.documented_routes(routes)
    assert not any(p.startswith("/api/v1/") and (m, p[4:]) in walked for m, p in documented)


def test_table_is_consistent():
    ids = [op.op_id for op in openapi.OPS]
    assert len(ids) == len(set(ids))
    for op in openapi.OPS:
        assert op.scope in (openapi.PUBLIC, openapi.ANY) + tokens.SCOPES, op
        assert not op.operator or op.scope == "admin", op
        assert op.method in ("GET", "POST", "PUT", "PATCH", "DELETE"), op
        assert all(name in openapi.QUERY_PARAMS for name in op.query), op
        assert op.example is None or op.body is not None, op
        for name in re.findall(r"{([^}]+)}", op.path):
            assert name in openapi.PATH_PARAMS, (op, name)
        if op.status == 204:
            assert op.response is None, op


def test_document_is_valid_openapi_31(routes):
    doc = openapi.document(routes, "http://127.0.0.1:8025")
    assert doc["openapi"] == "3.1.0"
    OpenAPIV31SpecValidator(doc).validate()


def test_validator_and_refs_are_live(routes):
    doc = openapi.document(routes, "http://127.0.0.1:8025")
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(doc)))
    assert refs and refs <= set(doc["components"]["schemas"])
    broken = dict(doc, paths={"/x": {"get": {"responses": {"200": {"description": "x", "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/Nope"}}}}}}}})
    with pytest.raises(Exception):
        OpenAPIV31SpecValidator(broken).validate()
    del broken["info"]
    with pytest.raises(Exception):
        OpenAPIV31SpecValidator(broken).validate()


def test_examples_match_their_request_schemas(routes):
    import jsonschema
    components = openapi.document(routes, "http://127.0.0.1:8025")["components"]
    checked = 0
    for op in openapi.OPS:
        if op.example is not None:        # refs resolve against the root: put the components there
            jsonschema.validate(op.example, dict(op.body, components=components),
                                cls=jsonschema.Draft202012Validator)
            checked += 1
    assert checked >= 10


def test_served_document_needs_no_token_and_names_this_server(server):
    r = server.get("/openapi.json")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert doc["openapi"] == "3.1.0"
    assert doc["servers"] == [{"url": server.url("")}]
    OpenAPIV31SpecValidator(doc).validate()
    paths = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert ("GET", "/api/messages") in paths and ("POST", "/api/send") in paths
    assert paths == set(openapi.BY_KEY)


def test_described_scopes_and_security(server):
    doc = server.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "an mxd token (mxd_...)"}
    send = doc["paths"]["/api/send"]["post"]
    assert send["x-mxd-scope"] == "send" and send["security"] == [{"bearer": []}]
    assert "Idempotency-Key" in {p["name"] for p in send["parameters"]}
    assert doc["paths"]["/api/messages/search"]["get"]["x-mxd-scope"] == "search"
    health = doc["paths"]["/api/health"]["get"]
    assert health["security"] == [] and "401" not in health["responses"]
    error = doc["components"]["schemas"]["Error"]["properties"]["error"]
    assert set(error["required"]) == {"code", "message", "fix", "hard_stop"}
    assert "/api/v1/" in doc["info"]["description"]


def test_unknown_routes_answer_with_the_error_shape(server):
    r = server.get("/api/no-such-route")
    assert r.status_code == 404
    assert set(r.json()["error"]) >= {"code", "message", "fix", "hard_stop"}
