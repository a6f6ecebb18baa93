//! Every statement of the store, written once for all backends. A [`Dialect`] renders the
//! few parts that differ; [`Statements::new`] does it once per store.
//!
//! The rules that carry the invariants are here and nowhere else:
//!
//! - [`FENCE`] (I4): a write about an attempt matches its row only while that attempt,
//!   under that lease owner, is the current one. A zombie's write matches nothing.
//! - [`RECORDED`] (I3): a finalize applies only an outcome that is already in the log.
//! - [`REAPABLE`] (I3): the Reaper takes back only an expired lease with no recorded
//!   outcome; a recorded outcome is the Finalizer's.
//! - Every write appends its log entries in the same transaction (I6), and a lifecycle
//!   step that records an outcome appends it before the entry that applies it.

use oncely::WalKind;

use crate::dialect::{Column, Dialect, Ty, column};

/// I4: the attempt's fence. `t` is the batch row, `o` the operation.
pub(crate) const FENCE: &str = "o.id = t.id AND o.state = 'PROCESSING' \
     AND o.attempt_count = t.attempt AND o.lease_owner = t.owner";

/// I3, WAL first: the attempt's outcome is in the log.
pub(crate) const RECORDED: &str = "o.recorded_attempt = o.attempt_count";

/// I3, for the Reaper: the lease has ended and the attempt has no recorded outcome.
pub(crate) const REAPABLE: &str = "o.lease_until <= t.at \
     AND (o.recorded_attempt IS NULL OR o.recorded_attempt <> o.attempt_count)";

/// The operation's columns, in the order `rows::operation` reads them by name.
const OPERATION: [&str; 23] = [
    "id",
    "tenant",
    "domain",
    "idem_key",
    "event_type",
    "state",
    "payload",
    "fingerprint",
    "attempt_count",
    "attempt_floor",
    "recorded_attempt",
    "last_attempt_at",
    "next_retry_at",
    "lease_owner",
    "lease_until",
    "outcome_data",
    "error_code",
    "error_message",
    "created_at",
    "updated_at",
    "completed_at",
    "cancel_requested_at",
    "traceparent",
];

/// The operation columns kept as JSON.
const JSON_COLUMNS: [&str; 2] = ["payload", "outcome_data"];

/// An accept's batch: one row per new scope, in scope order (`ord`), written as the row
/// should be stored (`state`, `attempt`, lease) and with its log entries' details.
pub(crate) const ACCEPT: &[Column] = &[
    column("ord", Ty::Int),
    column("tenant", Ty::Name),
    column("domain", Ty::Name),
    column("idem_key", Ty::Name),
    column("event_type", Ty::Text),
    column("state", Ty::Name),
    column("payload", Ty::Text),
    column("fingerprint", Ty::Name),
    column("attempt", Ty::Int),
    column("owner", Ty::Name),
    column("lease_until", Ty::Int),
    column("last_attempt_at", Ty::Int),
    column("at", Ty::Int),
    column("accepted", Ty::Text),
    column("executing", Ty::Text),
    column("traceparent", Ty::Name),
];

/// The log entries of the operations an accept inserted: their ids, whether they were
/// leased (`attempt` 1), and the entries' details.
pub(crate) const INSERTED: &[Column] = &[
    column("id", Ty::Int),
    column("owner", Ty::Name),
    column("attempt", Ty::Int),
    column("at", Ty::Int),
    column("accepted", Ty::Text),
    column("executing", Ty::Text),
];

/// Scopes to look up.
pub(crate) const SCOPE: &[Column] = &[
    column("tenant", Ty::Name),
    column("domain", Ty::Name),
    column("idem_key", Ty::Name),
];

/// Operation ids (and, from an update, the attempt each is at).
pub(crate) const ID: &[Column] = &[column("id", Ty::Int), column("attempt", Ty::Int)];

/// A fenced write's batch: the fence, the time, the decision's columns and the details
/// of its log entries.
pub(crate) const WRITE: &[Column] = &[
    column("id", Ty::Int),
    column("attempt", Ty::Int),
    column("owner", Ty::Name),
    column("at", Ty::Int),
    column("state", Ty::Name),
    column("outcome_data", Ty::Text),
    column("error_code", Ty::Text),
    column("error_message", Ty::Text),
    column("next_retry_at", Ty::Int),
    column("completed_at", Ty::Int),
    column("recorded", Ty::Text),
    column("finalized", Ty::Text),
];

