//! Connections picked up mid-stream whose first request is reported (the trial of
//! `trial.rs` succeeds), responses that match nothing, limits. Trials that an older
//! reply makes fail: `midstream_older.rs`.

use super::enc::*;
use super::*;

#[test]
fn unexpected_response_drops_pending_until_ready() {
    let mut steps = after_login(vec![
        Fe(10, query("SELECT 1")),
        Be(
            11,
            cat(&[
                parse_complete(),
                complete("SELECT 1"),
                error("XX001"),
                ready(b'I'),
            ]),
        ),
    ]);
    steps.extend(q_and_answer(20, "SELECT 2"));
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            desync(Direction::Backend, DesyncReason::UnexpectedMessage),
            err("XX001", ErrorContext::Unmatched),
            done("SELECT 2", 20, 21, Some(1)),
        ]
    );
}

#[test]
fn queue_overflow_and_too_many_names() {
    let steps = after_login(vec![
        Fe(
            10,
            cat(&[
                parse("a", "SELECT 1", &[]),
                parse("b", "SELECT 2", &[]),
                parse("c", "SELECT 3", &[]),
                sync(),
            ]),
        ),
        Be(
            11,
            cat(&[
                parse_complete(),
                parse_complete(),
                parse_complete(),
                ready(b'I'),
            ]),
        ),
        Fe(12, (0..9).flat_map(|_| sync()).collect()),
        Be(13, (0..9).flat_map(|_| ready(b'I')).collect()),
        Fe(14, query("SELECT 1")),
        Be(15, cat(&[complete("SELECT 1"), ready(b'I')])),
    ]);
    let ev = outcomes(&after_login_events(check(small_limits, &steps)));
    assert_eq!(
        ev,
        vec![
            desync(Direction::Frontend, DesyncReason::TooManyNames),
            desync(Direction::Frontend, DesyncReason::QueueOverflow),
            done("SELECT 1", 14, 15, Some(1)),
        ]
    );
}

#[test]
fn mid_stream_resumes_at_boundaries() {
    let mut steps = vec![
        // The tail of a Query, and the tail of its result.
        Fe(1, b"ELECT 1\0".to_vec()),
        Be(
            2,
            cat(&[b"\0\0\0\x011".to_vec(), complete("SELECT 1"), ready(b'I')]),
        ),
    ];
    steps.extend(q_and_answer(10, "SELECT 2"));
    let ev = check(Connection::new_mid_stream, &steps);
    assert_eq!(outcomes(&ev), vec![done("SELECT 2", 10, 11, Some(1))]);
}

/// A connection picked up mid-stream.
pub(super) fn mid() -> Connection<String> {
    Connection::new_mid_stream()
}

#[test]
fn mid_stream_first_query_is_reported() {
    // An idle session: the first thing seen is the client's next Query, then its answer.
    let mut steps = q_and_answer(1, "SELECT 1");
    steps.extend(q_and_answer(10, "SELECT 2"));
    let ev = outcomes(&check(mid, &steps));
    assert_eq!(
        ev,
        vec![
            done("SELECT 1", 1, 2, Some(1)),
            done("SELECT 2", 10, 11, Some(1))
        ]
    );
    let mut c = mid();
    assert!(!c.is_synchronized());
    run(&mut c, &steps[..1]);
    assert!(!c.is_synchronized());
    assert_eq!(c.pending(), 2);
    run(&mut c, &steps[1..2]);
    assert!(c.is_synchronized());
    assert_eq!(c.pending(), 0);
}

#[test]
fn mid_stream_first_query_holds_its_reports_until_ready() {
    // Two statements with rows, answered in two sends: each completion keeps its timing, and
    // nothing is reported before the ReadyForQuery that confirms the trial.
    let mut steps = vec![
        FeWhole(1, query("SELECT 1; SELECT 2")),
        Be(
            2,
            cat(&[row_desc(&["a"]), data_row(&[b"1"]), complete("SELECT 1")]),
        ),
        Be(
            3,
            cat(&[
                row_desc(&["b"]),
                data_row(&[b"2"]),
                data_row(&[b"3"]),
                complete("SELECT 2"),
                ready(b'I'),
            ]),
        ),
    ];
    steps.extend(q_and_answer(10, "SELECT 3"));
    let ev = outcomes(&check(mid, &steps));
    assert_eq!(
        ev,
        vec![
            done("SELECT 1", 1, 2, Some(1)),
            done("SELECT 2", 2, 3, Some(2)),
            done("SELECT 3", 10, 11, Some(1)),
        ]
    );
    let mut c = mid();
    assert_eq!(outcomes(&run(&mut c, &steps[..2])), vec![]);
    assert!(!c.is_synchronized());
}

