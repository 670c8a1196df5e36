//! The CA's PKCS#10 parsing and SAN extraction on arbitrary DER and PEM:
//! never a panic (a node proxy's CSR is the CA's untrusted input).
#![no_main]

use hbone_ca::csr::{parse_csr_der, parse_csr_pem};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_csr_der(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_csr_pem(text);
    }
});