/// The log entries of a fenced write: its batch, and whether each row was changed.
pub(crate) const WRITTEN: &[Column] = &[
    column("id", Ty::Int),
    column("attempt", Ty::Int),
    column("owner", Ty::Name),
    column("at", Ty::Int),
    column("state", Ty::Name),
    column("recorded", Ty::Text),
    column("finalized", Ty::Text),
    column("applied", Ty::Int),
];

/// A claim's lease: who, until when, from when, and the `EXECUTING` entries' detail.
pub(crate) const LEASE: &[Column] = &[
    column("owner", Ty::Name),
    column("lease_until", Ty::Int),
    column("at", Ty::Int),
    column("detail", Ty::Text),
];

/// A claim's batch: the rows it took, each with the lease.
pub(crate) const CLAIM: &[Column] = &[
    column("id", Ty::Int),
    column("owner", Ty::Name),
    column("lease_until", Ty::Int),
    column("at", Ty::Int),
    column("detail", Ty::Text),
];

/// An operator's action on one operation: which, from which state, when.
pub(crate) const ACTION: &[Column] = &[
    column("id", Ty::Int),
    column("state", Ty::Name),
    column("at", Ty::Int),
];

/// An operator's cancel: the operation as it was read (`state`, `attempt`), what it
/// becomes, and when.
pub(crate) const CANCEL: &[Column] = &[
    column("id", Ty::Int),
    column("attempt", Ty::Int),
    column("at", Ty::Int),
    column("next_retry_at", Ty::Int),
    column("completed_at", Ty::Int),
    column("state", Ty::Name),
    column("to_state", Ty::Name),
];

/// Log entries written as they are given.
pub(crate) const ENTRY: &[Column] = &[
    column("n", Ty::Int),
    column("operation_id", Ty::Int),
    column("kind", Ty::Name),
    column("attempt", Ty::Int),
    column("lease_owner", Ty::Name),
    column("state_after", Ty::Name),
    column("detail", Ty::Text),
    column("recorded_at", Ty::Int),
];

const WAL_INSERT: &str = "INSERT INTO oncely_wal \
     (operation_id, kind, attempt, lease_owner, state_after, detail, recorded_at)";

const INSERT_OPERATIONS: &str = "INSERT INTO oncely_operations \
     (tenant, domain, idem_key, event_type, state, payload, fingerprint, attempt_count, \
      lease_owner, lease_until, last_attempt_at, next_retry_at, created_at, updated_at, \
      traceparent)";

/// `o` and `t` name the same scope.
/// The overview's restriction to one tenant's operations in one domain: the unique
/// index's prefix.
const SCOPED: &str = "AND o.tenant = ? AND o.domain = ?";

/// Operations by domain and state, at a cost bounded by what is live and what ended
/// lately, never by the table: the live ones (`ACCEPTED`, `PROCESSING`, from the partial
/// indexes over live states) at `?` (now, twice), then those that ended since `?` (from
/// the index on the end time). `and` restricts both parts further; its placeholders come
/// after each part's own.
fn overview(and: &str) -> String {
    // COUNT of a CASE, not SUM: the same integer type on every backend.
    format!(
        "SELECT o.domain AS domain, o.state AS state, COUNT(*) AS n, \
         COUNT(CASE WHEN o.state = 'ACCEPTED' AND o.attempt_count > o.attempt_floor \
             THEN 1 END) AS retrying, \
         COUNT(CASE WHEN o.state = 'PROCESSING' AND o.lease_until <= ? THEN 1 END) AS stuck, \
         MIN(CASE WHEN o.state = 'ACCEPTED' AND o.next_retry_at <= ? \
             THEN o.next_retry_at END) AS oldest_due, \
         COUNT(CASE WHEN o.completed_at IS NOT NULL THEN 1 END) AS ended \
         FROM oncely_operations o WHERE (o.state = 'ACCEPTED' OR o.state = 'PROCESSING') {and} \
         GROUP BY o.domain, o.state \
         UNION ALL \
         SELECT o.domain, o.state, COUNT(*), 0, 0, NULL, COUNT(*) \
         FROM oncely_operations o WHERE o.completed_at >= ? {and} \
         GROUP BY o.domain, o.state"
    )
}

