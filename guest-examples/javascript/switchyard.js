// Helpers for Switchyard policies written in JavaScript (componentize-js):
// decisions are built, never filled in field by field.
//
//   import { forward, respond, configJson } from "../switchyard.js";
//   export function onRequest(request) {
//     if (request.path().startsWith("/api/")) return forward("api").setRequestHeader("x-routed", "1").decision();
//     return forward().decision();
//   }
//
// A policy exports `init` and `onRequest` itself (jco's names for the
// world's exports); `init` may be left out by exporting `init` from here.

class Forward {
  constructor(pool) {
    this.record = {
      pool,
      backend: undefined,
      path: undefined,
      authority: undefined,
      requestHeaders: [],
      responseHeaders: [],
      inspectResponse: false,
      context: undefined,
      body: undefined,
      responseBodyLimit: undefined,
    };
  }
  backend(name) {
    this.record.backend = name;
    return this;
  }
  path(path) {
    this.record.path = path;
    return this;
  }
  authority(authority) {
    this.record.authority = authority;
    return this;
  }
  setRequestHeader(name, value) {
    this.record.requestHeaders.push({ tag: "set", val: { name, value } });
    return this;
  }
  appendRequestHeader(name, value) {
    this.record.requestHeaders.push({ tag: "append", val: { name, value } });
    return this;
  }
  removeRequestHeader(name) {
    this.record.requestHeaders.push({ tag: "remove", val: name });
    return this;
  }
  setResponseHeader(name, value) {
    this.record.responseHeaders.push({ tag: "set", val: { name, value } });
    return this;
  }
  appendResponseHeader(name, value) {
    this.record.responseHeaders.push({ tag: "append", val: { name, value } });
    return this;
  }
  context(bytes) {
    this.record.context = bytes;
    return this;
  }
  body(bytes) {
    this.record.body = bytes;
    return this;
  }
  decision() {
    return { tag: "forward", val: this.record };
  }
}

/** Forward to `pool` (the listener's own when undefined). */
export function forward(pool) {
  return new Forward(pool);
}

/** Answer here: respond(403, "no\n", [["content-type", "text/plain"]]). */
export function respond(status, body = "", headers = []) {
  const bytes = typeof body === "string" ? new TextEncoder().encode(body) : body;
  return {
    tag: "respond",
    val: { status, headers: headers.map(([name, value]) => ({ name, value })), body: bytes },
  };
}

/** The policy's JSON config, parsed; a bad one refuses the policy. */
export function configJson(config, fallback = undefined) {
  if (config.trim() === "") return fallback;
  try {
    return JSON.parse(config);
  } catch (e) {
    throw `config: ${e.message}`;
  }
}

/** An `init` that accepts any config, for policies without one. */
export function init(_config) {}
