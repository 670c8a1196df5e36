//! The SOCKS5 greeting and request parsers on arbitrary bytes: never a
//! panic, and a complete message never claims more bytes than it was given.
#![no_main]

use hbone_proxy::outbound::socks5::{parse_greeting, parse_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rest = match parse_greeting(data) {
        Ok(Some(used)) => {
            assert!(used <= data.len());
            &data[used..]
        }
        _ => data,
    };
    if let Ok(Some((_, used))) = parse_request(rest) {
        assert!(used <= rest.len());
    }
});
