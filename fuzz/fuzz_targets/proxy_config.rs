//! The proxy's YAML config on arbitrary text: never a panic, only a value
//! or an error naming a field.
#![no_main]

use hbone_proxy::config::{ProxyConfig, parse_yaml};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_yaml::<ProxyConfig>(text);
    }
});
