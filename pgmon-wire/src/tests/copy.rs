//! COPY Operations (§54.2.6).

use super::enc::*;
use super::*;

const COPY_IN: &str = "COPY t FROM STDIN";
const COPY_OUT: &str = "COPY t TO STDOUT";

#[test]
fn copy_from_stdin_simple_query() {
    let steps = after_login(vec![
        Fe(10, query(COPY_IN)),
        Be(11, copy_in(2)),
        Fe(12, cat(&[copy_data(b"1\ta\n"), copy_data(b"2\tb\n")])),
        Fe(13, copy_done()),
        Be(14, cat(&[complete("COPY 2"), ready(b'I')])),
        Fe(15, query("SELECT 1")),
        Be(16, cat(&[complete("SELECT 1"), ready(b'I')])),
    ]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            done(COPY_IN, 10, 14, Some(2)),
            done("SELECT 1", 15, 16, Some(1))
        ]
    );
}

#[test]
fn copy_from_stdin_failed_by_the_client() {
    let steps = after_login(vec![
        Fe(10, query(COPY_IN)),
        Be(11, copy_in(1)),
        Fe(12, cat(&[copy_data(b"1\n"), copy_fail("client gave up")])),
        Be(14, cat(&[error("57014"), ready(b'I')])),
        Fe(15, query("SELECT 1")),
        Be(16, cat(&[complete("SELECT 1"), ready(b'I')])),
    ]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            failed(COPY_IN, 10, 14, "57014"),
            err("57014", ErrorContext::Execution),
            done("SELECT 1", 15, 16, Some(1))
        ]
    );
}

#[test]
fn copy_from_stdin_bad_data_while_client_still_sends() {
    let steps = after_login(vec![
        Fe(10, query(COPY_IN)),
        Be(11, copy_in(1)),
        Fe(12, copy_data(b"x\n")),
        Be(13, cat(&[error("22P02"), ready(b'I')])),
        // The client had more in flight; the server drops it.
        Fe(14, cat(&[copy_data(b"2\n"), copy_done()])),
        Fe(15, query("SELECT 1")),
        Be(16, cat(&[complete("SELECT 1"), ready(b'I')])),
    ]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            failed(COPY_IN, 10, 13, "22P02"),
            err("22P02", ErrorContext::Execution),
            done("SELECT 1", 15, 16, Some(1))
        ]
    );
}

#[test]
fn copy_to_stdout() {
    let steps = after_login(vec![
        Fe(10, query(COPY_OUT)),
        Be(11, cat(&[copy_out(2), copy_data(b"1\ta\n")])),
        Be(
            12,
            cat(&[
                copy_data(b"2\tb\n"),
                be_copy_done(),
                complete("COPY 2"),
                ready(b'I'),
            ]),
        ),
    ]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(ev, vec![done(COPY_OUT, 10, 12, Some(2))]);
}

#[test]
fn copy_from_stdin_extended_swallows_the_sync_sent_with_execute() {
    // libpq's PQexecParams sends P B D E S; the Sync arrives during copy-in and is ignored
    // by the server; PQputCopyEnd sends CopyDone and another Sync.
    let steps = after_login(vec![
        Fe(
            10,
            cat(&[
                parse("", COPY_IN, &[]),
                bind("", "", &[]),
                describe(b'P', ""),
                execute("", 0),
                sync(),
            ]),
        ),
        Be(
            11,
            cat(&[parse_complete(), bind_complete(), no_data(), copy_in(1)]),
        ),
        Fe(12, cat(&[copy_data(b"1\n"), copy_done(), sync()])),
        Be(13, cat(&[complete("COPY 1"), ready(b'I')])),
        Fe(14, query("SELECT 1")),
        Be(15, cat(&[complete("SELECT 1"), ready(b'I')])),
    ]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            done(COPY_IN, 10, 13, Some(1)),
            done("SELECT 1", 14, 15, Some(1))
        ]
    );
    let mut c = Connection::new();
    run(&mut c, &steps);
    assert_eq!(c.pending(), 0);
}

#[test]
fn copy_from_stdin_extended_all_sent_before_copy_in_response() {
    // Everything pipelined before the server's CopyInResponse is read by the capture.
    let steps = after_login(vec![
        Fe(
            10,
            cat(&[
                parse("", COPY_IN, &[]),
                bind("", "", &[]),
                execute("", 0),
                sync(),
                copy_data(b"1\n"),
                copy_done(),
                sync(),
            ]),
        ),
        Be(11, cat(&[parse_complete(), bind_complete(), copy_in(1)])),
        Be(13, cat(&[complete("COPY 1"), ready(b'I')])),
        Fe(14, query("SELECT 1")),
        Be(15, cat(&[complete("SELECT 1"), ready(b'I')])),
    ]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            done(COPY_IN, 10, 13, Some(1)),
            done("SELECT 1", 14, 15, Some(1))
        ]
    );
}

#[test]
fn copy_from_stdin_extended_error_skips_to_the_later_sync() {
    let steps = after_login(vec![
        Fe(
            10,
            cat(&[
                parse("", COPY_IN, &[]),
                bind("", "", &[]),
                execute("", 0),
                sync(),
            ]),
        ),
        Be(11, cat(&[parse_complete(), bind_complete(), copy_in(1)])),
        Fe(12, copy_data(b"x\n")),
        Be(13, error("22P02")),
        Fe(14, cat(&[copy_done(), sync()])),
        Be(15, ready(b'I')),
        Fe(16, query("SELECT 1")),
        Be(17, cat(&[complete("SELECT 1"), ready(b'I')])),
    ]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            failed(COPY_IN, 10, 13, "22P02"),
            err("22P02", ErrorContext::Execution),
            done("SELECT 1", 16, 17, Some(1))
        ]
    );
}

#[test]
fn copy_both_for_replication() {
    let steps = vec![
        Fe(1, startup(0, &[("user", "rep"), ("replication", "true")])),
        Be(2, cat(&[auth_ok(), ready(b'I')])),
        Fe(3, query("START_REPLICATION 0/0")),
        Be(4, cat(&[copy_both(), copy_data(&[b'w'; 40])])),
        Fe(5, copy_data(&[b'r'; 34])),
        Be(6, copy_data(&[b'k'; 18])),
        Fe(7, copy_done()),
        Be(
            8,
            cat(&[be_copy_done(), complete("START_REPLICATION"), ready(b'I')]),
        ),
    ];
    let ev = outcomes(&check_new(&steps));
    assert_eq!(ev[1..], [done("START_REPLICATION 0/0", 3, 8, None)]);
}
