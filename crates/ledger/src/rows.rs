//! Many rows to SQLite in one statement, with bound parameters and no
//! serialisation: `INSERT … VALUES (?, ?), (?, ?), …`, `UPDATE … FROM
//! (VALUES …)`, `… WHERE id IN (?, ?, …)`. A statement's text depends only
//! on its number of rows, and rows go in chunks of a few fixed sizes
//! ([`CHUNKS`]), so diesel keeps every statement prepared (it caches by
//! SQL; `diesel::sql_query` never is) and a batch parses nothing. Text is
//! bound without a copy (diesel binds it `SQLITE_STATIC`).
//!
//! This replaced rows sent as one JSON array per statement (`jsonb_each`):
//! serialising them and SQLite's JSON extraction were ~20% of the writer's
//! time (docs/PERFORMANCE.md).

use std::borrow::Cow;

use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Nullable, Text, Untyped};
use diesel::sqlite::Sqlite;
use diesel::{QueryResult, QueryableByName, RunQueryDsl, SqliteConnection};

use crate::LedgerError;

/// The row counts a statement is prepared for: rows go in chunks of the
/// largest that fits, so a batch of any size uses a few prepared statements.
const CHUNKS: [usize; 5] = [256, 64, 16, 4, 1];

/// One bound value.
pub(crate) trait Col {
    fn bind<'b>(&'b self, out: &mut AstPass<'_, 'b, Sqlite>) -> QueryResult<()>;
}

impl Col for &str {
    fn bind<'b>(&'b self, out: &mut AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_bind_param::<Text, str>(self)
    }
}

impl Col for Cow<'_, str> {
    fn bind<'b>(&'b self, out: &mut AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_bind_param::<Text, str>(self.as_ref())
    }
}

impl Col for Option<&str> {
    fn bind<'b>(&'b self, out: &mut AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_bind_param::<Nullable<Text>, Option<&str>>(self)
    }
}

impl Col for i64 {
    fn bind<'b>(&'b self, out: &mut AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_bind_param::<BigInt, i64>(self)
    }
}

impl Col for Option<i64> {
    fn bind<'b>(&'b self, out: &mut AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_bind_param::<Nullable<BigInt>, Option<i64>>(self)
    }
}

/// A row: its values, bound in order and separated by commas.
pub(crate) trait Row {
    fn bind<'b>(&'b self, out: &mut AstPass<'_, 'b, Sqlite>) -> QueryResult<()>;
}

impl Row for &str {
    fn bind<'b>(&'b self, out: &mut AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        Col::bind(self, out)
    }
}

macro_rules! tuple_row {
    ($first:ident $($rest:ident)*) => {
        impl<$first: Col, $($rest: Col),*> Row for ($first, $($rest),*) {
            #[allow(non_snake_case)]
            fn bind<'b>(&'b self, out: &mut AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
                let ($first, $($rest),*) = self;
                $first.bind(out)?;
                $(
                    out.push_sql(", ");
                    $rest.bind(out)?;
                )*
                Ok(())
            }
        }
    };
}

tuple_row!(A B C);
tuple_row!(A B C D);
tuple_row!(A B C D E);
tuple_row!(A B C D E F);
tuple_row!(A B C D E F G H I J K L);

/// A statement over rows: `head`, the rows, `tail`. Each row is wrapped in
/// parentheses for `VALUES`, or not for an `IN` list.
pub(crate) struct Shape {
    head: &'static str,
    tail: &'static str,
    parenthesised: bool,
}

impl Shape {
    /// `head` (ending in `IN (`), then the rows' values, then `)`.
    pub(crate) const fn in_list(head: &'static str) -> Self {
        Self { head, tail: ")", parenthesised: false }
    }

    /// `head` (ending in `VALUES `), then the rows, each in parentheses,
    /// then `tail`.
    pub(crate) const fn values(head: &'static str, tail: &'static str) -> Self {
        Self { head, tail, parenthesised: true }
    }
}

struct Statement<'r, R> {
    shape: &'r Shape,
    rows: &'r [R],
}

impl<R: Row> QueryFragment<Sqlite> for Statement<'_, R> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        let (open, close) = if self.shape.parenthesised { ("(", ")") } else { ("", "") };
        out.push_sql(self.shape.head);
        for (i, row) in self.rows.iter().enumerate() {
            if i > 0 {
                out.push_sql(", ");
            }
            out.push_sql(open);
            row.bind(&mut out)?;
            out.push_sql(close);
        }
        out.push_sql(self.shape.tail);
        Ok(())
    }
}

impl<R> QueryId for Statement<'_, R> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<R> Query for Statement<'_, R> {
    type SqlType = Untyped;
}

impl<R, C> RunQueryDsl<C> for Statement<'_, R> {}

/// `rows` split into chunks of the prepared sizes.
fn chunks<R>(mut rows: &[R]) -> impl Iterator<Item = &[R]> {
    std::iter::from_fn(move || {
        let size = CHUNKS.iter().copied().find(|&c| c <= rows.len())?;
        let (chunk, rest) = rows.split_at(size);
        rows = rest;
        Some(chunk)
    })
}

/// Runs the statement over `rows`, chunk by chunk; the rows it changed.
pub(crate) fn execute<R: Row>(conn: &mut SqliteConnection, shape: &Shape, rows: &[R]) -> Result<usize, LedgerError> {
    let mut changed = 0;
    for chunk in chunks(rows) {
        changed += Statement { shape, rows: chunk }.execute(conn)?;
    }
    Ok(changed)
}

/// Runs the query over `rows`, chunk by chunk; every row it returned.
pub(crate) fn load<R: Row, T: QueryableByName<Sqlite> + 'static>(
    conn: &mut SqliteConnection,
    shape: &Shape,
    rows: &[R],
) -> Result<Vec<T>, LedgerError> {
    let mut out = Vec::new();
    for chunk in chunks(rows) {
        out.extend(Statement { shape, rows: chunk }.load::<T>(conn)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::chunks;

    #[test]
    fn chunks_cover_every_row_once_in_prepared_sizes() {
        for n in [0_usize, 1, 3, 4, 5, 17, 255, 256, 257, 1000, 2401] {
            let rows: Vec<usize> = (0..n).collect();
            let parts: Vec<&[usize]> = chunks(&rows).collect();
            assert!(parts.iter().all(|p| super::CHUNKS.contains(&p.len())), "{n}");
            let joined: Vec<usize> = parts.concat();
            assert_eq!(joined, rows, "{n}");
        }
    }
}
