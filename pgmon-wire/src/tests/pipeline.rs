//! Pipelining (§54.2.4) and errors in the extended protocol (§54.2.3).

use super::enc::*;
use super::*;

const SEL: &str = "SELECT x FROM t WHERE id = $1";

#[test]
fn pipeline_of_several_syncs_before_any_reply() {
    let seg = |v: &[u8]| cat(&[bind("", "q", &[v]), execute("", 0), sync()]);
    let steps = after_login(vec![
        Fe(
            10,
            cat(&[
                parse("q", SEL, &[23]),
                sync(),
                seg(b"1"),
                seg(b"2"),
                seg(b"3"),
            ]),
        ),
        Be(
            20,
            cat(&[
                parse_complete(),
                ready(b'I'),
                bind_complete(),
                complete("SELECT 1"),
                ready(b'I'),
            ]),
        ),
        Be(
            30,
            cat(&[
                bind_complete(),
                complete("SELECT 1"),
                ready(b'I'),
                bind_complete(),
            ]),
        ),
        Be(40, cat(&[complete("SELECT 0"), ready(b'I')])),
    ]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            done(SEL, 10, 20, Some(1)),
            done(SEL, 20, 30, Some(1)),
            done(SEL, 30, 40, Some(0))
        ]
    );
}

#[test]
fn error_mid_pipeline_skips_to_sync() {
    let seg = |v: &[u8]| cat(&[bind("", "q", &[v]), execute("", 0), sync()]);
    let steps = after_login(vec![
        Fe(
            10,
            cat(&[
                parse("q", "SELECT 1/$1", &[23]),
                seg(b"1"),
                seg(b"0"),
                seg(b"2"),
            ]),
        ),
        Be(
            20,
            cat(&[
                parse_complete(),
                bind_complete(),
                complete("SELECT 1"),
                ready(b'I'),
            ]),
        ),
        Be(30, cat(&[bind_complete(), error("22012"), ready(b'I')])),
        Be(
            40,
            cat(&[bind_complete(), complete("SELECT 1"), ready(b'I')]),
        ),
    ]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            done("SELECT 1/$1", 10, 20, Some(1)),
            failed("SELECT 1/$1", 20, 30, "22012"),
            err("22012", ErrorContext::Execution),
            done("SELECT 1/$1", 30, 40, Some(1)),
        ]
    );
}

#[test]
fn error_in_one_sync_segment_drops_the_rest_of_it() {
    // P B E P B E S: the first Bind fails; the server skips everything to the Sync.
    let steps = after_login(vec![
        Fe(
            10,
            cat(&[
                parse("", "SELECT $1::int", &[]),
                bind("", "", &[b"x"]),
                execute("", 0),
                parse("", "SELECT 2", &[]),
                bind("", "", &[]),
                execute("", 0),
                sync(),
            ]),
        ),
        Be(11, cat(&[parse_complete(), error("22P02"), ready(b'I')])),
        Fe(12, query("SELECT 3")),
        Be(13, cat(&[complete("SELECT 1"), ready(b'I')])),
    ]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            err("22P02", ErrorContext::Bind),
            done("SELECT 3", 12, 13, Some(1))
        ]
    );
}

#[test]
fn parse_error_then_messages_sent_after_it_are_ignored_until_sync() {
    // The client sends Parse + Flush, reads the error, then sends Bind/Execute/Sync: the
    // server ignores the Bind and Execute and answers the Sync.
    let steps = after_login(vec![
        Fe(10, cat(&[parse("", "SELEC 1", &[]), flush()])),
        Be(11, error("42601")),
        Fe(
            12,
            cat(&[bind("", "", &[]), execute("", 0), query("SELECT 9"), sync()]),
        ),
        Be(13, ready(b'I')),
        Fe(14, query("SELECT 3")),
        Be(15, cat(&[complete("SELECT 1"), ready(b'I')])),
    ]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            err("42601", ErrorContext::Parse),
            done("SELECT 3", 14, 15, Some(1))
        ]
    );
}

#[test]
fn error_at_sync_is_a_commit_failure() {
    let steps = after_login(vec![
        Fe(
            10,
            cat(&[
                parse("", "INSERT INTO t VALUES (1)", &[]),
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
                complete("INSERT 0 1"),
                error("23503"),
                ready(b'I'),
            ]),
        ),
    ]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            done("INSERT INTO t VALUES (1)", 10, 11, Some(1)),
            err("23503", ErrorContext::Sync)
        ]
    );
}

#[test]
fn describe_error_context() {
    let steps = after_login(vec![
        Fe(10, cat(&[describe(b'S', "nope"), sync()])),
        Be(11, cat(&[error("26000"), ready(b'I')])),
    ]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(ev, vec![err("26000", ErrorContext::Describe)]);
}

#[test]
fn query_after_extended_messages_without_sync() {
    // Pgpool-II's report: P B E P B E Q; the Query's ReadyForQuery ends everything.
    let steps = after_login(vec![
        Fe(
            10,
            cat(&[
                parse("", "SET a = 1", &[]),
                bind("", "", &[]),
                execute("", 0),
                parse("", "SET b = 1", &[]),
                bind("", "", &[]),
                execute("", 0),
                query("SET c = 1"),
            ]),
        ),
        Be(
            11,
            cat(&[
                parse_complete(),
                bind_complete(),
                complete("SET"),
                parse_complete(),
                bind_complete(),
                complete("SET"),
                complete("SET"),
                ready(b'I'),
            ]),
        ),
    ]);
    let ev = outcomes(&after_login_events(check_new(&steps)));
    assert_eq!(
        ev,
        vec![
            done("SET a = 1", 10, 11, None),
            done("SET b = 1", 11, 11, None),
            done("SET c = 1", 11, 11, None)
        ]
    );
}
