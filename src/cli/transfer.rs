//! Copying a whole store — rows, ledger, session starts and the audit chain, all verbatim —
//! from one engine to another: what `migrate` does, and `backup` / `restore` on PostgreSQL.
//!
//! The source streams from one snapshot ([`Store::copy_out`]); a writer thread takes batches of
//! [`BATCH`] rows into the target, each in one transaction, so reading and writing overlap and
//! memory holds a few batches at most. Every row's seal is checked on the way (a row that fails
//! stops the copy, named by id), and events enter only where they continue the target's chain.
//! A copy resumes where the target stands: the target's chain must be a prefix of the source's
//! (its tail is checked against the source's event at that seq), and rows continue after the
//! target's newest.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use anyhow::{Context, bail};

use crate::audit::copy::{FileCopy, each_file_event};
use crate::audit::{Head, LinkedEvent};
use crate::error::Error;
use crate::keys::Keyring;
use crate::pgconn::DatabaseSettings;
use crate::store::Store;
use crate::store::ledger::Record;
use crate::store::rows::{Checked, RawRow};
use crate::store::transfer::{Batch, CopySink, Digest, Resume, SessionStart};

/// Where a side's audit chain lives.
pub(crate) enum Chain {
    /// audit.db at this path.
    File(PathBuf),
    /// `audit.events` in the store's own database.
    Postgres(Box<DatabaseSettings>),
}

/// One end of a copy: the store and its chain.
pub(crate) struct Side {
    /// `sqlite` or `postgres`.
    pub engine: &'static str,
    /// The rows.
    pub store: Store,
    /// The events.
    pub chain: Chain,
}

impl Side {
    /// The chain's tail event, if any.
    pub(crate) fn tail(&self) -> anyhow::Result<Option<LinkedEvent>> {
        Ok(match &self.chain {
            Chain::File(path) => FileCopy::open(path)?.last()?,
            Chain::Postgres(_) => self.store.copied()?.last_event,
        })
    }

    /// The chain's head, read now.
    pub(crate) fn head(&self) -> anyhow::Result<Head> {
        Ok(match self.tail()? {
            Some(e) => e.head(),
            None => Head {
                seq: 0,
                hash: hex::encode([0u8; 32]),
            },
        })
    }

    /// Checks the whole side: every seal and ledger record (summed up to compare with the other
    /// side) and the chain with the audit keys. Returns the digest and the chain's head.
    pub(crate) fn verify(&self, keyring: &Keyring) -> anyhow::Result<(Digest, Head)> {
        let digest = self.store.digest()?;
        let copy;
        let path = match &self.chain {
            Chain::File(path) => path.as_path(),
            Chain::Postgres(settings) => {
                copy = super::db::ChainCopy::export(settings)?;
                copy.path()
            }
        };
        let report =
            crate::audit::AuditReader::open(path)?.verify(&crate::audit::verify::Checks {
                keys: Some(&keyring.audit),
                ..crate::audit::verify::Checks::default()
            })?;
        if let Some(damage) = report.damage {
            bail!("{} audit chain: {damage}", self.engine);
        }
        Ok((digest, report.head))
    }
}

/// What a copy moved.
#[derive(Debug, Default, Clone)]
pub(crate) struct Moved {
    /// Events.
    pub events: u64,
    /// Entries.
    pub entries: u64,
    /// Ledger records.
    pub ledger: u64,
    /// Session starts.
    pub session_starts: u64,
    /// The last event the source handed over (its head, when the copy is whole).
    pub last_event: Option<LinkedEvent>,
    /// Events the source holds after `expect` that were not copied (`check_only`).
    pub later_events: Vec<LinkedEvent>,
    /// A check stopped at [`Plan::stop_at`]: the source holds that event too.
    pub stopped: bool,
}

