//! Group commit of the embedded store through its write-ahead log (see "Durability" in the parent module's docs).
//!
//! - [`Tx`]: a redb write transaction that records every put and delete it makes (the group's effects).
//! - [`commit_jobs`]: applies a group of queued jobs in one `Tx` committed with `Durability::None`, after appending
//!   their effects to the log and syncing it; a group that does not fit in the rest of the lap is a checkpoint instead.
//! - [`commit_checkpoint`]: one `Durability::Immediate` commit that also stores the next lap's epoch, then the log
//!   restarts.
//! - [`replay`]: at open, the current lap's valid records are applied again (idempotent row-level puts and deletes).

use std::cell::RefCell;

use redb::{Database, Durability, ReadableDatabase, TableDefinition, TableError, WriteTransaction};

use super::wal::{self, Effects, Op, Wal};
use super::{data_def, db_err};
use crate::orm::backend::{BackendError, BackendResult};

/// Table holding the log's current lap (its epoch), written only by checkpoints.
const WAL_TABLE: TableDefinition<'static, &str, u64> = TableDefinition::new("__shardcast_wal");
const WAL_EPOCH_KEY: &str = "epoch";

/// A write transaction that logs what it writes. Every write of a job goes through [`Tx::put`] and [`Tx::delete`], so
/// the record appended to the log holds all of it; reads may use the transaction directly ([`Tx::txn`]).
pub(super) struct Tx {
    txn: WriteTransaction,
    effects: RefCell<Effects>,
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("ops", &self.effects.borrow().ops())
            .finish()
    }
}

impl Tx {
    /// Begins a transaction with `durability`.
    pub(super) fn begin(db: &Database, durability: Durability) -> BackendResult<Self> {
        let mut txn = db.begin_write().map_err(db_err)?;
        txn.set_durability(durability).map_err(db_err)?;
        Ok(Self {
            txn,
            effects: RefCell::new(Effects::default()),
        })
    }

    /// The transaction, for reads (a write made through it directly would not be logged).
    pub(super) fn txn(&self) -> &WriteTransaction {
        &self.txn
    }

    /// `table[key] = value`, logged.
    pub(super) fn put(&self, table: &str, key: &[u8], value: &[u8]) -> BackendResult<()> {
        let mut t = self.txn.open_table(data_def(table)).map_err(db_err)?;
        t.insert(key, value).map_err(db_err)?;
        self.effects.borrow_mut().put(table, key, value);
        Ok(())
    }

    /// Removes `table[key]`; logged when there was something to remove.
    pub(super) fn delete(&self, table: &str, key: &[u8]) -> BackendResult<()> {
        let mut t = self.txn.open_table(data_def(table)).map_err(db_err)?;
        if t.remove(key).map_err(db_err)?.is_some() {
            self.effects.borrow_mut().delete(table, key);
        }
        Ok(())
    }

    /// The transaction, to commit it as a checkpoint (what it wrote is then durable in redb, not logged).
    pub(super) fn into_txn(self) -> WriteTransaction {
        self.txn
    }

    pub(super) fn abort(self) {
        let _ = self.txn.abort();
    }
}

/// One queued write: applied inside the shared transaction (possibly twice, see "Durability" in the parent module),
/// then answered once with the outcome of the commit.
pub(super) trait WriteJob: Send {
    /// Applies the write to `tx`; on `Err`, the caller aborts `tx` (the job may have written part of its rows).
    fn apply(&mut self, tx: &Tx) -> BackendResult<()>;
    /// Answers the writer: `Ok` once the group that holds the write is durable.
    fn finish(self: Box<Self>, outcome: BackendResult<()>);
}

pub(super) struct Job<T, F> {
    pub(super) f: F,
    pub(super) out: Option<T>,
    pub(super) answer: tokio::sync::oneshot::Sender<BackendResult<T>>,
}