#[test]
fn mid_stream_first_query_that_fails_is_reported() {
    let mut steps = vec![
        FeWhole(1, query("SELECT nope")),
        Be(2, cat(&[error("42703"), ready(b'I')])),
    ];
    steps.extend(q_and_answer(10, "SELECT 2"));
    let ev = outcomes(&check(mid, &steps));
    assert_eq!(
        ev,
        vec![
            failed("SELECT nope", 1, 2, "42703"),
            err("42703", ErrorContext::Execution),
            done("SELECT 2", 10, 11, Some(1)),
        ]
    );
}

#[test]
fn mid_stream_first_extended_batch_is_reported() {
    let mut steps = vec![
        FeWhole(
            1,
            cat(&[
                parse("", "SELECT $1", &[]),
                bind("", "", &[b"7"]),
                describe(b'P', ""),
                execute("", 0),
                sync(),
            ]),
        ),
        Be(
            2,
            cat(&[
                parse_complete(),
                bind_complete(),
                row_desc(&["x"]),
                data_row(&[b"7"]),
                complete("SELECT 1"),
                ready(b'I'),
            ]),
        ),
    ];
    steps.extend(q_and_answer(10, "SELECT 2"));
    let ev = outcomes(&check(mid, &steps));
    assert_eq!(
        ev,
        vec![
            done("SELECT $1", 1, 2, Some(1)),
            done("SELECT 2", 10, 11, Some(1))
        ]
    );
}

#[test]
fn mid_stream_first_copy_is_reported() {
    let mut steps = vec![
        FeWhole(1, query("COPY t FROM STDIN")),
        Be(2, copy_in(1)),
        Fe(3, cat(&[copy_data(b"1\n"), copy_data(b"2\n"), copy_done()])),
        Be(4, cat(&[complete("COPY 2"), ready(b'I')])),
        FeWhole(5, query("COPY t TO STDOUT")),
        Be(
            6,
            cat(&[
                copy_out(1),
                copy_data(b"1\n"),
                be_copy_done(),
                complete("COPY 1"),
                ready(b'I'),
            ]),
        ),
    ];
    steps.extend(q_and_answer(10, "SELECT 2"));
    let ev = outcomes(&check(mid, &steps));
    assert_eq!(
        ev,
        vec![
            done("COPY t FROM STDIN", 1, 4, Some(2)),
            done("COPY t TO STDOUT", 5, 6, Some(1)),
            done("SELECT 2", 10, 11, Some(1)),
        ]
    );
}

#[test]
fn mid_stream_no_trial_behind_the_end_of_an_older_copy() {
    // The client ends a COPY FROM STDIN begun before the capture, and sends a Query at
    // once: the COPY's answer comes first, and looks like the Query's. No trial: the usual
    // resynchronisation (whose first ReadyForQuery is taken for the Query's, so the Query's
    // own answer is unexpected, once).
    let mut steps = vec![
        FeWhole(1, cat(&[copy_data(b"9\n"), copy_done(), query("SELECT 1")])),
        Be(2, cat(&[complete("COPY 7"), ready(b'I')])),
        Be(3, cat(&[complete("SELECT 1"), ready(b'I')])),
    ];
    steps.extend(q_and_answer(10, "SELECT 2"));
    let ev = outcomes(&check(mid, &steps));
    assert_eq!(
        ev,
        vec![
            desync(Direction::Backend, DesyncReason::UnexpectedMessage),
            done("SELECT 2", 10, 11, Some(1))
        ]
    );
}

#[test]
fn mid_stream_first_batch_of_a_statement_prepared_before_the_capture_is_unattributed() {
    let mut steps = vec![
        FeWhole(1, cat(&[bind("", "S_1", &[b"5"]), execute("", 0), sync()])),
        Be(
            2,
            cat(&[
                bind_complete(),
                data_row(&[b"5"]),
                complete("SELECT 1"),
                ready(b'I'),
            ]),
        ),
    ];
    steps.extend(q_and_answer(10, "SELECT 2"));
    let ev = outcomes(&check(mid, &steps));
    assert_eq!(
        ev,
        vec![
            desync(Direction::Frontend, DesyncReason::UnknownPortal),
            Ev::Unattributed {
                start: 1,
                end: 2,
                outcome: Outcome::Ok { rows: Some(1) }
            },
            done("SELECT 2", 10, 11, Some(1)),
        ]
    );
}

#[test]
fn mid_stream_statement_prepared_before_the_capture_is_unattributed() {
    let mut steps = q_and_answer(1, "SELECT 1");
    steps.extend([
        FeWhole(10, cat(&[bind("", "S_1", &[b"5"]), execute("", 0), sync()])),
        Be(
            11,
            cat(&[
                bind_complete(),
                data_row(&[b"5"]),
                complete("SELECT 1"),
                ready(b'I'),
            ]),
        ),
    ]);
    let ev = outcomes(&check(mid, &steps));
    assert_eq!(
        ev,
        vec![
            done("SELECT 1", 1, 2, Some(1)),
            desync(Direction::Frontend, DesyncReason::UnknownPortal),
            Ev::Unattributed {
                start: 10,
                end: 11,
                outcome: Outcome::Ok { rows: Some(1) }
            },
        ]
    );
}
