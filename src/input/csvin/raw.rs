//! Raw CSV records with the physical lines they cover, in bounded memory.
//!
//! This module owns splitting the bytes of a file into records (`csv_core`, `\n` as the
//! only terminator, so CRLF leaves a `\r` that the caller trims) and counting physical
//! lines exactly: every `\n` ends a line, and a last line without one still counts. Each
//! record knows the first and last line it covers (more than one when a quoted field holds
//! a line break, the symptom of an unbalanced quote), so the caller can account for every
//! line of the file.
//!
//! A record never holds more than [`MAX_RECORD_BYTES`] bytes or [`MAX_FIELDS`] fields: past
//! that (an unbalanced quote that swallows the rest of a large file) its content is dropped
//! while its lines are still counted, and it is marked [`RawRecord::oversized`].

use std::fs::File;
use std::io::{self, BufRead, BufReader};

use super::UTF8_BOM;

/// Largest record whose content is kept.
pub const MAX_RECORD_BYTES: usize = 8 << 20;
/// Most fields of a record whose content is kept.
pub const MAX_FIELDS: usize = 1 << 20;
/// First size of the record buffers.
const INITIAL: usize = 1024;

/// One record and the lines it covers.
#[derive(Debug, Default)]
pub struct RawRecord {
    data: Vec<u8>,
    ends: Vec<usize>,
    len: usize,
    nends: usize,
    /// 1-based physical line where the record starts.
    pub start: u64,
    /// 1-based physical line where the record ends (its terminating `\n` included).
    pub end: u64,
    /// The record was larger than the limits: its fields are not available.
    pub oversized: bool,
}

impl RawRecord {
    /// The raw bytes of each field (empty when [`RawRecord::oversized`]).
    pub fn fields(&self) -> impl Iterator<Item = &[u8]> {
        let ends = if self.oversized {
            &[][..]
        } else {
            &self.ends[..self.nends]
        };
        let data = &self.data[..self.len];
        ends.iter()
            .scan(0, move |start, &end| {
                let field = data.get(*start..end).unwrap_or_default();
                *start = end;
                Some(field)
            })
            .fuse()
    }

    /// Number of fields (0 when [`RawRecord::oversized`]).
    pub fn len(&self) -> usize {
        if self.oversized { 0 } else { self.nends }
    }

    /// All field bytes, concatenated.
    pub fn bytes(&self) -> &[u8] {
        &self.data[..self.len]
    }

    /// Whether the record covers more than one physical line.
    pub fn spans_lines(&self) -> bool {
        self.end > self.start
    }

    fn clear(&mut self) {
        self.len = 0;
        self.nends = 0;
        self.oversized = false;
    }

    /// Makes room in `data` and `ends` for more output; once a limit is reached the record is
    /// oversized and its buffers are reused from the start (its content is lost).
    fn make_room(&mut self) {
        if self.len == self.data.len() {
            if self.data.len() < MAX_RECORD_BYTES {
                let size = (self.data.len() * 2).clamp(INITIAL, MAX_RECORD_BYTES);
                self.data.resize(size, 0);
            } else {
                self.oversized = true;
                self.len = 0;
            }
        }
        if self.nends == self.ends.len() {
            if self.ends.len() < MAX_FIELDS {
                let size = (self.ends.len() * 2).clamp(INITIAL, MAX_FIELDS);
                self.ends.resize(size, 0);
            } else {
                self.oversized = true;
                self.nends = 0;
            }
        }
    }
}

/// Reads records from a file, counting its lines.
pub struct RawReader {
    input: BufReader<File>,
    /// The parser; its line counter counts the `\n` bytes consumed.
    core: csv_core::Reader,
    /// Whether the last byte consumed was `\n` (true before any byte: no open line).
    at_line_start: bool,
    /// Whether any byte has been looked at (a BOM is only skipped at the start).
    started: bool,
    eof: bool,
}

impl RawReader {
    /// Reads `file` from its current position, buffering `capacity` bytes at a time (at least
    /// 3, for a BOM at the start of the file to be skipped).
    pub fn new(file: File, capacity: usize) -> RawReader {
        RawReader {
            input: BufReader::with_capacity(capacity, file),
            core: csv_core::ReaderBuilder::new()
                .terminator(csv_core::Terminator::Any(b'\n'))
                .build(),
            at_line_start: true,
            started: false,
            eof: false,
        }
    }

    /// `\n` bytes consumed so far.
    fn newlines(&self) -> u64 {
        self.core.line() - 1
    }

    /// Physical lines consumed so far; at the end of the file, the file's line count.
    pub fn lines(&self) -> u64 {
        self.newlines() + u64::from(!self.at_line_start)
    }

    /// The line being read (1-based), for error messages.
    pub fn line(&self) -> u64 {
        self.core.line()
    }