/// Leases the Reaper took back since `?`, by domain; `and` restricts them further.
fn rescued(and: &str) -> String {
    format!(
        "SELECT o.domain AS domain, COUNT(*) AS n FROM oncely_wal w \
         JOIN oncely_operations o ON o.id = w.operation_id \
         WHERE w.kind = 'REAPED' AND w.recorded_at >= ? {and} GROUP BY o.domain"
    )
}

const SAME_SCOPE: &str = "o.tenant = t.tenant AND o.domain = t.domain AND o.idem_key = t.idem_key";

/// Which rows of a step's batch (`l`) a log entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rows {
    /// Every row: an accept's inserted operations.
    All,
    /// The inserted operations leased by their accept (`attempt` 1).
    Leased,
    /// The rows a fenced write changed.
    Applied,
    /// The rows it matched nothing for, which still exist.
    Rejected,
}

/// One log entry a step appends per row of its batch `l`: its kind, attempt, lease owner,
/// the state after it and its detail, as SQL over `l` and `o` (the operation, for
/// rejected rows).
#[derive(Debug, Clone, Copy)]
struct Entry {
    rows: Rows,
    kind: WalKind,
    attempt: &'static str,
    owner: &'static str,
    state_after: &'static str,
    detail: &'static str,
}

/// The entry of an attempt's write: its attempt, under its lease.
const fn attempt_entry(
    rows: Rows,
    kind: WalKind,
    state_after: &'static str,
    detail: &'static str,
) -> Entry {
    Entry {
        rows,
        kind,
        attempt: "l.attempt",
        owner: "l.owner",
        state_after,
        detail,
    }
}

/// An accept's entries: `ACCEPTED` for every inserted operation, then `EXECUTING` for
/// those it leased.
const ACCEPT_ENTRIES: [Entry; 2] = [
    Entry {
        rows: Rows::All,
        kind: WalKind::Accepted,
        attempt: "0",
        owner: "NULL",
        state_after: "'ACCEPTED'",
        detail: "l.accepted",
    },
    Entry {
        rows: Rows::Leased,
        kind: WalKind::Executing,
        attempt: "1",
        owner: "l.owner",
        state_after: "'PROCESSING'",
        detail: "l.executing",
    },
];

/// A step's log entries as statements of their own, in entry order, each binding the
/// step's batch (with its rows' `applied` after a fenced write): the log insert of the
/// backends without writable CTEs. Each statement appends at most one entry per
/// operation, so an operation's entries are in entry order without sorting; an entry
/// whose rows are not in the batch is not run.
///
/// One statement per entry rather than one `UNION ALL` of them: MySQL and MariaDB put
/// a union of rows with a text column in an on-disk temporary table.
pub(crate) type LogSteps = Vec<(Rows, String)>;

/// A fenced write: what it sets, what it requires besides the fence, what it logs.
struct Write {
    set: &'static [(&'static str, &'static str)],
    guard: &'static str,
    entries: &'static [Entry],
}

/// What a decision writes (the JSON column is converted by the dialect).
const DECISION: &[(&str, &str)] = &[
    ("state", "t.state"),
    ("outcome_data", "json:t.outcome_data"),
    ("error_code", "t.error_code"),
    ("error_message", "t.error_message"),
    ("next_retry_at", "t.next_retry_at"),
    ("completed_at", "t.completed_at"),
    ("updated_at", "t.at"),
    ("lease_owner", "NULL"),
    ("lease_until", "NULL"),
];

const RECORD_ENTRIES: [Entry; 2] = [
    attempt_entry(
        Rows::Applied,
        WalKind::OutcomeRecorded,
        "'PROCESSING'",
        "l.recorded",
    ),
    // I4: a zombie's outcome is kept for the record, never applied.
    attempt_entry(
        Rows::Rejected,
        WalKind::OutcomeRejected,
        "o.state",
        "l.recorded",
    ),
];

