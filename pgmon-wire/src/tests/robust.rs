//! Damaged input: truncated streams, gaps, losses, over-long messages, desyncs,
//! connections picked up mid-stream.

use super::enc::*;
use super::*;

#[test]
fn truncated_stream_reports_nothing() {
    let q = query("SELECT 1");
    let mut c = Connection::new();
    let mut steps = login();
    steps.push(Fe(10, q[..6].to_vec()));
    let ev = after_login_events(run(&mut c, &steps));
    assert_eq!(ev, vec![]);
    assert_eq!(c.pending(), 0);
}

#[test]
fn backend_gap_inside_data_row_is_skipped() {
    let row = data_row(&[&[b'x'; 1000]]);
    let steps = after_login(vec![
        Fe(10, query("SELECT x")),
        Be(11, cat(&[row_desc(&["x"]), row[..100].to_vec()])),
        Step::BeGap(800),
        Be(
            12,
            cat(&[row[900..].to_vec(), complete("SELECT 1"), ready(b'I')]),
        ),
    ]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(ev, vec![done("SELECT x", 10, 12, Some(1))]);
}

#[test]
fn gap_ending_a_data_row_completes_it() {
    let row = data_row(&[&[b'x'; 1000]]);
    let steps = after_login(vec![
        Fe(10, query("SELECT x")),
        Be(11, row[..100].to_vec()),
        Step::BeGap(row.len() as u64 - 100),
        Be(12, cat(&[complete("SELECT 1"), ready(b'I')])),
    ]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(ev, vec![done("SELECT x", 10, 12, Some(1))]);
}

#[test]
fn frontend_gap_inside_copy_data_and_bind_parameters_is_skipped() {
    let data = copy_data(&[b'y'; 5000]);
    let b = bind("", "", &[&[b'z'; 3000]]);
    let steps = after_login(vec![
        Fe(10, query("COPY t FROM STDIN")),
        Be(11, copy_in(1)),
        Fe(12, data[..10].to_vec()),
        Step::FeGap(4000),
        Fe(13, cat(&[data[4010..].to_vec(), copy_done()])),
        Be(14, cat(&[complete("COPY 1"), ready(b'I')])),
        Fe(20, cat(&[parse("", "SELECT $1", &[]), b[..600].to_vec()])),
        Step::FeGap(2000),
        Fe(21, cat(&[b[2600..].to_vec(), execute("", 0), sync()])),
        Be(
            22,
            cat(&[
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
            done("COPY t FROM STDIN", 10, 14, Some(1)),
            done("SELECT $1", 21, 22, Some(1))
        ]
    );
}

#[test]
fn gap_in_query_text_desyncs_then_resyncs() {
    let q = query("SELECT a_long_column_name FROM t");
    let mut steps = after_login(vec![
        Fe(10, q[..12].to_vec()),
        Step::FeGap(5),
        Fe(11, q[17..].to_vec()),
        Be(12, cat(&[complete("SELECT 1"), ready(b'I')])),
    ]);
    steps.extend(q_and_answer(20, "SELECT 2"));
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            desync(Direction::Frontend, DesyncReason::Gap),
            done("SELECT 2", 20, 21, Some(1))
        ]
    );
}

#[test]
fn gap_at_a_message_boundary_desyncs() {
    let mut steps = after_login(vec![
        Fe(10, query("SELECT 1")),
        Step::FeGap(3),
        Be(11, cat(&[complete("SELECT 1"), ready(b'I')])),
    ]);
    steps.extend(q_and_answer(20, "SELECT 2"));
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            desync(Direction::Frontend, DesyncReason::Gap),
            done("SELECT 2", 20, 21, Some(1))
        ]
    );
}

#[test]
fn backend_gap_in_command_complete_resyncs_at_ready() {
    let c1 = complete("SELECT 1");
    let mut steps = after_login(vec![
        Fe(10, query("SELECT 1")),
        Be(11, c1[..7].to_vec()),
        Step::BeGap(2),
        Be(12, cat(&[c1[9..].to_vec(), ready(b'I')])),
    ]);
    steps.extend(q_and_answer(20, "SELECT 2"));
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            desync(Direction::Backend, DesyncReason::Gap),
            done("SELECT 2", 20, 21, Some(1))
        ]
    );
}

#[test]
fn lost_records_resynchronise_both_directions() {
    let mut steps = after_login(vec![
        Fe(10, query("SELECT 1")),
        Step::Lost,
        Be(
            11,
            cat(&[data_row(&[b"1"]), complete("SELECT 1"), ready(b'I')]),
        ),
    ]);
    steps.extend(q_and_answer(20, "SELECT 2"));
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            desync(Direction::Frontend, DesyncReason::Lost),
            desync(Direction::Backend, DesyncReason::Lost),
            done("SELECT 2", 20, 21, Some(1)),
        ]
    );
}

#[test]
fn lost_during_startup_continues_mid_stream() {
    let mut steps = vec![
        Fe(1, startup(0, &[("user", "a")])),
        Step::Lost,
        Be(2, cat(&[auth_ok(), ready(b'I')])),
    ];
    steps.extend(q_and_answer(20, "SELECT 2"));
    let ev = outcomes(&check_new(&steps));
    assert_eq!(
        ev[1..],
        [
            desync(Direction::Frontend, DesyncReason::Lost),
            desync(Direction::Backend, DesyncReason::Lost),
            done("SELECT 2", 20, 21, Some(1))
        ]
    );
}

