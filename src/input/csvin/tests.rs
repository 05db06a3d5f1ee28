//! Tests of CSV reading: encodings (sniffed and decided late), headers, field counts; records
//! and line accounting are tested in [`lines`].

use super::*;
use std::io::Write;

mod lines;

fn write_file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .suffix(".csv")
        .tempfile()
        .expect("temp file");
    f.write_all(bytes).expect("write");
    f.flush().expect("flush");
    f
}

fn cp949(text: &str) -> Vec<u8> {
    let (bytes, _, unmappable) = encoding_rs::EUC_KR.encode(text);
    assert!(!unmappable, "test text must be CP949-encodable");
    bytes.into_owned()
}

fn all_rows(src: CsvSource) -> Vec<RowResult> {
    src.rows().collect::<Result<Vec<_>, _>>().expect("rows")
}

fn ok_rows(rows: &[RowResult]) -> Vec<&Row> {
    rows.iter()
        .filter_map(|r| match r {
            RowResult::Ok(row) => Some(row),
            RowResult::Rejected { .. } => None,
        })
        .collect()
}

fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn utf8_without_bom() {
    let f = write_file("phone,name\n010-1234-5678,김민수\n 01098765432 , 이영희 \n".as_bytes());
    let src = CsvSource::open(f.path()).unwrap();
    assert_eq!(src.encoding(), TextEncoding::Utf8);
    assert_eq!(src.encoding().to_string(), "UTF-8");
    assert_eq!(src.columns(), ["phone", "name"]);
    let rows = all_rows(src);
    assert_eq!(
        rows,
        vec![
            RowResult::Ok(Row {
                line: 2,
                phone: "010-1234-5678".into(),
                fields: fields(&[("name", "김민수")]),
            }),
            RowResult::Ok(Row {
                line: 3,
                phone: "01098765432".into(),
                fields: fields(&[("name", "이영희")]),
            }),
        ]
    );
}

#[test]
fn utf8_with_bom_is_stripped_from_first_header() {
    let mut bytes = UTF8_BOM.to_vec();
    bytes.extend_from_slice(" Phone ,name\r\n010-1234-5678,김민수\r\n".as_bytes());
    let f = write_file(&bytes);
    let src = CsvSource::open(f.path()).unwrap();
    assert_eq!(src.encoding(), TextEncoding::Utf8);
    assert_eq!(src.columns(), ["Phone", "name"]);
    assert_eq!(src.phone_column(), "Phone");
    let rows = all_rows(src);
    let rows = ok_rows(&rows);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].phone, "010-1234-5678");
    assert_eq!(rows[0].fields, fields(&[("name", "김민수")]));
}

#[test]
fn cp949_hangul_decodes() {
    // 똠 and 햏 are CP949 extensions outside EUC-KR's KS X 1001 set.
    let bytes = cp949("이름,phone,지역\n김민수,010-1234-5678,서울\n똠방각하,010-2222-3333,햏\n");
    let f = write_file(&bytes);
    let src = CsvSource::open(f.path()).unwrap();
    assert_eq!(src.encoding(), TextEncoding::Cp949);
    assert_eq!(src.encoding().to_string(), "CP949");
    assert_eq!(src.columns(), ["이름", "phone", "지역"]);
    let rows = all_rows(src);
    let rows = ok_rows(&rows);
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows[0].fields,
        fields(&[("이름", "김민수"), ("지역", "서울")])
    );
    assert_eq!(rows[1].line, 3);
    assert_eq!(rows[1].phone, "010-2222-3333");
    assert_eq!(
        rows[1].fields,
        fields(&[("이름", "똠방각하"), ("지역", "햏")])
    );
}

#[test]
fn large_files_sniff_only_the_window() {
    // A Hangul character straddles the 64 KiB boundary in both encodings.
    for encoding in [TextEncoding::Utf8, TextEncoding::Cp949] {
        let mut text = String::from("phone,name\n");
        let mut n = 0;
        while text.len() < SNIFF_LEN * 2 {
            text.push_str(&format!("010{n:08},홍길동{n}\n"));
            n += 1;
        }
        let bytes = match encoding {
            TextEncoding::Utf8 => text.into_bytes(),
            TextEncoding::Cp949 => cp949(&text),
        };
        let f = write_file(&bytes);
        let src = CsvSource::open(f.path()).unwrap();
        assert_eq!(src.encoding(), encoding);
        let rows = all_rows(src);
        assert_eq!(rows.len(), n);
        let last = ok_rows(&rows).pop().unwrap().clone();
        assert_eq!(last.line, n as u64 + 1);
        assert_eq!(
            last.fields,
            fields(&[("name", &format!("홍길동{}", n - 1))])
        );
    }
}