/// The entry that applies an outcome.
const FINALIZED: Entry = attempt_entry(Rows::Applied, WalKind::Finalized, "l.state", "l.finalized");

const RECORD: Write = Write {
    set: &[
        ("recorded_attempt", "o.attempt_count"),
        ("updated_at", "t.at"),
    ],
    guard: "",
    entries: &RECORD_ENTRIES,
};

const SETTLE: Write = Write {
    set: &[
        ("recorded_attempt", "o.attempt_count"),
        ("state", "t.state"),
        ("outcome_data", "json:t.outcome_data"),
        ("error_code", "t.error_code"),
        ("error_message", "t.error_message"),
        ("next_retry_at", "t.next_retry_at"),
        ("completed_at", "t.completed_at"),
        ("updated_at", "t.at"),
        ("lease_owner", "NULL"),
        ("lease_until", "NULL"),
    ],
    guard: "",
    entries: &[
        // I3: the outcome's entry first, then the one that applies it.
        RECORD_ENTRIES[0],
        FINALIZED,
        RECORD_ENTRIES[1],
    ],
};

const FINALIZE: Write = Write {
    set: DECISION,
    guard: RECORDED,
    entries: &[FINALIZED],
};

const REAP: Write = Write {
    set: DECISION,
    guard: REAPABLE,
    entries: &[attempt_entry(
        Rows::Applied,
        WalKind::Reaped,
        "l.state",
        "l.finalized",
    )],
};

/// How a fenced write runs on a backend.
#[derive(Debug, Clone)]
pub(crate) enum WriteSql {
    /// One statement: update and log; returns the changed ids (PostgreSQL).
    Fused(String),
    /// Several statements in one transaction.
    Steps(WriteSteps),
}

/// A fenced write as several statements.
#[derive(Debug, Clone)]
pub(crate) enum WriteSteps {
    /// `UPDATE … RETURNING` the changed ids, then the log (SQLite).
    Returning {
        /// Returns `id, attempt` of the changed rows.
        update: String,
        /// The log entries, over the batch with each row's `applied`.
        log: LogSteps,
    },
    /// Lock and read the rows the fence matches, update them, then the log (MySQL).
    Locking {
        /// Returns `id, attempt` of the rows the write will change, locked.
        select: String,
        /// The update itself.
        update: String,
        /// The log entries, over the batch with each row's `applied`.
        log: LogSteps,
    },
}

/// How a claim runs on a backend.
#[derive(Debug, Clone)]
pub(crate) enum ClaimSql {
    /// One statement: take the due rows, lease them, log them, return them (PostgreSQL).
    /// Binds the domain, the time, the limit and the lease (one row).
    Fused(String),
    /// The due ids (domain, time, limit), then the lease of those rows (the claim batch),
    /// then the log (the claim batch); the rows are read back with `by_ids`.
    Steps {
        /// Returns the due ids.
        due: String,
        /// Leases the batch's rows.
        lease: String,
        /// Logs the batch's rows.
        log: String,
    },
}

/// How an accept inserts on a backend.
#[derive(Debug, Clone)]
pub(crate) enum AcceptSql {
    /// One statement: insert what is new, log it, return it (PostgreSQL).
    Fused(String),
    /// Several statements in one transaction.
    Steps(AcceptSteps),
}

/// An accept as several statements.
#[derive(Debug, Clone)]
pub(crate) enum AcceptSteps {
    /// Insert what is new returning it, then log it (SQLite).
    Returning {
        /// `INSERT … ON CONFLICT DO NOTHING RETURNING`.
        insert: String,
        /// The log entries, over the inserted rows.
        log: LogSteps,
    },
    /// Insert rows known to be new; a duplicate key means another node was first, and
    /// the batch is looked up again (MySQL).
    Plain {
        /// A plain `INSERT`.
        insert: String,
        /// The log entries, over the inserted rows.
        log: LogSteps,
    },
}

