//! Derives `schema.rs` from the migrations: `cargo xtask codegen` migrates a
//! scratch SQLite file and a scratch PostgreSQL database, reads both back,
//! checks they agree column for column, and renders diesel's `table!`
//! macros. So the one shared schema can never drift from either folder.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use diesel::sql_types::{BigInt, Text};
use diesel::{QueryableByName, sql_query};
use diesel_async::RunQueryDsl;

use crate::{DbError, DbPool};

/// A database schema as both backends can express it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schema {
    /// Tables by name.
    pub tables: BTreeMap<String, Table>,
}

/// One table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Columns in declaration order.
    pub columns: Vec<Column>,
    /// Primary-key columns in key order.
    pub primary_key: Vec<String>,
    /// `(column, referenced table)` pairs.
    pub foreign_keys: Vec<(String, String)>,
}

/// One column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// The diesel SQL type (`Text`, `BigInt`, ...).
    pub sql_type: String,
    /// Whether it may be NULL.
    pub nullable: bool,
}

#[derive(QueryableByName)]
struct NameRow {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct SqliteColumnRow {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    ty: String,
    #[diesel(sql_type = BigInt)]
    not_null: i64,
    #[diesel(sql_type = BigInt)]
    pk: i64,
}

#[derive(QueryableByName)]
struct PgColumnRow {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    ty: String,
    #[diesel(sql_type = Text)]
    nullable: String,
}

#[derive(QueryableByName)]
struct FkRow {
    #[diesel(sql_type = Text)]
    column: String,
    #[diesel(sql_type = Text)]
    target: String,
}

fn unsupported(table: &str, column: &str, ty: &str) -> DbError {
    DbError::Migration(format!("column {table}.{column} has type `{ty}`, which the shared schema does not map"))
}

fn sqlite_type(ty: &str) -> Option<&'static str> {
    Some(match ty.to_ascii_uppercase().as_str() {
        "TEXT" => "Text",
        "BIGINT" => "BigInt",
        "INTEGER" => "Integer",
        "BOOLEAN" => "Bool",
        "TIMESTAMP" => "Timestamp",
        "DOUBLE PRECISION" => "Double",
        "BLOB" | "BYTEA" => "Binary",
        _ => return None,
    })
}

fn pg_type(ty: &str) -> Option<&'static str> {
    Some(match ty {
        "text" => "Text",
        "bigint" => "BigInt",
        "integer" => "Integer",
        "boolean" => "Bool",
        "timestamp without time zone" => "Timestamp",
        "double precision" => "Double",
        "bytea" => "Binary",
        _ => return None,
    })
}

/// Reads the schema of a migrated database.
///
/// # Errors
/// A query failure, or a column type the shared schema cannot express.
pub async fn introspect(pool: &DbPool) -> Result<Schema, DbError> {
    let mut schema = Schema::default();
    match pool.get().await? {
        crate::DbConn::Sqlite(mut conn) => {
            let names: Vec<NameRow> = sql_query(
                "SELECT name FROM sqlite_master WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite_%' AND name <> '__diesel_schema_migrations'",
            )
            .load(&mut conn)
            .await?;
            for NameRow { name: table } in names {
                let cols: Vec<SqliteColumnRow> = sql_query(format!(
                    "SELECT name, type AS ty, \"notnull\" AS not_null, pk \
                     FROM pragma_table_info('{table}') ORDER BY cid"
                ))
                .load(&mut conn)
                .await?;
                let fks: Vec<FkRow> = sql_query(format!(
                    "SELECT \"from\" AS column, \"table\" AS target \
                     FROM pragma_foreign_key_list('{table}') ORDER BY id"
                ))
                .load(&mut conn)
                .await?;
                let mut pk: Vec<(i64, String)> =
                    cols.iter().filter(|c| c.pk > 0).map(|c| (c.pk, c.name.clone())).collect();
                pk.sort();
                let mut columns = Vec::new();
                for c in &cols {
                    let ty = sqlite_type(&c.ty).ok_or_else(|| unsupported(&table, &c.name, &c.ty))?;
                    columns.push(Column {
                        name: c.name.clone(),
                        sql_type: ty.to_owned(),
                        nullable: c.not_null == 0 && c.pk == 0,
                    });
                }
                let foreign_keys = fks.into_iter().map(|f| (f.column, f.target)).collect();
                let primary_key = pk.into_iter().map(|(_, n)| n).collect();
                schema.tables.insert(table, Table { columns, primary_key, foreign_keys });
            }
        }
        crate::DbConn::Postgres(mut conn) => {
            let names: Vec<NameRow> = sql_query(
                "SELECT table_name::text AS name FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' \
                 AND table_name <> '__diesel_schema_migrations'",
            )
            .load(&mut conn)
            .await?;
            for NameRow { name: table } in names {
                let cols: Vec<PgColumnRow> = sql_query(
                    "SELECT column_name::text AS name, data_type::text AS ty, \
                     is_nullable::text AS nullable FROM information_schema.columns \
                     WHERE table_schema = current_schema() AND table_name = $1 \
                     ORDER BY ordinal_position",
                )
                .bind::<Text, _>(&table)
                .load(&mut conn)
                .await?;
                let pk: Vec<NameRow> = sql_query(
                    "SELECT kcu.column_name::text AS name \
                     FROM information_schema.table_constraints tc \
                     JOIN information_schema.key_column_usage kcu \
                       ON tc.constraint_name = kcu.constraint_name \
                      AND tc.table_schema = kcu.table_schema \
                     WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_name = $1 \
                       AND tc.table_schema = current_schema() \
                     ORDER BY kcu.ordinal_position",
                )
                .bind::<Text, _>(&table)
                .load(&mut conn)
                .await?;
                let fks: Vec<FkRow> = sql_query(
                    "SELECT kcu.column_name::text AS column, ccu.table_name::text AS target \
                     FROM information_schema.table_constraints tc \
                     JOIN information_schema.key_column_usage kcu \
                       ON tc.constraint_name = kcu.constraint_name \
                      AND tc.table_schema = kcu.table_schema \
                     JOIN information_schema.constraint_column_usage ccu \
                       ON ccu.constraint_name = tc.constraint_name \
                      AND ccu.table_schema = tc.table_schema \
                     WHERE tc.constraint_type = 'FOREIGN KEY' AND tc.table_name = $1 \
                       AND tc.table_schema = current_schema() \
                     ORDER BY kcu.ordinal_position",
                )
                .bind::<Text, _>(&table)
                .load(&mut conn)
                .await?;
                let mut columns = Vec::new();
                for c in &cols {
                    let ty = pg_type(&c.ty).ok_or_else(|| unsupported(&table, &c.name, &c.ty))?;
                    columns.push(Column {
                        name: c.name.clone(),
                        sql_type: ty.to_owned(),
                        nullable: c.nullable == "YES",
                    });
                }
                let foreign_keys = fks.into_iter().map(|f| (f.column, f.target)).collect();
                let primary_key = pk.into_iter().map(|r| r.name).collect();
                schema.tables.insert(table, Table { columns, primary_key, foreign_keys });
            }
        }
    }
    Ok(schema)
}

