//! Tests of the wire parser: byte fixtures built with [`enc`], fed whole, split at every
//! byte boundary and byte by byte, into a sink that records events.

mod bench;
mod copy;
pub(crate) use crate::enc;
mod errors;
mod extended;
mod midstream;
mod midstream_older;
mod pipeline;
mod prop;
mod prop_session;
mod robust;
mod simple;
mod startup;

use super::*;

/// One recorded event. Statements are the trimmed text between semicolons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ev {
    Prepare {
        text: String,
        simple: bool,
    },
    Truncated {
        prefix: usize,
        len: usize,
        simple: bool,
    },
    Startup {
        user: String,
        database: String,
        app: Option<String>,
        protocol: (u16, u16),
        replication: Replication,
    },
    Encrypted(Encryption),
    Cancel,
    Done {
        stmt: String,
        start: u64,
        end: u64,
        outcome: Outcome,
    },
    Unattributed {
        start: u64,
        end: u64,
        outcome: Outcome,
    },
    Error {
        code: String,
        ctx: ErrorContext,
        /// Severity FATAL or PANIC.
        fatal: bool,
    },
    Desync(Direction, DesyncReason),
    Param(String, String),
}

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A sink that records everything. `prepare` splits on `;`, dropping empty pieces;
/// `truncated` pushes one placeholder `"<truncated N>"`.
#[derive(Default)]
pub struct Rec {
    pub ev: Vec<Ev>,
}

impl Sink for Rec {
    type Stmt = String;

    fn prepare(&mut self, text: &[u8], simple: bool, out: &mut Vec<String>) {
        let text = s(text);
        self.ev.push(Ev::Prepare {
            text: text.clone(),
            simple,
        });
        out.extend(
            text.split(';')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from),
        );
    }

    fn truncated(&mut self, prefix: &[u8], len: usize, simple: bool, out: &mut Vec<String>) {
        self.ev.push(Ev::Truncated {
            prefix: prefix.len(),
            len,
            simple,
        });
        out.push(format!("<truncated {len}>"));
    }

    fn startup(&mut self, st: &Startup<'_>) {
        self.ev.push(Ev::Startup {
            user: s(st.user),
            database: s(st.database),
            app: st.application_name.map(s),
            protocol: st.protocol,
            replication: st.replication,
        });
    }

    fn encrypted(&mut self, how: Encryption) {
        self.ev.push(Ev::Encrypted(how));
    }

    fn cancel_request(&mut self) {
        self.ev.push(Ev::Cancel);
    }

    fn completed(&mut self, c: Completion<String>) {
        self.ev.push(Ev::Done {
            stmt: c.stmt,
            start: c.start_ns,
            end: c.end_ns,
            outcome: c.outcome,
        });
    }

    fn unattributed(&mut self, c: Completion<()>) {
        self.ev.push(Ev::Unattributed {
            start: c.start_ns,
            end: c.end_ns,
            outcome: c.outcome,
        });
    }

    fn error(&mut self, e: ErrorResponse, ctx: ErrorContext) {
        self.ev.push(Ev::Error {
            code: s(&e.sqlstate),
            ctx,
            fatal: e.fatal,
        });
    }

    fn desync(&mut self, dir: Direction, reason: DesyncReason) {
        self.ev.push(Ev::Desync(dir, reason));
    }

    fn parameter_status(&mut self, name: &[u8], value: &[u8]) {
        self.ev.push(Ev::Param(s(name), s(value)));
    }
}

/// One step of a fixture.
#[derive(Clone, Debug)]
pub enum Step {
    /// Frontend chunk at a timestamp.
    Fe(u64, Vec<u8>),
    /// A frontend chunk [`check`] never splits: one where a resynchronising frontend resumes
    /// (a recv() of a client's fresh send starts at a message boundary; a piece of it may
    /// not).
    FeWhole(u64, Vec<u8>),
    /// Backend chunk at a timestamp.
    Be(u64, Vec<u8>),
    FeGap(u64),
    BeGap(u64),
    Lost,
}

pub use Step::{Be, Fe, FeWhole};

/// How [`run_cut`] cuts a chunk: `(step index, bytes) -> pieces`.
pub type Cut<'a> = &'a dyn Fn(usize, &[u8]) -> Vec<Vec<u8>>;

/// Feeds `steps`, each chunk cut by `cut(step index, bytes)` into pieces fed with the same
/// timestamp; returns the events.
pub fn run_cut(conn: &mut Connection<String>, steps: &[Step], cut: Cut<'_>) -> Vec<Ev> {
    let mut rec = Rec::default();
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Fe(ts, b) => {
                for piece in cut(i, b) {
                    conn.frontend(*ts, &piece, &mut rec);
                }
            }
            Step::FeWhole(ts, b) => conn.frontend(*ts, b, &mut rec),
            Step::Be(ts, b) => {
                for piece in cut(i, b) {
                    conn.backend(*ts, &piece, &mut rec);
                }
            }
            Step::FeGap(n) => conn.frontend_gap(*n, &mut rec),
            Step::BeGap(n) => conn.backend_gap(*n, &mut rec),
            Step::Lost => conn.lost(&mut rec),
        }
    }
    rec.ev
}

