//! Every transition of [`Quota`], with an injected clock.

use super::*;

const MB: u64 = 1 << 20;

fn limits(manual_unlock: bool) -> Limits {
    Limits {
        soft: 5 * MB,
        hard: 10 * MB,
        hard_grace_ms: 3_000,
        unlock_grace_ms: 2_000,
        manual_unlock,
    }
}

fn moves(ts: &[Transition]) -> Vec<(Phase, Phase, Action)> {
    ts.iter().map(|t| (t.from, t.to, t.action)).collect()
}

#[test]
fn soft_warns_and_clears() {
    let l = limits(false);
    let mut q = Quota::new(0);
    assert!(
        q.observe(5 * MB, &l, 10).is_empty(),
        "at the soft limit is not past it"
    );
    let t = q.observe(6 * MB, &l, 20);
    assert_eq!(moves(&t), [(Phase::Ok, Phase::Soft, Action::Record)]);
    assert_eq!(
        (t[0].usage, t[0].at_ms, t[0].reason),
        (6 * MB, 20, Reason::Usage)
    );
    assert!(q.observe(7 * MB, &l, 30).is_empty());
    let t = q.observe(MB, &l, 40);
    assert_eq!(moves(&t), [(Phase::Soft, Phase::Ok, Action::Record)]);
}

#[test]
fn hard_grace_then_lock() {
    let l = limits(false);
    let mut q = Quota::new(0);
    let t = q.observe(20 * MB, &l, 1_000);
    assert_eq!(moves(&t), [(Phase::Ok, Phase::Hard, Action::Record)]);
    assert_eq!(q.time_left_ms(&l, 2_000), Some(2_000));
    assert!(q.tick(&l, 3_999).is_empty(), "grace not over");
    let t = q.tick(&l, 4_000);
    assert_eq!(moves(&t), [(Phase::Hard, Phase::Locked, Action::Lock)]);
    assert_eq!(t[0].reason, Reason::HardGraceOver);
    assert_eq!(q.since_ms, 4_000);
    assert!(q.tick(&l, 10_000).is_empty(), "stays locked while over");
}

#[test]
fn back_under_hard_within_grace_cancels_it() {
    let l = limits(false);
    let mut q = Quota::new(0);
    q.observe(20 * MB, &l, 0);
    let t = q.observe(6 * MB, &l, 2_000);
    assert_eq!(moves(&t), [(Phase::Hard, Phase::Soft, Action::Record)]);
    assert!(q.tick(&l, 10_000).is_empty());
    // Crossing again starts a fresh grace period.
    q.observe(20 * MB, &l, 11_000);
    assert!(q.tick(&l, 13_999).is_empty());
    assert_eq!(q.tick(&l, 14_000).len(), 1);
}

#[test]
fn zero_grace_locks_at_once() {
    let l = Limits {
        hard_grace_ms: 0,
        ..limits(false)
    };
    let mut q = Quota::new(0);
    let t = q.observe(11 * MB, &l, 5);
    assert_eq!(
        moves(&t),
        [
            (Phase::Ok, Phase::Hard, Action::Record),
            (Phase::Hard, Phase::Locked, Action::Lock)
        ]
    );
}

#[test]
fn unlock_after_unlock_grace_under_hard() {
    let l = limits(false);
    let mut q = Quota::new(0);
    q.observe(20 * MB, &l, 0);
    q.tick(&l, 3_000);
    assert_eq!(q.phase, Phase::Locked);
    assert!(
        q.observe(7 * MB, &l, 5_000).is_empty(),
        "unlock timer starts"
    );
    assert_eq!(q.under_since_ms, Some(5_000));
    assert_eq!(q.time_left_ms(&l, 6_000), Some(1_000));
    assert!(q.tick(&l, 6_999).is_empty());
    let t = q.tick(&l, 7_000);
    assert_eq!(moves(&t), [(Phase::Locked, Phase::Soft, Action::Unlock)]);
    assert_eq!(t[0].reason, Reason::UnlockGraceOver);
    assert_eq!(q.under_since_ms, None);
}

#[test]
fn unlock_lands_in_ok_when_under_soft() {
    let l = limits(false);
    let mut q = Quota::new(0);
    q.observe(20 * MB, &l, 0);
    q.tick(&l, 3_000);
    q.observe(0, &l, 4_000);
    let t = q.tick(&l, 6_000);
    assert_eq!(moves(&t), [(Phase::Locked, Phase::Ok, Action::Unlock)]);
}

