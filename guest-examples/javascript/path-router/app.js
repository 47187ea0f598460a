// `path-router` in JavaScript: picks the pool by the longest matching path
// prefix, with the same config file and the same decisions as the Rust
// example (guest-examples/path-router).
//
// Config: {"routes": [{"prefix": "/api/", "pool": "api"},
//                     {"prefix": "/images/", "pool": "images", "strip_prefix": true}]}
// Unmatched requests go to the listener's default pool.
//
// Build: cargo xtask build-policies --all-languages (componentize-js, with
// every optional WASI feature disabled, and the helpers of
// guest-examples/javascript/switchyard.js).
//
// Bindings follow jco's conventions: exports are camelCase functions,
// records are objects with camelCase fields, variants are {tag, val},
// an absent option is undefined, and throwing from an export that returns
// result<_, string> returns its error.

import { configJson, forward } from "../switchyard.js";

let routes = [];

function parse(config) {
  const doc = configJson(config);
  const keys = (o) => Object.keys(o).sort().join(",");
  if (typeof doc !== "object" || doc === null || keys(doc) !== "routes" || !Array.isArray(doc.routes)) {
    throw 'config: expected {"routes": [...]}';
  }
  const parsed = doc.routes.map((r) => {
    if (typeof r !== "object" || r === null || !["pool,prefix", "pool,prefix,strip_prefix"].includes(keys(r))) {
      throw "config: each route has prefix, pool and optionally strip_prefix";
    }
    const strip = r.strip_prefix ?? false;
    if (typeof r.prefix !== "string" || typeof r.pool !== "string" || typeof strip !== "boolean") {
      throw "config: prefix and pool are strings, strip_prefix a boolean";
    }
    if (!r.prefix.startsWith("/")) {
      throw `config: route prefix ${JSON.stringify(r.prefix)} must start with '/'`;
    }
    return { prefix: r.prefix, pool: r.pool, strip };
  });
  // Longest prefix first (Array.prototype.sort is stable, as Rust's is).
  parsed.sort((a, b) => b.prefix.length - a.prefix.length);
  return parsed;
}

export function init(config) {
  routes = parse(config);
}

export function onRequest(request, _connection) {
  // The request is a handle: each part is read from the host on demand.
  const path = request.path();
  for (const route of routes) {
    if (path.startsWith(route.prefix)) {
      if (route.strip) {
        // Keep the leading slash: "/images/a.png" -> "/a.png", "/images/" -> "/".
        const rest = path.slice(route.prefix.length).replace(/^\/+/, "");
        return forward(route.pool).path("/" + rest).decision();
      }
      return forward(route.pool).decision();
    }
  }
  return forward().decision();
}