/// How a copy starts.
pub(crate) struct Plan {
    /// Where the source resumes.
    pub from: Resume,
    /// The source's event at `expect.seq` must be this one (the target's tail, or the head a
    /// finished copy started from); `None` for an empty target.
    pub expect: Option<Head>,
    /// Only compare: nothing is written (a finished copy, checked again).
    pub check_only: bool,
    /// With `check_only`: stop (see [`Moved::stopped`]) at the source's event with this head.
    pub stop_at: Option<Head>,
}

impl Plan {
    /// The plan for copying into `target`: fresh when it holds nothing, else resuming after
    /// what it holds. Refuses a target that holds rows but no chain.
    pub(crate) fn for_target(source: &Side, target: &Side) -> anyhow::Result<Self> {
        let copied = target.store.copied()?;
        let tail = target.tail()?;
        if tail.is_none() && (copied.entries > 0 || copied.ledger_seq > 0) {
            bail!("refusing: the target holds entries but no audit chain; give an empty target");
        }
        let events_from = tail.as_ref().map_or(1, |t| t.seq);
        Ok(Self {
            from: Resume {
                after_entry: copied.last_entry,
                after_ledger: copied.ledger_seq,
                session_starts: copied.session_starts == 0,
                events_from: matches!(source.chain, Chain::Postgres(_)).then_some(events_from),
            },
            expect: tail.map(|t| t.head()),
            check_only: false,
            stop_at: None,
        })
    }
}

/// The reading side: checks, batches and hands batches to the writer thread.
struct Mover<'a> {
    source: &'a Store,
    expect: Option<Head>,
    check_only: bool,
    stop_at: Option<Head>,
    batch: Batch,
    out: SyncSender<Batch>,
    moved: Moved,
    failure: Option<anyhow::Error>,
    progress: &'a indicatif::ProgressBar,
}

impl Mover<'_> {
    fn fail(&mut self, e: anyhow::Error) -> Error {
        self.failure = Some(e);
        Error::Unavailable("the copy stopped".into())
    }

    /// Sends the batch when it is full (or `now`).
    fn flush(&mut self, now: bool) -> crate::error::Result<()> {
        if self.batch.is_empty() || !(now || self.batch.is_full()) {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let rows = (batch.entries.len() + batch.events.len()) as u64;
        if self.out.send(batch).is_err() {
            // The writer stopped; its error is the one reported.
            return Err(Error::Unavailable("the target stopped taking rows".into()));
        }
        self.progress.inc(rows);
        Ok(())
    }

    /// Whether the target's tail has been matched (or there was none to match).
    fn check_expected(&mut self) -> crate::error::Result<()> {
        match self.expect.take() {
            None => Ok(()),
            Some(h) => Err(self.fail(anyhow::anyhow!(
                "refusing: the target is not empty, and its audit chain (head {h}) is not a \
                 prefix of the source's; give an empty target"
            ))),
        }
    }

    fn refuse_change(&mut self, what: &str) -> Error {
        self.fail(anyhow::anyhow!(
            "the source holds {what} the finished copy does not: it was written after the \
             migration; stop every server on it and migrate again into an empty target"
        ))
    }
}