/// Feeds each chunk whole.
pub fn run(conn: &mut Connection<String>, steps: &[Step]) -> Vec<Ev> {
    run_cut(conn, steps, &|_, b| vec![b.to_vec()])
}

/// Runs a fixture whole, byte by byte, and with each chunk split at each byte boundary in
/// turn; asserts all give the same events and returns them.
pub fn check(new: fn() -> Connection<String>, steps: &[Step]) -> Vec<Ev> {
    let whole = run(&mut new(), steps);
    let bytewise = run_cut(&mut new(), steps, &|_, b| {
        b.chunks(1).map(<[u8]>::to_vec).collect()
    });
    assert_eq!(bytewise, whole, "byte by byte");
    for (i, step) in steps.iter().enumerate() {
        let (Step::Fe(_, b) | Step::Be(_, b)) = step else {
            continue;
        };
        for k in 1..b.len() {
            let got = run_cut(&mut new(), steps, &|j, b| {
                if j == i {
                    vec![b[..k].to_vec(), b[k..].to_vec()]
                } else {
                    vec![b.to_vec()]
                }
            });
            assert_eq!(got, whole, "step {i} split at {k}");
        }
    }
    whole
}

/// Runs a fixture on a fresh [`Connection::new`], checking every split.
pub fn check_new(steps: &[Step]) -> Vec<Ev> {
    check(Connection::new, steps)
}

/// A login: StartupMessage (protocol 3.0, user alice, database shop), AuthenticationOk,
/// parameters, BackendKeyData, ReadyForQuery. Timestamps 1 and 2.
pub fn login() -> Vec<Step> {
    use enc::*;
    vec![
        Fe(1, startup(0, &[("user", "alice"), ("database", "shop")])),
        Be(
            2,
            cat(&[
                auth_ok(),
                param_status("server_version", "18.0"),
                key_data(),
                ready(b'I'),
            ]),
        ),
    ]
}

/// `login()` followed by `steps`.
pub fn after_login(steps: Vec<Step>) -> Vec<Step> {
    let mut v = login();
    v.extend(steps);
    v
}

/// The events after the login's Startup and Param events.
pub fn after_login_events(ev: Vec<Ev>) -> Vec<Ev> {
    assert!(matches!(ev.first(), Some(Ev::Startup { .. })), "{ev:?}");
    assert_eq!(
        ev.get(1),
        Some(&Ev::Param("server_version".into(), "18.0".into()))
    );
    ev[2..].to_vec()
}

/// Only the completions, errors and desyncs (not Prepare).
pub fn outcomes(ev: &[Ev]) -> Vec<Ev> {
    ev.iter()
        .filter(|e| !matches!(e, Ev::Prepare { .. } | Ev::Param(..)))
        .cloned()
        .collect()
}

pub fn done(stmt: &str, start: u64, end: u64, rows: Option<u64>) -> Ev {
    Ev::Done {
        stmt: stmt.into(),
        start,
        end,
        outcome: Outcome::Ok { rows },
    }
}

pub fn failed(stmt: &str, start: u64, end: u64, code: &str) -> Ev {
    Ev::Done {
        stmt: stmt.into(),
        start,
        end,
        outcome: Outcome::Error {
            sqlstate: code.as_bytes().try_into().unwrap(),
        },
    }
}

/// An ErrorResponse of severity ERROR.
pub fn err(code: &str, ctx: ErrorContext) -> Ev {
    Ev::Error {
        code: code.into(),
        ctx,
        fatal: false,
    }
}

/// An ErrorResponse of severity FATAL.
pub fn fatal_err(code: &str, ctx: ErrorContext) -> Ev {
    Ev::Error {
        code: code.into(),
        ctx,
        fatal: true,
    }
}

pub fn prep(text: &str, simple: bool) -> Ev {
    Ev::Prepare {
        text: text.into(),
        simple,
    }
}

pub fn desync(dir: Direction, reason: DesyncReason) -> Ev {
    Ev::Desync(dir, reason)
}

/// A connection with small limits: 1 KiB messages, 8 pending responses, 2 names.
pub fn small_limits() -> Connection<String> {
    Connection::with_limits(Limits {
        max_message: 1024,
        max_pending: 8,
        max_names: 2,
    })
}

/// A Query sent as a whole chunk (a resynchronising frontend may resume there) and its
/// answer.
pub fn q_and_answer(ts: u64, sql: &str) -> Vec<Step> {
    vec![
        FeWhole(ts, enc::query(sql)),
        Be(
            ts + 1,
            enc::cat(&[enc::complete("SELECT 1"), enc::ready(b'I')]),
        ),
    ]
}
