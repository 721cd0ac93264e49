//! Simple Query (§54.2.2) and asynchronous messages (§54.2.7).

use super::enc::*;
use super::*;

#[test]
fn select_with_rows() {
    let steps = after_login(vec![
        Fe(10, query("SELECT x FROM t")),
        Be(
            15,
            cat(&[
                row_desc(&["x"]),
                data_row(&[b"1"]),
                data_row(&[b"2"]),
                complete("SELECT 2"),
                ready(b'I'),
            ]),
        ),
    ]);
    let ev = after_login_events(check_new(&steps));
    assert_eq!(
        ev,
        vec![
            prep("SELECT x FROM t", true),
            done("SELECT x FROM t", 10, 15, Some(2))
        ]
    );
}

#[test]
fn several_statements_complete_in_order() {
    let steps = after_login(vec![
        Fe(
            10,
            query("BEGIN; INSERT INTO t VALUES (1); UPDATE t SET x = 2; COMMIT"),
        ),
        Be(12, cat(&[complete("BEGIN")])),
        Be(14, cat(&[complete("INSERT 0 1")])),
        Be(
            17,
            cat(&[complete("UPDATE 1"), complete("COMMIT"), ready(b'I')]),
        ),
    ]);
    let ev = after_login_events(check_new(&steps));
    assert_eq!(
        outcomes(&ev),
        vec![
            done("BEGIN", 10, 12, None),
            done("INSERT INTO t VALUES (1)", 12, 14, Some(1)),
            done("UPDATE t SET x = 2", 14, 17, Some(1)),
            done("COMMIT", 17, 17, None),
        ]
    );
}

#[test]
fn error_in_the_middle_aborts_the_rest() {
    let steps = after_login(vec![
        Fe(10, query("SELECT 1; SELECT 1/0; SELECT 3")),
        Be(
            12,
            cat(&[
                row_desc(&["a"]),
                data_row(&[b"1"]),
                complete("SELECT 1"),
                row_desc(&["b"]),
                error("22012"),
                ready(b'I'),
            ]),
        ),
        Fe(20, query("SELECT 4")),
        Be(21, cat(&[complete("SELECT 1"), ready(b'I')])),
    ]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            done("SELECT 1", 10, 12, Some(1)),
            failed("SELECT 1/0", 12, 12, "22012"),
            err("22012", ErrorContext::Execution),
            done("SELECT 4", 20, 21, Some(1)),
        ]
    );
}

#[test]
fn error_in_a_transaction_block() {
    let steps = after_login(vec![
        Fe(10, query("BEGIN")),
        Be(11, cat(&[complete("BEGIN"), ready(b'T')])),
        Fe(12, query("SELECT nope")),
        Be(13, cat(&[error("42703"), ready(b'E')])),
        Fe(14, query("ROLLBACK")),
        Be(15, cat(&[complete("ROLLBACK"), ready(b'I')])),
    ]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            done("BEGIN", 10, 11, None),
            failed("SELECT nope", 12, 13, "42703"),
            err("42703", ErrorContext::Execution),
            done("ROLLBACK", 14, 15, None),
        ]
    );
}

#[test]
fn empty_query_completes_nothing() {
    let steps = after_login(vec![
        Fe(10, query("")),
        Be(11, cat(&[empty_query(), ready(b'I')])),
        Fe(12, query(" ; -- nothing")),
        Be(13, cat(&[empty_query(), ready(b'I')])),
    ]);
    let ev = after_login_events(check_new(&steps));
    // " ; -- nothing" splits into "-- nothing" for the test sink: a statement the server
    // answers with EmptyQueryResponse.
    assert_eq!(outcomes(&ev), vec![done("-- nothing", 12, 13, None)]);
    assert_eq!(ev[0], prep("", true));
}

