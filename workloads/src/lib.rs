//! hbone-workloads: hello-app, the gateway and the load peers. Lands with issue 5.