#[test]
fn latin1_garbage_is_refused_naming_the_line() {
    let f = write_file(b"phone,name\n01012345678,Kim\n01012345679,Jos\xe9\n");
    let err = CsvSource::open(f.path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, CsvError::NotText { line: Some(3), .. }),
        "{msg}"
    );
    assert!(
        msg.starts_with(&format!("{} line 3: ", f.path().display())),
        "{msg}"
    );
    assert!(msg.contains("neither UTF-8 nor CP949"), "{msg}");
    assert!(msg.contains("CSV UTF-8"), "{msg}");
}

#[test]
fn mixed_encodings_are_refused() {
    let mut bytes = "phone,name\n010,김\n".as_bytes().to_vec();
    bytes.extend_from_slice(&cp949("011,이\n"));
    let f = write_file(&bytes);
    let msg = CsvSource::open(f.path()).unwrap_err().to_string();
    assert!(msg.contains("line 3 is CP949"), "{msg}");
    assert!(msg.contains("line 2 is UTF-8"), "{msg}");
}

#[test]
fn non_csv_files_are_refused() {
    let f = write_file(b"\xFF\xFEp\0h\0o\0n\0e\0\n\0");
    let msg = CsvSource::open(f.path()).unwrap_err().to_string();
    assert!(msg.contains("UTF-16"), "{msg}");
    let f = write_file(b"PK\x03\x04\x14\x00\x06\x00");
    let msg = CsvSource::open(f.path()).unwrap_err().to_string();
    assert!(msg.contains(".xlsx"), "{msg}");
    let f = write_file(b"phone\r010\r");
    let msg = CsvSource::open(f.path()).unwrap_err().to_string();
    assert!(msg.contains("CR only"), "{msg}");
    let f = write_file(b"");
    let err = CsvSource::open(f.path()).unwrap_err();
    assert!(matches!(err, CsvError::Empty { .. }), "{err}");
    let f = write_file(b"\n\r\n\n");
    let err = CsvSource::open(f.path()).unwrap_err();
    assert!(matches!(err, CsvError::Empty { .. }), "{err}");
    let err = CsvSource::open(Path::new("/nonexistent/munja.csv")).unwrap_err();
    assert!(matches!(err, CsvError::Io { .. }), "{err}");
    assert!(
        err.to_string().starts_with("/nonexistent/munja.csv: "),
        "{err}"
    );
}

#[test]
fn missing_phone_column_lists_header() {
    let f = write_file("tel,이름\n010,김\n".as_bytes());
    let err = CsvSource::open(f.path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, CsvError::PhoneColumn { line: 1, .. }),
        "{msg}"
    );
    assert!(
        msg.starts_with(&format!("{} line 1: ", f.path().display())),
        "{msg}"
    );
    assert!(msg.contains("a 'phone' column is required"), "{msg}");
    assert!(msg.contains("header columns found: tel, 이름"), "{msg}");

    let f = write_file(b"phone;name\n010;kim\n");
    let msg = CsvSource::open(f.path()).unwrap_err().to_string();
    assert!(msg.contains("';'"), "{msg}");

    let f = write_file(b"phone,PHONE\n010,011\n");
    let msg = CsvSource::open(f.path()).unwrap_err().to_string();
    assert!(msg.contains("more than one"), "{msg}");
}

#[test]
fn bad_header_names_are_refused() {
    let f = write_file(b"phone,name, name \n010,a,b\n");
    let err = CsvSource::open(f.path()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CsvError::Header { line: 1, .. }), "{msg}");
    assert!(
        msg.contains("columns 2 and 3 are both named 'name'"),
        "{msg}"
    );

    let f = write_file(b"phone,,name\n010,a,b\n");
    let msg = CsvSource::open(f.path()).unwrap_err().to_string();
    assert!(msg.contains("header column 2 has no name"), "{msg}");
}

#[test]
fn extra_columns_become_fields_in_header_order() {
    let f = write_file("name,phone,city,grade\n김민수,010-1234-5678,서울,VIP\n".as_bytes());
    let src = CsvSource::open(f.path()).unwrap();
    assert_eq!(src.columns(), ["name", "phone", "city", "grade"]);
    let rows = all_rows(src);
    let rows = ok_rows(&rows);
    assert_eq!(
        rows[0].fields,
        fields(&[("name", "김민수"), ("city", "서울"), ("grade", "VIP")])
    );
}

