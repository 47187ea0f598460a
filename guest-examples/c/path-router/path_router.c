// `path-router` in C: picks the pool by the longest matching path prefix,
// with the same config file and the same decisions as the Rust example
// (guest-examples/path-router).
//
// Config: {"routes": [{"prefix": "/api/", "pool": "api"},
//                     {"prefix": "/images/", "pool": "images", "strip_prefix": true}]}
// Unmatched requests go to the listener's default pool.
//
// Build: cargo xtask build-policies --all-languages (bindings from
// `wit-bindgen c`, clang --target=wasm32-wasi, `wasm-tools component new`).
//
// Ownership, as wit-bindgen's C bindings define it: every export owns its
// arguments and must free them (a pooled instance would leak otherwise);
// what it returns must be heap memory, which the generated post-return
// function frees after the host has copied it.
//
// The config parser below reads only the JSON this policy's config uses
// (objects, arrays, strings, true/false); there is no JSON library in
// wasi-libc, and this keeps the component free of dependencies.

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http_policy.h"

typedef struct {
    char *prefix;
    size_t prefix_len;
    char *pool;
    size_t pool_len;
    bool strip;
} route_t;

static route_t *routes;
static size_t n_routes;

// ---- a small JSON reader for the config ---------------------------------

typedef struct {
    const uint8_t *p, *end;
    const char *error;
} reader_t;

static void ws(reader_t *r) {
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r')) {
        r->p++;
    }
}

static bool fail(reader_t *r, const char *why) {
    if (!r->error) {
        r->error = why;
    }
    return false;
}

static bool expect(reader_t *r, char c) {
    ws(r);
    if (r->p < r->end && *r->p == (uint8_t)c) {
        r->p++;
        return true;
    }
    return fail(r, "config: malformed JSON");
}

static bool peek(reader_t *r, char c) {
    ws(r);
    return r->p < r->end && *r->p == (uint8_t)c;
}

static int hex(uint8_t c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static bool hex4(reader_t *r, uint32_t *out) {
    if (r->end - r->p < 4) return fail(r, "config: malformed JSON");
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hex(r->p[i]);
        if (h < 0) return fail(r, "config: malformed JSON");
        v = v << 4 | (uint32_t)h;
    }
    r->p += 4;
    *out = v;
    return true;
}

