//! Log lines off the request's thread: each line is built into one small buffer and
//! handed to a writer thread, which batches them into few `write` calls on stdout.
//!
//! The access line (SPEC §9 `[log] access`) is built by hand, without `fmt`: time,
//! request_id, client, method, path (canonical, no query), route, status, bytes,
//! duration, upstream, upstream_duration, user_id, key_id, user_agent; JSON or
//! `key=value` text as `log.format` says. The process's other log lines (`tracing`) go
//! through the same writer ([`Sink::make_writer`]) so that lines never interleave.
//!
//! A full queue drops lines rather than make requests wait; the drops are counted and
//! reported by the writer. [`Guard`] flushes what is queued when it is dropped (shutdown).

use std::io::Write;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{
    Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, sync_channel,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Lines waiting for the writer at most; beyond, lines are dropped.
const QUEUE: usize = 16 * 1024;

enum Message {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

/// Where lines go: the writer thread's queue.
#[derive(Debug)]
pub struct Sink {
    sender: SyncSender<Message>,
    json: bool,
    dropped: AtomicU64,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Message")
    }
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// The installed sink, if the process installed one ([`install`]).
pub fn sink() -> Option<&'static Sink> {
    SINK.get()
}

/// Flushes the writer when dropped.
#[derive(Debug)]
#[must_use = "lines still queued are lost unless the guard is dropped at exit"]
pub struct Guard(());

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(sink) = sink() {
            sink.flush(Duration::from_secs(5));
        }
    }
}

/// Starts the writer thread on stdout; `json` for JSON lines. A second call returns a
/// guard for the first writer.
///
/// # Panics
/// The thread cannot be started.
pub fn install(json: bool) -> Guard {
    install_on(json, || Box::new(std::io::stdout()))
}

fn install_on(
    json: bool,
    output: impl FnOnce() -> Box<dyn Write + Send> + Send + 'static,
) -> Guard {
    SINK.get_or_init(|| {
        let (sender, receiver) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("rampart-log".into())
            .spawn(move || write_lines(&receiver, output()))
            .expect("the log writer thread starts");
        Sink {
            sender,
            json,
            dropped: AtomicU64::new(0),
        }
    });
    Guard(())
}

/// While lines keep coming, the writer sleeps between batches instead of waiting on the
/// queue: a sender wakes it only when it waits, so under load requests never make a
/// syscall for their line, and the lines of a whole batch go out in few writes.
const BATCH: Duration = Duration::from_millis(10);

fn write_lines(receiver: &Receiver<Message>, output: Box<dyn Write + Send>) {
    let mut output = std::io::BufWriter::with_capacity(64 * 1024, output);
    let handle = |output: &mut std::io::BufWriter<Box<dyn Write + Send>>, message| match message {
        Message::Line(line) => {
            let _ = output.write_all(&line);
        }
        Message::Flush(done) => {
            let _ = output.flush();
            let _ = done.send(());
        }
    };
    // Whether lines were written since the last flush.
    let mut received = false;
    loop {
        loop {
            match receiver.try_recv() {
                Ok(message) => {
                    received = true;
                    handle(&mut output, message);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = output.flush();
                    return;
                }
            }
        }
        if received {
            let _ = output.flush();
            received = false;
            std::thread::sleep(BATCH);
            continue;
        }
        // Idle: wait for the next line.
        match receiver.recv_timeout(Duration::from_secs(1)) {
            Ok(message) => {
                received = true;
                handle(&mut output, message);
            }
            Err(RecvTimeoutError::Timeout) => report_drops(&mut output),
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = output.flush();
}

fn report_drops(output: &mut impl Write) {
    let Some(sink) = sink() else { return };
    let dropped = sink.dropped.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        let _ = writeln!(
            output,
            "{} log lines dropped: the writer fell behind",
            dropped
        );
        let _ = output.flush();
    }
}

impl Sink {
    /// Whether lines are JSON.
    pub fn json(&self) -> bool {
        self.json
    }

    /// Queues a line (ending in `\n`); dropped when the queue is full.
    pub fn send(&self, line: Vec<u8>) {
        match self.sender.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Writes out everything queued so far, waiting at most `timeout`.
    pub fn flush(&self, timeout: Duration) {
        let (done, flushed) = sync_channel(1);
        if self.sender.send(Message::Flush(done)).is_ok() {
            let _ = flushed.recv_timeout(timeout);
        }
    }

    /// A `tracing_subscriber` writer that queues each event as one line.
    pub fn make_writer(&'static self) -> MakeLineWriter {
        MakeLineWriter(self)
    }
}

/// Makes a [`LineWriter`] per event.
#[derive(Debug, Clone, Copy)]
pub struct MakeLineWriter(&'static Sink);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MakeLineWriter {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            sink: self.0,
            line: Vec::with_capacity(256),
        }
    }
}

