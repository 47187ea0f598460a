//! PROXY protocol headers as the daemon reads them (through `ppp`), on
//! arbitrary bytes: parsing must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ppp::HeaderResult::parse(data);
});