#[test]
fn wrong_field_count_is_rejected_with_line() {
    let f = write_file(b"phone,name,city\n010-1,a,b\n010-2,a\n010-3,a,b,c\n010-4,a,b\n");
    let rows = all_rows(CsvSource::open(f.path()).unwrap());
    assert_eq!(rows.len(), 4);
    assert_eq!(
        rows[1],
        RowResult::Rejected {
            line: 3,
            end_line: 3,
            reason: "wrong_field_count".into(),
            detail: "expected 3 fields (as in the header), found 2".into(),
        }
    );
    assert!(matches!(
        &rows[2],
        RowResult::Rejected { line: 4, end_line: 4, reason, detail }
            if reason == "wrong_field_count" && detail.contains("found 4")
    ));
    assert!(matches!(&rows[3], RowResult::Ok(Row { line: 5, .. })));
}

#[test]
fn lenient_fields_keeps_rows_with_a_phone() {
    let text = "name,phone,memo\n\
                a,010-1,고객 요청, 전화\n\
                b,010-2\n\
                c\n\
                d,,x,y\n\
                e,010-5,ok\n";
    let f = write_file(text.as_bytes());
    let rows = all_rows(CsvSource::open(f.path()).unwrap().lenient_fields());
    assert_eq!(
        rows[..2],
        [
            RowResult::Ok(Row {
                line: 2,
                phone: "010-1".into(),
                fields: fields(&[("name", "a"), ("memo", "고객 요청")]),
            }),
            RowResult::Ok(Row {
                line: 3,
                phone: "010-2".into(),
                fields: fields(&[("name", "b"), ("memo", "")]),
            }),
        ]
    );
    // No phone field, or an empty one: still rejected.
    assert!(matches!(
        &rows[2],
        RowResult::Rejected { line: 4, reason, .. } if reason == "wrong_field_count"
    ));
    assert!(matches!(
        &rows[3],
        RowResult::Rejected { line: 5, reason, .. } if reason == "wrong_field_count"
    ));
    assert!(matches!(&rows[4], RowResult::Ok(Row { line: 6, .. })));
    assert_eq!(rows.len(), 5);

    // An extra value that is another number rejects the row instead of being dropped;
    // other extra values (a date in a memo) are still dropped.
    let f2 = write_file(b"phone\n010-1111-0007,010-1111-0008\n010-1111-0009,2026-01-15 12:30\n");
    let rows = all_rows(CsvSource::open(f2.path()).unwrap().lenient_fields());
    assert!(
        matches!(&rows[0], RowResult::Rejected { line: 2, reason, detail, .. }
            if reason == "multiple_numbers" && detail.starts_with("field 2 (the header has 1)")),
        "{rows:?}"
    );
    assert!(
        matches!(&rows[1], RowResult::Ok(Row { line: 3, .. })),
        "{rows:?}"
    );

    // The default (segments) rejects both rows with a phone.
    let rows = all_rows(CsvSource::open(f.path()).unwrap());
    let rejected = rows
        .iter()
        .filter(|r| matches!(r, RowResult::Rejected { .. }))
        .count();
    assert_eq!(rejected, 4);
}

#[test]
fn duplicate_header_names_are_found_in_one_pass_over_100000_columns() {
    let mut names: Vec<String> = (0..100_000).map(|i| format!("c{i}")).collect();
    assert_eq!(header::first_duplicate(&names), None);
    names.push("c0".to_string());
    assert_eq!(header::first_duplicate(&names), Some((0, 100_000)));

    let mut header = String::from("phone");
    for i in 1..100_000 {
        header.push_str(&format!(",c{i}"));
    }
    let f = write_file(format!("{header}\n010-1{}\n", ",x".repeat(99_999)).as_bytes());
    let src = CsvSource::open(f.path()).unwrap();
    assert_eq!(src.columns().len(), 100_000);
    let f = write_file(format!("{header},c1\n").as_bytes());
    let msg = CsvSource::open(f.path()).unwrap_err().to_string();
    assert!(
        msg.contains("columns 2 and 100001 are both named 'c1'"),
        "{msg}"
    );
}