impl<T, F> WriteJob for Job<T, F>
where
    T: Send,
    F: FnMut(&Tx) -> BackendResult<T> + Send,
{
    fn apply(&mut self, tx: &Tx) -> BackendResult<()> {
        self.out = Some((self.f)(tx)?);
        Ok(())
    }

    fn finish(self: Box<Self>, outcome: BackendResult<()>) {
        let Job { out, answer, .. } = *self;
        let r = outcome.and_then(|()| {
            out.ok_or_else(|| {
                BackendError::Database("embedded store: a write job was answered unapplied".into())
            })
        });
        // The writer may have given up (timeout, shutdown); its answer is then dropped.
        let _ = answer.send(r);
    }
}

/// What a group commit did (for the commit-path counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Nothing to make durable (no job wrote anything), or it failed.
    Nothing,
    /// One record appended and synced.
    Logged,
    /// A durable redb commit that restarted the log.
    Checkpoint,
}

/// Applies `jobs` in one transaction, makes it durable (one log append + sync, or a checkpoint), then answers them.
/// A failing job is answered alone: the transaction is aborted and the jobs before it are applied again and committed.
pub(super) fn commit_jobs(
    db: &Database,
    wal: &mut Wal,
    jobs: Vec<Box<dyn WriteJob>>,
) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    let mut done: Vec<Box<dyn WriteJob>> = Vec::with_capacity(jobs.len());
    let mut tx = None;
    for mut job in jobs {
        let t = match tx.take() {
            Some(t) => t,
            None => match Tx::begin(db, Durability::None) {
                Ok(t) => t,
                Err(e) => {
                    job.finish(Err(e));
                    continue;
                }
            },
        };
        match job.apply(&t) {
            Ok(()) => {
                done.push(job);
                tx = Some(t);
            }
            Err(e) => {
                // Drop the failed job's partial writes with the transaction, answer it, and make the jobs before it
                // durable on their own (each job is applied at most twice). Nothing of the failed job is logged.
                t.abort();
                job.finish(Err(e));
                if !done.is_empty() {
                    outcomes.push(reapply_and_commit(db, wal, std::mem::take(&mut done)));
                }
            }
        }
    }
    if let Some(t) = tx {
        let (outcome, result) = make_durable(t, wal);
        outcomes.push(outcome);
        answer_all(done, result);
    }
    outcomes
}

fn reapply_and_commit(db: &Database, wal: &mut Wal, mut jobs: Vec<Box<dyn WriteJob>>) -> Outcome {
    let applied = Tx::begin(db, Durability::None).and_then(|t| {
        for job in &mut jobs {
            if let Err(e) = job.apply(&t) {
                t.abort();
                return Err(e);
            }
        }
        Ok(t)
    });
    let (outcome, result) = match applied {
        Ok(t) => make_durable(t, wal),
        Err(e) => (Outcome::Nothing, Err(e)),
    };
    answer_all(jobs, result);
    outcome
}

fn answer_all(jobs: Vec<Box<dyn WriteJob>>, outcome: BackendResult<()>) {
    for job in jobs {
        job.finish(outcome.clone());
    }
}

/// Makes the group in `tx` durable: its effects are appended to the log and synced, then `tx` is committed without a
/// sync (so no reader sees a write before it is durable). A group too large for the rest of the lap, or one whose
/// append failed, is committed durably in redb as a checkpoint instead.
fn make_durable(tx: Tx, wal: &mut Wal) -> (Outcome, BackendResult<()>) {
    let Tx { txn, effects } = tx;
    let effects = effects.into_inner();
    if effects.ops() == 0 {
        // Nothing written (an insert of an existing key, a patch of an absent row): nothing to make durable.
        return (Outcome::Nothing, txn.commit().map_err(db_err));
    }
    if wal.fits(effects.bytes().len()) {
        match wal.append(effects.bytes()) {
            Ok(()) => {
                return match txn.commit() {
                    Ok(()) => (Outcome::Logged, Ok(())),
                    Err(e) => {
                        // Not applied, so it must not come back at replay.
                        if let Err(re) = wal.retract() {
                            tracing::error!(error = %re, path = %wal.path().display(), "embedded store: cannot take back a log record whose commit failed");
                        }
                        (Outcome::Nothing, Err(db_err(e)))
                    }
                };
            }
            Err(e) => {
                tracing::warn!(error = %e, path = %wal.path().display(), "embedded store: appending to the write-ahead log failed; committing the group durably in redb instead");
            }
        }
    }
    match commit_checkpoint(txn, wal) {
        Ok(()) => (Outcome::Checkpoint, Ok(())),
        Err(e) => (Outcome::Nothing, Err(e)),
    }
}

