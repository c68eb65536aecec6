//! Which characters client-given text may hold.
//!
//! Names (of orgs, projects, keys, people) are shown to other people, in
//! the dashboard and in emails: they may not hold control characters (NUL,
//! which PostgreSQL cannot store; newlines and tabs, which split a line of
//! an email or a log), Unicode's line and paragraph separators, or the
//! bidirectional controls that make text display as something else
//! (`"Acme\u{202e}moc.live"` shows as "Acmeevil.com"). Filters in query
//! strings may not hold control characters.

/// Whether `c` may not appear in a name.
#[must_use]
pub fn forbidden_in_name(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' // line and paragraph separators
            | '\u{200e}' | '\u{200f}' | '\u{061c}' // direction marks
            | '\u{202a}'..='\u{202e}' // embeddings and overrides
            | '\u{2066}'..='\u{2069}' // isolates
        )
}

/// Why `name` may not be a name, if it may not.
#[must_use]
pub fn name_problem(name: &str) -> Option<&'static str> {
    let bad = name.chars().find(|c| forbidden_in_name(*c))?;
    Some(if bad.is_control() {
        "must not contain control characters (NUL, newlines, tabs)"
    } else {
        "must not contain line separators or bidirectional controls"
    })
}

/// Whether `value` holds a control character (refused in filters).
#[must_use]
pub fn has_control(value: &str) -> bool {
    value.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_controls_separators_and_bidi() {
        for ok in ["Acme", "Ada Lovelace", "Zürich GmbH", "株式会社", "O'Brien & Sons", "emoji 🚀", "עברית"]
        {
            assert_eq!(name_problem(ok), None, "{ok}");
        }
        for bad in [
            "a\0b",
            "a\nb",
            "a\r\nb",
            "a\tb",
            "a\u{7f}",
            "a\u{85}b",
            "a\u{2028}b",
            "Acme\u{202e}moc",
            "a\u{2066}b\u{2069}",
            "a\u{200f}",
        ] {
            assert!(name_problem(bad).is_some(), "{bad:?}");
        }
        assert!(has_control("x\0") && has_control("\n") && !has_control("gpt-4o/mini"));
    }
}
