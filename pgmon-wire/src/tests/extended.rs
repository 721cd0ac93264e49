//! Extended Query (§54.2.3), Pipelining (§54.2.4), Function Call (§54.2.5).

use super::enc::*;
use super::*;

const SEL: &str = "SELECT x FROM t WHERE id = $1";

#[test]
fn unnamed_statement_and_portal() {
    let steps = after_login(vec![
        Fe(
            10,
            cat(&[
                parse("", SEL, &[23]),
                bind("", "", &[b"7"]),
                describe(b'P', ""),
                execute("", 0),
                sync(),
            ]),
        ),
        Be(
            11,
            cat(&[
                parse_complete(),
                bind_complete(),
                row_desc(&["x"]),
                data_row(&[b"1"]),
                complete("SELECT 1"),
                ready(b'I'),
            ]),
        ),
    ]);
    let ev = after_login_events(check_new(&steps));
    assert_eq!(ev, vec![prep(SEL, false), done(SEL, 10, 11, Some(1))]);
}

#[test]
fn named_statement_reused_then_closed() {
    let steps = after_login(vec![
        Fe(
            10,
            cat(&[parse("s1", SEL, &[]), describe(b'S', "s1"), sync()]),
        ),
        Be(
            11,
            cat(&[
                parse_complete(),
                param_desc(1),
                row_desc(&["x"]),
                ready(b'I'),
            ]),
        ),
        Fe(12, cat(&[bind("", "s1", &[b"1"]), execute("", 0), sync()])),
        Be(
            13,
            cat(&[
                bind_complete(),
                data_row(&[b"1"]),
                complete("SELECT 1"),
                ready(b'I'),
            ]),
        ),
        Fe(14, cat(&[bind("", "s1", &[b"2"]), execute("", 0), sync()])),
        Be(
            15,
            cat(&[bind_complete(), complete("SELECT 0"), ready(b'I')]),
        ),
        Fe(16, cat(&[close(b'S', "s1"), sync()])),
        Be(17, cat(&[close_complete(), ready(b'I')])),
        // The server would refuse this Bind; the parser no longer knows "s1".
        Fe(18, cat(&[bind("", "s1", &[b"3"]), execute("", 0), sync()])),
        Be(19, cat(&[error("26000"), ready(b'I')])),
    ]);
    let ev = after_login_events(check_new(&steps));
    assert_eq!(
        ev,
        vec![
            prep(SEL, false),
            done(SEL, 12, 13, Some(1)),
            done(SEL, 14, 15, Some(0)),
            Ev::Desync(Direction::Frontend, DesyncReason::UnknownPortal),
            err("26000", ErrorContext::Bind),
        ]
    );
}

#[test]
fn unnamed_statement_replaced_by_each_parse() {
    let steps = after_login(vec![
        Fe(
            10,
            cat(&[
                parse("", "SELECT 1", &[]),
                bind("", "", &[]),
                execute("", 0),
                parse("", "SELECT 2", &[]),
                bind("", "", &[]),
                execute("", 0),
                sync(),
            ]),
        ),
        Be(
            11,
            cat(&[
                parse_complete(),
                bind_complete(),
                complete("SELECT 1"),
                parse_complete(),
                bind_complete(),
                complete("SELECT 1"),
                ready(b'I'),
            ]),
        ),
    ]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            done("SELECT 1", 10, 11, Some(1)),
            done("SELECT 2", 11, 11, Some(1))
        ]
    );
}

#[test]
fn named_portal_with_max_rows_until_end_of_transaction() {
    let steps = after_login(vec![
        Fe(10, query("BEGIN")),
        Be(11, cat(&[complete("BEGIN"), ready(b'T')])),
        Fe(
            12,
            cat(&[
                parse("", SEL, &[]),
                bind("c1", "", &[b"1"]),
                execute("c1", 2),
                sync(),
            ]),
        ),
        Be(
            13,
            cat(&[
                parse_complete(),
                bind_complete(),
                data_row(&[b"1"]),
                data_row(&[b"2"]),
                suspended(),
                ready(b'T'),
            ]),
        ),
        Fe(14, cat(&[execute("c1", 2), sync()])),
        Be(
            15,
            cat(&[data_row(&[b"3"]), complete("SELECT 1"), ready(b'T')]),
        ),
        Fe(16, query("COMMIT")),
        Be(17, cat(&[complete("COMMIT"), ready(b'I')])),
        // The portal ended with the transaction.
        Fe(18, cat(&[execute("c1", 0), sync()])),
        Be(19, cat(&[error("34000"), ready(b'I')])),
    ]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            done("BEGIN", 10, 11, None),
            Ev::Done {
                stmt: SEL.into(),
                start: 12,
                end: 13,
                outcome: Outcome::Suspended { rows: 2 }
            },
            done(SEL, 14, 15, Some(1)),
            done("COMMIT", 16, 17, None),
            Ev::Desync(Direction::Frontend, DesyncReason::UnknownPortal),
            Ev::Unattributed {
                start: 18,
                end: 19,
                outcome: Outcome::Error {
                    sqlstate: *b"34000"
                }
            },
            err("34000", ErrorContext::Execution),
        ]
    );
}

