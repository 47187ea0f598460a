"""`path-router` in Python: picks the pool by the longest matching path
prefix, with the same config file and the same decisions as the Rust
example (guest-examples/path-router).

Config: {"routes": [{"prefix": "/api/", "pool": "api"},
                    {"prefix": "/images/", "pool": "images", "strip_prefix": true}]}
Unmatched requests go to the listener's default pool.

Build: cargo xtask build-policies --all-languages (componentize-py).
"""

import json
from dataclasses import dataclass

import wit_world
from componentize_py_types import Err
from wit_world.imports import types


@dataclass
class Route:
    prefix: str
    pool: str
    strip_prefix: bool


ROUTES: list[Route] = []


def parse(config: str) -> list[Route]:
    try:
        doc = json.loads(config)
    except ValueError as e:
        raise Err(f"config: {e}")
    if not isinstance(doc, dict) or set(doc) != {"routes"} or not isinstance(doc["routes"], list):
        raise Err('config: expected {"routes": [...]}')
    routes = []
    for r in doc["routes"]:
        if not isinstance(r, dict) or not {"prefix", "pool"} <= set(r) <= {"prefix", "pool", "strip_prefix"}:
            raise Err("config: each route has prefix, pool and optionally strip_prefix")
        prefix, pool, strip = r["prefix"], r["pool"], r.get("strip_prefix", False)
        if not isinstance(prefix, str) or not isinstance(pool, str) or not isinstance(strip, bool):
            raise Err("config: prefix and pool are strings, strip_prefix a boolean")
        if not prefix.startswith("/"):
            raise Err(f"config: route prefix {prefix!r} must start with '/'")
        routes.append(Route(prefix, pool, strip))
    # Longest prefix first (a stable sort, as in Rust), so "/api/v2/" wins over "/api/".
    routes.sort(key=lambda r: -len(r.prefix))
    return routes


def forward(pool=None, path=None) -> types.Decision:
    return types.Decision_Forward(
        types.Forward(
            pool=pool,
            backend=None,
            path=path,
            authority=None,
            request_headers=[],
            response_headers=[],
            inspect_response=False,
            context=None,
            body=None,
            response_body_limit=None,
        )
    )


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> None:
        global ROUTES
        ROUTES = parse(config)

    def on_request(self, request: types.RequestHead, connection: types.Connection) -> types.Decision:
        # The request is a handle: each part is read from the host on demand.
        path = request.path()
        for route in ROUTES:
            if path.startswith(route.prefix):
                if route.strip_prefix:
                    # Keep the leading slash: "/images/a.png" -> "/a.png", "/images/" -> "/".
                    rest = path[len(route.prefix):].lstrip("/")
                    return forward(route.pool, "/" + rest)
                return forward(route.pool)
        return forward()
