//! Property tests: garbage never panics; valid streams cut anywhere give the same events;
//! a connection fed garbage does not disturb another fed valid bytes.

use proptest::collection::vec;
use proptest::prelude::*;

use super::enc::*;
use super::*;

/// One valid request/response exchange starting at timestamp `t`.
fn interaction(kind: usize, t: u64) -> Vec<Step> {
    match kind {
        0 => vec![
            Fe(t, query("SELECT 1")),
            Be(
                t + 1,
                cat(&[
                    row_desc(&["a"]),
                    data_row(&[b"1"]),
                    complete("SELECT 1"),
                    ready(b'I'),
                ]),
            ),
        ],
        1 => vec![
            Fe(t, query("BEGIN; UPDATE t SET a = 1; COMMIT")),
            Be(t + 1, cat(&[complete("BEGIN"), complete("UPDATE 3")])),
            Be(t + 2, cat(&[complete("COMMIT"), ready(b'I')])),
        ],
        2 => vec![
            Fe(t, query("SELECT 1; SELECT 1/0; SELECT 2")),
            Be(
                t + 1,
                cat(&[complete("SELECT 1"), error("22012"), ready(b'I')]),
            ),
        ],
        3 => vec![
            Fe(
                t,
                cat(&[
                    parse("", "SELECT $1", &[23]),
                    bind("", "", &[b"5"]),
                    describe(b'P', ""),
                    execute("", 0),
                    sync(),
                ]),
            ),
            Be(
                t + 1,
                cat(&[
                    parse_complete(),
                    bind_complete(),
                    row_desc(&["x"]),
                    data_row(&[b"5"]),
                    complete("SELECT 1"),
                    ready(b'I'),
                ]),
            ),
        ],
        4 => vec![
            Fe(
                t,
                cat(&[
                    parse("named", "SELECT 2", &[]),
                    sync(),
                    bind("", "named", &[]),
                    execute("", 0),
                    sync(),
                    close(b'S', "named"),
                    sync(),
                ]),
            ),
            Be(
                t + 1,
                cat(&[
                    parse_complete(),
                    ready(b'I'),
                    bind_complete(),
                    complete("SELECT 1"),
                    ready(b'I'),
                    close_complete(),
                    ready(b'I'),
                ]),
            ),
        ],
        5 => vec![
            Fe(
                t,
                cat(&[
                    parse("", "SELECT 1/$1", &[]),
                    bind("", "", &[b"0"]),
                    execute("", 0),
                    sync(),
                    bind("", "", &[b"1"]),
                    execute("", 0),
                    sync(),
                ]),
            ),
            Be(
                t + 1,
                cat(&[
                    parse_complete(),
                    bind_complete(),
                    error("22012"),
                    ready(b'I'),
                    bind_complete(),
                    complete("SELECT 1"),
                    ready(b'I'),
                ]),
            ),
        ],
        6 => vec![
            Fe(t, query("COPY t FROM STDIN")),
            Be(t + 1, copy_in(1)),
            Fe(
                t + 2,
                cat(&[copy_data(b"1\n"), copy_data(b"2\n"), copy_done()]),
            ),
            Be(t + 3, cat(&[complete("COPY 2"), ready(b'I')])),
        ],
        7 => vec![
            Fe(t, query("")),
            Be(t + 1, cat(&[empty_query(), ready(b'I')])),
        ],
        _ => vec![
            Fe(t, function_call(1, b"x")),
            Be(t + 1, cat(&[fn_response(b"y"), notice(), ready(b'I')])),
        ],
    }
}

const KINDS: usize = 9;

fn script(kinds: &[usize]) -> Vec<Step> {
    let mut steps = login();
    for (i, &k) in kinds.iter().enumerate() {
        steps.extend(interaction(k, 100 * (i as u64 + 1)));
    }
    steps
}

/// Random messages with valid headers and random bodies, and raw random bytes.
fn garbage_bytes() -> impl Strategy<Value = Vec<u8>> {
    let types: Vec<u8> = b"QPBEDCSHXFdcfpRKZNIT12345ntsGWVAvy\x00\xff".to_vec();
    prop_oneof![
        vec(any::<u8>(), 0..48),
        vec(
            (proptest::sample::select(types), vec(any::<u8>(), 0..24)),
            1..6
        )
        .prop_map(|ms| ms.iter().flat_map(|(t, b)| msg(*t, b)).collect()),
        Just(ready(b'I')),
        Just(ssl_request()),
        Just(startup(2, &[("user", "u")])),
    ]
}

fn garbage_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => garbage_bytes().prop_map(|b| Fe(7, b)),
        4 => garbage_bytes().prop_map(|b| Be(8, b)),
        1 => (0u64..5000).prop_map(Step::FeGap),
        1 => (0u64..5000).prop_map(Step::BeGap),
        1 => Just(Step::Lost),
    ]
}

/// Whether `c`, whatever garbage it was fed, reports executions again once the capture
/// says records were lost (both directions resynchronise) and clean traffic follows: the
/// first query and its ReadyForQuery re-establish sync, the second is reported. An
/// encrypted session is never parsed again, so it counts as recovered.
fn recovers(c: &mut Connection<String>) -> bool {
    if c.is_encrypted() {
        return true;
    }
    let mut steps = vec![Step::Lost];
    steps.extend(q_and_answer(100_000, "SELECT 1"));
    steps.extend(q_and_answer(100_010, "SELECT 2"));
    let ev = run(c, &steps);
    ev.contains(&done("SELECT 2", 100_010, 100_011, Some(1))) && c.is_synchronized()
}