/// Lists every difference between two schemas, in words. Empty when equal.
#[must_use]
pub fn differences(sqlite: &Schema, postgres: &Schema) -> Vec<String> {
    let mut out = Vec::new();
    for name in sqlite.tables.keys().chain(postgres.tables.keys()) {
        match (sqlite.tables.get(name), postgres.tables.get(name)) {
            (Some(a), Some(b)) if a != b => {
                for (ca, cb) in a.columns.iter().zip(&b.columns) {
                    if ca != cb {
                        out.push(format!("{name}: sqlite has {ca:?}, postgres has {cb:?}"));
                    }
                }
                if a.columns.len() != b.columns.len() {
                    out.push(format!("{name}: the backends have different column counts"));
                }
                if a.primary_key != b.primary_key {
                    out.push(format!("{name}: primary keys differ"));
                }
                let (mut fa, mut fb) = (a.foreign_keys.clone(), b.foreign_keys.clone());
                fa.sort();
                fb.sort();
                if fa != fb {
                    out.push(format!("{name}: foreign keys differ ({fa:?} vs {fb:?})"));
                }
            }
            (Some(_), None) => out.push(format!("table {name} exists only in the sqlite migrations")),
            (None, Some(_)) => {
                out.push(format!("table {name} exists only in the postgres migrations"));
            }
            _ => {}
        }
    }
    out.dedup();
    out
}

/// Renders `schema.rs`.
#[must_use]
pub fn render(schema: &Schema) -> String {
    let mut s = String::from("// @generated by `cargo xtask codegen` from the migrations. Do not edit by hand.\n");
    for (name, table) in &schema.tables {
        let _ = write!(s, "\ndiesel::table! {{\n    {name} ({}) {{\n", table.primary_key.join(", "));
        for c in &table.columns {
            let ty = if c.nullable { format!("Nullable<{}>", c.sql_type) } else { c.sql_type.clone() };
            let _ = writeln!(s, "        {} -> {ty},", c.name);
        }
        s.push_str("    }\n}\n");
    }
    let mut joins = Vec::new();
    for (name, table) in &schema.tables {
        for (column, target) in &table.foreign_keys {
            let ambiguous = table.foreign_keys.iter().filter(|(_, t)| t == target).count() > 1;
            if !ambiguous && target != name {
                joins.push(format!("diesel::joinable!({name} -> {target} ({column}));\n"));
            }
        }
    }
    if !joins.is_empty() {
        s.push('\n');
        joins.iter().for_each(|j| s.push_str(j));
    }
    if schema.tables.len() > 1 {
        s.push_str("\ndiesel::allow_tables_to_appear_in_same_query!(\n");
        for name in schema.tables.keys() {
            let _ = writeln!(s, "    {name},");
        }
        s.push_str(");\n");
    }
    s
}
