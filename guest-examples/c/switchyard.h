// switchyard.h: helpers for Switchyard policies written in C, on top of
// the bindings `wit-bindgen c` makes for the world `http-policy`
// (include "http_policy.h" first). Header-only.
//
// - decision builders: sy_forward(), sy_forward_path(),
//   sy_forward_set_request_header(), sy_respond(): a decision is never
//   filled in field by field;
// - a small JSON reader for configs (objects, arrays, strings with every
//   escape, true/false): wasi-libc has no JSON library, and this keeps a
//   policy free of dependencies. Errors are "config: ..." messages for
//   `init` to return.
//
// Ownership is wit-bindgen's: what a decision holds must be heap memory,
// freed by the generated post-return function after the host copied it;
// every builder here allocates what it stores.

#ifndef SWITCHYARD_H
#define SWITCHYARD_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

// ---- the JSON reader -----------------------------------------------------

typedef struct {
    const uint8_t *p, *end;
    const char *error;
} sy_json_t;

/// A reader over `config`'s bytes.
static inline sy_json_t sy_json(const http_policy_string_t *config) {
    sy_json_t r = {config->ptr, config->ptr + config->len, NULL};
    return r;
}


static inline void sy_json_ws(sy_json_t *r) {
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r')) {
        r->p++;
    }
}

static inline bool sy_json_fail(sy_json_t *r, const char *why) {
    if (!r->error) {
        r->error = why;
    }
    return false;
}

static inline bool sy_json_expect(sy_json_t *r, char c) {
    sy_json_ws(r);
    if (r->p < r->end && *r->p == (uint8_t)c) {
        r->p++;
        return true;
    }
    return sy_json_fail(r, "config: malformed JSON");
}

static inline bool sy_json_peek(sy_json_t *r, char c) {
    sy_json_ws(r);
    return r->p < r->end && *r->p == (uint8_t)c;
}

static inline int sy_json_hex(uint8_t c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static inline bool sy_json_hex4(sy_json_t *r, uint32_t *out) {
    if (r->end - r->p < 4) return sy_json_fail(r, "config: malformed JSON");
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int h = sy_json_hex(r->p[i]);
        if (h < 0) return sy_json_fail(r, "config: malformed JSON");
        v = v << 4 | (uint32_t)h;
    }
    r->p += 4;
    *out = v;
    return true;
}

static inline void sy_json_put_utf8(char *out, size_t *n, uint32_t c) {
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
static inline bool sy_json_string(sy_json_t *r, char **out, size_t *len) {
    if (!sy_json_expect(r, '"')) return false;
    // Decoded text is never longer than its escaped form.
    char *buf = malloc((size_t)(r->end - r->p) + 1);
    size_t n = 0;
    while (r->p < r->end && *r->p != '"') {
        uint8_t c = *r->p++;
        if (c < 0x20) {
            free(buf);
            return sy_json_fail(r, "config: malformed JSON");
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
            if (!sy_json_hex4(r, &cp)) {
                free(buf);
                return false;
            }
            if (cp >= 0xD800 && cp < 0xDC00) {
                uint32_t lo;
                if (r->end - r->p < 2 || r->p[0] != '\\' || r->p[1] != 'u') {
                    free(buf);
                    return sy_json_fail(r, "config: malformed JSON");
                }
                r->p += 2;
                if (!sy_json_hex4(r, &lo) || lo < 0xDC00 || lo > 0xDFFF) {
                    free(buf);
                    return sy_json_fail(r, "config: malformed JSON");
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp < 0xE000) {
                free(buf);
                return sy_json_fail(r, "config: malformed JSON");
            }
            sy_json_put_utf8(buf, &n, cp);
            break;
        default:
            free(buf);
            return sy_json_fail(r, "config: malformed JSON");
        }
    }
    if (!sy_json_expect(r, '"')) {
        free(buf);
        return false;
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return true;
}

static inline bool sy_json_bool(sy_json_t *r, bool *out) {
    sy_json_ws(r);
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
    return sy_json_fail(r, "config: expected true or false");
}

/// Whether only whitespace is left.
static inline bool sy_json_end(sy_json_t *r) {
    sy_json_ws(r);
    return r->p == r->end || sy_json_fail(r, "config: trailing characters after the JSON");
}

// ---- decision builders ---------------------------------------------------

/// `opt` = Some(copy of s[..len]).
static inline void sy_some(http_policy_option_string_t *opt, const char *s, size_t len) {
    opt->is_some = true;
    http_policy_string_dup_n(&opt->val, s, len);
}

/// A forward decision to `pool` (NULL: the listener's own) with no edits;
/// returns the forward record to edit further.
static inline switchyard_policy_types_forward_t *sy_forward(http_policy_decision_t *ret,
                                                           const char *pool, size_t pool_len) {
    memset(ret, 0, sizeof *ret);
    ret->tag = SWITCHYARD_POLICY_TYPES_DECISION_FORWARD;
    if (pool) sy_some(&ret->val.forward.pool, pool, pool_len);
    return &ret->val.forward;
}

/// Replace the upstream path.
static inline void sy_forward_path(switchyard_policy_types_forward_t *f, const char *path,
                                   size_t len) {
    sy_some(&f->path, path, len);
}

/// Set a request header sent upstream.
static inline void sy_forward_set_request_header(switchyard_policy_types_forward_t *f,
                                                 const char *name, const char *value) {
    switchyard_policy_types_list_header_op_t *ops = &f->request_headers;
    ops->ptr = realloc(ops->ptr, (ops->len + 1) * sizeof *ops->ptr);
    switchyard_policy_types_header_op_t *op = &ops->ptr[ops->len++];
    memset(op, 0, sizeof *op);
    op->tag = SWITCHYARD_POLICY_TYPES_HEADER_OP_SET;
    http_policy_string_dup(&op->val.set.name, name);
    http_policy_string_dup(&op->val.set.value, value);
}

/// Answer the request here with `status`, a text `body` and its
/// `content_type` (NULL: none).
static inline void sy_respond(http_policy_decision_t *ret, uint16_t status, const char *body,
                              const char *content_type) {
    memset(ret, 0, sizeof *ret);
    ret->tag = SWITCHYARD_POLICY_TYPES_DECISION_RESPOND;
    switchyard_policy_types_response_t *r = &ret->val.respond;
    r->status = status;
    if (content_type) {
        r->headers.ptr = calloc(1, sizeof *r->headers.ptr);
        r->headers.len = 1;
        http_policy_string_dup(&r->headers.ptr[0].name, "content-type");
        http_policy_string_dup(&r->headers.ptr[0].value, content_type);
    }
    size_t n = strlen(body);
    r->body.ptr = malloc(n ? n : 1);
    memcpy(r->body.ptr, body, n);
    r->body.len = n;
}

#endif
