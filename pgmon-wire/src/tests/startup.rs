//! The startup phase (§54.2.1, §54.2.8, §54.2.10, §54.2.11).

use super::enc::*;
use super::*;

fn startup_ev(
    user: &str,
    db: &str,
    app: Option<&str>,
    protocol: (u16, u16),
    replication: Replication,
) -> Ev {
    Ev::Startup {
        user: user.into(),
        database: db.into(),
        app: app.map(Into::into),
        protocol,
        replication,
    }
}

#[test]
fn startup_30_with_application_name() {
    let steps = vec![
        Fe(
            1,
            startup(
                0,
                &[
                    ("user", "alice"),
                    ("database", "shop"),
                    ("application_name", "psql"),
                ],
            ),
        ),
        Be(
            2,
            cat(&[auth(10), param_status("application_name", "psql")]),
        ),
        Fe(3, password("secret")),
        Be(4, cat(&[auth_ok(), key_data(), ready(b'I')])),
        Fe(5, query("SELECT 1")),
        Be(
            6,
            cat(&[
                row_desc(&["x"]),
                data_row(&[b"1"]),
                complete("SELECT 1"),
                ready(b'I'),
            ]),
        ),
    ];
    let ev = check_new(&steps);
    assert_eq!(
        ev,
        vec![
            startup_ev("alice", "shop", Some("psql"), (3, 0), Replication::No),
            Ev::Param("application_name".into(), "psql".into()),
            prep("SELECT 1", true),
            done("SELECT 1", 5, 6, Some(1)),
        ]
    );
    let mut c = Connection::new();
    run(&mut c, &steps[..1]);
    assert_eq!(c.phase(), Phase::Authenticating);
    run(&mut c, &steps[1..4]);
    assert_eq!(c.phase(), Phase::Ready);
    assert!(c.is_synchronized());
}

#[test]
fn startup_32_database_defaults_to_user() {
    let steps = vec![
        Fe(
            1,
            startup(
                2,
                &[
                    ("user", "bob"),
                    ("application_name", "app"),
                    ("_pq_.test_option", "on"),
                ],
            ),
        ),
        Be(2, cat(&[auth_ok(), ready(b'I')])),
    ];
    let ev = check_new(&steps);
    assert_eq!(
        ev,
        vec![startup_ev(
            "bob",
            "bob",
            Some("app"),
            (3, 2),
            Replication::No
        )]
    );
}

#[test]
fn startup_params_and_replication() {
    let pkt = startup(
        0,
        &[
            ("user", "rep"),
            ("replication", "database"),
            ("database", "db"),
            ("options", "-c x=1"),
        ],
    );
    // Reach into the packet directly for `params` and `options`.
    let body = &pkt[4..];
    let Some(crate::startup::Packet::Startup(st)) = crate::startup::packet(body) else {
        panic!("not a startup")
    };
    assert_eq!(st.replication, Replication::Logical);
    assert_eq!(st.options, Some(&b"-c x=1"[..]));
    let keys: Vec<_> = st.params.iter().map(|(k, _)| s(k)).collect();
    assert_eq!(keys, ["user", "replication", "database", "options"]);

    for (v, want) in [
        ("true", Replication::Physical),
        ("on", Replication::Physical),
        ("1", Replication::Physical),
        ("yes", Replication::Physical),
        ("t", Replication::Physical),
        ("off", Replication::No),
        ("false", Replication::No),
        ("DATABASE", Replication::Logical),
    ] {
        let ev = check_new(&[Fe(1, startup(0, &[("user", "r"), ("replication", v)]))]);
        assert_eq!(
            ev,
            vec![startup_ev("r", "r", None, (3, 0), want)],
            "replication={v}"
        );
    }
}

#[test]
fn ssl_request_answered_n_then_startup() {
    let steps = vec![
        Fe(1, ssl_request()),
        Be(2, b"N".to_vec()),
        Fe(3, startup(0, &[("user", "alice")])),
        Be(4, cat(&[auth_ok(), ready(b'I')])),
        Fe(5, query("SELECT 1")),
        Be(6, cat(&[complete("SELECT 1"), ready(b'I')])),
    ];
    let ev = check_new(&steps);
    assert_eq!(
        outcomes(&ev),
        vec![
            startup_ev("alice", "alice", None, (3, 0), Replication::No),
            done("SELECT 1", 5, 6, Some(1))
        ]
    );
}

#[test]
fn ssl_request_answered_s_is_encrypted_and_nothing_parsed() {
    let steps = vec![
        Fe(1, ssl_request()),
        Be(2, b"S".to_vec()),
        // A TLS ClientHello, then bytes that would parse as a Query in clear.
        Fe(3, vec![0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]),
        Fe(4, query("SELECT 1")),
        Be(5, cat(&[complete("SELECT 1"), ready(b'I')])),
    ];
    let ev = check_new(&steps);
    assert_eq!(ev, vec![Ev::Encrypted(Encryption::Ssl)]);
    let mut c = Connection::new();
    run(&mut c, &steps);
    assert!(c.is_encrypted() && c.is_ignored());
    c.lost(&mut Rec::default());
    c.frontend_gap(10, &mut Rec::default());
}

