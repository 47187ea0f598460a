//! One normalized path: what the policy reads is what the backend gets.
//!
//! A policy that denies `/admin/` must not be walked around by a path the
//! backend resolves to `/admin/` but the policy reads differently
//! (`/x/../admin/`, `/%2e%2e/admin/`, `//admin/`, `/%61dmin/`). So before
//! the policy sees a request, and again after a policy rewrites its path:
//!
//! 1. percent-encoded unreserved characters (RFC 3986 §2.3: letters,
//!    digits, `-._~`) are decoded, and every other escape is written in
//!    upper-case hex (§6.2.2.1-2); a `%` not followed by two hex digits is
//!    refused;
//! 2. encoded slashes and backslashes (`%2F`, `%5C`) and raw backslashes
//!    follow the listener's [`EscapedSlashes`] action;
//! 3. repeated slashes are merged;
//! 4. dot segments are removed (RFC 3986 §5.2.4), `%2e` counting as a dot
//!    since step 1 decoded it; a path that climbs above the root is
//!    refused.
//!
//! The query is never touched. `docs/SECURITY.md` ("path confusion") says
//! what nginx, HAProxy and Envoy do.

use std::borrow::Cow;

pub use crate::config::limits::EscapedSlashes;

/// Why a path is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// `%2F`, `%5C` or `\` with `path_with_escaped_slashes = "reject"`.
    EscapedSlash,
    /// More `..` segments than there are segments above them.
    AboveRoot,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathError::BadEscape => "the path has a '%' not followed by two hex digits",
            PathError::EscapedSlash => {
                "the path has an encoded slash or a backslash (path_with_escaped_slashes = \"reject\")"
            }
            PathError::AboveRoot => "the path climbs above the root",
        })
    }
}

impl std::error::Error for PathError {}

/// Bytes that may make a path not normal: `%`, `\`, `/` (a repeated
/// slash, or a dot segment after it).
const SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    t[b'%' as usize] = true;
    t[b'\\' as usize] = true;
    t[b'/' as usize] = true;
    t
};

/// Whether `path` is already normal: no escape, no backslash, no empty
/// segment and no dot segment. One pass with a table lookup per byte and
/// no allocation: the common case.
fn is_normal(path: &[u8]) -> bool {
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        i += 1;
        if !SPECIAL[b as usize] {
            continue;
        }
        if b != b'/' {
            return false;
        }
        // After a `/`: another `/`, or `.` / `..` followed by `/` or the
        // end, is not normal.
        let rest = &path[i..];
        match rest {
            [b'/', ..] => return false,
            [b'.'] | [b'.', b'/', ..] | [b'.', b'.'] | [b'.', b'.', b'/', ..] => return false,
            _ => {}
        }
    }
    true
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