impl CopySink for Mover<'_> {
    fn event(&mut self, event: LinkedEvent) -> crate::error::Result<()> {
        if let Some(h) = self.expect.take() {
            if event.seq != h.seq || event.hash != h.hash {
                self.expect = Some(h);
                return self.check_expected();
            }
            return Ok(());
        }
        if self.check_only && self.stop_at.as_ref() == Some(&event.head()) {
            self.moved.stopped = true;
            return Err(Error::Unavailable("the check is done".into()));
        }
        if self.check_only {
            // Two tell "only its migrate_out" from "written since"; more are not kept.
            if self.moved.later_events.len() < 2 {
                self.moved.later_events.push(event);
            }
            return Ok(());
        }
        self.moved.events += 1;
        self.moved.last_event = Some(event.clone());
        self.batch.events.push(event);
        self.flush(false)
    }

    fn entry(&mut self, row: Checked<RawRow>) -> crate::error::Result<()> {
        self.check_expected()?;
        let row =
            match row {
                Ok(row) if self.source.seal_holds(&row) => row,
                Ok(row) => return Err(self.fail(anyhow::anyhow!(
                    "refusing: entry {} does not verify with this keyring; nothing after it was \
                 copied (run `memwarden verify` on the source)",
                    row.id
                ))),
                Err(label) => {
                    return Err(self.fail(anyhow::anyhow!("refusing: row {label} cannot be read")));
                }
            };
        if self.check_only {
            return Err(self.refuse_change("entries"));
        }
        self.moved.entries += 1;
        self.batch.entries.push(row);
        self.flush(false)
    }

    fn ledger(&mut self, record: Record) -> crate::error::Result<()> {
        self.check_expected()?;
        if self.check_only {
            return Err(self.refuse_change("ledger records"));
        }
        self.moved.ledger += 1;
        self.batch.ledger.push(record);
        self.flush(false)
    }

    fn session_start(&mut self, start: SessionStart) -> crate::error::Result<()> {
        self.check_expected()?;
        if self.check_only {
            return Ok(());
        }
        self.moved.session_starts += 1;
        self.batch.session_starts.push(start);
        self.flush(false)
    }
}

/// The writing side: each batch into the target, events into its audit.db (SQLite) or with
/// the rows (PostgreSQL).
fn write_all(target: &mut Side, batches: Receiver<Batch>) -> anyhow::Result<()> {
    let mut file = match &target.chain {
        Chain::File(path) => Some(FileCopy::open(path)?),
        Chain::Postgres(_) => None,
    };
    for mut batch in batches {
        if let Some(file) = &mut file
            && !batch.events.is_empty()
        {
            file.append(&batch.events)
                .context("writing events into the target's audit.db")?;
            batch.events.clear();
        }
        if !batch.is_empty() {
            target
                .store
                .copy_in(&batch)
                .context("writing into the target")?;
        }
    }
    Ok(())
}

/// Copies what `plan` says from `source` into `target`, showing `progress`.
pub(crate) fn copy(
    source: &Side,
    target: &mut Side,
    plan: Plan,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<Moved> {
    let (out, batches) = sync_channel::<Batch>(2);
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| write_all(target, batches));
        let mut mover = Mover {
            source: &source.store,
            expect: plan.expect,
            check_only: plan.check_only,
            stop_at: plan.stop_at,
            batch: Batch::default(),
            out,
            moved: Moved::default(),
            failure: None,
            progress,
        };
        let read = read_all(source, &plan.from, &mut mover);
        let read = read.and_then(|()| {
            mover.check_expected()?;
            mover.flush(true)
        });
        let Mover {
            moved,
            failure,
            out,
            ..
        } = mover;
        drop(out);
        let written = writer
            .join()
            .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
        if let Some(e) = failure {
            return Err(e);
        }
        written?;
        if !moved.stopped {
            read?;
        }
        Ok(moved)
    })
}

/// Events first (from audit.db, or with the rows from PostgreSQL), then the store.
fn read_all(source: &Side, from: &Resume, mover: &mut Mover<'_>) -> crate::error::Result<()> {
    if let Chain::File(path) = &source.chain {
        let events_from = mover.expect.as_ref().map_or(1, |h| h.seq);
        let mut failed = None;
        each_file_event(path, events_from, &mut |e| match mover.event(e) {
            Ok(()) => true,
            Err(e) => {
                failed = Some(e);
                false
            }
        })
        .map_err(|e| Error::Unavailable(format!("reading the source's audit.db: {e}")))?;
        if let Some(e) = failed {
            return Err(e);
        }
    }
    source.store.copy_out(from, mover)
}

/// A progress bar on stderr when stderr is a terminal, hidden otherwise.
pub(crate) fn progress(total: u64, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:40}] {pos}/{len} rows and events ({per_sec}, {eta} left)",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}