#[test]
fn growing_again_resets_the_unlock_timer() {
    let l = limits(false);
    let mut q = Quota::new(0);
    q.observe(20 * MB, &l, 0);
    q.tick(&l, 3_000);
    q.observe(7 * MB, &l, 4_000);
    assert!(q.observe(12 * MB, &l, 5_000).is_empty());
    assert_eq!(q.under_since_ms, None);
    assert_eq!(q.time_left_ms(&l, 5_000), None);
    q.observe(7 * MB, &l, 6_000);
    assert!(q.tick(&l, 7_999).is_empty(), "timer restarted at 6 000");
    assert_eq!(q.tick(&l, 8_000).len(), 1);
}

#[test]
fn manual_unlock_waits_for_the_cli() {
    let l = limits(true);
    let mut q = Quota::new(0);
    q.observe(20 * MB, &l, 0);
    q.tick(&l, 3_000);
    q.observe(MB, &l, 4_000);
    assert!(q.tick(&l, 1_000_000).is_empty(), "never unlocks by itself");
    assert_eq!(q.time_left_ms(&l, 5_000), None);
    let t = q.manual_unlock(&l, 1_000_001).expect("locked");
    assert_eq!(
        (t.from, t.to, t.action, t.reason),
        (Phase::Locked, Phase::Ok, Action::Unlock, Reason::Manual)
    );
    assert_eq!(q.manual_unlock(&l, 1_000_002), None, "not locked any more");
}

#[test]
fn manual_unlock_over_hard_gives_a_fresh_grace() {
    let l = limits(true);
    let mut q = Quota::new(0);
    q.observe(20 * MB, &l, 0);
    q.tick(&l, 3_000);
    let t = q.manual_unlock(&l, 10_000).expect("locked");
    assert_eq!((t.to, t.action), (Phase::Hard, Action::Unlock));
    assert!(q.tick(&l, 12_999).is_empty());
    let t = q.tick(&l, 13_000);
    assert_eq!(moves(&t), [(Phase::Hard, Phase::Locked, Action::Lock)]);
}

#[test]
fn manual_unlock_of_an_unlocked_role_is_refused() {
    let l = limits(false);
    let mut q = Quota::new(0);
    q.observe(6 * MB, &l, 0);
    assert_eq!(q.manual_unlock(&l, 1), None);
    assert_eq!(q.phase, Phase::Soft);
}

#[test]
fn restart_resumes_the_hard_grace_from_persisted_timestamps() {
    let l = limits(false);
    let mut q = Quota::new(0);
    q.observe(20 * MB, &l, 10_000);
    // The agent dies at 11 000; the row it left says: hard since 10 000.
    let mut resumed = Quota {
        phase: Phase::Hard,
        since_ms: 10_000,
        under_since_ms: None,
        usage: 20 * MB,
    };
    assert_eq!(resumed, q);
    // Restarted at 12 500 and counted: the grace ends at 13 000, not 15 500.
    assert!(resumed.observe(20 * MB, &l, 12_500).is_empty());
    assert_eq!(resumed.time_left_ms(&l, 12_500), Some(500));
    let t = resumed.tick(&l, 13_000);
    assert_eq!(moves(&t), [(Phase::Hard, Phase::Locked, Action::Lock)]);
    // Restarted after the grace ran out: locked at the first count.
    let mut late = Quota {
        phase: Phase::Hard,
        since_ms: 10_000,
        under_since_ms: None,
        usage: 20 * MB,
    };
    assert_eq!(late.observe(20 * MB, &l, 60_000).len(), 1);
}

#[test]
fn restart_resumes_a_lock_and_its_unlock_timer() {
    let l = limits(false);
    let mut q = Quota {
        phase: Phase::Locked,
        since_ms: 1_000,
        under_since_ms: Some(5_000),
        usage: 7 * MB,
    };
    assert!(q.observe(7 * MB, &l, 6_000).is_empty(), "the timer is kept");
    assert_eq!(q.under_since_ms, Some(5_000));
    let t = q.tick(&l, 7_000);
    assert_eq!(moves(&t), [(Phase::Locked, Phase::Soft, Action::Unlock)]);
}

#[test]
fn phase_names_round_trip() {
    for p in Phase::ALL {
        assert_eq!(Phase::parse(p.as_str()), Some(p));
    }
    assert_eq!(Phase::parse("frozen"), None);
}
