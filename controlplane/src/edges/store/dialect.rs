//! One schema, two engines. The migrations in `controlplane/migrations/` are the one
//! source of truth, written in the SQL both engines share; the few words where SQLite
//! and PostgreSQL differ are translated here for PostgreSQL, word by word, so SQLite
//! databases keep the checksums their migrations were recorded with.

use sqlx::migrate::{MigrateError, Migration, MigrationSource, Migrator};
use std::borrow::Cow;

/// The engine behind a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "SQLite",
            Self::Postgres => "PostgreSQL",
        }
    }

    /// How a transaction that appends to the receipt chain starts: it must hold the
    /// chain's write lock before it reads the head, so two appends never pick one number.
    pub fn begin_chain(self) -> &'static str {
        match self {
            // Takes SQLite's write lock at BEGIN, not at the first write.
            Self::Sqlite => "BEGIN IMMEDIATE",
            Self::Postgres => "BEGIN",
        }
    }

    /// A statement run first in a chain transaction, if the engine needs one.
    pub fn lock_chain(self) -> Option<&'static str> {
        match self {
            Self::Sqlite => None,
            // Conflicts with itself and with every write, not with plain reads.
            Self::Postgres => Some("LOCK TABLE receipts IN EXCLUSIVE MODE"),
        }
    }
}

/// The SQL of a migration for PostgreSQL.
pub fn postgres_sql(sqlite: &str) -> String {
    // Longest phrase first: the rowid alias becomes an identity column.
    sqlite
        .replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
        .split_inclusive(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .map(|token| {
            let (word, rest) =
                token.split_at(token.trim_end_matches(|c: char| !c.is_ascii_alphanumeric() && c != '_').len());
            let word = match word {
                // SQLite integers are 64-bit; PostgreSQL's INTEGER is not.
                "INTEGER" => "BIGINT",
                "BLOB" => "BYTEA",
                w => w,
            };
            format!("{word}{rest}")
        })
        .collect()
}

type Pinned<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

/// The embedded migrations, translated for PostgreSQL.
#[derive(Debug)]
struct Translated(&'static Migrator);

impl MigrationSource<'static> for Translated {
    fn resolve(self) -> Pinned<Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        let migrations = self
            .0
            .iter()
            .map(|m| {
                Migration::new(
                    m.version,
                    m.description.clone(),
                    m.migration_type,
                    Cow::Owned(postgres_sql(&m.sql)),
                    m.no_tx,
                )
            })
            .collect();
        Box::pin(async move { Ok(migrations) })
    }
}

/// Runs the embedded migrations on `pool`, translated for `backend`.
pub async fn migrate(backend: Backend, embedded: &'static Migrator, pool: &sqlx::AnyPool) -> Result<(), MigrateError> {
    match backend {
        Backend::Sqlite => embedded.run(pool).await,
        Backend::Postgres => Migrator::new(Translated(embedded)).await?.run(pool).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_differing_words_change() {
        let sql = "CREATE TABLE history (\n    seq INTEGER PRIMARY KEY AUTOINCREMENT,\n    pid INTEGER NOT NULL,\n    body BLOB,\n    integer_like TEXT -- INTEGERS stay\n);";
        assert_eq!(
            postgres_sql(sql),
            "CREATE TABLE history (\n    seq BIGSERIAL PRIMARY KEY,\n    pid BIGINT NOT NULL,\n    body BYTEA,\n    integer_like TEXT -- INTEGERS stay\n);"
        );
    }

    #[test]
    fn every_migration_translates_to_the_postgres_types() {
        static EMBEDDED: Migrator = sqlx::migrate!("./migrations");
        for m in EMBEDDED.iter() {
            let pg = postgres_sql(&m.sql);
            for sqlite_only in ["AUTOINCREMENT", " BLOB", "INSERT OR", " INTEGER"] {
                assert!(!pg.contains(sqlite_only), "migration {} keeps `{sqlite_only}`:\n{pg}", m.version);
            }
        }
    }
}
