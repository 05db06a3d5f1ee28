//! Tests of records and line accounting: quoted fields, records spanning lines, lines too
//! long, blank lines and a last line without a newline; every physical line is counted once.

use super::*;

/// Every row and the line counts of `f`; asserts that the counts add up.
fn read_all(src: CsvSource) -> (Vec<RowResult>, LineCounts) {
    let mut rows = src.rows();
    let all: Vec<RowResult> = rows.by_ref().collect::<Result<_, _>>().expect("rows");
    let counts = rows.line_counts().expect("read to the end");
    let row_lines: u64 = all
        .iter()
        .map(|r| match r {
            RowResult::Ok(_) => 1,
            RowResult::Rejected { line, end_line, .. } => end_line - line + 1,
        })
        .sum();
    assert_eq!(
        counts.header + counts.blank + row_lines,
        counts.lines,
        "{counts:?} {all:?}"
    );
    (all, counts)
}

/// Physical lines of `bytes`, counted independently of the reader.
fn physical_lines(bytes: &[u8]) -> u64 {
    let newlines = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
    newlines + u64::from(!bytes.is_empty() && !bytes.ends_with(b"\n"))
}

#[test]
fn quoted_commas_are_fields_and_a_record_spanning_lines_is_one_rejected_row() {
    let text = "phone,memo\n\
                010-1,\"a, b\"\n\
                010-2,\"line one\nline two\n\nline four\"\n\
                \n\
                010-3,\"say \"\"hi\"\"\"\n\
                010-4,plain";
    for crlf in [false, true] {
        let text = if crlf {
            text.replace('\n', "\r\n")
        } else {
            text.to_string()
        };
        let f = write_file(text.as_bytes());
        let (rows, counts) = read_all(CsvSource::open(f.path()).unwrap());
        assert_eq!(
            counts,
            LineCounts {
                lines: 9,
                header: 1,
                blank: 1
            },
            "crlf={crlf}"
        );
        let ok = ok_rows(&rows);
        let lines: Vec<u64> = ok.iter().map(|r| r.line).collect();
        assert_eq!(lines, [2, 8, 9], "crlf={crlf}");
        assert_eq!(ok[0].fields, fields(&[("memo", "a, b")]));
        assert_eq!(ok[1].fields, fields(&[("memo", "say \"hi\"")]));
        assert_eq!(ok[2].phone, "010-4");
        let RowResult::Rejected {
            line,
            end_line,
            reason,
            detail,
        } = &rows[1]
        else {
            panic!("{:?}", rows[1]);
        };
        assert_eq!(
            (*line, *end_line, reason.as_str()),
            (3, 6, "multiline_record")
        );
        assert_eq!(
            detail,
            "a quoted field opened on line 3 runs to line 6, so lines 3-6 read as one row: \
             check line 3 for an unbalanced quote (\"); none of these lines was used"
        );
    }
}

#[test]
fn an_unbalanced_quote_swallows_lines_into_one_rejected_row_not_into_a_field() {
    // Line 3 opens a quote; the quote on line 7 closes it. Lines 4-6 would otherwise be
    // three numbers inside row 3's memo, and line 7 the rest of the same row.
    let text = "phone,memo\n\
                010-1000-0001,ok\n\
                010-1000-0002,\"web form\n\
                010-1000-0003,a\n\
                010-1000-0004,b\n\
                010-1000-0005,c\n\
                010-1000-0006,\"d\"\n\
                010-1000-0007,e\n";
    let f = write_file(text.as_bytes());
    let (rows, counts) = read_all(CsvSource::open(f.path()).unwrap());
    assert_eq!(counts.lines, 8);
    let ok = ok_rows(&rows);
    let phones: Vec<&str> = ok.iter().map(|r| r.phone.as_str()).collect();
    assert_eq!(phones, ["010-1000-0001", "010-1000-0007"]);
    assert!(ok.iter().all(|r| !r.fields[0].1.contains("010")), "{ok:?}");
    assert!(matches!(
        &rows[1],
        RowResult::Rejected { line: 3, end_line: 7, reason, .. } if reason == "multiline_record"
    ));

    // A quote never closed runs to the end of the file, with or without a final newline.
    for tail in ["", "\n"] {
        let f = write_file(format!("phone\n010-1\n\"010-2\n010-3\n010-4{tail}").as_bytes());
        let (rows, counts) = read_all(CsvSource::open(f.path()).unwrap());
        assert_eq!(counts.lines, 5);
        assert!(matches!(
            &rows[1],
            RowResult::Rejected {
                line: 3,
                end_line: 5,
                ..
            }
        ));
        assert_eq!(rows.len(), 2);
    }
}

