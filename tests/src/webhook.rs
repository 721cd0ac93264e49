//! [`Receiver`]: the receiving side of the agent's webhooks, a small HTTP/1.1 server on
//! loopback that keeps the body of every POST (parsed as JSON). It can answer 500 for a
//! number of requests (to prove retries) or never answer at all (a dead notifier).

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

#[derive(Default)]
struct State {
    /// Answer 500 to this many more requests.
    fail_next: usize,
    /// Read requests but never answer.
    hang: bool,
    /// Bodies of the requests answered 200, in order.
    accepted: Vec<serde_json::Value>,
    /// Every request read, whatever the answer.
    requests: usize,
    /// Connections held open unanswered (hang mode).
    held: Vec<TcpStream>,
}

/// A webhook receiver on `127.0.0.1:<port>`, running until the test process ends.
#[derive(Clone)]
pub struct Receiver {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl Receiver {
    /// Binds a free loopback port and serves every connection on its own thread (so a
    /// hanging one blocks nothing). Panics if loopback cannot be bound.
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local address").port();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = shared.clone();
                thread::spawn(move || serve(stream, &shared));
            }
        });
        Receiver { port, state }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Answers 500 to the next `n` requests, then 200 again.
    pub fn fail_next(&self, n: usize) {
        self.state.lock().unwrap().fail_next = n;
    }

    /// From now on, reads requests but never answers (`true`), or answers again.
    pub fn hang(&self, on: bool) {
        let mut s = self.state.lock().unwrap();
        s.hang = on;
        if !on {
            s.held.clear();
        }
    }

    /// Bodies of the requests answered 200, oldest first.
    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.state.lock().unwrap().accepted.clone()
    }

    /// Requests read so far, answered or not.
    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }

    /// Waits up to `within` for an accepted body that satisfies `ok` and returns it;
    /// panics naming `what` and listing what did arrive.
    pub fn wait_for(
        &self,
        what: &str,
        within: Duration,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        self.wait_for_since(0, what, within, ok)
    }

    /// [`Receiver::wait_for`] among the bodies accepted after the first `since` (what
    /// `bodies().len()` was before the scenario began).
    pub fn wait_for_since(
        &self,
        since: usize,
        what: &str,
        within: Duration,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let t = Instant::now();
        loop {
            if let Some(b) = self.bodies().into_iter().skip(since).find(|b| ok(b)) {
                return b;
            }
            if t.elapsed() > within {
                panic!(
                    "{what}: not received within {within:?}; received:\n{}",
                    self.bodies()
                        .iter()
                        .map(|b| b.to_string())
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Reads one request from `stream` and answers it as the state says.
fn serve(stream: TcpStream, state: &Mutex<State>) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut length = 0;
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        line.clear();
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let mut s = state.lock().unwrap();
    s.requests += 1;
    if s.hang {
        s.held.push(stream);
        return;
    }
    let status = if s.fail_next > 0 {
        s.fail_next -= 1;
        "500 Internal Server Error"
    } else {
        if let Ok(v) = serde_json::from_slice(&body) {
            s.accepted.push(v);
        }
        "200 OK"
    };
    drop(s);
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
}
