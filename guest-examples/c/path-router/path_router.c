// `path-router` in C: picks the pool by the longest matching path prefix,
// with the same config file and the same decisions as the Rust example
// (guest-examples/path-router).
//
// Config: {"routes": [{"prefix": "/api/", "pool": "api"},
//                     {"prefix": "/images/", "pool": "images", "strip_prefix": true}]}
// Unmatched requests go to the listener's default pool.
//
// Build: cargo xtask build-policies --all-languages (bindings from
// `wit-bindgen c`, the helpers of guest-examples/c/switchyard.h, clang
// --target=wasm32-wasi, `wasm-tools component new`).
//
// Ownership, as wit-bindgen's C bindings define it: every export owns its
// arguments and must free them (a pooled instance would leak otherwise);
// what it returns must be heap memory, which the generated post-return
// function frees after the host has copied it.

#include "http_policy.h"
#include "switchyard.h"

typedef struct {
    char *prefix;
    size_t prefix_len;
    char *pool;
    size_t pool_len;
    bool strip;
} route_t;

static route_t *routes;
static size_t n_routes;

// ---- the config ----------------------------------------------------------

static bool route(sy_json_t *r, route_t *out) {
    memset(out, 0, sizeof *out);
    if (!sy_json_expect(r, '{')) return false;
    bool first = true;
    while (!sy_json_peek(r, '}')) {
        if (!first && !sy_json_expect(r, ',')) return false;
        first = false;
        char *key;
        size_t key_len;
        if (!sy_json_string(r, &key, &key_len) || !sy_json_expect(r, ':')) return false;
        bool ok;
        if (strcmp(key, "prefix") == 0 && !out->prefix) {
            ok = sy_json_string(r, &out->prefix, &out->prefix_len);
        } else if (strcmp(key, "pool") == 0 && !out->pool) {
            ok = sy_json_string(r, &out->pool, &out->pool_len);
        } else if (strcmp(key, "strip_prefix") == 0) {
            ok = sy_json_bool(r, &out->strip);
        } else {
            ok = sy_json_fail(r, "config: a route has prefix, pool and optionally strip_prefix");
        }
        free(key);
        if (!ok) return false;
    }
    if (!sy_json_expect(r, '}')) return false;
    if (!out->prefix || !out->pool) {
        return sy_json_fail(r, "config: a route has prefix, pool and optionally strip_prefix");
    }
    if (out->prefix[0] != '/') {
        return sy_json_fail(r, "config: a route prefix must start with '/'");
    }
    return true;
}

static bool parse(sy_json_t *r) {
    if (!sy_json_expect(r, '{')) return false;
    char *key;
    size_t key_len;
    if (!sy_json_string(r, &key, &key_len)) return false;
    bool is_routes = strcmp(key, "routes") == 0;
    free(key);
    if (!is_routes) return sy_json_fail(r, "config: expected {\"routes\": [...]}");
    if (!sy_json_expect(r, ':') || !sy_json_expect(r, '[')) return false;
    size_t cap = 4;
    routes = calloc(cap, sizeof *routes);
    while (!sy_json_peek(r, ']')) {
        if (n_routes > 0 && !sy_json_expect(r, ',')) return false;
        if (n_routes == cap) {
            cap *= 2;
            routes = realloc(routes, cap * sizeof *routes);
        }
        if (!route(r, &routes[n_routes])) return false;
        n_routes++;
    }
    if (!sy_json_expect(r, ']') || !sy_json_expect(r, '}') || !sy_json_end(r)) return false;
    // Longest prefix first, stable (insertion sort), as Rust's sort_by_key.
    for (size_t i = 1; i < n_routes; i++) {
        route_t x = routes[i];
        size_t j = i;
        while (j > 0 && routes[j - 1].prefix_len < x.prefix_len) {
            routes[j] = routes[j - 1];
            j--;
        }
        routes[j] = x;
    }
    return true;
}

// ---- the exports ---------------------------------------------------------

bool exports_http_policy_init(http_policy_string_t *config, http_policy_string_t *err) {
    sy_json_t r = sy_json(config);
    bool ok = parse(&r);
    http_policy_string_free(config);
    if (!ok) {
        http_policy_string_dup(err, r.error ? r.error : "config: malformed JSON");
    }
    return ok;
}

// The request and connection are borrowed handles: each part is read from
// the host on demand, and the handles are given back (drop_borrow) before
// returning.
void exports_http_policy_on_request(http_policy_borrow_request_head_t request,
                                    http_policy_borrow_connection_t connection,
                                    http_policy_decision_t *ret) {
    http_policy_string_t request_path;
    switchyard_policy_types_method_request_head_path(request, &request_path);
    const char *path = (const char *)request_path.ptr;
    size_t len = request_path.len;
    const route_t *rt = NULL;
    for (size_t i = 0; i < n_routes && !rt; i++) {
        if (len >= routes[i].prefix_len && memcmp(path, routes[i].prefix, routes[i].prefix_len) == 0) {
            rt = &routes[i];
        }
    }
    if (!rt) {
        sy_forward(ret, NULL, 0);
    } else {
        switchyard_policy_types_forward_t *fwd = sy_forward(ret, rt->pool, rt->pool_len);
        if (rt->strip) {
            // Keep the leading slash: "/images/a.png" -> "/a.png", "/images/" -> "/".
            size_t at = rt->prefix_len;
            while (at < len && path[at] == '/') at++;
            char *rewritten = malloc(len - at + 1);
            rewritten[0] = '/';
            memcpy(rewritten + 1, path + at, len - at);
            sy_forward_path(fwd, rewritten, len - at + 1);
            free(rewritten);
        }
    }
    http_policy_string_free(&request_path);
    switchyard_policy_types_request_head_drop_borrow(request);
    switchyard_policy_types_connection_drop_borrow(connection);
}