#[test]
fn line_counts_add_up_with_any_line_ending_blank_lines_and_bom() {
    let bodies = [
        "phone,name\n010-1,a\n010-2,b\n",
        "phone,name\n010-1,a\n010-2,b",
        "\n\nphone,name\n\n010-1,a\n,\n  ,  \n010-2,b\n\n\n",
        "phone,name\n010-1,a\n010-2,b\n\n",
        "phone,name\n010-1,a,extra\n010-2\n",
        "phone,name\n010-1,\"a\nb\"\n010-2,b",
    ];
    for body in bodies {
        for crlf in [false, true] {
            for bom in [false, true] {
                let mut bytes = if bom { UTF8_BOM.to_vec() } else { Vec::new() };
                if crlf {
                    bytes.extend_from_slice(body.replace('\n', "\r\n").as_bytes());
                } else {
                    bytes.extend_from_slice(body.as_bytes());
                }
                let f = write_file(&bytes);
                let src = CsvSource::open(f.path()).unwrap();
                assert_eq!(src.columns(), ["phone", "name"]);
                let (_, counts) = read_all(src);
                assert_eq!(
                    counts.lines,
                    physical_lines(&bytes),
                    "{body:?} crlf={crlf} bom={bom}"
                );
            }
        }
    }
    let f = write_file(b"\n\nphone\n\n010-1\n,\n\n");
    let (rows, counts) = read_all(CsvSource::open(f.path()).unwrap());
    assert_eq!(rows.len(), 1);
    assert_eq!(
        counts,
        LineCounts {
            lines: 7,
            header: 1,
            blank: 5
        }
    );
}

#[test]
fn a_line_too_long_to_hold_is_one_rejected_row() {
    let mut bytes = b"phone,memo\n010-1,".to_vec();
    bytes.resize(bytes.len() + raw::MAX_RECORD_BYTES + 1, b'x');
    bytes.extend_from_slice(b"\n010-2,ok\n");
    let f = write_file(&bytes);
    let (rows, counts) = read_all(CsvSource::open(f.path()).unwrap());
    assert_eq!(counts.lines, 3);
    assert!(
        matches!(
            &rows[0],
            RowResult::Rejected { line: 2, end_line: 2, reason, .. } if reason == "line_too_long"
        ),
        "{:?}",
        rows[0]
    );
    assert!(matches!(&rows[1], RowResult::Ok(Row { line: 3, .. })));
}

#[test]
fn a_header_spanning_lines_is_refused() {
    let f = write_file(b"phone,\"name\n010-1,a\n010-2,\"b\"\n");
    let err = CsvSource::open(f.path()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CsvError::Header { line: 1, .. }), "{msg}");
    assert!(msg.contains("the header runs on to line 3"), "{msg}");
    assert!(msg.contains("unbalanced quote"), "{msg}");
}

#[test]
fn blank_and_empty_lines_are_ignored() {
    let f = write_file(b"\nphone,name\n\n010-1,a\n,\n  ,  \n010-2,b\n\n\n\r\n");
    let src = CsvSource::open(f.path()).unwrap();
    let rows = all_rows(src);
    let lines: Vec<u64> = ok_rows(&rows).iter().map(|r| r.line).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(lines, [4, 7]);
}

#[test]
fn last_line_without_newline() {
    let f = write_file(b"phone\n010-1\n010-2");
    let (rows, counts) = read_all(CsvSource::open(f.path()).unwrap());
    let lines: Vec<u64> = ok_rows(&rows).iter().map(|r| r.line).collect();
    assert_eq!(lines, [2, 3]);
    assert_eq!(counts.lines, 3);
    let f = write_file(b"phone\n010-1\n\"010\n-2\"");
    let (rows, counts) = read_all(CsvSource::open(f.path()).unwrap());
    let lines: Vec<u64> = ok_rows(&rows).iter().map(|r| r.line).collect();
    assert_eq!(lines, [2]);
    assert!(matches!(
        &rows[1],
        RowResult::Rejected {
            line: 3,
            end_line: 4,
            ..
        }
    ));
    assert_eq!(counts.lines, 4);
}
