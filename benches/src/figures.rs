//! What a benchmark run measured: each measurement, and the medians with
//! their ratios. Kept apart from the runner that makes them, so the
//! modules that read them (the report, the scaling curves) do not depend on
//! how they are made.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One measurement: subject × scenario × repetition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// Who was measured.
    pub subject: String,
    /// Which scenario.
    pub scenario: String,
    /// Which repetition, from 0.
    pub repetition: usize,
    /// The figures by name (`gbit_per_s`, `p99_ms`, …).
    pub figures: BTreeMap<String, f64>,
}

/// The medians of one subject × scenario, with ratios against direct and ztunnel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Who was measured.
    pub subject: String,
    /// Which scenario.
    pub scenario: String,
    #[serde(flatten)]
    /// The median of each figure.
    pub figures: BTreeMap<String, f64>,
    /// Each figure ÷ direct's.
    pub ratio_vs_direct: BTreeMap<String, f64>,
    /// Each figure ÷ ztunnel's, when ztunnel ran.
    pub ratio_vs_ztunnel: BTreeMap<String, f64>,
}

/// The middle value (the mean of the two middle ones for an even count).
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}
