//! Connections picked up mid-stream while an older request was still being answered: the
//! trial of the first request (`trial.rs`) must fail rather than credit it with the older
//! reply, and later requests must be reported.

use super::enc::*;
use super::midstream::mid;
use super::*;

/// The tail of a reply to a Query sent before the capture began: two rows, its
/// CommandComplete and ReadyForQuery.
fn older_tail() -> Vec<u8> {
    cat(&[
        data_row(&[b"41"]),
        data_row(&[b"42"]),
        complete("SELECT 2"),
        ready(b'I'),
    ])
}

/// The answer to `SELECT 1` with its row.
fn one_row() -> Vec<u8> {
    cat(&[
        row_desc(&["?column?"]),
        data_row(&[b"1"]),
        complete("SELECT 1"),
        ready(b'I'),
    ])
}

#[test]
fn mid_stream_older_reply_seen_first_resynchronises_then_reports() {
    // The capture began while a query ran: its tail comes before the client's next Query,
    // so the backend resynchronises at its ReadyForQuery and that Query is reported.
    let mut steps = vec![
        Be(1, older_tail()),
        FeWhole(2, query("SELECT 1")),
        Be(3, one_row()),
    ];
    steps.extend(q_and_answer(10, "SELECT 2"));
    let ev = outcomes(&check(mid, &steps));
    assert_eq!(
        ev,
        vec![
            done("SELECT 1", 2, 3, Some(1)),
            done("SELECT 2", 10, 11, Some(1))
        ]
    );
}

#[test]
fn mid_stream_older_reply_after_the_first_query_fails_the_trial() {
    // The client's Query is seen before the tail of the reply to an older Query (not an order
    // a backend produces, see `trial.rs`, but the parser must not be fooled by it). Rows
    // without a RowDescription cannot answer the Query: the trial fails and the Query is not
    // credited with the older completion. Only the Query's ReadyForQuery is owed, so the
    // older one is taken for it and the Query's own answer is unexpected, once.
    let mut steps = vec![
        FeWhole(1, query("SELECT 1")),
        Be(2, older_tail()),
        Be(3, one_row()),
    ];
    steps.extend(q_and_answer(10, "SELECT 2"));
    steps.extend(q_and_answer(20, "SELECT 3"));
    let ev = outcomes(&check(mid, &steps));
    assert_eq!(
        ev,
        vec![
            desync(Direction::Backend, DesyncReason::Tentative),
            desync(Direction::Backend, DesyncReason::UnexpectedMessage),
            done("SELECT 2", 10, 11, Some(1)),
            done("SELECT 3", 20, 21, Some(1)),
        ]
    );
    let mut c = mid();
    run(&mut c, &steps[..3]);
    assert!(c.is_synchronized());
}

#[test]
fn mid_stream_output_of_an_unsynced_older_batch_fails_the_trial() {
    // What a backend can send after the first request seen: the buffered output of a batch
    // the client had not closed with Sync (Bind, Execute), flushed with the Query's answer.
    // It has no ReadyForQuery of its own: the Query's is the one owed.
    let mut steps = vec![
        FeWhole(1, query("SELECT 1")),
        Be(
            2,
            cat(&[
                bind_complete(),
                data_row(&[b"9"]),
                complete("SELECT 1"),
                one_row(),
            ]),
        ),
    ];
    steps.extend(q_and_answer(10, "SELECT 2"));
    let ev = outcomes(&check(mid, &steps));
    assert_eq!(
        ev,
        vec![
            desync(Direction::Backend, DesyncReason::Tentative),
            done("SELECT 2", 10, 11, Some(1)),
        ]
    );
}