#[test]
fn portal_bound_after_a_pipelined_sync_survives_its_ready() {
    // B E S B | E S: the second Bind follows the first Sync; the ReadyForQuery(I) of that
    // Sync arrives before the second Execute is read and must not drop the new portal.
    let steps = after_login(vec![
        Fe(
            10,
            cat(&[
                parse("p", "SELECT 1", &[]),
                bind("", "p", &[]),
                execute("", 0),
                sync(),
                bind("", "p", &[]),
            ]),
        ),
        Be(
            11,
            cat(&[
                parse_complete(),
                bind_complete(),
                complete("SELECT 1"),
                ready(b'I'),
            ]),
        ),
        Fe(12, cat(&[execute("", 0), sync()])),
        Be(
            13,
            cat(&[bind_complete(), complete("SELECT 1"), ready(b'I')]),
        ),
    ]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            done("SELECT 1", 10, 11, Some(1)),
            done("SELECT 1", 12, 13, Some(1))
        ]
    );
}

#[test]
fn describe_statement_and_portal() {
    let steps = after_login(vec![
        Fe(
            10,
            cat(&[
                parse("a", "SELECT $1", &[23]),
                parse("b", "UPDATE t SET x = 1", &[]),
                describe(b'S', "a"),
                describe(b'S', "b"),
                sync(),
            ]),
        ),
        Be(
            11,
            cat(&[
                parse_complete(),
                parse_complete(),
                param_desc(1),
                row_desc(&["?column?"]),
                param_desc(0),
                no_data(),
                ready(b'I'),
            ]),
        ),
        Fe(
            12,
            cat(&[
                bind("pa", "a", &[b"1"]),
                describe(b'P', "pa"),
                bind("pb", "b", &[]),
                describe(b'P', "pb"),
                execute("pa", 0),
                execute("pb", 0),
                sync(),
            ]),
        ),
        Be(
            13,
            cat(&[
                bind_complete(),
                row_desc(&["?column?"]),
                bind_complete(),
                no_data(),
                data_row(&[b"1"]),
                complete("SELECT 1"),
                complete("UPDATE 4"),
                ready(b'I'),
            ]),
        ),
    ]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            done("SELECT $1", 12, 13, Some(1)),
            done("UPDATE t SET x = 1", 13, 13, Some(4))
        ]
    );
}

#[test]
fn close_statement_and_portal() {
    let steps = after_login(vec![
        Fe(10, query("BEGIN")),
        Be(11, cat(&[complete("BEGIN"), ready(b'T')])),
        Fe(
            12,
            cat(&[
                parse("s", "SELECT 1", &[]),
                bind("p", "s", &[]),
                close(b'P', "p"),
                close(b'S', "s"),
                close(b'S', ""),
                close(b'P', ""),
                execute("p", 0),
                sync(),
            ]),
        ),
        Be(
            13,
            cat(&[
                parse_complete(),
                bind_complete(),
                close_complete(),
                close_complete(),
                close_complete(),
                close_complete(),
                error("34000"),
                ready(b'E'),
            ]),
        ),
    ]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            done("BEGIN", 10, 11, None),
            Ev::Desync(Direction::Frontend, DesyncReason::UnknownPortal),
            Ev::Unattributed {
                start: 12,
                end: 13,
                outcome: Outcome::Error {
                    sqlstate: *b"34000"
                }
            },
            err("34000", ErrorContext::Execution),
        ]
    );
}

#[test]
fn empty_statement_execute_completes_nothing() {
    let steps = after_login(vec![
        Fe(
            10,
            cat(&[
                parse("", "", &[]),
                bind("", "", &[]),
                execute("", 0),
                sync(),
            ]),
        ),
        Be(
            11,
            cat(&[
                parse_complete(),
                bind_complete(),
                empty_query(),
                ready(b'I'),
            ]),
        ),
    ]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(ev, vec![]);
}

#[test]
fn function_call_responses() {
    let steps = after_login(vec![
        Fe(10, function_call(764, b"\0\0\0\x01")),
        Be(11, cat(&[fn_response(b"\0\0\0\x02"), ready(b'I')])),
        Fe(12, function_call(764, b"\0\0\0\x01")),
        Be(13, cat(&[error("42883"), ready(b'I')])),
        Fe(14, query("SELECT 1")),
        Be(15, cat(&[complete("SELECT 1"), ready(b'I')])),
    ]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            err("42883", ErrorContext::FunctionCall),
            done("SELECT 1", 14, 15, Some(1))
        ]
    );
}

#[test]
fn terminate_is_accepted() {
    let steps = after_login(vec![Fe(10, terminate())]);
    assert_eq!(after_login_events(check_new(&steps)), vec![]);
}
