//! What each ErrorResponse failed ([`ErrorScope`]): a statement's execution, a request that
//! executed nothing, or the connection itself. Fixtures are the byte sequences PostgreSQL
//! sends in each case (§54.2.1 Start-up, §54.2.3 Extended Query, §54.8 error fields).

use super::enc::*;
use super::*;

/// The scope of every error event, in order.
fn scopes(ev: &[Ev]) -> Vec<(String, ErrorScope)> {
    ev.iter()
        .filter_map(|e| match e {
            Ev::Error { code, ctx, fatal } => {
                let sqlstate = <[u8; 5]>::try_from(code.as_bytes()).expect("five characters");
                let e = ErrorResponse {
                    sqlstate,
                    fatal: *fatal,
                };
                Some((code.clone(), ErrorScope::of(e, *ctx)))
            }
            _ => None,
        })
        .collect()
}

fn scoped(code: &str, scope: ErrorScope) -> (String, ErrorScope) {
    (code.to_owned(), scope)
}

#[test]
fn nonexistent_database_at_startup_is_a_connection_error() {
    // psql -d nosuchdb: trust authentication passes, then the backend finds no database.
    let steps = vec![
        Fe(
            1,
            startup(0, &[("user", "alice"), ("database", "nosuchdb")]),
        ),
        Be(2, cat(&[auth_ok(), fatal("3D000")])),
    ];
    let ev = check_new(&steps);
    assert_eq!(ev[1], fatal_err("3D000", ErrorContext::Startup));
    assert_eq!(scopes(&ev), vec![scoped("3D000", ErrorScope::Connection)]);
}

#[test]
fn wrong_password_is_a_connection_error() {
    // SCRAM: AuthenticationSASL (10), the client's first message, then the failure.
    let steps = vec![
        Fe(1, startup(0, &[("user", "alice"), ("database", "shop")])),
        Be(2, auth(10)),
        Fe(3, password("SCRAM-SHA-256 client-first")),
        Be(4, fatal("28P01")),
    ];
    assert_eq!(
        scopes(&check_new(&steps)),
        vec![scoped("28P01", ErrorScope::Connection)]
    );
}

#[test]
fn termination_while_idle_is_a_connection_error() {
    // pg_terminate_backend() of an idle session.
    let steps = after_login(vec![Be(10, fatal("57P01"))]);
    assert_eq!(
        scopes(&check_new(&steps)),
        vec![scoped("57P01", ErrorScope::Connection)]
    );
}

#[test]
fn termination_during_a_statement_fails_the_statement() {
    // pg_terminate_backend() while `SELECT pg_sleep(60)` runs: the statement failed, and its
    // failure is counted with its completion, not as a connection error.
    let steps = after_login(vec![
        Fe(10, query("SELECT pg_sleep(60)")),
        Be(20, fatal("57P01")),
    ]);
    let ev = check_new(&steps);
    assert!(
        ev.iter().any(|e| matches!(
            e,
            Ev::Done {
                outcome: Outcome::Error { sqlstate },
                ..
            } if sqlstate == b"57P01"
        )),
        "{ev:?}"
    );
    assert_eq!(scopes(&ev), vec![scoped("57P01", ErrorScope::Execution)]);
}

#[test]
fn protocol_violation_is_a_connection_error() {
    // A frontend message type that does not exist: the server answers FATAL 08P01 ("invalid
    // frontend message type") and closes; the parser desynced on the same byte.
    let steps = after_login(vec![Fe(10, msg(b'@', b"junk")), Be(11, fatal("08P01"))]);
    assert_eq!(
        scopes(&check_new(&steps)),
        vec![scoped("08P01", ErrorScope::Connection)]
    );
}

#[test]
fn statement_errors_are_executions_or_requests() {
    // A division by zero (simple protocol), a syntax error at Parse, a bad parameter at Bind,
    // and a deferred constraint failing at the implicit commit of a Sync.
    let steps = after_login(vec![
        Fe(10, query("SELECT 1/0")),
        Be(11, cat(&[error("22012"), ready(b'I')])),
        Fe(12, cat(&[parse("", "SELEC 1", &[]), sync()])),
        Be(13, cat(&[error("42601"), ready(b'I')])),
        Fe(14, cat(&[parse("", "SELECT $1::int", &[]), sync()])),
        Be(15, cat(&[parse_complete(), ready(b'I')])),
        Fe(16, cat(&[bind("", "", &[b"x"]), execute("", 0), sync()])),
        Be(17, cat(&[error("22P02"), ready(b'I')])),
        Fe(
            18,
            cat(&[
                parse("", "INSERT INTO t VALUES (1)", &[]),
                bind("", "", &[]),
                execute("", 0),
                sync(),
            ]),
        ),
        Be(
            19,
            cat(&[
                parse_complete(),
                bind_complete(),
                complete("INSERT 0 1"),
                error("23503"),
                ready(b'I'),
            ]),
        ),
    ]);
    assert_eq!(
        scopes(&check_new(&steps)),
        vec![
            scoped("22012", ErrorScope::Execution),
            scoped("42601", ErrorScope::Prepare),
            scoped("22P02", ErrorScope::Request),
            scoped("23503", ErrorScope::Request),
        ]
    );
}

#[test]
fn unmatched_errors_by_severity() {
    // Picked up mid-stream: an ERROR nobody can match failed some request; a FATAL one ended
    // the connection.
    let e = |fatal| ErrorResponse {
        sqlstate: *b"57014",
        fatal,
    };
    assert_eq!(
        ErrorScope::of(e(false), ErrorContext::Unmatched),
        ErrorScope::Request
    );
    assert_eq!(
        ErrorScope::of(e(true), ErrorContext::Unmatched),
        ErrorScope::Connection
    );
    // A FATAL answering a Parse (a malformed message the parser still framed) is the
    // connection's, an ERROR there the request's.
    assert_eq!(
        ErrorScope::of(e(true), ErrorContext::Parse),
        ErrorScope::Connection
    );
    assert_eq!(
        ErrorScope::of(e(false), ErrorContext::Parse),
        ErrorScope::Prepare
    );
    // Startup and idle errors are the connection's whatever their severity.
    assert_eq!(
        ErrorScope::of(e(false), ErrorContext::Startup),
        ErrorScope::Connection
    );
    assert_eq!(
        ErrorScope::of(e(false), ErrorContext::Idle),
        ErrorScope::Connection
    );
}

#[test]
fn severity_comes_from_the_unlocalized_field() {
    use crate::body::error_response;
    // lc_messages = 'de_DE': S is translated, V is not (PostgreSQL 9.6+).
    let german = b"SSCHWERWIEGEND\0VFATAL\0C3D000\0MDatenbank existiert nicht\0\0";
    assert_eq!(
        error_response(german),
        ErrorResponse {
            sqlstate: *b"3D000",
            fatal: true
        }
    );
    // Before 9.6 there is no V: S is read.
    assert!(error_response(b"SFATAL\0C28P01\0\0").fatal);
    assert!(error_response(b"SPANIC\0CXX000\0\0").fatal);
    assert!(!error_response(b"SERROR\0VERROR\0C22012\0\0").fatal);
    // A translated S alone cannot be read: taken as ERROR.
    assert!(!error_response(b"SSCHWERWIEGEND\0C3D000\0\0").fatal);
    assert!(!error_response(b"").fatal);
}
