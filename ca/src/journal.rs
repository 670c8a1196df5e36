//! The CA's journal of what it issued: one JSON line per certificate
//! (serial, identity, validity), so that `ca revoke --identity` can find
//! every certificate a workload still holds. A CRL lists serials, and a
//! workload renews every 12 h, so "revoke this workload" means "revoke
//! every serial issued to it that has not expired yet" — which only the
//! issuer can know.
//!
//! The journal is append-only while the CA runs; at start the CA keeps only
//! the entries still valid, so it does not grow past one renewal cycle of
//! the mesh. A certificate the CA cannot record is not handed out: a
//! certificate nobody can find is one nobody can revoke.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::revocation::{parse_serial, serial_text};

/// Why the journal could not be used.
#[derive(Debug, Error)]
pub enum JournalError {
    /// The file could not be read, written or replaced.
    #[error("the issuance journal {path}: {source}")]
    File {
        /// The journal.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line is not an entry.
    #[error("the issuance journal {path}, line {line}: {reason}")]
    Line {
        /// The journal.
        path: PathBuf,
        /// Its number, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// One issued certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its serial, hex pairs joined by colons (as `ca inspect` prints it).
    pub serial: String,
    /// The SPIFFE ID it was issued for.
    pub identity: String,
    /// Valid from, seconds since the Unix epoch.
    pub not_before: u64,
    /// Valid until, seconds since the Unix epoch.
    pub not_after: u64,
}

impl Entry {
    /// The entry for a certificate with `serial` for `identity`, valid over
    /// `not_before..not_after`.
    pub fn new(
        serial: &[u8],
        identity: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Self {
        Entry {
            serial: serial_text(serial),
            identity: identity.to_string(),
            not_before: unix(not_before),
            not_after: unix(not_after),
        }
    }

    /// Whether the certificate is still valid at `now`.
    pub fn valid_at(&self, now: SystemTime) -> bool {
        unix(now) < self.not_after
    }

    /// Its serial as bytes.
    pub fn serial_bytes(&self) -> Vec<u8> {
        parse_serial(&self.serial).unwrap_or_default()
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// Every entry of the journal at `path` (none if it does not exist).
pub fn read(path: &Path) -> Result<Vec<Entry>, JournalError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(JournalError::File {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            let entry: Entry = serde_json::from_str(line).map_err(|e| JournalError::Line {
                path: path.to_path_buf(),
                line: i + 1,
                reason: e.to_string(),
            })?;
            parse_serial(&entry.serial).map_err(|e| JournalError::Line {
                path: path.to_path_buf(),
                line: i + 1,
                reason: e.to_string(),
            })?;
            Ok(entry)
        })
        .collect()
}

/// The entries for `identity` still valid at `now`.
pub fn valid_for(entries: &[Entry], identity: &str, now: SystemTime) -> Vec<Entry> {
    entries
        .iter()
        .filter(|e| e.identity == identity && e.valid_at(now))
        .cloned()
        .collect()
}

/// The journal a running CA appends to.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: Mutex<File>,
}

impl Journal {
    /// Opens the journal at `path`, first keeping only the entries valid
    /// at `now` (the file is replaced whole), then appending.
    pub fn open(path: &Path, now: SystemTime) -> Result<Journal, JournalError> {
        let file_error = |source| JournalError::File {
            path: path.to_path_buf(),
            source,
        };
        let kept: Vec<Entry> = read(path)?
            .into_iter()
            .filter(|e| e.valid_at(now))
            .collect();
        let mut text = String::new();
        for entry in &kept {
            text.push_str(&serde_json::to_string(entry).expect("an entry serializes"));
            text.push('\n');
        }
        let partial = path.with_extension("partial");
        std::fs::write(&partial, text).map_err(file_error)?;
        std::fs::rename(&partial, path).map_err(file_error)?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(file_error)?;
        Ok(Journal {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// Records `entry` (one line, written whole and flushed to the file).
    pub fn record(&self, entry: &Entry) -> Result<(), JournalError> {
        let mut line = serde_json::to_string(entry).expect("an entry serializes");
        line.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(line.as_bytes())
            .and_then(|()| file.flush())
            .map_err(|source| JournalError::File {
                path: self.path.clone(),
                source,
            })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn the_journal_keeps_what_is_valid_and_finds_an_identitys_serials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("issued.jsonl");
        let now = SystemTime::now();
        let journal = Journal::open(&path, now).unwrap();
        let a = "spiffe://cluster.local/ns/demo/sa/a";
        journal
            .record(&Entry::new(&[0x0a, 0xff], a, now - 2 * HOUR, now - HOUR))
            .unwrap();
        journal
            .record(&Entry::new(&[0x01], a, now, now + HOUR))
            .unwrap();
        journal
            .record(&Entry::new(
                &[0x02],
                "spiffe://cluster.local/ns/demo/sa/b",
                now,
                now + HOUR,
            ))
            .unwrap();
        drop(journal);

        let entries = read(&path).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].serial, "0a:ff");
        // Only a's certificate still valid is found.
        let valid = valid_for(&entries, a, now);
        assert_eq!(valid.len(), 1);
        assert_eq!(valid[0].serial_bytes(), vec![0x01]);

        // Reopened, the expired entry is gone and appending goes on.
        let journal = Journal::open(&path, now).unwrap();
        journal
            .record(&Entry::new(&[0x03], a, now, now + HOUR))
            .unwrap();
        let entries = read(&path).unwrap();
        assert_eq!(
            entries
                .iter()
                .map(|e| e.serial.as_str())
                .collect::<Vec<_>>(),
            ["01", "02", "03"]
        );
    }

    #[test]
    fn a_broken_line_is_named_by_file_and_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("issued.jsonl");
        std::fs::write(
            &path,
            "{\"serial\":\"01\",\"identity\":\"x\",\"not_before\":0,\"not_after\":1}\n\n{\"serial\":\"zz\",\"identity\":\"x\",\"not_before\":0,\"not_after\":1}\n",
        )
        .unwrap();
        let error = read(&path).unwrap_err().to_string();
        assert!(error.contains("issued.jsonl, line 3"), "{error}");
        assert!(read(&dir.path().join("none.jsonl")).unwrap().is_empty());
    }
}
