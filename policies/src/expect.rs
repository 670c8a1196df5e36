//! Comparing a computed matrix with an expected one (`policy check
//! --expect FILE`): every row must be there, with the same verdicts, and
//! no row may appear that the file does not list. Reasons are not compared,
//! so rewording an explanation does not break the check; changing a rule's
//! effect does.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use thiserror::Error;

use crate::matrix::{Row, Verdict};

/// Why an expectation file could not be used.
#[derive(Debug, Error)]
pub enum ExpectError {
    /// The file could not be read.
    #[error("cannot read the expected matrix {path}: {source}")]
    Read {
        /// The file, as given.
        path: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not a list of rows (bad YAML/JSON, a missing or ill-typed field).
    #[error("{path}: {field}: {message}")]
    Parse {
        /// The file, as given.
        path: String,
        /// Path to the offending field, e.g. `[3].verdict`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// Two rows share the same source, destination and port.
    #[error("{path}: row {src} → {dst}:{port} is listed twice")]
    Duplicate {
        /// The file, as given.
        path: String,
        /// Source of the repeated row.
        src: String,
        /// Destination of the repeated row.
        dst: String,
        /// Port of the repeated row.
        port: u16,
    },
}

/// One expected row (YAML or JSON; extra fields such as `reasons` are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ExpectedRow {
    /// The client: a workload or outside client, by name.
    pub src: String,
    /// The destination: a workload or external host, by name.
    pub dst: String,
    /// The port the client dials.
    pub port: u16,
    /// Expected Cilium verdict (egress and ingress together).
    pub cilium: Verdict,
    /// Expected Istio verdict at the receiving side.
    pub istio: Verdict,
    /// Expected overall verdict: allow only if both layers allow.
    pub verdict: Verdict,
}

type Key = (String, String, u16);

/// Reads an expectation file: a YAML (or JSON) list of rows.
pub fn load_expected(path: &Path) -> Result<Vec<ExpectedRow>, ExpectError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ExpectError::Read {
        path: shown.clone(),
        source,
    })?;
    parse_expected(&text, &shown)
}

/// Parses an expectation from text; `path` only names it in errors. Refuses duplicate rows.
pub fn parse_expected(text: &str, path: &str) -> Result<Vec<ExpectedRow>, ExpectError> {
    let de = serde_yaml::Deserializer::from_str(text);
    let rows: Vec<ExpectedRow> =
        serde_path_to_error::deserialize(de).map_err(|e| ExpectError::Parse {
            path: path.into(),
            field: e.path().to_string(),
            message: e.into_inner().to_string(),
        })?;
    let mut seen = BTreeMap::new();
    for r in &rows {
        let key: Key = (r.src.clone(), r.dst.clone(), r.port);
        if seen.insert(key, ()).is_some() {
            return Err(ExpectError::Duplicate {
                path: path.into(),
                src: r.src.clone(),
                dst: r.dst.clone(),
                port: r.port,
            });
        }
    }
    Ok(rows)
}

/// Every difference, one sentence each; empty when the matrices agree.
pub fn differences(actual: &[Row], expected: &[ExpectedRow]) -> Vec<String> {
    let key = |src: &str, dst: &str, port: u16| -> Key { (src.into(), dst.into(), port) };
    let actual_by: BTreeMap<Key, &Row> = actual
        .iter()
        .map(|r| (key(&r.src, &r.dst, r.port), r))
        .collect();
    let mut out = Vec::new();
    for e in expected {
        let name = format!("{} → {}:{}", e.src, e.dst, e.port);
        let Some(r) = actual_by.get(&key(&e.src, &e.dst, e.port)) else {
            out.push(format!(
                "{name}: expected, but the lab has no such connection"
            ));
            continue;
        };
        for (layer, want, got) in [
            ("cilium", e.cilium, r.cilium),
            ("istio", e.istio, r.istio),
            ("verdict", e.verdict, r.verdict),
        ] {
            if want != got {
                let why = r
                    .checks
                    .iter()
                    .filter(|c| layer == "verdict" || c.layer.starts_with(layer))
                    .map(|c| format!("{}: {}", c.layer, c.reason))
                    .collect::<Vec<_>>()
                    .join("; ");
                out.push(format!(
                    "{name}: {layer} expected {}, got {} — {why}",
                    want.as_str(),
                    got.as_str()
                ));
            }
        }
    }
    let expected_keys: Vec<Key> = expected
        .iter()
        .map(|e| key(&e.src, &e.dst, e.port))
        .collect();
    for r in actual {
        if !expected_keys.contains(&key(&r.src, &r.dst, r.port)) {
            out.push(format!(
                "{} → {}:{}: not in the expected matrix (it says {}); add it",
                r.src,
                r.dst,
                r.port,
                r.verdict.as_str()
            ));
        }
    }
    out
}
