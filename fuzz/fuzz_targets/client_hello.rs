//! The SNI relay's ClientHello reader on arbitrary bytes (it reads what an
//! untrusted pod sends): never a panic, and a name it finds is in the input.
#![no_main]

use hbone_standalone::lab::sni_relay::client_hello_sni;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(name) = client_hello_sni(data) {
        assert!(name.len() <= data.len());
    }
});
