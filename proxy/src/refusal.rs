//! How a refusal travels back to the client: a name both ends of an
//! HBONE tunnel built by hbone-lab understand.

/// Response header that names why a CONNECT was refused (an hbone-lab
/// addition; ztunnel sends none, and its clients ignore it).
pub const REFUSAL_HEADER: &str = "hbone-lab-refusal";