/// Cuts every chunk into pieces whose sizes cycle through `sizes`.
fn cut_by(sizes: &[usize]) -> impl Fn(usize, &[u8]) -> Vec<Vec<u8>> + '_ {
    move |i, b| {
        let mut out = Vec::new();
        let mut p = 0;
        let mut j = i;
        while p < b.len() {
            let n = sizes[j % sizes.len()].max(1).min(b.len() - p);
            out.push(b[p..p + n].to_vec());
            p += n;
            j += 1;
        }
        out
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_chunks_in_either_direction_always_return(
        chunks in vec((0u8..5, vec(any::<u8>(), 0..256)), 0..32),
        mid in any::<bool>(),
        small in any::<bool>(),
    ) {
        let limits = if small {
            Limits { max_message: 64, max_pending: 4, max_names: 2 }
        } else {
            Limits::default()
        };
        let mut c: Connection<String> = if mid {
            Connection::mid_stream_with_limits(limits)
        } else {
            Connection::with_limits(limits)
        };
        let mut r = Rec::default();
        for (i, (how, bytes)) in chunks.iter().enumerate() {
            let ts = i as u64;
            match how {
                0 | 1 => c.frontend(ts, bytes, &mut r),
                2 | 3 => c.backend(ts, bytes, &mut r),
                _ => c.lost(&mut r),
            }
        }
        prop_assert!(c.pending() <= limits.max_pending, "{} pending", c.pending());
    }

    #[test]
    fn garbage_never_panics_and_recovers_after_a_loss(steps in vec(garbage_step(), 0..40), mid in any::<bool>()) {
        let mut c = if mid { Connection::new_mid_stream() } else { Connection::new() };
        run(&mut c, &steps);
        prop_assert!(c.pending() <= Limits::default().max_pending, "{} pending", c.pending());
        prop_assert!(recovers(&mut c), "no execution reported after the garbage and a loss");
    }

    #[test]
    fn valid_stream_with_garbage_spliced_recovers_after_a_loss(
        kinds in vec(0..KINDS, 1..8),
        garbage in vec((any::<proptest::sample::Index>(), garbage_step()), 1..6),
        mid in any::<bool>(),
    ) {
        let mut steps = script(&kinds);
        for (at, g) in garbage {
            let i = at.index(steps.len() + 1);
            steps.insert(i, g);
        }
        let mut c = if mid { Connection::new_mid_stream() } else { Connection::new() };
        run(&mut c, &steps);
        prop_assert!(c.pending() <= Limits::default().max_pending, "{} pending", c.pending());
        prop_assert!(recovers(&mut c), "no execution reported after the garbage and a loss");
    }

    #[test]
    fn valid_streams_cut_anywhere_give_the_same_events(
        kinds in vec(0..KINDS, 1..10),
        sizes in vec(1usize..40, 1..20),
    ) {
        let steps = script(&kinds);
        let whole = run(&mut Connection::new(), &steps);
        let cut = run_cut(&mut Connection::new(), &steps, &cut_by(&sizes));
        prop_assert_eq!(&cut, &whole);
        let completions = whole.iter().filter(|e| matches!(e, Ev::Done { .. })).count();
        prop_assert!(completions >= kinds.iter().filter(|&&k| k != 7 && k != 8).count());
        prop_assert!(!whole.iter().any(|e| matches!(e, Ev::Desync(..))), "{:?}", whole);
    }

    #[test]
    fn garbage_connection_does_not_disturb_a_valid_one(
        kinds in vec(0..KINDS, 1..8),
        garbage in vec(garbage_step(), 1..30),
        order in vec(any::<bool>(), 0..80),
    ) {
        let valid = script(&kinds);
        let alone = run(&mut Connection::new(), &valid);

        let mut a: Connection<String> = Connection::new();
        let mut b: Connection<String> = Connection::new_mid_stream();
        let (mut ra, mut rb) = (Rec::default(), Rec::default());
        let (mut va, mut gb) = (valid.iter(), garbage.iter());
        let feed = |c: &mut Connection<String>, r: &mut Rec, s: &Step| match s {
            Step::Fe(ts, bytes) | Step::FeWhole(ts, bytes) => c.frontend(*ts, bytes, r),
            Step::Be(ts, bytes) => c.backend(*ts, bytes, r),
            Step::FeGap(n) => c.frontend_gap(*n, r),
            Step::BeGap(n) => c.backend_gap(*n, r),
            Step::Lost => c.lost(r),
        };
        for take_valid in order.iter().copied().chain(std::iter::repeat_n(true, valid.len())) {
            let next = if take_valid { va.next().map(|s| (true, s)) } else { gb.next().map(|s| (false, s)) };
            match next {
                Some((true, s)) => feed(&mut a, &mut ra, s),
                Some((false, s)) => feed(&mut b, &mut rb, s),
                None => {}
            }
        }
        for s in gb {
            feed(&mut b, &mut rb, s);
        }
        prop_assert_eq!(ra.ev, alone);
    }
}
