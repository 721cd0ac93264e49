//! Connections picked up mid-stream, responses that match nothing, limits.

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

#[test]
fn mid_stream_first_query_only_synchronises() {
    let mut steps = q_and_answer(1, "SELECT 1");
    steps.extend(q_and_answer(10, "SELECT 2"));
    let mut c = Connection::new_mid_stream();
    assert!(!c.is_synchronized());
    let ev = run(&mut c, &steps[..2]);
    assert!(c.is_synchronized());
    assert_eq!(outcomes(&ev), vec![]);
    assert_eq!(
        outcomes(&run(&mut c, &steps[2..])),
        vec![done("SELECT 2", 10, 11, Some(1))]
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
    let ev = outcomes(&check(Connection::new_mid_stream, &steps));
    assert_eq!(
        ev,
        vec![
            desync(Direction::Frontend, DesyncReason::UnknownPortal),
            Ev::Unattributed {
                start: 10,
                end: 11,
                outcome: Outcome::Ok { rows: Some(1) }
            },
        ]
    );
}

#[test]
fn error_while_resynchronising_is_unmatched() {
    let mut c = Connection::new_mid_stream();
    let ev = outcomes(&run(&mut c, &[Be(1, ready(b'I'))]));
    assert_eq!(ev, vec![]);
    let mut c = Connection::new_mid_stream();
    let ev = outcomes(&run(&mut c, &[Be(1, fatal("57P01")), Be(2, ready(b'I'))]));
    assert_eq!(ev, vec![]); // still resyncing the backend: nothing framed yet
    let mut c = Connection::new_mid_stream();
    let ev = outcomes(&run(
        &mut c,
        &[
            Fe(2, query("SELECT 1")),
            Be(3, ready(b'I')),
            Be(4, fatal("57P01")),
        ],
    ));
    assert_eq!(ev, vec![err("57P01", ErrorContext::Idle)]);
    let mut c = Connection::new_mid_stream();
    let ev = outcomes(&run(
        &mut c,
        &[
            Fe(1, query("SELECT 1")),
            Fe(2, query("SELECT 2")),
            Be(3, cat(&[complete("SELECT 1"), ready(b'I')])),
            Be(4, error("42P01")),
        ],
    ));
    assert_eq!(ev, vec![err("42P01", ErrorContext::Unmatched)]);
}
