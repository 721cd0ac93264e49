//! Property tests on generated sessions: strategies build well-formed simple and extended
//! protocol exchanges (§54.2.2, §54.2.3, §54.2.4) together with the backend's answers as the
//! server gives them, and an oracle of the executions and errors the parser must report.
//!
//! - A generated session, fed whole, reports exactly the oracle's executions and errors and
//!   no desync; cut at arbitrary byte boundaries it reports exactly the same events as fed
//!   whole.
//! - Arbitrary bytes fed to a second connection, interleaved with the first, change nothing
//!   the first reports. The crate has no multi-connection object (the caller keeps one
//!   [`Connection`] per socket): what holds is that two connections share no state.

use proptest::collection::vec;
use proptest::prelude::*;

use super::enc::*;
use super::*;

/// Where an extended-protocol execution fails, if it does.
#[derive(Clone, Copy, Debug)]
enum Fail {
    /// It does not.
    No,
    /// Its Parse: a syntax error (42601).
    Parse,
    /// Its Bind: a parameter that does not convert (22P02).
    Bind,
    /// Its first Execute, after this many rows: division by zero (22012).
    Execute(u8),
}

/// One Parse/Bind/Execute group of a batch.
#[derive(Clone, Debug)]
struct Exec {
    /// Distinguishes the statement's text.
    k: u16,
    /// A named statement (closed after use) rather than the unnamed one.
    named_stmt: bool,
    /// A named portal (closed after use) rather than the unnamed one.
    named_portal: bool,
    /// Describe the statement after Parse.
    describe_stmt: bool,
    /// Describe the portal after Bind.
    describe_portal: bool,
    /// Rows the query returns.
    rows: u8,
    /// Row limit of the first Execute (0: none); a limit below `rows` suspends the portal,
    /// and a second Execute fetches the rest.
    limit: u8,
    fail: Fail,
    /// A Flush after the group (answered by nothing).
    flush: bool,
}

/// One request/response exchange.
#[derive(Clone, Debug)]
enum Exchange {
    /// A simple Query of these `(k, rows)` statements, the one at `fail.0` failing after
    /// `fail.1` rows; an empty list is an empty query string.
    Simple {
        stmts: Vec<(u16, u8)>,
        fail: Option<(usize, u8)>,
    },
    /// Batches, each ended by a Sync; `pipelined`: all sent before any answer is read.
    Extended {
        batches: Vec<Vec<Exec>>,
        pipelined: bool,
    },
}

/// What the parser must report, in order: executions `(statement, outcome)` and errors
/// `(SQLSTATE, context)`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Want {
    Done(String, Outcome),
    Error(String, ErrorContext),
}

fn fail() -> impl Strategy<Value = Fail> {
    prop_oneof![
        6 => Just(Fail::No),
        1 => Just(Fail::Parse),
        1 => Just(Fail::Bind),
        1 => (0u8..3).prop_map(Fail::Execute),
    ]
}

fn exec() -> impl Strategy<Value = Exec> {
    (
        any::<u16>(),
        any::<[bool; 5]>(),
        0u8..5,
        prop_oneof![3 => Just(0u8), 1 => 1u8..4],
        fail(),
    )
        .prop_map(|(k, b, rows, limit, fail)| Exec {
            k,
            named_stmt: b[0],
            named_portal: b[1],
            describe_stmt: b[2],
            describe_portal: b[3],
            rows,
            limit,
            fail,
            flush: b[4],
        })
}

fn exchange() -> impl Strategy<Value = Exchange> {
    let simple = (vec((any::<u16>(), 0u8..4), 0..4), any::<(bool, u8, u8)>()).prop_map(
        |(stmts, (fails, at, rows_before))| {
            let fail = (fails && !stmts.is_empty())
                .then(|| (usize::from(at) % stmts.len(), rows_before % 3));
            Exchange::Simple { stmts, fail }
        },
    );
    let extended = (vec(vec(exec(), 1..4), 1..4), any::<bool>())
        .prop_map(|(batches, pipelined)| Exchange::Extended { batches, pipelined });
    prop_oneof![simple, extended]
}

fn tag(rows: u8) -> Vec<u8> {
    complete(&format!("SELECT {rows}"))
}

fn rows_of(n: u8) -> Vec<u8> {
    (0..n).flat_map(|i| data_row(&[&[b'0' + i]])).collect()
}

fn ok(rows: u8) -> Outcome {
    Outcome::Ok {
        rows: Some(rows.into()),
    }
}

