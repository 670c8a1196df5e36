//! What a control plane sends, on arbitrary bytes: an `Address` and an
//! `Authorization` decoded and read as the proxy reads them (refusing what
//! it cannot use), never a panic; a policy that is accepted evaluates.
#![no_main]

use hbone_policies::authorization::{Connection, MeshAuthorization, WorkloadRef};
use hbone_xds::proto::security as pb;
use hbone_xds::proto::workload::Address;
use hbone_xds::receive::{address, authorization};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = Address::decode(data) {
        let _ = address("fuzz", &a);
    }
    let Ok(a) = pb::Authorization::decode(data) else {
        return;
    };
    let key = format!("{}/{}", a.namespace, a.name);
    if let Ok(policy) = authorization(&key, &a) {
        let mesh = MeshAuthorization::pushed("istio-system", vec![policy]);
        let labels = Default::default();
        let listed = [key];
        let workload = WorkloadRef {
            namespace: "demo",
            labels: &labels,
            listed: &listed,
        };
        let connection = Connection {
            principal: Some("cluster.local/ns/demo/sa/client"),
            src_ip: [10, 0, 0, 1].into(),
            dst_ip: [10, 0, 0, 2].into(),
            dst_port: 8000,
        };
        let first = mesh.decide(&workload, &connection);
        assert_eq!(first, mesh.decide(&workload, &connection), "deterministic");
    }
});
