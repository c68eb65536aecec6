//! A call of one of the ledger's PostgreSQL functions as a statement
//! PostgreSQL keeps prepared: `diesel::sql_query` is never cached, so each
//! hold and resolution was parsed and planned again; this fragment's SQL is
//! fixed, so diesel-async prepares it once per connection and afterwards
//! only binds and executes it.

use chrono::NaiveDateTime;
use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Nullable, Text, Timestamp, Untyped};

/// One argument of the call.
pub(crate) enum Arg<'a> {
    Text(&'a str),
    OptText(&'a Option<String>),
    Int(&'a i64),
    OptInt(&'a Option<i64>),
    Time(&'a NaiveDateTime),
}

/// `head` (ending in `(`), the arguments as parameters, then `)`.
pub(crate) struct Call<'a> {
    pub(crate) head: &'static str,
    pub(crate) args: Vec<Arg<'a>>,
}

impl QueryFragment<Pg> for Call<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(self.head);
        for (i, arg) in self.args.iter().enumerate() {
            if i > 0 {
                out.push_sql(", ");
            }
            match arg {
                Arg::Text(v) => out.push_bind_param::<Text, str>(v)?,
                Arg::OptText(v) => out.push_bind_param::<Nullable<Text>, Option<String>>(v)?,
                Arg::Int(v) => out.push_bind_param::<BigInt, i64>(v)?,
                Arg::OptInt(v) => out.push_bind_param::<Nullable<BigInt>, Option<i64>>(v)?,
                Arg::Time(v) => out.push_bind_param::<Timestamp, NaiveDateTime>(v)?,
            }
        }
        out.push_sql(")");
        Ok(())
    }
}

impl QueryId for Call<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Call<'_> {
    type SqlType = Untyped;
}
