//! The witness's rule: a new checkpoint is accepted only if it extends the one kept — same log,
//! no smaller seq, the same hash at the same seq. Pure: the caller reads, checks the history
//! between the two in the log when it can, and writes the state file.

use super::checkpoint::Checkpoint;

/// What the witness does with a new checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acceptance {
    /// Nothing kept yet: keep this one.
    First,
    /// The same checkpoint as the one kept (same seq and hash).
    Same,
    /// A larger seq of the same log: keep it (once the history between them is checked).
    Extends { from: u64 },
}

/// Why the witness refused a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the checkpoint is of log {new}, the kept one of log {kept}")]
    OtherLog { kept: String, new: String },
    #[error(
        "rollback: the checkpoint signs seq {new}, older than the kept seq {kept} (an older copy \
         of the log, or a cut tail)"
    )]
    Rollback { kept: u64, new: u64 },
    #[error(
        "fork: the checkpoint signs seq {seq} with another hash than the kept one: the log's \
         history was rewritten"
    )]
    Fork { seq: u64 },
}

/// Decides on `new` given the `kept` checkpoint.
pub fn decide(kept: Option<&Checkpoint>, new: &Checkpoint) -> Result<Acceptance, Rejection> {
    let Some(kept) = kept else {
        return Ok(Acceptance::First);
    };
    if kept.origin != new.origin {
        return Err(Rejection::OtherLog {
            kept: kept.origin.clone(),
            new: new.origin.clone(),
        });
    }
    if new.size < kept.size {
        return Err(Rejection::Rollback {
            kept: kept.size,
            new: new.size,
        });
    }
    if new.size == kept.size {
        return if new.hash == kept.hash {
            Ok(Acceptance::Same)
        } else {
            Err(Rejection::Fork { seq: new.size })
        };
    }
    Ok(Acceptance::Extends { from: kept.size })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(origin: &str, size: u64, hash: u8) -> Checkpoint {
        Checkpoint {
            origin: origin.into(),
            size,
            hash: [hash; 32],
            time: None,
        }
    }

    #[test]
    fn extends_only() {
        let kept = cp("a", 10, 1);
        assert_eq!(decide(None, &kept), Ok(Acceptance::First));
        assert_eq!(decide(Some(&kept), &cp("a", 10, 1)), Ok(Acceptance::Same));
        assert_eq!(
            decide(Some(&kept), &cp("a", 11, 2)),
            Ok(Acceptance::Extends { from: 10 })
        );
        assert!(matches!(
            decide(Some(&kept), &cp("a", 10, 2)),
            Err(Rejection::Fork { seq: 10 })
        ));
        assert!(matches!(
            decide(Some(&kept), &cp("a", 9, 1)),
            Err(Rejection::Rollback { .. })
        ));
        assert!(matches!(
            decide(Some(&kept), &cp("b", 11, 1)),
            Err(Rejection::OtherLog { .. })
        ));
    }
}