/// Collects one event's text and queues it when dropped.
#[derive(Debug)]
pub struct LineWriter {
    sink: &'static Sink,
    line: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.sink.send(std::mem::take(&mut self.line));
        }
    }
}

/// One request, as its access line tells it.
#[derive(Debug)]
pub struct Entry<'a> {
    /// The request id.
    pub request_id: &'a str,
    /// The trusted client IP.
    pub client: IpAddr,
    /// The method.
    pub method: &'a str,
    /// The canonical path, without the query.
    pub path: &'a str,
    /// The route pattern (or `unmatched`).
    pub route: &'a str,
    /// The status.
    pub status: u16,
    /// The body's length, when known before it is sent.
    pub bytes: Option<u64>,
    /// Time to the response head.
    pub duration: Duration,
    /// The upstream and its time, for a proxied request.
    pub upstream: Option<(&'a str, Duration)>,
    /// The caller.
    pub user_id: Option<i64>,
    /// The API key used.
    pub key_id: Option<i64>,
    /// `User-Agent`.
    pub user_agent: Option<&'a [u8]>,
}

impl Entry<'_> {
    /// The line, JSON or text, ending in `\n`.
    pub fn line(&self, json: bool, now: SystemTime) -> Vec<u8> {
        let mut out = Vec::with_capacity(320);
        if json {
            self.json(&mut out, now);
        } else {
            self.text(&mut out, now);
        }
        out.push(b'\n');
        out
    }

    fn json(&self, out: &mut Vec<u8>, now: SystemTime) {
        out.extend_from_slice(b"{\"time\":\"");
        push_time(out, now);
        out.extend_from_slice(
            b"\",\"level\":\"INFO\",\"target\":\"rampart::access\",\"request_id\":\"",
        );
        push_escaped(out, self.request_id.as_bytes());
        out.extend_from_slice(b"\",\"client\":\"");
        push_ip(out, self.client);
        out.extend_from_slice(b"\",\"method\":\"");
        push_escaped(out, self.method.as_bytes());
        out.extend_from_slice(b"\",\"path\":\"");
        push_escaped(out, self.path.as_bytes());
        out.extend_from_slice(b"\",\"route\":\"");
        push_escaped(out, self.route.as_bytes());
        out.extend_from_slice(b"\",\"status\":");
        push_int(out, u64::from(self.status));
        out.extend_from_slice(b",\"bytes\":");
        push_optional(out, self.bytes);
        out.extend_from_slice(b",\"duration_us\":");
        push_int(out, micros(self.duration));
        match self.upstream {
            Some((name, took)) => {
                out.extend_from_slice(b",\"upstream\":\"");
                push_escaped(out, name.as_bytes());
                out.extend_from_slice(b"\",\"upstream_duration_us\":");
                push_int(out, micros(took));
            }
            None => out.extend_from_slice(b",\"upstream\":null,\"upstream_duration_us\":null"),
        }
        out.extend_from_slice(b",\"user_id\":");
        push_optional_signed(out, self.user_id);
        out.extend_from_slice(b",\"key_id\":");
        push_optional_signed(out, self.key_id);
        out.extend_from_slice(b",\"user_agent\":");
        match self.user_agent {
            Some(agent) => {
                out.push(b'"');
                push_escaped(out, agent);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
    }

    fn text(&self, out: &mut Vec<u8>, now: SystemTime) {
        push_time(out, now);
        out.extend_from_slice(b" INFO rampart::access request_id=");
        push_escaped(out, self.request_id.as_bytes());
        out.extend_from_slice(b" client=");
        push_ip(out, self.client);
        out.extend_from_slice(b" method=");
        push_escaped(out, self.method.as_bytes());
        out.extend_from_slice(b" path=");
        push_escaped(out, self.path.as_bytes());
        out.extend_from_slice(b" route=");
        push_escaped(out, self.route.as_bytes());
        out.extend_from_slice(b" status=");
        push_int(out, u64::from(self.status));
        out.extend_from_slice(b" bytes=");
        match self.bytes {
            Some(bytes) => push_int(out, bytes),
            None => out.push(b'-'),
        }
        out.extend_from_slice(b" duration_us=");
        push_int(out, micros(self.duration));
        if let Some((name, took)) = self.upstream {
            out.extend_from_slice(b" upstream=");
            push_escaped(out, name.as_bytes());
            out.extend_from_slice(b" upstream_duration_us=");
            push_int(out, micros(took));
        }
        if let Some(user) = self.user_id {
            out.extend_from_slice(b" user_id=");
            push_signed(out, user);
        }
        if let Some(key) = self.key_id {
            out.extend_from_slice(b" key_id=");
            push_signed(out, key);
        }
        if let Some(agent) = self.user_agent {
            out.extend_from_slice(b" user_agent=\"");
            push_escaped(out, agent);
            out.push(b'"');
        }
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn push_int(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

fn push_signed(out: &mut Vec<u8>, value: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

fn push_optional(out: &mut Vec<u8>, value: Option<u64>) {
    match value {
        Some(value) => push_int(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_optional_signed(out: &mut Vec<u8>, value: Option<i64>) {
    match value {
        Some(value) => push_signed(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(ip) => {
            for (index, octet) in ip.octets().into_iter().enumerate() {
                if index > 0 {
                    out.push(b'.');
                }
                push_int(out, u64::from(octet));
            }
        }
        // Rare enough on this path to go through `fmt`.
        IpAddr::V6(ip) => {
            let _ = write!(out, "{ip}");
        }
    }
}

/// The most bytes of one client-sent field (path, user agent) a line carries: a line stays
/// small whatever the client sends, so a queue of lines waiting for a slow stdout is bounded
/// in bytes as well as in lines. A longer field ends in `...`.
const MAX_FIELD: usize = 512;

/// Copies `bytes` as the inside of a JSON string (also safe in a quoted text value): `"`
/// and `\` escaped, control characters and every byte outside printable ASCII as
/// `\u00XX`, so that no client-sent byte can break or forge a line.
fn push_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let cut = bytes.len() > MAX_FIELD;
    let bytes = &bytes[..bytes.len().min(MAX_FIELD)];
    for &byte in bytes {
        match byte {
            b'"' | b'\\' => {
                out.push(b'\\');
                out.push(byte);
            }
            0x20..=0x7e => out.push(byte),
            _ => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(byte >> 4)]);
                out.push(HEX[usize::from(byte & 0xf)]);
            }
        }
    }
    if cut {
        out.extend_from_slice(b"...");
    }
}

/// RFC 3339 UTC with milliseconds: `2026-12-02T06:10:00.123Z`.
fn push_time(out: &mut Vec<u8>, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs();
    let days = i64::try_from(seconds / 86_400).unwrap_or(0);
    let of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    let two = |out: &mut Vec<u8>, value: u64| {
        out.push(b'0' + u8::try_from(value / 10 % 10).unwrap_or(0));
        out.push(b'0' + u8::try_from(value % 10).unwrap_or(0));
    };
    push_int(out, u64::try_from(year).unwrap_or(0));
    out.push(b'-');
    two(out, u64::from(month));
    out.push(b'-');
    two(out, u64::from(day));
    out.push(b'T');
    two(out, of_day / 3600);
    out.push(b':');
    two(out, of_day / 60 % 60);
    out.push(b':');
    two(out, of_day % 60);
    out.push(b'.');
    let millis = u64::from(since.subsec_millis());
    out.push(b'0' + u8::try_from(millis / 100).unwrap_or(0));
    two(out, millis % 100);
    out.push(b'Z');
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = u32::try_from(day_of_year - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            request_id: "01J9ZQ5K3V0000000000000000",
            client: "203.0.113.9".parse().unwrap(),
            method: "GET",
            path: "/orders/7",
            route: "/orders/*",
            status: 200,
            bytes: Some(17),
            duration: Duration::from_micros(1234),
            upstream: Some(("orders", Duration::from_micros(1000))),
            user_id: Some(42),
            key_id: None,
            user_agent: Some(b"curl/8 \"quoted\"\n\xff"),
        }
    }

    #[test]
    fn the_json_line_parses_and_holds_every_field() {
        let now = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        let line = entry().line(true, now);
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|byte| **byte == b'\n').count(), 1);
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["time"], "2026-11-18T11:06:40.123Z");
        assert_eq!(value["request_id"], "01J9ZQ5K3V0000000000000000");
        assert_eq!(value["client"], "203.0.113.9");
        assert_eq!(value["method"], "GET");
        assert_eq!(value["path"], "/orders/7");
        assert_eq!(value["route"], "/orders/*");
        assert_eq!(value["status"], 200);
        assert_eq!(value["bytes"], 17);
        assert_eq!(value["duration_us"], 1234);
        assert_eq!(value["upstream"], "orders");
        assert_eq!(value["upstream_duration_us"], 1000);
        assert_eq!(value["user_id"], 42);
        assert!(value["key_id"].is_null());
        assert_eq!(value["user_agent"], "curl/8 \"quoted\"\n\u{ff}");

        // A client's huge field is cut: the line stays small.
        let agent = vec![0xffu8; 30_000];
        let long = Entry {
            user_agent: Some(&agent),
            ..entry()
        };
        let line = long.line(true, now);
        assert!(line.len() < 4 * 1024, "{} bytes", line.len());
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert!(value["user_agent"].as_str().unwrap().ends_with("..."));
    }

    #[test]
    fn the_text_line_is_one_line_without_colour() {
        let line = entry().line(false, UNIX_EPOCH);
        let text = String::from_utf8(line).unwrap();
        assert!(text.starts_with("1970-01-01T00:00:00.000Z INFO rampart::access "));
        assert!(text.contains(" status=200 "), "{text}");
        assert!(text.contains(" user_id=42"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        assert_eq!(text.matches('\n').count(), 1, "{text}");
    }

    /// Collects what the writer thread writes.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn queued_lines_are_written_in_order_and_flushed_on_request() {
        let captured = Captured::default();
        let output = captured.clone();
        let guard = install_on(true, move || Box::new(output));
        let sink = sink().unwrap();
        for index in 0..1000 {
            sink.send(format!("line {index}\n").into_bytes());
        }
        drop(guard);
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1000, "every line, once: {}", lines.len());
        assert_eq!(lines[0], "line 0");
        assert_eq!(lines[999], "line 999");
    }

    #[test]
    fn dates_match_the_calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_424), (2025, 12, 2));
        let mut out = Vec::new();
        push_time(
            &mut out,
            UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_661),
        );
        assert_eq!(out, b"2000-02-29T01:01:01.000Z");
    }
}