/// Every statement, rendered for one dialect.
#[derive(Debug, Clone)]
pub(crate) struct Statements {
    pub(crate) accept: AcceptSql,
    pub(crate) by_scope: String,
    pub(crate) by_ids: String,
    pub(crate) get: String,
    pub(crate) claim: ClaimSql,
    pub(crate) append: String,
    pub(crate) record: WriteSql,
    pub(crate) settle: WriteSql,
    pub(crate) finalize: WriteSql,
    pub(crate) reap: WriteSql,
    pub(crate) expired: String,
    pub(crate) release: String,
    pub(crate) backlog: String,
    /// The overview of every domain; `_of` adds `tenant = ? AND domain = ?`.
    pub(crate) overview: String,
    pub(crate) overview_of: String,
    pub(crate) rescued: String,
    pub(crate) rescued_of: String,
    pub(crate) pending: String,
    pub(crate) retry: String,
    pub(crate) cancel: String,
    pub(crate) ended: String,
    pub(crate) delete: String,
    pub(crate) delete_log: String,
    pub(crate) history: String,
}

impl Statements {
    /// Renders every statement for `dialect`.
    pub(crate) fn new(dialect: &Dialect) -> Self {
        let d = dialect;
        let p = |sql: String| d.placeholders(&sql);
        let select = operation_columns(d, "o.");
        Self {
            accept: accept(d),
            by_scope: p(format!(
                "SELECT {select} FROM {} {} oncely_operations o ON {SAME_SCOPE}",
                (d.rows)("t", SCOPE),
                d.batch_join
            )),
            by_ids: p(format!(
                "SELECT {select} FROM {} {} oncely_operations o ON o.id = t.id \
                 ORDER BY o.next_retry_at, o.id",
                (d.rows)("t", ID),
                d.batch_join
            )),
            get: p(format!(
                "SELECT {select} FROM oncely_operations o \
                 WHERE o.tenant = ? AND o.domain = ? AND o.idem_key = ?"
            )),
            claim: claim(d),
            append: p(format!(
                "{WAL_INSERT} SELECT t.operation_id, t.kind, t.attempt, t.lease_owner, \
                 t.state_after, {}, t.recorded_at FROM {} ORDER BY t.n",
                (d.json_in)("t.detail"),
                (d.rows)("t", ENTRY)
            )),
            record: write(d, &RECORD),
            settle: write(d, &SETTLE),
            finalize: write(d, &FINALIZE),
            reap: write(d, &REAP),
            expired: p(format!(
                "SELECT {select} FROM oncely_operations o \
                 WHERE o.domain = ? AND o.state = 'PROCESSING' AND o.lease_until <= ? \
                 AND (o.recorded_attempt IS NULL OR o.recorded_attempt <> o.attempt_count) \
                 ORDER BY o.lease_until, o.id LIMIT ?"
            )),
            // The owner's `node/` prefix, compared exactly (LIKE would need escapes, and is
            // case-blind on SQLite).
            release: p("UPDATE oncely_operations SET lease_until = ? \
                 WHERE domain = ? AND state = 'PROCESSING' AND lease_until > ? \
                 AND SUBSTR(lease_owner, 1, LENGTH(?)) = ? AND lease_owner <> ?"
                .to_owned()),
            // Only live states: the partial indexes bound the cost by the backlog. The OR,
            // not `state IN (…)`: PostgreSQL proves a partial index's predicate from each
            // arm of an OR (a BitmapOr of both), never from an IN list, which it then reads
            // by scanning the whole table.
            backlog: p("SELECT \
                 COUNT(CASE WHEN o.state = 'ACCEPTED' AND o.next_retry_at <= ? THEN 1 END) AS due, \
                 COUNT(CASE WHEN o.state = 'ACCEPTED' AND o.next_retry_at > ? THEN 1 END) AS waiting, \
                 COUNT(CASE WHEN o.state = 'PROCESSING' THEN 1 END) AS processing, \
                 MIN(CASE WHEN o.state = 'ACCEPTED' AND o.next_retry_at <= ? \
                     THEN o.next_retry_at END) AS oldest_due \
                 FROM oncely_operations o \
                 WHERE o.domain = ? AND (o.state = 'ACCEPTED' OR o.state = 'PROCESSING')"
                .to_owned()),
            overview: p(overview("")),
            overview_of: p(overview(SCOPED)),
            rescued: p(rescued("")),
            rescued_of: p(rescued(SCOPED)),
            pending: p(format!(
                "SELECT {select}, {} AS recorded_detail FROM oncely_operations o \
                 JOIN oncely_wal w ON w.operation_id = o.id AND w.kind = 'OUTCOME_RECORDED' \
                     AND w.attempt = o.attempt_count AND w.lease_owner = o.lease_owner \
                 WHERE o.domain = ? AND o.state = 'PROCESSING' AND {RECORDED} \
                     AND w.recorded_at <= ? \
                 ORDER BY o.id LIMIT ?",
                (d.json_out)("w.detail")
            )),
            retry: p((d.update)(
                &[
                    ("state", "'ACCEPTED'"),
                    ("attempt_floor", "o.attempt_count"),
                    ("next_retry_at", "t.at"),
                    ("completed_at", "NULL"),
                    ("outcome_data", "NULL"),
                    ("error_code", "NULL"),
                    ("error_message", "NULL"),
                    ("updated_at", "t.at"),
                ],
                &(d.rows)("t", ACTION),
                "o.id = t.id AND o.state = t.state",
            )),
            // Only the operation as it was read, and only once.
            cancel: p((d.update)(
                &[
                    ("state", "t.to_state"),
                    ("cancel_requested_at", "t.at"),
                    ("next_retry_at", "t.next_retry_at"),
                    ("completed_at", "t.completed_at"),
                    ("updated_at", "t.at"),
                ],
                &(d.rows)("t", CANCEL),
                "o.id = t.id AND o.state = t.state AND o.attempt_count = t.attempt \
                 AND o.cancel_requested_at IS NULL",
            )),
            ended: p(format!(
                "SELECT o.id FROM oncely_operations o \
                 WHERE o.domain = ? AND o.completed_at IS NOT NULL AND o.completed_at < ? \
                 ORDER BY o.completed_at, o.id LIMIT ?{}",
                d.locks.skip_locked
            )),
            delete: p(format!(
                "DELETE FROM oncely_operations WHERE completed_at IS NOT NULL \
                 AND id IN (SELECT t.id FROM {})",
                (d.rows)("t", ID)
            )),
            delete_log: p(format!(
                "DELETE FROM oncely_wal WHERE operation_id IN (SELECT t.id FROM {})",
                (d.rows)("t", ID)
            )),
            history: p(format!(
                "SELECT w.seq, w.operation_id, w.kind, w.attempt, w.lease_owner, w.state_after, \
                 {} AS detail, w.recorded_at FROM oncely_wal w WHERE w.operation_id = ? \
                 ORDER BY w.seq",
                (d.json_out)("w.detail")
            )),
        }
    }
}

