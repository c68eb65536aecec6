//! What a file's first bytes say it is, and whether that agrees with the
//! type the client declared. Only the head is looked at (the first
//! [`HEAD_BYTES`]): enough for every signature below and for a text check.

/// Bytes of the head the checks look at.
pub const HEAD_BYTES: usize = 512;

/// The content type a head's magic bytes name, if any.
#[must_use]
pub fn detect(head: &[u8]) -> Option<&'static str> {
    let starts = |sig: &[u8]| head.starts_with(sig);
    let at = |offset: usize, sig: &[u8]| head.get(offset..offset + sig.len()) == Some(sig);
    if starts(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if starts(b"\xff\xd8\xff") {
        Some("image/jpeg")
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        Some("image/gif")
    } else if starts(b"RIFF") && at(8, b"WEBP") {
        Some("image/webp")
    } else if starts(b"RIFF") && at(8, b"WAVE") {
        Some("audio/wav")
    } else if starts(b"%PDF-") {
        Some("application/pdf")
    } else if starts(b"ID3") || matches!(head, [0xff, second, ..] if second & 0xe0 == 0xe0) {
        Some("audio/mpeg")
    } else if starts(b"OggS") {
        Some("audio/ogg")
    } else if starts(b"fLaC") {
        Some("audio/flac")
    } else if at(4, b"ftyp") {
        Some("video/mp4")
    } else if starts(b"\x1a\x45\xdf\xa3") {
        Some("video/webm")
    } else if is_text(head) {
        Some("text/plain")
    } else {
        None
    }
}

/// Whether a head is UTF-8 text without NUL bytes (a character cut at the
/// head's end is fine).
fn is_text(head: &[u8]) -> bool {
    if head.contains(&0) {
        return false;
    }
    match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    }
}

/// Whether `declared` is a text type (checked by [`is_text`], since text
/// has no magic bytes).
fn is_text_type(declared: &str) -> bool {
    declared.starts_with("text/") || declared == "application/json" || declared == "application/jsonl"
}

/// The type without parameters, lowercase (`Text/Plain; charset=utf-8` →
/// `text/plain`), and the common aliases folded (`image/jpg`, `audio/x-wav`).
#[must_use]
pub fn normalize(content_type: &str) -> String {
    let base = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match base.as_str() {
        "image/jpg" | "image/pjpeg" => "image/jpeg".into(),
        "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => "audio/wav".into(),
        "audio/mp3" => "audio/mpeg".into(),
        "audio/x-flac" => "audio/flac".into(),
        "application/x-ndjson" | "application/x-jsonlines" => "application/jsonl".into(),
        _ => base,
    }
}

/// Checks a head against the declared type. `Ok(detected)` when they agree
/// (the detected type, when the head names one); `Err` says why not.
///
/// # Errors
/// A binary type whose signature is missing or is another type's, or a text
/// type whose head is not text.
pub fn check(declared: &str, head: &[u8]) -> Result<Option<&'static str>, String> {
    let detected = detect(head);
    if is_text_type(declared) {
        return if detected == Some("text/plain") {
            Ok(detected)
        } else {
            Err(format!(
                "declared {declared}, but the content is {}",
                detected.map_or_else(|| "not UTF-8 text".to_owned(), |d| format!("{d} data"))
            ))
        };
    }
    match detected {
        Some(d) if d == declared => Ok(Some(d)),
        // A signature this module does not know for the declared type:
        // only an allowed type reaches here, and each has one above.
        Some("text/plain") | None => Err(format!("declared {declared}, but the content does not start as one")),
        Some(d) => Err(format!("declared {declared}, but the content is {d} data")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_each_signature() {
        let cases: &[(&[u8], &str)] = &[
            (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "image/png"),
            (b"\xff\xd8\xff\xe0\0\x10JFIF", "image/jpeg"),
            (b"GIF89a\x01\0", "image/gif"),
            (b"RIFF\x24\0\0\0WEBPVP8 ", "image/webp"),
            (b"RIFF\x24\0\0\0WAVEfmt ", "audio/wav"),
            (b"%PDF-1.7\n", "application/pdf"),
            (b"ID3\x04\0\0", "audio/mpeg"),
            (b"\xff\xfb\x90\x64", "audio/mpeg"),
            (b"OggS\0\x02", "audio/ogg"),
            (b"fLaC\0\0\0\x22", "audio/flac"),
            (b"\0\0\0\x20ftypisom", "video/mp4"),
            (b"\x1a\x45\xdf\xa3\x9f", "video/webm"),
            ("héllo, wörld\n".as_bytes(), "text/plain"),
        ];
        for (head, want) in cases {
            assert_eq!(detect(head), Some(*want), "{head:?}");
        }
        assert_eq!(detect(b"\0\x01\x02garbage"), None);
        assert_eq!(detect(b"\xc3"), Some("text/plain"), "a character cut at the end is still text");
        assert_eq!(detect(b"\xc3\x28abc"), None, "an invalid sequence is not text");
    }

    #[test]
    fn declared_and_detected_must_agree() {
        assert_eq!(check("image/png", b"\x89PNG\r\n\x1a\n..."), Ok(Some("image/png")));
        assert!(check("image/png", b"%PDF-1.4").unwrap_err().contains("application/pdf"));
        assert!(check("image/png", b"just text").unwrap_err().contains("does not start as one"));
        assert!(check("application/pdf", b"\0\0\0").is_err());
        assert_eq!(check("text/csv", b"a,b\n1,2\n"), Ok(Some("text/plain")));
        assert_eq!(check("application/json", br#"{"a":1}"#), Ok(Some("text/plain")));
        assert!(check("text/plain", b"\x89PNG\r\n\x1a\n").unwrap_err().contains("image/png"));
        assert!(check("text/plain", b"\0\0binary").unwrap_err().contains("not UTF-8"));
    }

    #[test]
    fn normalizes_parameters_case_and_aliases() {
        assert_eq!(normalize("Text/Plain; charset=UTF-8"), "text/plain");
        assert_eq!(normalize("image/jpg"), "image/jpeg");
        assert_eq!(normalize(" audio/x-wav "), "audio/wav");
    }
}