#[test]
fn more_completions_than_statements_go_to_the_last() {
    // The test sink does not split on a semicolon inside a string literal the way the server
    // does; here it sees one statement where the server runs two.
    let steps = after_login(vec![
        Fe(10, query("SELECT 1\nSELECT 2")),
        Be(11, complete("SELECT 1")),
        Be(12, cat(&[complete("SELECT 1"), ready(b'I')])),
    ]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            done("SELECT 1\nSELECT 2", 10, 11, Some(1)),
            Ev::Desync(Direction::Backend, DesyncReason::StatementCount),
            done("SELECT 1\nSELECT 2", 11, 12, Some(1)),
        ]
    );
}

#[test]
fn fewer_completions_than_statements_are_counted() {
    let steps = after_login(vec![
        Fe(10, query("SELECT ';'; SELECT 2")),
        Be(
            11,
            cat(&[complete("SELECT 1"), complete("SELECT 1"), ready(b'I')]),
        ),
    ]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            done("SELECT '", 10, 11, Some(1)),
            done("'", 11, 11, Some(1)),
            Ev::Desync(Direction::Backend, DesyncReason::StatementCount),
        ]
    );
}

#[test]
fn asynchronous_messages_anywhere() {
    let steps = after_login(vec![
        Fe(10, query("LISTEN c; SELECT 1")),
        Be(
            11,
            cat(&[
                notice(),
                complete("LISTEN"),
                notification(),
                param_status("application_name", "x"),
            ]),
        ),
        Be(
            12,
            cat(&[
                row_desc(&["a"]),
                notice(),
                data_row(&[b"1"]),
                complete("SELECT 1"),
                notification(),
                ready(b'I'),
            ]),
        ),
        Be(13, notification()),
    ]);
    let ev = after_login_events(check_new(&steps));
    assert_eq!(
        ev,
        vec![
            prep("LISTEN c; SELECT 1", true),
            done("LISTEN c", 10, 11, None),
            Ev::Param("application_name".into(), "x".into()),
            done("SELECT 1", 11, 12, Some(1)),
        ]
    );
}

#[test]
fn fatal_error_while_idle() {
    let steps = after_login(vec![Be(10, fatal("57P01"))]);
    assert_eq!(
        after_login_events(check_new(&steps)),
        vec![fatal_err("57P01", ErrorContext::Idle)]
    );
}

#[test]
fn pipelined_queries_wait_for_each_other() {
    let steps = after_login(vec![
        Fe(10, cat(&[query("SELECT 1"), query("SELECT 2")])),
        Be(20, cat(&[complete("SELECT 1"), ready(b'I')])),
        Be(30, cat(&[complete("SELECT 1"), ready(b'I')])),
    ]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            done("SELECT 1", 10, 20, Some(1)),
            done("SELECT 2", 20, 30, Some(1))
        ]
    );
}

#[test]
fn command_tags_and_row_counts() {
    use crate::body::tag_rows;
    let cases: [(&str, Option<u64>); 12] = [
        ("SELECT 5", Some(5)),
        ("INSERT 0 7", Some(7)),
        ("UPDATE 0", Some(0)),
        ("DELETE 3", Some(3)),
        ("MERGE 2", Some(2)),
        ("FETCH 10", Some(10)),
        ("MOVE 1", Some(1)),
        ("COPY 18446744073709551615", Some(u64::MAX)),
        ("COPY 18446744073709551616", None),
        ("CREATE TABLE", None),
        ("SELECT", None),
        ("BEGIN", None),
    ];
    for (tag, rows) in cases {
        let mut b = tag.as_bytes().to_vec();
        b.push(0);
        assert_eq!(tag_rows(&b), rows, "{tag}");
    }
}

#[test]
fn error_fields_and_missing_sqlstate() {
    use crate::body::error_response;
    let sqlstate = |b: &[u8]| error_response(b).sqlstate;
    assert_eq!(&sqlstate(&error("40001")[5..]), b"40001");
    assert_eq!(&sqlstate(b"SERROR\0Mno code\0\0"), b"XX000");
    assert_eq!(&sqlstate(b""), b"XX000");
    assert_eq!(&sqlstate(b"C123\0\0"), b"XX000");
}
