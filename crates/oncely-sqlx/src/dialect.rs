//! How the SQL of one database differs from the others: the few things the shared
//! statements in `sql` ask of a backend. Each backend's file defines its [`Dialect`] as a
//! constant; nothing else about a backend's SQL lives outside `sql`.
//!
//! Every batch reaches the database as **one JSON parameter** (an array of row objects),
//! which each database turns into a table: `jsonb_to_recordset` on PostgreSQL,
//! `json_each` on SQLite, `JSON_TABLE` on MySQL. So a statement's text does not depend on
//! its batch's size, is prepared once per connection, and carries any number of rows in
//! one round trip.

/// The SQL type of a batch column, as the database reads it from the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    /// A 64-bit integer.
    Int,
    /// A name compared with the ASCII, case-sensitive name columns (tenant, domain, key,
    /// lease owner): typed so that the comparison can use their indexes.
    Name,
    /// Any other text, including JSON documents kept as text.
    Text,
}

/// One column of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// Its name, in the JSON objects and in SQL.
    pub name: &'static str,
    /// Its type.
    pub ty: Ty,
}

/// `columns`, each as `render` writes it, separated by commas.
pub(crate) fn each(columns: &[Column], render: impl Fn(&Column) -> String) -> String {
    columns.iter().map(render).collect::<Vec<_>>().join(", ")
}

/// Shorthand for the column tables in `sql`.
pub(crate) const fn column(name: &'static str, ty: Ty) -> Column {
    Column { name, ty }
}

/// How a row lock is taken, where the database has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locks {
    /// Appended to a `SELECT` that must lock what it reads (`FOR UPDATE`).
    pub for_update: &'static str,
    /// Appended to a claim's `SELECT`, which passes over rows another node is locking.
    pub skip_locked: &'static str,
}

/// The differences, as data and small renderers.
#[derive(Debug, Clone, Copy)]
pub struct Dialect {
    /// `$1, $2, …` instead of `?`: statements are written with `?` and renumbered.
    pub numbered_placeholders: bool,
    /// `INSERT`/`UPDATE` inside `WITH`: a whole lifecycle step in one statement.
    pub writable_cte: bool,
    /// `INSERT … RETURNING` and `UPDATE … RETURNING`.
    pub returning: bool,
    /// How columns are named in a `RETURNING` list (`o.` or nothing).
    pub returning_prefix: &'static str,
    /// `ON CONFLICT (…) DO NOTHING`; without it, an accept locks and reads what exists
    /// first, then inserts the rest.
    pub insert_or_ignore: bool,
    /// How a batch table is joined to the operations, the batch first: MySQL's optimizer
    /// may otherwise scan the operations and probe the batch for each row.
    pub batch_join: &'static str,
    /// Row locks; SQLite has one writer, and no need of them.
    pub locks: Locks,
    /// The expression that wakes other nodes' idle engines for a domain, from a domain
    /// expression, run in an accept's own statement (PostgreSQL's `pg_notify`).
    pub notify: Option<fn(domain: &str) -> String>,
    /// The batch parameter (one `?`) as a table named `alias` with `columns`.
    pub rows: fn(alias: &str, columns: &[Column]) -> String,
    /// A text expression turned into the JSON column type.
    pub json_in: fn(expression: &str) -> String,
    /// A JSON column read back as text.
    pub json_out: fn(expression: &str) -> String,
    /// `UPDATE oncely_operations AS o` setting `assignments` from the table `source`
    /// where `predicate` holds.
    pub update: fn(assignments: &[(&str, &str)], source: &str, predicate: &str) -> String,
    /// A lock that serializes migrations across processes, taken on the migrating
    /// connection, when the driver's own does not hold (MariaDB answers sqlx's
    /// `GET_LOCK(…, -1)` with NULL, not a lock). `None`: the driver's lock holds, or the
    /// migrations are retried (SQLite, whose DDL is transactional).
    pub migration_lock: Option<MigrationLock>,
    /// Whether a connection failed because the database does not exist yet.
    pub missing_database: fn(&sqlx::Error) -> bool,
}

/// Statements that take and release a lock across processes.
#[derive(Debug, Clone, Copy)]
pub struct MigrationLock {
    /// Takes the lock, waiting; its one row's column `locked` is 1 once held.
    pub acquire: &'static str,
    /// Releases it.
    pub release: &'static str,
}

/// For a backend whose databases are files created on open: never missing.
pub fn never_missing(_: &sqlx::Error) -> bool {
    false
}

impl Dialect {
    /// `sql` with its `?` placeholders in this dialect's form.
    pub fn placeholders(&self, sql: &str) -> String {
        if !self.numbered_placeholders {
            return sql.to_owned();
        }
        let mut numbered = String::with_capacity(sql.len() + 16);
        let mut next = 0;
        let mut quoted = false;
        for character in sql.chars() {
            match character {
                '\'' => {
                    quoted = !quoted;
                    numbered.push(character);
                }
                '?' if !quoted => {
                    next += 1;
                    numbered.push('$');
                    numbered.push_str(&next.to_string());
                }
                _ => numbered.push(character),
            }
        }
        numbered
    }
}

/// `UPDATE … SET … FROM …`, as PostgreSQL and SQLite write it.
pub(crate) fn update_from(assignments: &[(&str, &str)], source: &str, predicate: &str) -> String {
    let set: Vec<String> = assignments
        .iter()
        .map(|(column, value)| format!("{column} = {value}"))
        .collect();
    format!(
        "UPDATE oncely_operations AS o SET {} FROM {source} WHERE {predicate}",
        set.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialect(numbered: bool) -> Dialect {
        Dialect {
            numbered_placeholders: numbered,
            writable_cte: false,
            returning: false,
            returning_prefix: "",
            insert_or_ignore: false,
            batch_join: "JOIN",
            locks: Locks {
                for_update: "",
                skip_locked: "",
            },
            notify: None,
            rows: |_, _| String::new(),
            json_in: |e| e.to_owned(),
            json_out: |e| e.to_owned(),
            update: update_from,
            migration_lock: None,
            missing_database: never_missing,
        }
    }

    #[test]
    fn placeholders_are_numbered_outside_quotes_only() {
        let sql = "SELECT ? WHERE a = '?' AND b = ? AND c = '$[*]'";
        assert_eq!(
            dialect(true).placeholders(sql),
            "SELECT $1 WHERE a = '?' AND b = $2 AND c = '$[*]'"
        );
        assert_eq!(dialect(false).placeholders(sql), sql);
    }
}