const UPPER_HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Steps 1 and 2: escapes decoded or upper-cased, slashes per `slashes`.
/// Returns the bytes, each with whether it is a segment boundary.
fn decode(path: &[u8], slashes: EscapedSlashes) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    path.get(i + 1).copied().and_then(hex),
                    path.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let c = hi << 4 | lo;
                if c == b'/' || c == b'\\' {
                    match slashes {
                        EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                        EscapedSlashes::Unescape => out.push(b'/'),
                        EscapedSlashes::Keep => out.extend_from_slice(&[
                            b'%',
                            UPPER_HEX[hi as usize],
                            UPPER_HEX[lo as usize],
                        ]),
                    }
                } else if unreserved(c) {
                    out.push(c);
                } else {
                    out.extend_from_slice(&[b'%', UPPER_HEX[hi as usize], UPPER_HEX[lo as usize]]);
                }
                i += 3;
            }
            b'\\' => {
                match slashes {
                    EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                    EscapedSlashes::Unescape => out.push(b'/'),
                    EscapedSlashes::Keep => out.push(b'\\'),
                }
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Steps 3 and 4 on a decoded path that starts with `/`.
fn resolve(decoded: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    let segments: Vec<&[u8]> = decoded[1..].split(|&b| b == b'/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.into_iter().enumerate() {
        match seg {
            b"" | b"." => trailing_slash = i == last,
            b".." => {
                if kept.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = i == last;
            }
            s => {
                kept.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = Vec::with_capacity(decoded.len());
    for s in &kept {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if kept.is_empty() || trailing_slash {
        out.push(b'/');
    }
    Ok(out)
}

/// The normalized form of `path` (the path alone, no query), borrowed
/// when it is already normal. A path that does not start with `/` (`*`
/// of `OPTIONS *`) is left alone.
pub fn normalize(path: &str, slashes: EscapedSlashes) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if !bytes.starts_with(b"/") || is_normal(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(bytes, slashes)?;
    let resolved = resolve(&decoded)?;
    // Decoding only ever turns an escape of an ASCII byte into that byte,
    // and leaves every other byte as it was: the result is still UTF-8.
    let text = String::from_utf8(resolved).expect("normalizing keeps UTF-8");
    if text == path {
        Ok(Cow::Borrowed(path))
    } else {
        Ok(Cow::Owned(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use EscapedSlashes::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p, Reject).map(Cow::into_owned)
    }

    #[test]
    fn the_attacks_of_issue_17_all_become_admin() {
        for p in [
            "/x/../admin/",
            "/x/%2e%2e/admin/",
            "//admin/",
            "/./admin/",
            "/%61dmin/",
            "/%2E/admin/",
            "/x/%2e%2E/admin/",
            "/x/.%2e/admin/",
            "///admin//",
            "/admin/.",
            "/x/y/../../admin/",
            "/%41DMIN/../admin/",
        ] {
            assert_eq!(n(p).unwrap(), "/admin/", "{p}");
        }
    }

    #[test]
    fn climbing_above_the_root_and_bad_escapes_are_refused() {
        assert_eq!(n("/.."), Err(PathError::AboveRoot));
        assert_eq!(n("/../admin/"), Err(PathError::AboveRoot));
        assert_eq!(n("/%2e%2e/admin/"), Err(PathError::AboveRoot));
        assert_eq!(n("/%2e%2e/%2e%2e/etc"), Err(PathError::AboveRoot));
        assert_eq!(n("/a/../../b"), Err(PathError::AboveRoot));
        assert_eq!(n("/a%"), Err(PathError::BadEscape));
        assert_eq!(n("/a%4"), Err(PathError::BadEscape));
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape));
    }

    #[test]
    fn escaped_slashes_follow_the_action() {
        assert_eq!(normalize("/a%2fb", Reject), Err(PathError::EscapedSlash));
        assert_eq!(normalize("/a%5Cb", Reject), Err(PathError::EscapedSlash));
        assert_eq!(normalize("/a\\b", Reject), Err(PathError::EscapedSlash));
        assert_eq!(normalize("/a%2fb/..", Keep).unwrap(), "/");
        assert_eq!(normalize("/a%2fb", Keep).unwrap(), "/a%2Fb");
        assert_eq!(normalize("/a\\..\\b", Keep).unwrap(), "/a\\..\\b");
        assert_eq!(normalize("/x/..%2fadmin", Unescape).unwrap(), "/admin");
        assert_eq!(normalize("/x\\..\\admin", Unescape).unwrap(), "/admin");
    }

    #[test]
    fn other_escapes_stay_escaped_in_upper_case_and_queries_are_not_paths() {
        assert_eq!(n("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(n("/a%20b").unwrap(), "/a%20b");
        assert_eq!(n("/a%3fb").unwrap(), "/a%3Fb");
        assert_eq!(n("/%7euser").unwrap(), "/~user");
        // Double encoding is decoded once only: `%252e` is a literal `%2e`.
        assert_eq!(n("/%252e%252e/admin").unwrap(), "/%252e%252e/admin");
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in ["/", "/a", "/a/b/", "/a.b/.c/..d/c..", "/.well-known/x", "*"] {
            assert!(matches!(normalize(p, Reject), Ok(Cow::Borrowed(_))), "{p}");
        }
        assert_eq!(n("/a/./b/").unwrap(), "/a/b/");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/b/.").unwrap(), "/a/b/");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn path() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just("/".to_string()),
                Just(".".to_string()),
                Just("..".to_string()),
                Just("%2e".to_string()),
                Just("%2E".to_string()),
                Just("%2f".to_string()),
                Just("%5c".to_string()),
                Just("\\".to_string()),
                Just("%".to_string()),
                Just("%41".to_string()),
                Just("%c3%a9".to_string()),
                "[a-z]{1,3}",
                "%[0-9a-fA-F]{2}",
            ];
            proptest::collection::vec(piece, 0..16).prop_map(|v| format!("/{}", v.concat()))
        }

        fn action() -> impl Strategy<Value = EscapedSlashes> {
            prop_oneof![Just(Reject), Just(Keep), Just(Unescape)]
        }

        proptest! {
            #[test]
            fn normalizing_twice_is_normalizing_once(p in path(), a in action()) {
                if let Ok(once) = normalize(&p, a) {
                    let twice = normalize(&once, a).expect("a normal path stays accepted");
                    prop_assert_eq!(&*twice, &*once);
                    prop_assert!(matches!(normalize(&once, a), Ok(Cow::Borrowed(_))));
                }
            }

            #[test]
            fn no_result_has_a_dot_segment_or_an_empty_one(p in path(), a in action()) {
                if let Ok(out) = normalize(&p, a) {
                    prop_assert!(out.starts_with('/'));
                    for seg in out[1..].split('/').rev().skip(1) {
                        prop_assert!(seg != ".." && seg != "." && !seg.is_empty(), "{out}");
                    }
                    let last = out.rsplit('/').next().unwrap();
                    prop_assert!(last != ".." && last != ".");
                }
            }

            #[test]
            fn any_bytes_never_panic(p in "/[ -~]{0,40}", a in action()) {
                let _ = normalize(&p, a);
            }
        }
    }
}
