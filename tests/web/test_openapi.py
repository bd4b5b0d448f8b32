"""Tests for the OpenAPI document: docs/openapi.yaml, its JSON copy served at
GET /v1/openapi.json, and the resource tree it describes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from twisted.web.resource import Resource

from daojia_msg.web.endpoints import Api, Endpoint, openapi_document
from daojia_msg.web.site import make_resource
from tests.web.helpers import SHOP, ApiTestCase

ROOT = Path(__file__).resolve().parents[2]
YAML = ROOT / "docs" / "openapi.yaml"
JSON = ROOT / "daojia_msg" / "web" / "openapi.json"
METHODS = ("get", "post", "put", "patch", "delete", "head", "options", "trace")


def load_yaml() -> Any:
    with YAML.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def operations(document: Any) -> list[tuple[str, str, Any]]:
    """``(path, METHOD, operation)`` of every operation of ``document``."""
    return [(path, method.upper(), item[method])
            for path, item in document["paths"].items()
            for method in METHODS if method in item]


def endpoints(resource: Resource, prefix: str = "") -> dict[str, Endpoint]:
    """Every endpoint of a resource tree, by path; a segment that is a
    parameter (a resource with ``param`` and ``template``) as ``{param}``."""
    found: dict[str, Endpoint] = {}
    for name, child in resource.children.items():
        path = f"{prefix}/{name.decode('ascii')}"
        if isinstance(child, Endpoint):
            found[path] = child
        template = getattr(child, "template", None)
        if isinstance(template, Endpoint):
            found[f"{path}/{{{child.param}}}"] = template  # type: ignore[attr-defined]
        found.update(endpoints(child, path))
    return found


class DocumentTests(ApiTestCase):
    def test_json_copy_is_the_yaml(self) -> None:
        """The served copy is docs/openapi.yaml, as JSON."""
        self.assertEqual(
            json.loads(JSON.read_text(encoding="utf-8")), load_yaml(),
            "daojia_msg/web/openapi.json differs from docs/openapi.yaml: regenerate it with "
            "`.venv/bin/python tools/genopenapi.py`",
        )

    def test_served_without_key(self) -> None:
        """GET /v1/openapi.json needs no key and answers the package's copy."""
        response = self.request("GET", "/v1/openapi.json")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.json(), json.loads(openapi_document()))
        self.assertEqual(response.json()["openapi"], "3.1.0")
        head = self.request("HEAD", "/v1/openapi.json")
        self.assertEqual((head.status, head.body), (200, b""))

    def test_every_endpoint_documented(self) -> None:
        """The document has exactly the paths and methods of the resource tree."""
        api = Api(self.logic, self.config, lambda: True, lambda: ("h", 1), self.registry)
        tree = {path: {m.decode("ascii") for m in endpoint.methods}
                for path, endpoint in endpoints(make_resource(api, b"{}")).items()}
        documented: dict[str, set[str]] = {}
        for path, method, _ in operations(load_yaml()):
            documented.setdefault(path, set()).add(method)
        self.assertEqual(documented, tree)

    def test_security_as_served(self) -> None:
        """An operation asks for the bearer key exactly when its endpoint does."""
        document = load_yaml()
        api = Api(self.logic, self.config, lambda: True, lambda: ("h", 1), self.registry)
        tree = endpoints(make_resource(api, b"{}"))
        for path, method, operation in operations(document):
            with self.subTest(path=path, method=method):
                self.assertEqual(operation["security"] == [{"apiKey": []}],
                                 tree[path].needs_key)
                if tree[path].needs_key:
                    self.assertIn("401", operation["responses"])

    def test_answers_documented(self) -> None:
        """Every operation, with its examples or none, with and without the key,
        answers a status its responses list."""
        for path, method, operation in operations(load_yaml()):
            content = operation.get("requestBody", {}).get("content", {})
            examples = content.get("application/json", {}).get("examples", {})
            bodies = [example["value"] for example in examples.values()] or [None]
            for body in [*bodies, b"{", b""]:
                for headers in (SHOP, {}):
                    with self.subTest(path=path, method=method, body=body, headers=headers):
                        response = self.request(method, path + ("?uid=42" if "sessions" in path
                                                                else ""), body, headers)
                        self.assertIn(str(response.status), operation["responses"])
            if examples:
                with self.subTest(path=path, method=method):
                    self.assertEqual(self.request(method, path, bodies[0], SHOP).status, 200)
