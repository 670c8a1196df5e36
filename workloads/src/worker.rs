//! worker-app: the lab's second database client. Every interval it connects
//! to PostgreSQL, records that it ran, and logs the outcome — the workload to
//! enroll when showing how a new identity is granted access to the database.

use std::time::Duration;

use tracing::{info, warn};

use crate::db::Database;

/// Runs `rounds` times (forever for `None`), `interval` apart; returns how many succeeded.
pub async fn run(db: &Database, interval: Duration, rounds: Option<u64>) -> u64 {
    let mut ok = 0;
    let mut round = 0;
    loop {
        round += 1;
        let status = db.probe(true).await;
        if status.reachable {
            ok += 1;
            info!(
                round,
                visits = status.visits,
                rtt_ms = status.round_trip_ms,
                "worker-app wrote to the database"
            );
        } else {
            warn!(
                round,
                error = status.error.as_deref().unwrap_or(""),
                "worker-app cannot use the database"
            );
        }
        if rounds.is_some_and(|n| round >= n) {
            return ok;
        }
        tokio::time::sleep(interval).await;
    }
}