#[test]
fn query_over_the_cap_is_truncated() {
    let sql = format!("SELECT '{}'", "a".repeat(3000));
    let q = query(&sql);
    let steps = after_login(vec![
        Fe(10, q[..700].to_vec()),
        Fe(11, q[700..].to_vec()),
        Be(12, cat(&[complete("SELECT 1"), ready(b'I')])),
    ]);
    let ev = after_login_events(check(small_limits, &steps));
    let n = sql.len();
    assert_eq!(
        ev,
        vec![
            Ev::Truncated {
                prefix: 1024,
                len: n,
                simple: true
            },
            done(&format!("<truncated {n}>"), 11, 12, Some(1))
        ]
    );
}

#[test]
fn parse_over_the_cap_is_truncated_and_bind_over_the_cap_keeps_names() {
    let sql = format!("SELECT '{}' = $1", "a".repeat(3000));
    let steps = after_login(vec![
        Fe(
            10,
            cat(&[
                parse("big", &sql, &[25]),
                bind("p", "big", &[&[b'v'; 4000]]),
                execute("p", 0),
                sync(),
            ]),
        ),
        Be(
            12,
            cat(&[
                parse_complete(),
                bind_complete(),
                complete("SELECT 1"),
                ready(b'I'),
            ]),
        ),
    ]);
    let ev = after_login_events(check(small_limits, &steps));
    let n = sql.len();
    // The length is an upper bound: it counts the 4 bytes of each parameter type.
    let n = n + 4;
    assert_eq!(
        ev,
        vec![
            Ev::Truncated {
                prefix: 1024 - 4,
                len: n,
                simple: false
            },
            done(&format!("<truncated {n}>"), 10, 12, Some(1))
        ]
    );
}

#[test]
fn query_of_100_kib_is_reassembled_whole() {
    let sql = format!(
        "SELECT {}",
        (0..20_000)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    assert!(sql.len() > 100 * 1024);
    let steps = after_login(vec![
        Fe(10, query(&sql)),
        Be(11, cat(&[complete("SELECT 1"), ready(b'I')])),
    ]);
    for size in [8192, 1000, 7, 1] {
        let mut c = Connection::new();
        let ev = after_login_events(run_cut(&mut c, &steps, &|_, b| {
            b.chunks(size).map(<[u8]>::to_vec).collect()
        }));
        assert_eq!(
            ev,
            vec![prep(&sql, true), done(&sql, 10, 11, Some(1))],
            "chunks of {size}"
        );
    }
}

#[test]
fn large_results_are_skipped_without_buffering() {
    let row = data_row(&[&vec![b'r'; 8 << 20]]);
    let mut steps = after_login(vec![Fe(10, query("SELECT big"))]);
    let mut be = cat(&[row_desc(&["big"]), row.clone(), row]);
    be.extend(cat(&[complete("SELECT 2"), ready(b'I')]));
    steps.extend(be.chunks(8192).map(|c| Be(11, c.to_vec())));
    let mut c = Connection::new();
    let ev = outcomes(&after_login_events(run(&mut c, &steps)));
    assert_eq!(ev, vec![done("SELECT big", 10, 11, Some(2))]);
    assert!(c.buffer_capacity() < 64, "buffered {}", c.buffer_capacity());
}

#[test]
fn over_long_query_buffers_at_most_the_cap() {
    let q = query(&"x".repeat(5000));
    let mut c = small_limits();
    let mut rec = Rec::default();
    for chunk in q.chunks(100) {
        c.frontend(1, chunk, &mut rec);
        assert!(c.buffer_capacity() <= 2048);
    }
}

#[test]
fn unknown_type_on_the_backend_resyncs_after_ready() {
    let mut steps = after_login(vec![
        Fe(10, query("SELECT 1")),
        Be(11, cat(&[vec![0xff, 0, 0, 0, 9], b"garbage".to_vec()])),
        Be(12, cat(&[b"more garbage".to_vec(), ready(b'I')])),
    ]);
    steps.extend(q_and_answer(20, "SELECT 2"));
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            desync(Direction::Backend, DesyncReason::UnknownType),
            done("SELECT 2", 20, 21, Some(1))
        ]
    );
}

#[test]
fn bad_length_on_the_frontend_resyncs_at_a_later_chunk() {
    let mut steps = after_login(vec![Fe(10, vec![b'Q', 0, 0, 0, 2, b'x', 0])]);
    steps.extend(q_and_answer(12, "SELECT 1"));
    steps.extend(q_and_answer(20, "SELECT 2"));
    let ev = outcomes(&after_login_events(check_new(&steps)));
    // The first query after the desync only re-establishes sync: its ReadyForQuery is the
    // first one that leaves nothing pending.
    assert_eq!(
        ev,
        vec![
            desync(Direction::Frontend, DesyncReason::BadLength),
            done("SELECT 2", 20, 21, Some(1))
        ]
    );
}

#[test]
fn length_over_one_gib_is_bad() {
    let steps = after_login(vec![Fe(10, vec![b'd', 0x40, 0, 0, 1])]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![desync(Direction::Frontend, DesyncReason::BadLength)]
    );
}

#[test]
fn malformed_messages_desync() {
    // Execute whose portal name has no NUL; ReadyForQuery with a bad status.
    let steps = after_login(vec![
        Fe(10, msg(b'E', b"abcdefgh")),
        Be(11, msg(b'Z', b"X")),
    ]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            desync(Direction::Frontend, DesyncReason::Malformed),
            desync(Direction::Backend, DesyncReason::Malformed)
        ]
    );
}