#[test]
fn gssenc_answered_g_is_encrypted() {
    let steps = vec![
        Fe(1, gss_request()),
        Be(2, b"G".to_vec()),
        Fe(3, vec![0, 0, 0, 40, 9, 9, 9]),
    ];
    assert_eq!(check_new(&steps), vec![Ev::Encrypted(Encryption::Gss)]);
}

#[test]
fn gssenc_n_then_ssl_n_then_startup() {
    let steps = vec![
        Fe(1, gss_request()),
        Be(2, b"N".to_vec()),
        Fe(3, ssl_request()),
        Be(4, b"N".to_vec()),
        Fe(5, startup(2, &[("user", "carol"), ("database", "x")])),
        Be(6, cat(&[auth_ok(), ready(b'I')])),
    ];
    assert_eq!(
        check_new(&steps),
        vec![startup_ev("carol", "x", None, (3, 2), Replication::No)]
    );
}

#[test]
fn direct_tls_is_encrypted() {
    let steps = vec![
        Fe(
            1,
            vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc],
        ),
        Fe(2, query("SELECT 1")),
    ];
    assert_eq!(
        check_new(&steps),
        vec![Ev::Encrypted(Encryption::DirectTls)]
    );
}

#[test]
fn tls_after_ssl_request_whose_answer_was_lost() {
    let steps = vec![
        Fe(1, ssl_request()),
        Fe(3, vec![0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]),
    ];
    assert_eq!(check_new(&steps), vec![Ev::Encrypted(Encryption::Ssl)]);
}

#[test]
fn ssl_request_refused_by_error_response() {
    // A server that cannot do SSL may answer with an ErrorResponse (§54.2.10).
    let steps = vec![Fe(1, ssl_request()), Be(2, fatal("08P01"))];
    assert_eq!(
        check_new(&steps),
        vec![fatal_err("08P01", ErrorContext::Startup)]
    );
}

#[test]
fn cancel_request_30_and_32() {
    for key_len in [4, 32, 256] {
        let steps = vec![Fe(1, cancel_request(key_len)), Fe(2, query("SELECT 1"))];
        assert_eq!(
            check_new(&steps),
            vec![Ev::Cancel],
            "key of {key_len} bytes"
        );
        let mut c = Connection::new();
        run(&mut c, &steps);
        assert_eq!(c.phase(), Phase::Cancel);
    }
}

#[test]
fn authentication_failure_is_a_startup_error() {
    let steps = vec![
        Fe(1, startup(0, &[("user", "mallory")])),
        Be(2, auth(10)),
        Fe(3, password("SCRAM-SHA-256 client-first")),
        Be(4, fatal("28P01")),
    ];
    assert_eq!(
        check_new(&steps),
        vec![
            startup_ev("mallory", "mallory", None, (3, 0), Replication::No),
            fatal_err("28P01", ErrorContext::Startup)
        ]
    );
}

#[test]
fn negotiate_protocol_version_is_accepted() {
    let steps = vec![
        Fe(1, startup(2, &[("user", "a"), ("_pq_.unknown", "1")])),
        Be(2, cat(&[negotiate(0), auth_ok(), ready(b'I')])),
        Fe(3, query("SELECT 1")),
        Be(4, cat(&[complete("SELECT 1"), ready(b'I')])),
    ];
    let ev = check_new(&steps);
    assert_eq!(outcomes(&ev)[1..], [done("SELECT 1", 3, 4, Some(1))]);
}

#[test]
fn query_pipelined_before_authentication_completes() {
    // The first ReadyForQuery ends the startup and answers no request.
    let steps = vec![
        Fe(1, cat(&[startup(0, &[("user", "a")]), query("SELECT 1")])),
        Be(2, cat(&[auth_ok(), ready(b'I')])),
        Be(3, cat(&[complete("SELECT 1"), ready(b'I')])),
    ];
    let ev = check_new(&steps);
    assert_eq!(outcomes(&ev)[1..], [done("SELECT 1", 2, 3, Some(1))]);
}

#[test]
fn bad_startup_packet_falls_back_to_mid_stream() {
    let steps = vec![
        // Protocol 2.0, refused by the server.
        Fe(1, {
            let mut p = startup(0, &[("user", "a")]);
            p[4..8].copy_from_slice(&(2u32 << 16).to_be_bytes());
            p
        }),
        FeWhole(2, query("SELECT 1")),
        Be(3, cat(&[complete("SELECT 1"), ready(b'I')])),
        FeWhole(4, query("SELECT 2")),
        Be(5, cat(&[complete("SELECT 1"), ready(b'I')])),
    ];
    let ev = outcomes(&check_new(&steps));
    assert_eq!(
        ev,
        vec![
            Ev::Desync(Direction::Frontend, DesyncReason::BadStartup),
            done("SELECT 2", 4, 5, Some(1))
        ]
    );
}

#[test]
fn startup_packet_with_bad_layout_is_bad_startup() {
    let mut p = startup(0, &[("user", "a")]);
    p.pop(); // no final terminator
    let n = p.len() as u32;
    p[..4].copy_from_slice(&n.to_be_bytes());
    assert_eq!(
        check_new(&[Fe(1, p)]),
        vec![Ev::Desync(Direction::Frontend, DesyncReason::BadStartup)]
    );
}