static void put_utf8(char *out, size_t *n, uint32_t c) {
    if (c < 0x80) {
        out[(*n)++] = (char)c;
    } else if (c < 0x800) {
        out[(*n)++] = (char)(0xC0 | c >> 6);
        out[(*n)++] = (char)(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
        out[(*n)++] = (char)(0xE0 | c >> 12);
        out[(*n)++] = (char)(0x80 | (c >> 6 & 0x3F));
        out[(*n)++] = (char)(0x80 | (c & 0x3F));
    } else {
        out[(*n)++] = (char)(0xF0 | c >> 18);
        out[(*n)++] = (char)(0x80 | (c >> 12 & 0x3F));
        out[(*n)++] = (char)(0x80 | (c >> 6 & 0x3F));
        out[(*n)++] = (char)(0x80 | (c & 0x3F));
    }
}

// A JSON string, decoded into a new NUL-terminated buffer (caller frees).
static bool string(reader_t *r, char **out, size_t *len) {
    if (!expect(r, '"')) return false;
    // Decoded text is never longer than its escaped form.
    char *buf = malloc((size_t)(r->end - r->p) + 1);
    size_t n = 0;
    while (r->p < r->end && *r->p != '"') {
        uint8_t c = *r->p++;
        if (c < 0x20) {
            free(buf);
            return fail(r, "config: malformed JSON");
        }
        if (c != '\\') {
            buf[n++] = (char)c;
            continue;
        }
        if (r->p >= r->end) break;
        uint8_t e = *r->p++;
        uint32_t cp;
        switch (e) {
        case '"': buf[n++] = '"'; break;
        case '\\': buf[n++] = '\\'; break;
        case '/': buf[n++] = '/'; break;
        case 'b': buf[n++] = '\b'; break;
        case 'f': buf[n++] = '\f'; break;
        case 'n': buf[n++] = '\n'; break;
        case 'r': buf[n++] = '\r'; break;
        case 't': buf[n++] = '\t'; break;
        case 'u':
            if (!hex4(r, &cp)) {
                free(buf);
                return false;
            }
            if (cp >= 0xD800 && cp < 0xDC00) {
                uint32_t lo;
                if (r->end - r->p < 2 || r->p[0] != '\\' || r->p[1] != 'u') {
                    free(buf);
                    return fail(r, "config: malformed JSON");
                }
                r->p += 2;
                if (!hex4(r, &lo) || lo < 0xDC00 || lo > 0xDFFF) {
                    free(buf);
                    return fail(r, "config: malformed JSON");
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp < 0xE000) {
                free(buf);
                return fail(r, "config: malformed JSON");
            }
            put_utf8(buf, &n, cp);
            break;
        default:
            free(buf);
            return fail(r, "config: malformed JSON");
        }
    }
    if (!expect(r, '"')) {
        free(buf);
        return false;
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return true;
}

static bool boolean(reader_t *r, bool *out) {
    ws(r);
    if (r->end - r->p >= 4 && memcmp(r->p, "true", 4) == 0) {
        r->p += 4;
        *out = true;
        return true;
    }
    if (r->end - r->p >= 5 && memcmp(r->p, "false", 5) == 0) {
        r->p += 5;
        *out = false;
        return true;
    }
    return fail(r, "config: strip_prefix must be true or false");
}

static bool route(reader_t *r, route_t *out) {
    memset(out, 0, sizeof *out);
    if (!expect(r, '{')) return false;
    bool first = true;
    while (!peek(r, '}')) {
        if (!first && !expect(r, ',')) return false;
        first = false;
        char *key;
        size_t key_len;
        if (!string(r, &key, &key_len) || !expect(r, ':')) return false;
        bool ok;
        if (strcmp(key, "prefix") == 0 && !out->prefix) {
            ok = string(r, &out->prefix, &out->prefix_len);
        } else if (strcmp(key, "pool") == 0 && !out->pool) {
            ok = string(r, &out->pool, &out->pool_len);
        } else if (strcmp(key, "strip_prefix") == 0) {
            ok = boolean(r, &out->strip);
        } else {
            ok = fail(r, "config: a route has prefix, pool and optionally strip_prefix");
        }
        free(key);
        if (!ok) return false;
    }
    if (!expect(r, '}')) return false;
    if (!out->prefix || !out->pool) {
        return fail(r, "config: a route has prefix, pool and optionally strip_prefix");
    }
    if (out->prefix[0] != '/') {
        return fail(r, "config: a route prefix must start with '/'");
    }
    return true;
}

static bool parse(reader_t *r) {
    if (!expect(r, '{')) return false;
    char *key;
    size_t key_len;
    if (!string(r, &key, &key_len)) return false;
    bool is_routes = strcmp(key, "routes") == 0;
    free(key);
    if (!is_routes) return fail(r, "config: expected {\"routes\": [...]}");
    if (!expect(r, ':') || !expect(r, '[')) return false;
    size_t cap = 4;
    routes = calloc(cap, sizeof *routes);
    while (!peek(r, ']')) {
        if (n_routes > 0 && !expect(r, ',')) return false;
        if (n_routes == cap) {
            cap *= 2;
            routes = realloc(routes, cap * sizeof *routes);
        }
        if (!route(r, &routes[n_routes])) return false;
        n_routes++;
    }
    if (!expect(r, ']') || !expect(r, '}')) return false;
    ws(r);
    if (r->p != r->end) return fail(r, "config: trailing characters after the JSON");
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
    reader_t r = {config->ptr, config->ptr + config->len, NULL};
    bool ok = parse(&r);
    http_policy_string_free(config);
    if (!ok) {
        http_policy_string_dup(err, r.error ? r.error : "config: malformed JSON");
    }
    return ok;
}

static void some(http_policy_option_string_t *opt, const char *s, size_t len) {
    opt->is_some = true;
    http_policy_string_dup_n(&opt->val, s, len);
}

// The request and connection are borrowed handles: each part is read from
// the host on demand, and the handles are given back (drop_borrow) before
// returning.
void exports_http_policy_on_request(http_policy_borrow_request_head_t request,
                                    http_policy_borrow_connection_t connection,
                                    http_policy_decision_t *ret) {
    memset(ret, 0, sizeof *ret);
    ret->tag = SWITCHYARD_POLICY_TYPES_DECISION_FORWARD;
    switchyard_policy_types_forward_t *fwd = &ret->val.forward;
    http_policy_string_t request_path;
    switchyard_policy_types_method_request_head_path(request, &request_path);
    const uint8_t *path = request_path.ptr;
    size_t len = request_path.len;
    for (size_t i = 0; i < n_routes; i++) {
        const route_t *rt = &routes[i];
        if (len < rt->prefix_len || memcmp(path, rt->prefix, rt->prefix_len) != 0) {
            continue;
        }
        some(&fwd->pool, rt->pool, rt->pool_len);
        if (rt->strip) {
            // Keep the leading slash: "/images/a.png" -> "/a.png", "/images/" -> "/".
            size_t at = rt->prefix_len;
            while (at < len && path[at] == '/') at++;
            char *rewritten = malloc(len - at + 1);
            rewritten[0] = '/';
            memcpy(rewritten + 1, path + at, len - at);
            fwd->path.is_some = true;
            fwd->path.val.ptr = (uint8_t *)rewritten;
            fwd->path.val.len = len - at + 1;
        }
        break;
    }
    http_policy_string_free(&request_path);
    switchyard_policy_types_request_head_drop_borrow(request);
    switchyard_policy_types_connection_drop_borrow(connection);
}