fn error_outcome(code: &str) -> Outcome {
    Outcome::Error {
        sqlstate: code.as_bytes().try_into().unwrap(),
    }
}

/// One batch's frontend bytes (ending with Sync), the server's answer, and the oracle.
/// `n` numbers the named statements and portals so that names are never reused.
fn batch(execs: &[Exec], n: &mut u32) -> (Vec<u8>, Vec<u8>, Vec<Want>) {
    let (mut fe, mut be, mut want) = (Vec::new(), Vec::new(), Vec::new());
    // Once an error is sent the server skips every message up to the Sync (§54.2.3).
    let mut failed = false;
    let mut answer = |failed: &mut bool, bytes: Vec<u8>| {
        if !*failed {
            be.extend(bytes);
        }
    };
    for e in execs {
        *n += 1;
        let sql = format!("SELECT $1::int + {}", e.k);
        let stmt = if e.named_stmt {
            format!("s{n}")
        } else {
            String::new()
        };
        let portal = if e.named_portal {
            format!("p{n}")
        } else {
            String::new()
        };
        fe.extend(parse(&stmt, &sql, &[23]));
        if matches!(e.fail, Fail::Parse) && !failed {
            answer(&mut failed, error("42601"));
            want.push(Want::Error("42601".into(), ErrorContext::Parse));
            failed = true;
        }
        answer(&mut failed, parse_complete());
        if e.describe_stmt {
            fe.extend(describe(b'S', &stmt));
            answer(&mut failed, cat(&[param_desc(1), row_desc(&["x"])]));
        }
        fe.extend(bind(&portal, &stmt, &[b"1"]));
        if matches!(e.fail, Fail::Bind) && !failed {
            answer(&mut failed, error("22P02"));
            want.push(Want::Error("22P02".into(), ErrorContext::Bind));
            failed = true;
        }
        answer(&mut failed, bind_complete());
        if e.describe_portal {
            fe.extend(describe(b'P', &portal));
            answer(&mut failed, row_desc(&["x"]));
        }
        fe.extend(execute(&portal, e.limit.into()));
        if let (Fail::Execute(before), false) = (e.fail, failed) {
            answer(
                &mut failed,
                cat(&[rows_of(before.min(e.rows)), error("22012")]),
            );
            want.push(Want::Done(sql.clone(), error_outcome("22012")));
            want.push(Want::Error("22012".into(), ErrorContext::Execution));
            failed = true;
        } else if e.limit > 0 && e.limit < e.rows {
            answer(&mut failed, cat(&[rows_of(e.limit), suspended()]));
            fe.extend(execute(&portal, 0));
            answer(
                &mut failed,
                cat(&[rows_of(e.rows - e.limit), tag(e.rows - e.limit)]),
            );
            if !failed {
                let rows = e.limit.into();
                want.push(Want::Done(sql.clone(), Outcome::Suspended { rows }));
                want.push(Want::Done(sql.clone(), ok(e.rows - e.limit)));
            }
        } else {
            answer(&mut failed, cat(&[rows_of(e.rows), tag(e.rows)]));
            if !failed {
                want.push(Want::Done(sql.clone(), ok(e.rows)));
            }
        }
        if e.named_portal {
            fe.extend(close(b'P', &portal));
            answer(&mut failed, close_complete());
        }
        if e.named_stmt {
            fe.extend(close(b'S', &stmt));
            answer(&mut failed, close_complete());
        }
        if e.flush {
            fe.extend(flush());
        }
    }
    fe.extend(sync());
    be.extend(ready(b'I'));
    (fe, be, want)
}

