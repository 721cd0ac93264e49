//! Throughput of the parser alone (`cargo test --release -p pgmon-wire tests::bench -- --ignored --nocapture`).

use std::sync::Arc;
use std::time::Instant;

use super::enc::*;
use super::*;

/// A sink that does as little as possible: statements are shared `Arc<str>`s made once.
struct Cheap {
    stmt: Arc<str>,
    done: u64,
}

impl Sink for Cheap {
    type Stmt = Arc<str>;
    fn prepare(&mut self, _: &[u8], _: bool, out: &mut Vec<Arc<str>>) {
        out.push(self.stmt.clone());
    }
    fn truncated(&mut self, _: &[u8], _: usize, _: bool, _: &mut Vec<Arc<str>>) {}
    fn startup(&mut self, _: &Startup<'_>) {}
    fn encrypted(&mut self, _: Encryption) {}
    fn cancel_request(&mut self) {}
    fn completed(&mut self, c: Completion<Arc<str>>) {
        self.done += c.end_ns - c.start_ns + 1;
    }
    fn error(&mut self, _: ErrorResponse, _: ErrorContext) {}
    fn desync(&mut self, _: Direction, _: DesyncReason) {}
}

fn measure(name: &str, fe: &[u8], be: &[u8], msgs: usize) {
    let mut c: Connection<Arc<str>> = Connection::new();
    let mut sink = Cheap {
        stmt: Arc::from("SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
        done: 0,
    };
    c.frontend(0, &startup(0, &[("user", "u")]), &mut sink);
    c.backend(1, &cat(&[auth_ok(), ready(b'I')]), &mut sink);
    c.frontend(2, &cat(&[parse("s", "SELECT 1", &[]), sync()]), &mut sink);
    c.backend(3, &cat(&[parse_complete(), ready(b'I')]), &mut sink);
    let n = 2_000_000u64;
    let t = Instant::now();
    for i in 0..n {
        c.frontend(10 + 2 * i, fe, &mut sink);
        c.backend(11 + 2 * i, be, &mut sink);
    }
    let ns = t.elapsed().as_nanos() as f64 / n as f64;
    assert!(sink.done >= n);
    eprintln!(
        "{name}: {ns:.0} ns per execution, {:.0} ns per message",
        ns / msgs as f64
    );
}

#[test]
#[ignore = "a measurement, not a check"]
fn throughput() {
    measure(
        "extended, named statement (B E S / 2 D C Z)",
        &cat(&[bind("", "s", &[b"12345"]), execute("", 0), sync()]),
        &cat(&[
            bind_complete(),
            data_row(&[b"4711"]),
            complete("SELECT 1"),
            ready(b'I'),
        ]),
        7,
    );
    measure(
        "simple query (Q / T D C Z)",
        &query("SELECT abalance FROM pgbench_accounts WHERE aid = 12345"),
        &cat(&[
            row_desc(&["abalance"]),
            data_row(&[b"4711"]),
            complete("SELECT 1"),
            ready(b'I'),
        ]),
        5,
    );
    measure(
        "unnamed parse (P B E S / 1 2 D C Z)",
        &cat(&[
            parse(
                "",
                "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
                &[23],
            ),
            bind("", "", &[b"12345"]),
            execute("", 0),
            sync(),
        ]),
        &cat(&[
            parse_complete(),
            bind_complete(),
            data_row(&[b"4711"]),
            complete("SELECT 1"),
            ready(b'I'),
        ]),
        9,
    );
}
