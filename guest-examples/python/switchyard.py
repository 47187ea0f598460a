"""Helpers for Switchyard policies written in Python (componentize-py).

A policy is then ordinary code: decisions are built, never filled in
field by field, and the hooks it does not define do nothing.

    import switchyard
    from switchyard import forward, respond

    class WitWorld(switchyard.Policy):
        def request(self, req, conn):
            if req.path().startswith("/api/"):
                return forward("api").set_request_header("x-routed", "1")
            return forward()

`Policy.on_request` turns what `request` returns (a builder or a decision)
into the `decision` the host expects; `Policy.init` accepts any config
unless `configure` says otherwise. xtask builds this module into every
Python policy (`componentize-py -p guest-examples/python`).
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import types


class Forward:
    """A forward decision, built: `forward("api").path("/x")`."""

    def __init__(self, pool=None):
        self.record = types.Forward(
            pool=pool,
            backend=None,
            path=None,
            authority=None,
            request_headers=[],
            response_headers=[],
            inspect_response=False,
            context=None,
            body=None,
            response_body_limit=None,
        )

    def backend(self, name):
        self.record.backend = name
        return self

    def path(self, path):
        self.record.path = path
        return self

    def authority(self, authority):
        self.record.authority = authority
        return self

    def set_request_header(self, name, value):
        self.record.request_headers.append(types.HeaderOp_Set(types.Header(name, value)))
        return self

    def append_request_header(self, name, value):
        self.record.request_headers.append(types.HeaderOp_Append(types.Header(name, value)))
        return self

    def remove_request_header(self, name):
        self.record.request_headers.append(types.HeaderOp_Remove(name))
        return self

    def set_response_header(self, name, value):
        self.record.response_headers.append(types.HeaderOp_Set(types.Header(name, value)))
        return self

    def append_response_header(self, name, value):
        self.record.response_headers.append(types.HeaderOp_Append(types.Header(name, value)))
        return self

    def context(self, data: bytes):
        self.record.context = data
        return self

    def body(self, data: bytes):
        self.record.body = data
        return self

    def decision(self) -> types.Decision:
        return types.Decision_Forward(self.record)


def forward(pool=None) -> Forward:
    """Forward to `pool` (the listener's own when None)."""
    return Forward(pool)


def respond(status: int, body=b"", headers=()) -> types.Decision:
    """Answer the request here: `respond(403, b"no\\n", [("content-type", "text/plain")])`."""
    if isinstance(body, str):
        body = body.encode()
    return types.Decision_Respond(
        types.Response(status, [types.Header(n, v) for n, v in headers], body)
    )


def decision(d) -> types.Decision:
    """A builder or a decision, as the host's decision."""
    return d.decision() if isinstance(d, Forward) else d


def config_json(config: str, default=None):
    """The policy's JSON config, parsed; a bad one refuses the policy."""
    if not config.strip():
        return default
    try:
        return json.loads(config)
    except ValueError as e:
        raise Err(f"config: {e}")


class Policy(wit_world.WitWorld):
    """An HTTP policy with defaults: override `configure` and `request`."""

    def configure(self, config: str) -> None:
        """Receives the policy's JSON config; raise `Err` to refuse it."""

    def request(self, req: types.RequestHead, conn: types.Connection):
        """Decides one request: a `forward(...)` builder or a decision."""
        return forward()

    def init(self, config: str) -> None:
        self.configure(config)

    def on_request(self, request: types.RequestHead, connection: types.Connection) -> types.Decision:
        return decision(self.request(request, connection))