#[test]
fn mid_stream_sync_closing_an_older_batch() {
    // The first frontend chunk is the end of a batch begun before the capture: an Execute
    // of a portal bound before it, and the Sync. Their answer is matched and reported.
    let mut steps = vec![
        FeWhole(1, cat(&[execute("", 0), sync()])),
        Be(
            2,
            cat(&[data_row(&[b"5"]), complete("SELECT 1"), ready(b'I')]),
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
    // Only the Sync seen: the batch's BindComplete and rows fail the trial, and the
    // ReadyForQuery owed for the Sync is the batch's.
    let mut steps = vec![
        FeWhole(1, sync()),
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
            desync(Direction::Backend, DesyncReason::Tentative),
            done("SELECT 2", 10, 11, Some(1)),
        ]
    );
}

#[test]
fn mid_stream_older_ready_before_any_answer_fails_the_trial() {
    // A ReadyForQuery while the Query's statement is unanswered is an older request's.
    let mut steps = vec![
        FeWhole(1, query("SELECT 1")),
        Be(2, ready(b'I')),
        Be(3, cat(&[complete("SELECT 1"), ready(b'I')])),
    ];
    steps.extend(q_and_answer(10, "SELECT 2"));
    let ev = outcomes(&check(mid, &steps));
    assert_eq!(
        ev,
        vec![
            desync(Direction::Backend, DesyncReason::Tentative),
            done("SELECT 2", 10, 11, Some(1)),
        ]
    );
}

#[test]
fn mid_stream_ready_ahead_of_the_sync_fails_the_trial() {
    // A ReadyForQuery while the Bind and Execute ahead of the Sync are unanswered. A Sync
    // may close a batch begun before the capture (the server skipping to it after an
    // error), so this one may be the batch's own: the fewest are owed, and the next Query
    // only re-establishes sync.
    let mut steps = vec![
        FeWhole(1, cat(&[bind("", "S_1", &[b"5"]), execute("", 0), sync()])),
        Be(2, ready(b'I')),
    ];
    steps.extend(q_and_answer(10, "SELECT 2"));
    steps.extend(q_and_answer(20, "SELECT 3"));
    let ev = outcomes(&check(mid, &steps));
    assert_eq!(
        ev,
        vec![
            desync(Direction::Frontend, DesyncReason::UnknownPortal),
            desync(Direction::Backend, DesyncReason::Tentative),
            done("SELECT 3", 20, 21, Some(1)),
        ]
    );
}

#[test]
fn mid_stream_more_completions_than_statements_fail_the_trial() {
    // Not told apart from an older reply: not reported, and the fewest are owed.
    let mut steps = vec![
        FeWhole(1, query("SELECT 1")),
        Be(
            2,
            cat(&[complete("SELECT 1"), complete("SELECT 1"), ready(b'I')]),
        ),
    ];
    steps.extend(q_and_answer(10, "SELECT 2"));
    let ev = outcomes(&check(mid, &steps));
    assert_eq!(
        ev,
        vec![
            desync(Direction::Backend, DesyncReason::Tentative),
            done("SELECT 2", 10, 11, Some(1)),
        ]
    );
}

#[test]
fn mid_stream_failed_trial_reports_held_errors_as_unmatched() {
    let mut steps = vec![
        FeWhole(1, query("SELECT 1")),
        Be(2, cat(&[error("57014"), complete("SELECT 1"), ready(b'I')])),
    ];
    steps.extend(q_and_answer(10, "SELECT 2"));
    let ev = outcomes(&check(mid, &steps));
    assert_eq!(
        ev,
        vec![
            err("57014", ErrorContext::Unmatched),
            desync(Direction::Backend, DesyncReason::Tentative),
            done("SELECT 2", 10, 11, Some(1)),
        ]
    );
}

#[test]
fn mid_stream_older_reply_to_an_extended_batch_fails_the_trial() {
    // Rows where a ParseComplete is due. A batch may share its Sync with one begun before
    // the capture, so only the batch's own ReadyForQuery is owed: the older one is taken
    // for it, and the batch's answer is then unexpected, once.
    let mut steps = vec![
        FeWhole(
            1,
            cat(&[
                parse("", "SELECT $1", &[]),
                bind("", "", &[b"7"]),
                execute("", 0),
                sync(),
            ]),
        ),
        Be(2, older_tail()),
        Be(
            3,
            cat(&[
                parse_complete(),
                bind_complete(),
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
            desync(Direction::Backend, DesyncReason::Tentative),
            desync(Direction::Backend, DesyncReason::UnexpectedMessage),
            done("SELECT 2", 10, 11, Some(1)),
        ]
    );
}

#[test]
fn mid_stream_older_reply_of_the_same_shape_is_taken_for_the_first_query() {
    // The documented limit (with the directions out of order, as above): the older reply's
    // rows went out before the capture began, and what is left (CommandComplete,
    // ReadyForQuery) is what the Query expects. It is credited with that completion; its own
    // answer is then unexpected.
    let mut steps = vec![
        FeWhole(1, query("SELECT 1")),
        Be(2, cat(&[complete("SELECT 5"), ready(b'I')])),
        Be(3, one_row()),
    ];
    steps.extend(q_and_answer(10, "SELECT 2"));
    let ev = outcomes(&check(mid, &steps));
    assert_eq!(
        ev,
        vec![
            done("SELECT 1", 1, 2, Some(5)),
            desync(Direction::Backend, DesyncReason::UnexpectedMessage),
            done("SELECT 2", 10, 11, Some(1)),
        ]
    );
}

/// A DataRow whose value holds `text`, and the offset of `text` in it.
fn row_with(text: &str) -> (Vec<u8>, usize) {
    let row = data_row(&[text.as_bytes()]);
    let at = row.len() - text.len();
    (row, at)
}

#[test]
fn mid_stream_backend_starting_mid_message_before_the_first_query() {
    // The capture began in the middle of a DataRow; the rest of that reply comes before the
    // client's next Query, which is then reported.
    let (row, at) = row_with("hello world");
    let mut steps = vec![
        Be(
            1,
            cat(&[row[at + 3..].to_vec(), complete("SELECT 1"), ready(b'I')]),
        ),
        FeWhole(2, query("SELECT 1")),
        Be(3, one_row()),
    ];
    steps.extend(q_and_answer(10, "SELECT 2"));
    let ev = outcomes(&check(mid, &steps));
    assert_eq!(
        ev,
        vec![
            done("SELECT 1", 2, 3, Some(1)),
            done("SELECT 2", 10, 11, Some(1))
        ]
    );
}

#[test]
fn mid_stream_backend_starting_mid_message_after_the_first_query() {
    // The Query is seen first, then the rest of an older reply that starts mid-DataRow: it
    // does not frame (`l` is no message type), so the trial fails and the backend
    // resynchronises at a ReadyForQuery. Nothing is owed after a framing failure, so the
    // Query's own answer is then unexpected, once.
    let (row, at) = row_with("hello world");
    let mut steps = vec![
        FeWhole(1, query("SELECT 1")),
        Be(
            2,
            cat(&[row[at + 3..].to_vec(), complete("SELECT 1"), ready(b'I')]),
        ),
        Be(3, one_row()),
    ];
    steps.extend(q_and_answer(10, "SELECT 2"));
    let ev = outcomes(&check(mid, &steps));
    assert_eq!(
        ev,
        vec![
            desync(Direction::Backend, DesyncReason::Tentative),
            desync(Direction::Backend, DesyncReason::UnexpectedMessage),
            done("SELECT 2", 10, 11, Some(1)),
        ]
    );
}

#[test]
fn mid_stream_backend_mid_message_with_a_huge_length_fails_at_once() {
    // Value bytes that read as a DataRow header of 0x30313233 bytes (771 MiB, under the
    // 1 GiB limit): on trial, lengths over 16 MiB are refused, so the reader does not skip
    // the stream in search of its end.
    let (row, at) = row_with("xD0123456789");
    let steps = vec![
        FeWhole(1, query("SELECT 1")),
        Be(
            2,
            cat(&[row[at + 1..].to_vec(), complete("SELECT 1"), ready(b'I')]),
        ),
        Be(3, one_row()),
        FeWhole(10, query("SELECT 2")),
        Be(11, cat(&[complete("SELECT 1"), ready(b'I')])),
    ];
    let ev = outcomes(&check(mid, &steps));
    assert_eq!(
        ev,
        vec![
            desync(Direction::Backend, DesyncReason::Tentative),
            desync(Direction::Backend, DesyncReason::UnexpectedMessage),
            done("SELECT 2", 10, 11, Some(1)),
        ]
    );
}

#[test]
fn mid_stream_pipelined_queries_are_confirmed_by_the_first_ready() {
    let steps = vec![
        FeWhole(1, query("SELECT 1")),
        Fe(2, query("SELECT 2")),
        Be(3, cat(&[complete("SELECT 1"), ready(b'I')])),
        Be(4, error("42P01")),
        Be(5, ready(b'I')),
    ];
    let ev = outcomes(&check(mid, &steps));
    assert_eq!(
        ev,
        vec![
            done("SELECT 1", 1, 3, Some(1)),
            failed("SELECT 2", 3, 4, "42P01"),
            err("42P01", ErrorContext::Execution),
        ]
    );
}

#[test]
fn no_trial_after_lost_records() {
    let mut c = mid();
    let ev = outcomes(&run(
        &mut c,
        &[
            FeWhole(1, query("SELECT 1")),
            Step::Lost,
            FeWhole(2, query("SELECT 2")),
            Be(3, cat(&[complete("SELECT 1"), ready(b'I')])),
        ],
    ));
    assert_eq!(ev, vec![desync(Direction::Frontend, DesyncReason::Lost)]);
    assert!(c.is_synchronized());
}

#[test]
fn error_while_resynchronising_is_unmatched() {
    let mut c = mid();
    let ev = outcomes(&run(&mut c, &[Be(1, ready(b'I'))]));
    assert_eq!(ev, vec![]);
    let mut c = mid();
    let ev = outcomes(&run(&mut c, &[Be(1, fatal("57P01")), Be(2, ready(b'I'))]));
    assert_eq!(ev, vec![]); // still resyncing the backend: nothing framed yet
    let mut c = mid();
    let ev = outcomes(&run(
        &mut c,
        &[
            Be(1, cat(&[complete("SELECT 1"), ready(b'I')])),
            Be(4, fatal("57P01")),
        ],
    ));
    assert_eq!(ev, vec![fatal_err("57P01", ErrorContext::Idle)]);
    // A ReadyForQuery before the Query's answer fails the trial; the error that follows
    // cannot be matched.
    let mut c = mid();
    let ev = outcomes(&run(
        &mut c,
        &[
            Fe(2, query("SELECT 1")),
            Be(3, ready(b'I')),
            Be(4, fatal("57P01")),
        ],
    ));
    assert_eq!(
        ev,
        vec![
            desync(Direction::Backend, DesyncReason::Tentative),
            fatal_err("57P01", ErrorContext::Unmatched)
        ]
    );
}
