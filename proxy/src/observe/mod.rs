//! What the proxy tells about itself: why it refused something
//! ([`refusal`], typed end to end), ztunnel's metrics ([`metrics`]), and the
//! log of its connections one by one ([`connection_log`],
//! `/debug/connections`) — all three written for each connection by one
//! [`report`]. The admin listener that serves them is
//! [`crate::admin`].

pub mod connection_log;
pub mod metrics;
pub mod refusal;
pub mod report;
