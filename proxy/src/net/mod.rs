//! Sockets, below every listener: made inside a pod's network namespace
//! when the proxy serves the pod from outside it ([`pod_sockets`]), the original
//! destination of a redirected connection ([`original_dst`]), the accept
//! loop every listener shares ([`listen`], on `hbone_listen`'s acceptor and
//! connection caps), and the hot path that moves bytes between a
//! TCP socket and an HTTP/2 stream ([`copy`]).

pub mod copy;
pub mod keepalive;
pub mod listen;
pub mod original_dst;
pub mod pod_sockets;
