//! The TCP listener's ClientHello peek on arbitrary bytes: it must never
//! panic, and a prefix of a complete hello is never "not TLS".
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::l4::sni::{Peeked, parse};

fuzz_target!(|data: &[u8]| {
    if let Peeked::Tls(_) = parse(data) {
        for cut in [data.len() / 2, data.len().saturating_sub(1)] {
            assert_ne!(parse(&data[..cut]), Peeked::NotTls);
        }
    }
});
