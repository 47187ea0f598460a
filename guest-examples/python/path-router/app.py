"""`path-router` in Python: picks the pool by the longest matching path
prefix, with the same config file and the same decisions as the Rust
example (guest-examples/path-router).

Config: {"routes": [{"prefix": "/api/", "pool": "api"},
                    {"prefix": "/images/", "pool": "images", "strip_prefix": true}]}
Unmatched requests go to the listener's default pool.

Build: cargo xtask build-policies --all-languages (componentize-py, with
the helper module guest-examples/python/switchyard.py).
"""

from componentize_py_types import Err

import switchyard
from switchyard import forward

ROUTES: list[tuple[str, str, bool]] = []


class WitWorld(switchyard.Policy):
    def configure(self, config: str) -> None:
        doc = switchyard.config_json(config)
        if not isinstance(doc, dict) or set(doc) != {"routes"} or not isinstance(doc["routes"], list):
            raise Err('config: expected {"routes": [...]}')
        for r in doc["routes"]:
            if not isinstance(r, dict) or not {"prefix", "pool"} <= set(r) <= {"prefix", "pool", "strip_prefix"}:
                raise Err("config: each route has prefix, pool and optionally strip_prefix")
            prefix, pool, strip = r["prefix"], r["pool"], r.get("strip_prefix", False)
            if not isinstance(prefix, str) or not isinstance(pool, str) or not isinstance(strip, bool):
                raise Err("config: prefix and pool are strings, strip_prefix a boolean")
            if not prefix.startswith("/"):
                raise Err(f"config: route prefix {prefix!r} must start with '/'")
            ROUTES.append((prefix, pool, strip))
        # Longest prefix first (a stable sort, as in Rust), so "/api/v2/" wins over "/api/".
        ROUTES.sort(key=lambda r: -len(r[0]))

    def request(self, req, conn):
        # The request is a handle: each part is read from the host on demand.
        path = req.path()
        for prefix, pool, strip in ROUTES:
            if path.startswith(prefix):
                if strip:
                    # Keep the leading slash: "/images/a.png" -> "/a.png", "/images/" -> "/".
                    return forward(pool).path("/" + path[len(prefix):].lstrip("/"))
                return forward(pool)
        return forward()