/// Commits `txn` with `Durability::Immediate`, storing in it the next lap's epoch, then restarts the log at that
/// epoch: every record of the lap that ends is in the durable store, and from then on stale.
pub(super) fn commit_checkpoint(mut txn: WriteTransaction, wal: &mut Wal) -> BackendResult<()> {
    let next = wal.epoch().wrapping_add(1);
    {
        let mut t = txn.open_table(WAL_TABLE).map_err(db_err)?;
        t.insert(WAL_EPOCH_KEY, next).map_err(db_err)?;
    }
    txn.set_durability(Durability::Immediate).map_err(db_err)?;
    txn.commit().map_err(db_err)?;
    wal.restart(next);
    Ok(())
}

/// A checkpoint with nothing else in it (shutdown, tests).
pub(super) fn checkpoint(db: &Database, wal: &mut Wal) -> BackendResult<()> {
    let txn = db.begin_write().map_err(db_err)?;
    commit_checkpoint(txn, wal)
}

/// The durable store's current lap, `None` for a store that never had one.
pub(super) fn stored_epoch(db: &Database) -> BackendResult<Option<u64>> {
    let txn = db.begin_read().map_err(db_err)?;
    let t = match txn.open_table(WAL_TABLE) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(db_err(e)),
    };
    Ok(t.get(WAL_EPOCH_KEY).map_err(db_err)?.map(|v| v.value()))
}

/// Applies the operations of one record payload to `txn` (idempotent: a put or delete of a whole row).
pub(super) fn apply_record(txn: &WriteTransaction, payload: &[u8]) -> BackendResult<()> {
    let ops = wal::decode(payload).map_err(|e| BackendError::Data(e.to_string()))?;
    for op in ops {
        match op {
            Op::Put { table, key, value } => {
                let mut t = txn.open_table(data_def(table)).map_err(db_err)?;
                t.insert(key, value).map_err(db_err)?;
            }
            Op::Delete { table, key } => {
                let mut t = txn.open_table(data_def(table)).map_err(db_err)?;
                t.remove(key).map_err(db_err)?;
            }
        }
    }
    Ok(())
}

/// Opens the store's log: replays the current lap's valid records into `db` and checkpoints (a new lap starts).
/// Returns the log and how many records were replayed.
pub(super) fn open_log(
    db: &Database,
    wal_path: &std::path::Path,
    bytes: u64,
) -> BackendResult<(Wal, usize)> {
    let (mut wal, content) = Wal::open(wal_path, bytes).map_err(|e| {
        BackendError::Unavailable(format!(
            "cannot open the write-ahead log {}: {e}",
            wal_path.display()
        ))
    })?;
    let epoch = stored_epoch(db)?;
    let txn = db.begin_write().map_err(db_err)?;
    let replayed = match epoch {
        Some(epoch) => {
            let records = wal::scan(&content, epoch);
            for payload in &records {
                apply_record(&txn, payload)?;
            }
            wal.restart(epoch);
            records.len()
        }
        None => {
            // A store without a lap yet: start at a random epoch, so a log left by another store of the same path
            // never matches.
            wal.restart(rand::random::<u64>() >> 1);
            0
        }
    };
    commit_checkpoint(txn, &mut wal)?;
    if replayed > 0 {
        tracing::info!(records = replayed, path = %wal_path.display(), "embedded store: replayed the write-ahead log");
    }
    Ok((wal, replayed))
}