/// The session's steps (after [`login`]) and the oracle.
fn session(exchanges: &[Exchange]) -> (Vec<Step>, Vec<Want>) {
    let (mut steps, mut want) = (login(), Vec::new());
    let mut t = 100;
    let mut n = 0;
    for x in exchanges {
        t += 100;
        match x {
            Exchange::Simple { stmts, fail } => {
                let texts: Vec<String> = stmts.iter().map(|(k, _)| format!("SELECT {k}")).collect();
                steps.push(Fe(t, query(&texts.join("; "))));
                let mut be = Vec::new();
                if stmts.is_empty() {
                    be.extend(empty_query());
                }
                for (i, (text, &(_, rows))) in texts.iter().zip(stmts).enumerate() {
                    be.extend(row_desc(&["x"]));
                    match fail {
                        Some((at, before)) if *at == i => {
                            be.extend(cat(&[rows_of((*before).min(rows)), error("22012")]));
                            want.push(Want::Done(text.clone(), error_outcome("22012")));
                            want.push(Want::Error("22012".into(), ErrorContext::Execution));
                            break;
                        }
                        _ => {
                            be.extend(cat(&[rows_of(rows), tag(rows)]));
                            want.push(Want::Done(text.clone(), ok(rows)));
                        }
                    }
                }
                be.extend(ready(b'I'));
                steps.push(Be(t + 1, be));
            }
            Exchange::Extended { batches, pipelined } => {
                let mut answers = Vec::new();
                for (i, b) in batches.iter().enumerate() {
                    let (fe, be, w) = batch(b, &mut n);
                    let ts = t + 10 * i as u64;
                    want.extend(w);
                    steps.push(Fe(ts, fe));
                    if *pipelined {
                        answers.push(Be(ts + 50, be));
                    } else {
                        steps.push(Be(ts + 1, be));
                    }
                }
                steps.extend(answers);
            }
        }
    }
    (steps, want)
}

/// The executions and errors among `ev`, as the oracle states them.
fn reported(ev: &[Ev]) -> Vec<Want> {
    ev.iter()
        .filter_map(|e| match e {
            Ev::Done { stmt, outcome, .. } => Some(Want::Done(stmt.clone(), *outcome)),
            Ev::Error { code, ctx, .. } => Some(Want::Error(code.clone(), *ctx)),
            _ => None,
        })
        .collect()
}

/// Cuts every chunk at the byte offsets of `cuts` (taken modulo its length).
fn cut_at(cuts: &[proptest::sample::Index]) -> impl Fn(usize, &[u8]) -> Vec<Vec<u8>> + '_ {
    move |_, b| {
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(b.len() + 1)).collect();
        at.push(b.len());
        at.sort_unstable();
        let mut p = 0;
        let mut out = Vec::new();
        for a in at {
            if a > p {
                out.push(b[p..a].to_vec());
                p = a;
            }
        }
        out
    }
}

/// Arbitrary chunks: `true` frontend, `false` backend.
fn chunks() -> impl Strategy<Value = Vec<(bool, Vec<u8>)>> {
    vec((any::<bool>(), vec(any::<u8>(), 0..64)), 0..24)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn generated_sessions_report_what_the_server_did(xs in vec(exchange(), 1..6)) {
        let (steps, want) = session(&xs);
        let ev = run(&mut Connection::new(), &steps);
        prop_assert!(!ev.iter().any(|e| matches!(e, Ev::Desync(..))), "{:?}", ev);
        prop_assert_eq!(reported(&ev), want);
    }

    #[test]
    fn generated_sessions_cut_anywhere_give_the_same_events(
        xs in vec(exchange(), 1..6),
        cuts in vec(any::<proptest::sample::Index>(), 0..8),
    ) {
        let (steps, _) = session(&xs);
        let whole = run(&mut Connection::new(), &steps);
        let cut = run_cut(&mut Connection::new(), &steps, &cut_at(&cuts));
        prop_assert_eq!(cut, whole);
    }

    #[test]
    fn arbitrary_bytes_on_one_connection_leave_another_unchanged(
        xs in vec(exchange(), 1..4),
        garbage in chunks(),
        order in vec(any::<bool>(), 0..64),
        mid in any::<bool>(),
    ) {
        let (steps, _) = session(&xs);
        let alone = run(&mut Connection::new(), &steps);

        let mut a: Connection<String> = Connection::new();
        let mut b: Connection<String> =
            if mid { Connection::new_mid_stream() } else { Connection::new() };
        let (mut ra, mut rb) = (Rec::default(), Rec::default());
        let (mut sa, mut gb) = (steps.iter(), garbage.iter());
        for take_a in order.into_iter().chain(std::iter::repeat_n(true, steps.len())) {
            if take_a {
                match sa.next() {
                    Some(Fe(ts, bytes) | FeWhole(ts, bytes)) => a.frontend(*ts, bytes, &mut ra),
                    Some(Be(ts, bytes)) => a.backend(*ts, bytes, &mut ra),
                    Some(_) | None => {}
                }
            } else if let Some((frontend, bytes)) = gb.next() {
                if *frontend { b.frontend(7, bytes, &mut rb) } else { b.backend(8, bytes, &mut rb) }
            }
        }
        prop_assert_eq!(ra.ev, alone);
    }
}
