//! The registry loader on arbitrary text: never a panic; what loads resolves
//! every address without panicking either.
#![no_main]

use hbone_proxy::registry::Registry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(registry) = Registry::parse(text, "fuzz.yaml") {
        for w in &registry.workloads {
            for ip in &w.ips {
                let _ = registry.resolve(std::net::SocketAddr::new(*ip, 80), 1);
            }
        }
        for s in &registry.services {
            for vip in &s.vips {
                for port in s.ports.keys() {
                    let _ = registry.resolve(std::net::SocketAddr::new(*vip, *port), 3);
                }
            }
        }
    }
});
