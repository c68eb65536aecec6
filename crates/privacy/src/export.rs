//! The export archive (access and portability, docs/PRIVACY.md): one JSON
//! Lines document. Its first line is the manifest —
//! `{"type":"manifest","schema_version":1,"subject":…,"created_at":…,"classes":[{"class":…,"records":n},…]}`
//! — and every other line one record of one class,
//! `{"type":"record","class":"executions","record":{…}}`, the classes in
//! the manifest's order. The owning crates hand their records over as
//! they serialise them for their API (never a secret); this module only
//! writes the format, so a reader needs nothing but a JSON parser.

use chrono::NaiveDateTime;
use serde::Serialize;
use serde_json::{Value, json};

/// The version of the archive's format; bumped on any change a reader
/// would notice.
pub const EXPORT_SCHEMA_VERSION: u32 = 1;

/// An export being written.
#[derive(Debug, Default)]
pub struct Export {
    classes: Vec<(String, u64)>,
    lines: Vec<u8>,
}

impl Export {
    /// An empty export.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `records` as the class `class` (a class may be empty; it is
    /// still listed, so a reader tells "none" from "not exported").
    ///
    /// # Errors
    /// A record that does not serialise.
    pub fn class<T: Serialize>(&mut self, class: &str, records: &[T]) -> Result<(), serde_json::Error> {
        for r in records {
            let line = json!({ "type": "record", "class": class, "record": r });
            serde_json::to_writer(&mut self.lines, &line)?;
            self.lines.push(b'\n');
        }
        self.classes.push((class.to_owned(), u64::try_from(records.len()).unwrap_or(u64::MAX)));
        Ok(())
    }

    /// The archive: the manifest (naming `subject`, e.g. `{"org": …}`), then the records.
    ///
    /// # Errors
    /// Never in practice (the manifest is plain JSON).
    pub fn finish(self, subject: &Value, created_at: NaiveDateTime) -> Result<Vec<u8>, serde_json::Error> {
        let classes: Vec<Value> = self.classes.iter().map(|(c, n)| json!({ "class": c, "records": n })).collect();
        let manifest = json!({
            "type": "manifest",
            "schema_version": EXPORT_SCHEMA_VERSION,
            "subject": subject,
            "created_at": created_at.and_utc().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "classes": classes,
        });
        let mut out = serde_json::to_vec(&manifest)?;
        out.push(b'\n');
        out.extend_from_slice(&self.lines);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_comes_first_and_counts_every_class_even_an_empty_one() {
        let mut e = Export::new();
        e.class("members", &[json!({ "email": "a@example.com" }), json!({ "email": "b@example.com" })]).unwrap();
        e.class("files", &Vec::<Value>::new()).unwrap();
        let at = chrono::NaiveDate::from_ymd_opt(2026, 12, 5).unwrap().and_hms_opt(1, 2, 3).unwrap();
        let out = String::from_utf8(e.finish(&json!({ "org": "org_x" }), at).unwrap()).unwrap();
        let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["type"], "manifest");
        assert_eq!(lines[0]["schema_version"], 1);
        assert_eq!(
            lines[0]["classes"],
            json!([{ "class": "members", "records": 2 }, { "class": "files", "records": 0 }])
        );
        assert_eq!(lines[2]["record"]["email"], "b@example.com");
        assert_eq!(lines[1]["class"], "members");
    }
}
