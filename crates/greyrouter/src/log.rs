//! Log lines that callers cannot forge.
//!
//! Requests carry text (reasons, actors, names in error messages) that ends up in log lines.
//! A newline, a carriage return or an escape sequence in that text could start a fake log line
//! or rewrite the terminal that shows the log. [`SafeLines`] escapes every control character and
//! every character that hides or reorders text (see `routing_core::validate::hidden`) in what the
//! text formatter writes, keeping only the newline that ends each record; the JSON format
//! escapes them by itself. Escaping happens in the writer, so no call site can forget it.

use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

/// Writes log records to `W`, escaping control and hidden characters inside each record.
#[derive(Debug, Clone)]
pub struct SafeLines<W> {
    inner: W,
}

impl<W> SafeLines<W> {
    /// Wraps a writer (or a `MakeWriter`).
    pub fn new(inner: W) -> Self {
        SafeLines { inner }
    }
}

/// Returns `record` with its control and hidden characters escaped (`\n`, `\x1b`, `\u{202e}`),
/// apart from one final newline.
pub fn escape_record(record: &str) -> String {
    let (body, end) = match record.strip_suffix('\n') {
        Some(body) => (body, "\n"),
        None => (record, ""),
    };
    let mut escaped = String::with_capacity(record.len());
    for c in body.chars() {
        match c {
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            c if c.is_control() && u32::from(c) < 0x100 => {
                escaped.push_str(&format!("\\x{:02x}", u32::from(c)));
            }
            c if c.is_control() || routing_core::validate::hidden(c).is_some() => {
                escaped.push_str(&format!("\\u{{{:04x}}}", u32::from(c)));
            }
            c => escaped.push(c),
        }
    }
    escaped.push_str(end);
    escaped
}

impl<W: Write> Write for SafeLines<W> {
    /// Takes one whole record per call (the formatter writes each record at once) and writes it
    /// escaped.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let record = String::from_utf8_lossy(buf);
        self.inner.write_all(escape_record(&record).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for SafeLines<M> {
    type Writer = SafeLines<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        SafeLines::new(self.inner.make_writer())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_cannot_start_a_fake_log_line() {
        let record = "INFO emergency rollback reason=oops\n2026-01-01T00:00:00Z INFO all good\n";
        assert_eq!(
            escape_record(record),
            "INFO emergency rollback reason=oops\\n2026-01-01T00:00:00Z INFO all good\n"
        );
    }

    #[test]
    fn escape_sequences_nul_and_hidden_characters_are_shown_not_obeyed() {
        assert_eq!(
            escape_record("a\u{1b}[2Jb\0c\rd\u{202e}e\u{200b}f\u{85}\n"),
            "a\\x1b[2Jb\\x00c\\rd\\u{202e}e\\u{200b}f\\x85\n"
        );
        assert_eq!(escape_record("plain"), "plain");
    }

    #[test]
    fn the_writer_escapes_what_the_formatter_writes() {
        use tracing_subscriber::fmt::format::FmtSpan;
        let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_span_events(FmtSpan::NONE)
            .with_writer(SafeLines::new(move || Sink(sink.clone())))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let reason = "bad\nERROR forged line";
            tracing::warn!(reason = %reason, "emergency rollback");
        });
        let written = String::from_utf8(buffer.lock().expect("lock").clone()).expect("utf-8");
        assert_eq!(written.lines().count(), 1, "{written}");
        assert!(written.contains("bad\\nERROR forged line"), "{written}");
    }

    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
}
