//! The sink task end to end, against a webhook receiver on loopback: deduplication, the
//! rate limit and its summary, retries after a 500, and a queue that overflows while the
//! receiver hangs.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

use super::*;

/// What the receiver does with each request, in order; `200` once the list is empty.
#[derive(Clone, Copy)]
enum Answer {
    Status(u16),
    Hang,
}

/// A receiver on 127.0.0.1: its URL, and the bodies it answered 200 to.
async fn receiver(answers: Vec<Answer>) -> (hyper::Uri, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("http://{}/hook", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let answers = Arc::new(Mutex::new(answers.into_iter()));
    let kept = bodies.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let (kept, answers) = (kept.clone(), answers.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then Content-Length bytes of body.
                let body = loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len: usize = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break buf[end + 4..end + 4 + len].to_vec();
                        }
                    }
                };
                let answer = answers
                    .lock()
                    .unwrap()
                    .next()
                    .unwrap_or(Answer::Status(200));
                let code = match answer {
                    Answer::Hang => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    Answer::Status(c) => c,
                };
                if code == 200 {
                    kept.lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap());
                }
                let reply =
                    format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    (uri, bodies)
}

fn payload(key: &str) -> Payload {
    Payload {
        key: key.into(),
        text: format!("text {key}"),
        details: String::new(),
        json: serde_json::json!({ "key": key }),
        link: None,
    }
}

type Counts = Arc<Mutex<HashMap<&'static str, u32>>>;

fn counter() -> (Count, Counts) {
    let counts: Counts = Arc::default();
    let c = counts.clone();
    let count: Count = Arc::new(move |sink, result| {
        assert_eq!(sink, "hook");
        *c.lock().unwrap().entry(result).or_default() += 1;
    });
    (count, counts)
}

fn delivery(max_per_minute: u32, queue: usize) -> Delivery {
    Delivery {
        timeout: Duration::from_millis(300),
        retries: 2,
        queue,
        dedup: Duration::from_secs(60),
        max_per_minute,
        rate_window: Duration::from_millis(800),
    }
}

async fn wait(what: &str, ok: impl Fn() -> bool) {
    for _ in 0..200 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within 20 s");
}

#[tokio::test]
async fn dedup_rate_limit_summary_and_retries() {
    // The first request fails: it is retried (after ~1 s).
    let (uri, bodies) = receiver(vec![Answer::Status(500)]).await;
    let (count, counts) = counter();
    let sink = Sink {
        name: "hook".into(),
        target: Target::Webhook(uri),
    };
    let n = Notifier::start(vec![sink], &delivery(2, 100), count);
    for k in ["a", "a", "b", "c", "d", "e"] {
        n.send(payload(k));
    }
    let got = || bodies.lock().unwrap().clone();
    wait("two payloads and a summary", || got().len() == 3).await;
    let keys: Vec<_> = got().iter().map(|b| b["key"].clone()).collect();
    assert!(
        keys.contains(&"a".into()) && keys.contains(&"b".into()),
        "{keys:?}"
    );
    let summary = got()
        .into_iter()
        .find(|b| b["status"] == "suppressed")
        .unwrap();
    assert_eq!(summary["suppressed"], 3, "{summary}");
    assert_eq!(
        summary["examples"],
        serde_json::json!(["text c", "text d", "text e"])
    );
    let c = counts.lock().unwrap().clone();
    assert_eq!(
        (c["deduplicated"], c["rate_limited"], c["sent"]),
        (1, 3, 3),
        "{c:?}"
    );
}

#[tokio::test]
async fn a_hanging_receiver_fills_its_queue_and_send_never_waits() {
    let (uri, _) = receiver(vec![Answer::Hang; 100]).await;
    let (count, counts) = counter();
    let sink = Sink {
        name: "hook".into(),
        target: Target::Webhook(uri),
    };
    let n = Notifier::start(vec![sink], &delivery(0, 2), count);
    let t = std::time::Instant::now();
    for i in 0..20 {
        n.send(payload(&i.to_string()));
    }
    assert!(t.elapsed() < Duration::from_millis(50), "send waited");
    // The test's runtime has one thread: the task took nothing while we sent, so the
    // queue (2) kept two and the other 18 were dropped.
    assert_eq!(counts.lock().unwrap().get("dropped"), Some(&18));
    // Each attempt times out (300 ms), is retried twice (after 1–2 s, then 2–4 s), then
    // given up.
    wait("failures counted", || {
        counts.lock().unwrap().get("failed") == Some(&2)
    })
    .await;
}
