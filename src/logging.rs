//! Log setup shared by every command: `tracing` to stderr, filtered by
//! `RUST_LOG` (default `info`; `error` for the demo, whose refusals are the
//! point and are reported in its own output), as JSON lines when `HBONE_LOG_FORMAT=json`.

use tracing_subscriber::EnvFilter;

/// `default` applies when RUST_LOG is unset (the demo keeps its own output clean with "error").
pub fn init(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("HBONE_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