    /// Reads the next record into `rec`; `Ok(false)` at the end of the file. Empty lines are
    /// skipped (they lie between one record's `end` and the next one's `start`).
    pub fn read(&mut self, rec: &mut RawRecord) -> io::Result<bool> {
        rec.clear();
        // Line of the record's first byte, once it is known.
        let mut start = None;
        loop {
            rec.make_room();
            let input = if self.eof {
                &[][..]
            } else {
                self.input.fill_buf()?
            };
            let at_eof = input.is_empty();
            self.eof = at_eof;
            if start.is_none() && !at_eof {
                // Empty lines (and a BOM) before a record are skipped here rather than by the
                // parser, so that the record's first line is known.
                let skip = skip_before_record(&mut self.core, &mut self.started, input);
                if skip > 0 {
                    self.at_line_start = input[skip - 1] == b'\n';
                    self.input.consume(skip);
                    continue;
                }
                start = Some(self.core.line());
            }
            let (res, nin, nout, nend) =
                self.core
                    .read_record(input, &mut rec.data[rec.len..], &mut rec.ends[rec.nends..]);
            if let Some(&last) = input[..nin].last() {
                self.at_line_start = last == b'\n';
            }
            self.input.consume(nin);
            rec.len += nout;
            rec.nends += nend;
            match res {
                csv_core::ReadRecordResult::Record => {
                    // A record read from input ended on its `\n`; one completed at the end
                    // of the file (no terminator) ends on the file's last line.
                    rec.end = if at_eof {
                        self.lines()
                    } else {
                        self.newlines()
                    };
                    rec.start = start.unwrap_or(rec.end);
                    return Ok(true);
                }
                csv_core::ReadRecordResult::End => return Ok(false),
                csv_core::ReadRecordResult::InputEmpty if at_eof => return Ok(false),
                csv_core::ReadRecordResult::InputEmpty
                | csv_core::ReadRecordResult::OutputFull
                | csv_core::ReadRecordResult::OutputEndsFull => {}
            }
        }
    }
}

/// How many bytes at the start of `input` come before the next record: a UTF-8 BOM at the
/// start of the file (`started` false), then `\n` bytes (empty lines), which are added to
/// `core`'s line count.
fn skip_before_record(core: &mut csv_core::Reader, started: &mut bool, input: &[u8]) -> usize {
    let bom = if !*started && input.starts_with(UTF8_BOM) {
        UTF8_BOM.len()
    } else {
        0
    };
    *started = true;
    let empty = input[bom..].iter().take_while(|&&b| b == b'\n').count();
    core.set_line(core.line() + empty as u64);
    bom + empty
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// (start, end, fields) of every record of `bytes`, and the line count.
    fn records(bytes: &[u8], capacity: usize) -> (Vec<(u64, u64, Vec<String>)>, u64) {
        let mut f = tempfile::tempfile().expect("temp file");
        f.write_all(bytes).expect("write");
        std::io::Seek::rewind(&mut f).expect("rewind");
        let mut r = RawReader::new(f, capacity);
        let mut rec = RawRecord::default();
        let mut out = Vec::new();
        while r.read(&mut rec).expect("read") {
            let fields = rec
                .fields()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect();
            out.push((rec.start, rec.end, fields));
        }
        (out, r.lines())
    }

    #[test]
    fn lines_are_counted_exactly() {
        for capacity in [1, 3, 64 * 1024] {
            let (recs, lines) = records(b"", capacity);
            assert_eq!((recs.len(), lines), (0, 0));
            let (recs, lines) = records(b"a\n\nb", capacity);
            assert_eq!(lines, 3);
            assert_eq!(recs[0].0..=recs[0].1, 1..=1);
            assert_eq!(recs[1].0..=recs[1].1, 3..=3);
            let (recs, lines) = records(b"a,b\r\n\r\n\"x\ny\",z\r\n\n\n", capacity);
            assert_eq!(lines, 6, "capacity {capacity}");
            assert_eq!(recs[0], (1, 1, vec!["a".into(), "b\r".into()]));
            assert_eq!(recs[1], (2, 2, vec!["\r".into()]));
            assert_eq!(recs[2], (3, 4, vec!["x\ny".into(), "z\r".into()]));
            assert_eq!(recs.len(), 3);
            // A quote never closed runs to the end of the file, with or without a newline.
            for tail in ["", "\n"] {
                let text = format!("h\n1,\"open\n2\n3{tail}");
                let (recs, lines) = records(text.as_bytes(), capacity);
                assert_eq!(lines, 4);
                assert_eq!((recs[1].0, recs[1].1), (2, 4));
            }
        }
    }

    #[test]
    fn oversized_records_keep_their_lines_but_not_their_content() {
        let mut text = b"phone\n\"".to_vec();
        let line = vec![b'x'; 1000];
        let n = MAX_RECORD_BYTES / 1000 + 10;
        for _ in 0..n {
            text.extend_from_slice(&line);
            text.push(b'\n');
        }
        text.extend_from_slice(b"\"\n010\n");
        let mut f = tempfile::tempfile().expect("temp file");
        f.write_all(&text).expect("write");
        std::io::Seek::rewind(&mut f).expect("rewind");
        let mut r = RawReader::new(f, 64 * 1024);
        let mut rec = RawRecord::default();
        assert!(r.read(&mut rec).unwrap());
        assert!(!rec.oversized);
        assert!(r.read(&mut rec).unwrap());
        assert!(rec.oversized);
        assert_eq!((rec.start, rec.end), (2, n as u64 + 2));
        assert_eq!(rec.fields().count(), 0);
        assert!(rec.data.len() <= MAX_RECORD_BYTES);
        assert!(r.read(&mut rec).unwrap());
        assert!(!rec.oversized);
        assert_eq!(rec.fields().collect::<Vec<_>>(), [b"010"]);
        assert_eq!(rec.start, n as u64 + 3);
        assert!(!r.read(&mut rec).unwrap());
        assert_eq!(r.lines(), n as u64 + 3);
    }
}