/// The operation's columns as `rows::operation` reads them, prefixed (`o.`), with JSON
/// read back as text.
pub(crate) fn operation_columns(d: &Dialect, prefix: &str) -> String {
    OPERATION
        .iter()
        .map(|name| {
            if JSON_COLUMNS.contains(name) {
                format!("{} AS {name}", (d.json_out)(&format!("{prefix}{name}")))
            } else {
                format!("{prefix}{name}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `assignments` with `json:` values converted for the dialect.
fn assignments(d: &Dialect, set: &[(&'static str, &'static str)]) -> Vec<(&'static str, String)> {
    set.iter()
        .map(|(name, value)| match value.strip_prefix("json:") {
            Some(text) => (*name, (d.json_in)(text)),
            None => (*name, (*value).to_owned()),
        })
        .collect()
}

fn update(
    d: &Dialect,
    set: &[(&'static str, &'static str)],
    source: &str,
    predicate: &str,
) -> String {
    let set = assignments(d, set);
    let pairs: Vec<(&str, &str)> = set.iter().map(|(n, v)| (*n, v.as_str())).collect();
    (d.update)(&pairs, source, predicate)
}

/// `entry`'s columns over `l`, in the log's column order, with its detail as `detail`.
fn entry_columns(entry: &Entry, detail: &str) -> String {
    format!(
        "l.id AS operation_id, '{}' AS kind, {} AS attempt, {} AS lease_owner, \
         {} AS state_after, {detail} AS detail, l.at AS recorded_at",
        entry.kind.as_str(),
        entry.attempt,
        entry.owner,
        entry.state_after
    )
}

/// The rows of `entry`'s batch, `l` being `batch`, and the operations of rejected ones.
fn entry_rows(d: &Dialect, entry: &Entry, batch: &str) -> String {
    match entry.rows {
        Rows::All => format!("FROM {batch}"),
        Rows::Leased => format!("FROM {batch} WHERE l.attempt = 1"),
        Rows::Applied => format!("FROM {batch} WHERE l.applied = 1"),
        Rows::Rejected => format!(
            "FROM {batch} {} oncely_operations o ON o.id = l.id WHERE l.applied = 0",
            d.batch_join
        ),
    }
}

/// The log insert of `entries` as one statement, over `l` (defined by the caller):
/// each operation's entries in entry order.
fn log_insert(d: &Dialect, entries: &[Entry]) -> String {
    let branches: Vec<String> = entries
        .iter()
        .enumerate()
        .map(|(n, entry)| {
            format!(
                "SELECT {}, {n} AS n {}",
                entry_columns(entry, entry.detail),
                entry_rows(d, entry, "l")
            )
        })
        .collect();
    format!(
        "{WAL_INSERT} SELECT e.operation_id, e.kind, e.attempt, e.lease_owner, e.state_after, \
         {}, e.recorded_at FROM ({}) e ORDER BY e.operation_id, e.n",
        (d.json_in)("e.detail"),
        branches.join(" UNION ALL ")
    )
}

/// The log insert of `entries` as one statement per entry, over a batch with `columns`.
fn log_steps(d: &Dialect, entries: &[Entry], columns: &[Column]) -> LogSteps {
    entries
        .iter()
        .map(|entry| {
            let sql = format!(
                "{WAL_INSERT} SELECT {} {}",
                entry_columns(entry, &(d.json_in)(entry.detail)),
                entry_rows(d, entry, &(d.rows)("l", columns))
            );
            (entry.rows, d.placeholders(&sql))
        })
        .collect()
}

fn write(d: &Dialect, write: &Write) -> WriteSql {
    let guard = if write.guard.is_empty() {
        FENCE.to_owned()
    } else {
        format!("{FENCE} AND {}", write.guard)
    };
    if d.writable_cte {
        let log = log_insert(d, write.entries);
        let update = update(d, write.set, "t", &guard);
        return WriteSql::Fused(d.placeholders(&format!(
            "WITH t AS (SELECT * FROM {}), \
             a AS ({update} RETURNING {r}id, {r}attempt_count AS attempt), \
             l AS (SELECT t.*, CASE WHEN a.id IS NULL THEN 0 ELSE 1 END AS applied \
                 FROM t LEFT JOIN a ON a.id = t.id AND a.attempt = t.attempt), \
             w AS ({log}) \
             SELECT id, attempt FROM a",
            (d.rows)("r", WRITE),
            r = d.returning_prefix
        )));
    }
    let logged = log_steps(d, write.entries, WRITTEN);
    let source = (d.rows)("t", WRITE);
    let updated = update(d, write.set, &source, &guard);
    if d.returning {
        return WriteSql::Steps(WriteSteps::Returning {
            update: d.placeholders(&format!(
                "{updated} RETURNING {r}id, {r}attempt_count AS attempt",
                r = d.returning_prefix
            )),
            log: logged,
        });
    }
    WriteSql::Steps(WriteSteps::Locking {
        select: d.placeholders(&format!(
            "SELECT o.id, o.attempt_count AS attempt FROM {source} {} oncely_operations o \
             ON {guard}{}",
            d.batch_join, d.locks.for_update
        )),
        update: d.placeholders(&updated),
        log: logged,
    })
}

/// The due `ACCEPTED` operations of a domain, oldest due first (binds the domain, the
/// time, the limit). SKIP LOCKED: rows another node is claiming right now are passed over.
fn due(d: &Dialect) -> String {
    format!(
        "SELECT o.id FROM oncely_operations o \
         WHERE o.domain = ? AND o.state = 'ACCEPTED' AND o.next_retry_at <= ? \
         ORDER BY o.next_retry_at, o.id LIMIT ?{}",
        d.locks.skip_locked
    )
}

/// A claim: `t` (the due rows, with the lease) are leased, and `c` (the rows as leased)
/// get their `EXECUTING` entries.
fn claim(d: &Dialect) -> ClaimSql {
    let lease = |source: &str| {
        update(
            d,
            &[
                ("state", "'PROCESSING'"),
                ("attempt_count", "o.attempt_count + 1"),
                ("lease_owner", "t.owner"),
                ("lease_until", "t.lease_until"),
                ("last_attempt_at", "t.at"),
                ("updated_at", "t.at"),
            ],
            source,
            "o.id = t.id AND o.state = 'ACCEPTED'",
        )
    };
    let log = format!(
        "SELECT c.id, 'EXECUTING', c.attempt_count, c.lease_owner, 'PROCESSING', {}, \
         c.last_attempt_at FROM c JOIN t ON t.id = c.id ORDER BY c.id",
        (d.json_in)("t.detail")
    );
    if d.writable_cte {
        return ClaimSql::Fused(d.placeholders(&format!(
            "WITH d AS ({}), t AS (SELECT d.id, p.* FROM d, {}), \
             c AS ({} RETURNING {}), w AS ({WAL_INSERT} {log}) SELECT * FROM c",
            due(d),
            (d.rows)("p", LEASE),
            lease("t"),
            operation_columns(d, "o.")
        )));
    }
    let log = format!(
        "{WAL_INSERT} WITH t AS (SELECT * FROM {}), \
         c AS (SELECT o.* FROM t {} oncely_operations o ON o.id = t.id) {log}",
        (d.rows)("r", CLAIM),
        d.batch_join
    );
    ClaimSql::Steps {
        due: d.placeholders(&due(d)),
        lease: d.placeholders(&lease(&(d.rows)("t", CLAIM))),
        log: d.placeholders(&log),
    }
}

fn accept(d: &Dialect) -> AcceptSql {
    let select = format!(
        "SELECT t.tenant, t.domain, t.idem_key, t.event_type, t.state, {}, t.fingerprint, \
         t.attempt, t.owner, t.lease_until, t.last_attempt_at, t.at, t.at, t.at, \
         t.traceparent FROM t WHERE 1 = 1 ORDER BY t.ord",
        (d.json_in)("t.payload")
    );
    let batch = format!("t AS (SELECT * FROM {})", (d.rows)("r", ACCEPT));
    let returned = operation_columns(d, "");
    let ignore = "ON CONFLICT (tenant, domain, idem_key) DO NOTHING";
    if d.writable_cte {
        // Delivered on commit: other nodes' idle engines start at once on what this
        // accept did not lease, instead of at their next poll. The scalar subquery makes
        // the notifying step run.
        let (notify, when) = match d.notify {
            Some(notify) => (
                format!(
                    ", n AS (SELECT {} FROM (SELECT DISTINCT domain FROM i \
                     WHERE state = 'ACCEPTED') waiting)",
                    notify("waiting.domain")
                ),
                " WHERE (SELECT count(*) FROM n) >= 0",
            ),
            None => (String::new(), ""),
        };
        return AcceptSql::Fused(d.placeholders(&format!(
            "WITH {batch}, i AS ({INSERT_OPERATIONS} {select} {ignore} RETURNING {returned}), \
             l AS (SELECT i.id, t.* FROM i JOIN t ON i.tenant = t.tenant \
                 AND i.domain = t.domain AND i.idem_key = t.idem_key), \
             w AS ({}){notify} SELECT * FROM i{when}",
            log_insert(d, &ACCEPT_ENTRIES)
        )));
    }
    let insert = format!("{INSERT_OPERATIONS} WITH {batch} {select}");
    let logged = log_steps(d, &ACCEPT_ENTRIES, INSERTED);
    AcceptSql::Steps(if d.insert_or_ignore {
        AcceptSteps::Returning {
            insert: d.placeholders(&format!("{insert} {ignore} RETURNING {returned}")),
            log: logged,
        }
    } else {
        AcceptSteps::Plain {
            insert: d.placeholders(&insert),
            log: logged,
        }
    })
}