/// `header`, then ASCII rows past the 64 KiB sniff window; returns the bytes and the
/// number of the next line.
fn ascii_start(header: &str) -> (Vec<u8>, u64) {
    let mut bytes = header.as_bytes().to_vec();
    let mut line = 2;
    while bytes.len() < SNIFF_LEN + 100 {
        bytes.extend_from_slice(format!("010{line:08},kim\n").as_bytes());
        line += 1;
    }
    (bytes, line)
}

fn first_error(src: CsvSource) -> (usize, CsvError, Rows) {
    let mut rows = src.rows();
    let mut ok = 0;
    let err = loop {
        match rows.next() {
            Some(Ok(_)) => ok += 1,
            Some(Err(e)) => break e,
            None => panic!("expected an error"),
        }
    };
    (ok, err, rows)
}

#[test]
fn plain_ascii_start_leaves_the_encoding_to_the_first_non_ascii_line() {
    for encoding in [TextEncoding::Cp949, TextEncoding::Utf8] {
        let (mut bytes, line) = ascii_start("phone,name\n");
        let late = "01099999999,김민수\n01088888888,똠방\n";
        match encoding {
            TextEncoding::Cp949 => bytes.extend_from_slice(&cp949(late)),
            TextEncoding::Utf8 => bytes.extend_from_slice(late.as_bytes()),
        }
        let f = write_file(&bytes);
        let src = CsvSource::open(f.path()).unwrap();
        let mut rows = src.rows();
        let all: Vec<RowResult> = rows.by_ref().collect::<Result<_, _>>().unwrap();
        assert_eq!(rows.encoding(), encoding);
        let ok = ok_rows(&all);
        assert_eq!(ok.len() as u64, line, "{encoding}");
        assert_eq!(ok[ok.len() - 2].line, line);
        assert_eq!(ok[ok.len() - 2].fields, fields(&[("name", "김민수")]));
        assert_eq!(ok[ok.len() - 1].fields, fields(&[("name", "똠방")]));
    }
}

#[test]
fn a_later_line_in_the_other_encoding_is_fatal_with_its_line() {
    // Decided as UTF-8 by the sniff window (Hangul on line 2), CP949 much later.
    let mut bytes = "phone,name\n01000000000,김민수\n".as_bytes().to_vec();
    let (rest, _) = ascii_start("");
    bytes.extend_from_slice(&rest);
    let line = bytes.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
    bytes.extend_from_slice(&cp949("01099999999,김민수\n"));
    bytes.extend_from_slice(b"01088888888,lee\n");
    let f = write_file(&bytes);
    let src = CsvSource::open(f.path()).unwrap();
    assert_eq!(src.encoding(), TextEncoding::Utf8);
    let (ok, err, mut rows) = first_error(src);
    assert_eq!(ok as u64, line - 2);
    let msg = err.to_string();
    assert!(
        matches!(err, CsvError::Undecodable { line: l, .. } if l == line),
        "{msg}"
    );
    assert!(
        msg.starts_with(&format!(
            "{} line {line}: column 'name' is not valid UTF-8 text (the file was detected \
             as UTF-8 from its first 64 KiB)",
            f.path().display()
        )),
        "{msg}"
    );
    assert!(msg.contains("CSV UTF-8"), "{msg}");
    assert!(rows.next().is_none(), "iteration stops after a fatal error");

    // Decided as CP949 by a line after an ASCII start, UTF-8 later.
    let (mut bytes, line) = ascii_start("phone,name\n");
    bytes.extend_from_slice(&cp949("01099999999,김민수\n"));
    bytes.extend_from_slice("01088888888,이영희\n".as_bytes());
    let f = write_file(&bytes);
    let (_, err, _) = first_error(CsvSource::open(f.path()).unwrap());
    let msg = err.to_string();
    let next = line + 1;
    assert!(
        msg.contains(&format!(
            "line {next}: column 'name' is not valid CP949 text (the file was detected as \
             CP949 from line {line}, its first line that is not plain ASCII)"
        )),
        "{msg}"
    );
}

#[test]
fn a_late_line_in_neither_encoding_is_refused_with_its_line() {
    let (mut bytes, line) = ascii_start("phone,name\n");
    bytes.extend_from_slice(b"01099999999,Jos\xe9\n");
    let f = write_file(&bytes);
    let (ok, err, _) = first_error(CsvSource::open(f.path()).unwrap());
    assert_eq!(ok as u64, line - 2);
    let msg = err.to_string();
    assert!(
        matches!(err, CsvError::NotText { line: Some(l), .. } if l == line),
        "{msg}"
    );
    assert!(msg.contains("neither UTF-8 nor CP949"), "{msg}");
}
