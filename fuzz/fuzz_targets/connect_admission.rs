//! CONNECT admission on arbitrary requests: the method, the `:authority`
//! (or any URI) and headers, as a peer with a valid certificate may send
//! them. Never a panic; a request admitted names the address the stream
//! arrived for and no port of the proxy's own; a refused one says why.
//!
//! Input: lines — the method, the URI, then `name: value` headers.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use hbone_proxy::inbound::hbone::{PROXY_PORTS, connect_target};
use libfuzzer_sys::fuzz_target;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|b| *b == b'\n');
    let method = lines.next().unwrap_or_default();
    let uri = lines.next().unwrap_or_default();
    let mut builder = http::Request::builder().method(method).uri(uri);
    for line in lines {
        if let Some(colon) = line.iter().position(|b| *b == b':') {
            builder = builder.header(&line[..colon], &line[colon + 1..]);
        }
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (parts, ()) = request.into_parts();
    let workload_ips = [LOCAL, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9))];
    match connect_target(&parts, LOCAL, &workload_ips) {
        Ok(target) => {
            assert_eq!(target.ip(), LOCAL, "only the address it arrived for");
            assert!(
                !PROXY_PORTS.contains(&target.port()),
                "never the proxy's own ports"
            );
            assert_eq!(parts.method, http::Method::CONNECT);
        }
        Err(refusal) => assert!(!refusal.detail.is_empty(), "a refusal says why"),
    }
});
