//! The trail as JSON lines or CSV, in id order, between two times: `GET
//! /admin/audit/export` and `rampart audit export` stream the same text.

use std::sync::Arc;

use crate::audit::AuditRecord;
use crate::store::Store;
use crate::time_format::rfc3339;

/// How each row is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object a line, as `GET /admin/audit` shows a row (`at` in RFC 3339 UTC).
    Jsonl,
    /// A header line, then every field quoted (RFC 4180), formulas neutralised.
    Csv,
}

/// Rows read a page at a time.
const PAGE: i64 = 500;

/// The CSV header line.
pub const CSV_HEADER: &str = "\"id\",\"at\",\"user_id\",\"action\",\"details\",\"ip_address\",\
                              \"user_agent\",\"request_id\",\"prev_hash\",\"hash\"\n";

/// Whether a spreadsheet could read `text` as a formula (OWASP CSV injection): it starts
/// with `=`, `+`, `-`, `@`, a tab or a carriage return, or, after leading whitespace or
/// control characters that some spreadsheets skip, with one of the formula characters
/// (full-width forms included).
fn is_formula_like(text: &str) -> bool {
    if text.starts_with(['\t', '\r', '\n']) {
        return true;
    }
    text.chars()
        // Invisible characters a spreadsheet skips do not hide a formula behind them.
        .find(|c| {
            !c.is_whitespace()
                && !c.is_control()
                && !matches!(
                    c,
                    '\u{FEFF}' | '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{2060}'
                )
        })
        .is_some_and(|c| {
            matches!(
                c,
                '=' | '+' | '-' | '@' | '\u{FF1D}' | '\u{FF0B}' | '\u{FF0D}' | '\u{FF20}'
            )
        })
}

/// One CSV field, always quoted, with a leading apostrophe on anything a spreadsheet would
/// read as a formula.
fn csv_field(text: &str) -> String {
    // Quote every field; neutralise spreadsheet formulas with a leading apostrophe.
    let text = if is_formula_like(text) {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    format!("\"{}\"", text.replace('"', "\"\""))
}

/// One record as a CSV row, in the columns of the header line.
fn csv_line(record: &AuditRecord) -> String {
    let fields = [
        record.id.to_string(),
        rfc3339(record.at),
        record.user_id.map(|id| id.to_string()).unwrap_or_default(),
        record.action.clone(),
        record.details.clone(),
        record.ip_address.clone().unwrap_or_default(),
        record.user_agent.clone().unwrap_or_default(),
        record.request_id.clone(),
        record.prev_hash.clone(),
        record.hash.clone(),
    ];
    let mut line = fields
        .iter()
        .map(|field| csv_field(field))
        .collect::<Vec<_>>()
        .join(",");
    line.push('\n');
    line
}

/// `record` as one JSON line.
pub fn jsonl_line(record: &AuditRecord) -> String {
    let mut line = serde_json::to_string(record).unwrap_or_default();
    line.push('\n');
    line
}

/// `record` as one line of `format`.
pub fn line(record: &AuditRecord, format: Format) -> String {
    match format {
        Format::Jsonl => jsonl_line(record),
        Format::Csv => csv_line(record),
    }
}

/// The rows with `since <= at < until` (either bound optional), in id order, one chunk of
/// text a page; the CSV header first. Only one page is held at a time.
pub fn stream(
    store: Arc<dyn Store>,
    since: Option<i64>,
    until: Option<i64>,
    format: Format,
) -> impl futures::Stream<Item = Result<String, std::io::Error>> {
    let header = (format == Format::Csv).then(|| CSV_HEADER.to_owned());
    let first = futures::stream::iter(header.map(Ok));
    let pages = futures::stream::unfold(Some(0i64), move |after| {
        let store = store.clone();
        async move {
            let after = after?;
            match store.audit_page(after, PAGE).await {
                Ok(page) if page.is_empty() => None,
                Ok(page) => {
                    let last = page.last().map(|record| record.id);
                    let chunk: String = page
                        .iter()
                        .filter(|record| since.is_none_or(|since| record.at >= since))
                        .filter(|record| until.is_none_or(|until| record.at < until))
                        .map(|record| line(record, format))
                        .collect();
                    Some((Ok(chunk), last))
                }
                Err(error) => Some((Err(std::io::Error::other(error.to_string())), None)),
            }
        }
    });
    futures::StreamExt::chain(first, pages)
}

/// Writes [`stream`]'s text to `out` (e.g. standard output) as each page arrives.
///
/// # Errors
/// The store fails, or `out` does (a closed pipe included).
pub async fn write(
    store: Arc<dyn Store>,
    since: Option<i64>,
    until: Option<i64>,
    format: Format,
    out: &mut (dyn std::io::Write + Send),
) -> std::io::Result<()> {
    use futures::StreamExt as _;
    let mut chunks = std::pin::pin!(stream(store, since, until, format));
    while let Some(chunk) = chunks.next().await {
        out.write_all(chunk?.as_bytes())?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_that_a_spreadsheet_would_evaluate_are_neutralised() {
        for text in [
            "=1+1",
            "+1",
            "-1",
            "@SUM(A1)",
            "\t=cmd",
            "\u{FEFF}=cmd",
            "\u{200B}+1",
            "\tplain",
            "\r=cmd",
            "\rplain",
            "\n=cmd",
            " =cmd",
            "  \u{a0}+cmd",
            "\u{FF1D}cmd",
        ] {
            let field = csv_field(text);
            assert!(field.starts_with("\"'"), "{text:?} became {field:?}");
        }
        for text in ["", "plain", "a=b", "{k:1}", "1.2.3.4", " plain"] {
            assert_eq!(csv_field(text), format!("\"{text}\""), "{text:?}");
        }
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
