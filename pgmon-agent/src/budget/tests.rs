//! The ladder with an injected clock: up step by step, down as the window moves on.

use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::*;
use crate::{
    cost::{CostConfig, CostMetrics},
    query::StatementInfo,
};

fn stmt(fp: u64) -> Stmt {
    Arc::new(StatementInfo {
        fingerprint: fp,
        normalized: "SELECT $1".into(),
        normalized_truncated: false,
        text_bytes: 8,
        parse_error: false,
    })
}

fn budgets(
    yaml: &str,
) -> (
    Budgets,
    UnboundedReceiver<CostRequest>,
    UnboundedReceiver<ToEnforcer>,
) {
    budgets_with(yaml, Persisted::default())
}

/// Budgets under `yaml` restarted from `persisted`.
fn budgets_with(
    yaml: &str,
    persisted: Persisted,
) -> (
    Budgets,
    UnboundedReceiver<CostRequest>,
    UnboundedReceiver<ToEnforcer>,
) {
    let policy: policy::BudgetPolicy = yaml_serde::from_str(yaml).unwrap();
    let cost = CostConfig::default();
    let (req_tx, req_rx) = unbounded_channel();
    let (out_tx, out_rx) = unbounded_channel();
    let mut registry = Registry::default();
    let b = Budgets::new(
        policy.compile().unwrap(),
        &cost,
        Costs::new(&cost),
        Channels {
            cost_requests: req_tx,
            enforcer: out_tx,
        },
        CostMetrics::register(&mut registry),
        BudgetMetrics::register(&mut registry),
        persisted,
    );
    (b, req_rx, out_rx)
}

fn decisions(rx: &mut UnboundedReceiver<ToEnforcer>) -> Vec<(Option<usize>, Option<usize>)> {
    let mut v = Vec::new();
    while let Ok(m) = rx.try_recv() {
        if let ToEnforcer::Decision(d) = m {
            v.push((d.from, d.to));
        }
    }
    v
}

const POLICY: &str = "enabled: true\n\
    tiers:\n  free: {budget: 10, unit: exec_seconds, window_seconds: 10}\n\
    default_tier: free\nexempt: [boss]\n";

#[test]
fn climbs_and_descends_the_ladder() {
    let (mut b, _req, mut out) = budgets(POLICY);
    let heavy: Arc<str> = "heavy".into();
    let light: Arc<str> = "light".into();
    let db: Arc<str> = "db".into();
    let s = stmt(1);
    let t0 = 1_000_000;
    // 1 s of execution per query: utilisation 0.1 per query.
    for i in 0..7 {
        b.charge(t0 + i * 10, &heavy, &db, &s, 1_000_000_000);
    }
    b.charge(t0, &light, &db, &s, 1_000_000);
    b.evaluate(t0 + 100);
    assert!(decisions(&mut out).is_empty(), "0.7 is under every step");
    b.charge(t0 + 200, &heavy, &db, &s, 1_000_000_000);
    b.evaluate(t0 + 300);
    assert_eq!(decisions(&mut out), [(None, Some(0))], "0.8 → warn");
    for _ in 0..2 {
        b.charge(t0 + 400, &heavy, &db, &s, 1_000_000_000);
    }
    b.evaluate(t0 + 500);
    assert_eq!(decisions(&mut out), [(Some(0), Some(1))], "1.0 → limit 5");
    for _ in 0..10 {
        b.charge(t0 + 600, &heavy, &db, &s, 1_000_000_000);
    }
    b.evaluate(t0 + 700);
    assert_eq!(decisions(&mut out), [(Some(1), Some(3))], "2.0 → lock");
    // The window moves past every charge: back to no step in one decision.
    b.evaluate(t0 + 11_000);
    assert_eq!(decisions(&mut out), [(Some(3), None)]);
    // The light role never moved.
    let st = b.status(t0 + 11_000);
    assert!(st.iter().all(|r| r.step.is_none()));
}

#[test]
fn a_sum_that_is_the_threshold_in_decimal_reaches_its_step() {
    // Budget 1.4 s, 0.07 s per query: in f64 the 40th sums to 2.7999999999999994 and the
    // 10th to 0.7000000000000002; both are the step the arithmetic says.
    let (mut b, _req, mut out) = budgets(
        "enabled: true\n\
         tiers:\n  free: {budget: 1.4, unit: exec_seconds, window_seconds: 600}\n\
         default_tier: free\n",
    );
    let heavy: Arc<str> = "heavy".into();
    let db: Arc<str> = "db".into();
    let s = stmt(1);
    let t0 = 1_000_000;
    let mut steps = Vec::new();
    for k in 1..=40u64 {
        b.charge(t0 + k * 1000, &heavy, &db, &s, 70_000_000);
        b.evaluate(t0 + k * 1000);
        for (_, to) in decisions(&mut out) {
            steps.push((k, to));
        }
    }
    // The default ladder: warn at 0.8, connection limit 5 at 1.0, 1 at 1.5, lock at 2.0.
    assert_eq!(
        steps,
        [(16, Some(0)), (20, Some(1)), (30, Some(2)), (40, Some(3))]
    );
}

#[test]
fn exempt_and_protected_roles_are_never_charged() {
    let (mut b, _req, mut out) = budgets(POLICY);
    b.set_protected(["su".to_owned()].into());
    let db: Arc<str> = "db".into();
    for role in ["boss", "su", "pgmon", "pg_monitor"] {
        let r: Arc<str> = role.into();
        for _ in 0..100 {
            b.charge(1_000, &r, &db, &stmt(1), 10_000_000_000);
        }
    }
    b.evaluate(2_000);
    assert!(decisions(&mut out).is_empty());
    assert!(b.status(2_000).is_empty());
}

#[test]
fn default_charge_is_corrected_when_the_estimate_arrives() {
    let (mut b, mut req, _out) = budgets(
        "enabled: true\ntiers:\n  free: {budget: 100000, window_seconds: 60}\ndefault_tier: free\n",
    );
    let role: Arc<str> = "t".into();
    let db: Arc<str> = "db".into();
    for _ in 0..3 {
        b.charge(5_000, &role, &db, &stmt(42), 1);
    }
    // One request for three misses of one fingerprint.
    assert_eq!(req.try_recv().unwrap().fingerprint, 42);
    assert!(req.try_recv().is_err());
    // Each miss is charged `cost.default_cost` until the estimate arrives.
    assert_eq!(
        b.status(5_000)[0].spend,
        3.0 * CostConfig::default().default_cost
    );
    b.costs.insert(42, Some(8.5), &"db".into(), &[]);
    b.on_cost(CostAnswer {
        fingerprint: 42,
        cost: Some(8.5),
    });
    assert_eq!(b.status(5_000)[0].spend, 25.5);
    b.charge(6_000, &role, &db, &stmt(42), 1);
    assert_eq!(b.status(6_000)[0].spend, 34.0, "a hit charges the estimate");
}

#[test]
fn steps_survive_a_restart() {
    let persisted = Persisted {
        steps: [("heavy".to_owned(), 3)].into(),
        buckets: [("heavy".to_owned(), vec![(1_000, 25.0)])].into(),
    };
    let (mut b, _req, mut out_rx) = budgets_with(POLICY, persisted);
    b.evaluate(1_000_500);
    assert!(
        decisions(&mut out_rx).is_empty(),
        "still at 2.5: stays locked"
    );
    assert_eq!(b.status(1_000_500)[0].spend, 25.0);
    b.evaluate(1_020_000);
    assert_eq!(decisions(&mut out_rx), [(Some(3), None)]);
}

#[test]
fn a_step_of_a_role_the_policy_now_exempts_is_undone_at_start() {
    let persisted = Persisted {
        steps: [("boss".to_owned(), 3)].into(),
        buckets: Default::default(),
    };
    let (b, _req, mut out) = budgets_with(POLICY, persisted);
    assert_eq!(decisions(&mut out), [(Some(3), None)]);
    assert!(b.status(1_000_000).is_empty(), "boss has no budget");
}

fn compiled(yaml: &str) -> policy::Compiled {
    yaml_serde::from_str::<policy::BudgetPolicy>(yaml)
        .unwrap()
        .compile()
        .unwrap()
}

#[test]
fn a_reload_keeps_ledgers_and_steps_and_rejudges_with_the_new_limits() {
    let (mut b, _req, mut out) = budgets(POLICY);
    let heavy: Arc<str> = "heavy".into();
    let db: Arc<str> = "db".into();
    let s = stmt(1);
    let t0 = 1_000_000;
    for i in 0..20 {
        b.charge(t0 + i, &heavy, &db, &s, 1_000_000_000);
    }
    b.evaluate(t0 + 100);
    assert_eq!(decisions(&mut out), [(None, Some(3))], "2.0 → lock");

    // Same ladder, a budget twice as large: the ledger (20 s) stays, utilisation 1.0.
    b.set_policy(compiled(&POLICY.replace("budget: 10,", "budget: 20,")));
    let msgs: Vec<ToEnforcer> = std::iter::from_fn(|| out.try_recv().ok()).collect();
    assert!(
        matches!(msgs.as_slice(), [ToEnforcer::Policy(_)]),
        "only the policy, no undo: {msgs:?}"
    );
    b.evaluate(t0 + 200);
    assert_eq!(decisions(&mut out), [(Some(3), Some(1))], "1.0 → limit 5");
    let st = b.status(t0 + 200);
    assert_eq!(st[0].step, Some(policy::ActionKind::ConnectionLimit));

    // Exempt now: its step is undone and it is forgotten.
    b.set_policy(compiled(
        &POLICY.replace("exempt: [boss]", "exempt: [boss, heavy]"),
    ));
    assert_eq!(decisions(&mut out), [(Some(1), None)]);
    assert!(b.status(t0 + 300).is_empty());
}

#[test]
fn a_changed_ladder_undoes_steps_under_the_old_one_first() {
    let (mut b, _req, mut out) = budgets(POLICY);
    let heavy: Arc<str> = "heavy".into();
    let db: Arc<str> = "db".into();
    let t0 = 1_000_000;
    for i in 0..20 {
        b.charge(t0 + i, &heavy, &db, &stmt(1), 1_000_000_000);
    }
    b.evaluate(t0 + 100);
    assert_eq!(decisions(&mut out), [(None, Some(3))]);
    b.set_policy(compiled(&format!(
        "{POLICY}ladder:\n  - {{at: 1.5, action: lock}}\n"
    )));
    let msgs: Vec<ToEnforcer> = std::iter::from_fn(|| out.try_recv().ok()).collect();
    match msgs.as_slice() {
        [ToEnforcer::Decision(d), ToEnforcer::Policy(p)] => {
            assert_eq!((d.from, d.to), (Some(3), None), "undone on the old ladder");
            assert_eq!(p.policy.ladder.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    b.evaluate(t0 + 200);
    assert_eq!(
        decisions(&mut out),
        [(None, Some(0))],
        "re-escalated on the new one"
    );
}

#[test]
fn a_reset_by_hand_empties_the_ledger_and_undoes_the_step() {
    let (mut b, _req, mut out) = budgets(POLICY);
    let heavy: Arc<str> = "heavy".into();
    let db: Arc<str> = "db".into();
    let t0 = 1_000_000;
    for i in 0..20 {
        b.charge(t0 + i, &heavy, &db, &stmt(1), 1_000_000_000);
    }
    b.evaluate(t0 + 100);
    assert_eq!(decisions(&mut out), [(None, Some(3))]);

    let (tx, mut rx) = tokio::sync::oneshot::channel();
    b.reset(
        t0 + 200,
        reset::ResetRequest {
            role: "heavy".into(),
            reply: tx,
        },
    );
    let msgs: Vec<ToEnforcer> = std::iter::from_fn(|| out.try_recv().ok()).collect();
    match msgs.as_slice() {
        [ToEnforcer::Decision(d), ToEnforcer::Reset(r)] => {
            assert_eq!((d.from, d.to), (Some(3), None), "the step flows as usual");
            assert_eq!((r.from, r.spend, r.utilisation), (Some(3), 20.0, 2.0));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        rx.try_recv().is_err(),
        "the enforcer answers, not the budgets"
    );
    let st = b.status(t0 + 200);
    assert_eq!(
        (st[0].spend, st[0].utilisation, st[0].step),
        (0.0, 0.0, None)
    );
    // Nothing left to undo when the window passes.
    b.evaluate(t0 + 30_000);
    assert!(decisions(&mut out).is_empty());
    // Charged again, it climbs again from zero.
    for i in 0..8 {
        b.charge(t0 + 31_000 + i, &heavy, &db, &stmt(1), 1_000_000_000);
    }
    b.evaluate(t0 + 31_100);
    assert_eq!(decisions(&mut out), [(None, Some(0))]);
}

#[test]
fn a_reset_of_a_role_without_a_budget_is_refused_at_once() {
    let (mut b, _req, mut out) = budgets(POLICY);
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    b.reset(
        1_000,
        reset::ResetRequest {
            role: "boss".into(),
            reply: tx,
        },
    );
    let answer = rx.try_recv().expect("answered").unwrap_err();
    assert!(answer.contains("no budget"), "{answer}");
    assert!(out.try_recv().is_err(), "nothing for the enforcer");
}

#[test]
fn estimates_owed_from_before_a_reset_do_not_refill_the_ledger() {
    let (mut b, _req, mut out) = budgets(
        "enabled: true\ntiers:\n  free: {budget: 100000, window_seconds: 60}\ndefault_tier: free\n",
    );
    let role: Arc<str> = "t".into();
    let db: Arc<str> = "db".into();
    b.charge(5_000, &role, &db, &stmt(42), 1);
    let (tx, _rx) = tokio::sync::oneshot::channel();
    b.reset(
        5_500,
        reset::ResetRequest {
            role: "t".into(),
            reply: tx,
        },
    );
    while out.try_recv().is_ok() {}
    b.costs.insert(42, Some(8.5), &"db".into(), &[]);
    b.on_cost(CostAnswer {
        fingerprint: 42,
        cost: Some(8.5),
    });
    assert_eq!(b.status(5_600)[0].spend, 0.0);
}

const HOURLY: &str = "enabled: true\n\
    tiers:\n  free: {budget: 10, unit: exec_seconds, reset: hourly}\n\
    default_tier: free\n";

#[test]
fn an_hourly_reset_counts_from_the_hour_and_gives_back_at_the_boundary() {
    let (mut b, _req, mut out) = budgets(HOURLY);
    let heavy: Arc<str> = "heavy".into();
    let light: Arc<str> = "light".into();
    let db: Arc<str> = "db".into();
    let hour = 3600 * 1000;
    let h0 = 480_000 * hour; // some hh:00:00 UTC
    // Spent early in the hour, it still counts at hh:59:59 (a 60 s window would have
    // forgotten it).
    for i in 0..20 {
        b.charge(h0 + 1_000 + i, &heavy, &db, &stmt(1), 1_000_000_000);
    }
    for _ in 0..4 {
        b.charge(h0 + 2_000, &light, &db, &stmt(1), 1_000_000_000);
    }
    b.evaluate(h0 + 2_100);
    assert_eq!(decisions(&mut out), [(None, Some(3))], "2.0 → lock");
    b.evaluate(h0 + hour - 1);
    assert!(decisions(&mut out).is_empty(), "still the same hour");
    let st = b.status(h0 + hour - 1);
    assert_eq!(st[0].spend, 20.0);
    assert_eq!(st[0].reset, Some(policy::Reset::Hourly));
    assert_eq!(st[0].window_seconds, 3600);
    // The next hour: spend 0, the step undone at the first evaluation past the boundary.
    b.evaluate(h0 + hour + 50);
    assert_eq!(decisions(&mut out), [(Some(3), None)]);
    assert!(b.status(h0 + hour + 50).iter().all(|r| r.spend == 0.0));
    // The role on no step was judged again too: its utilisation reads 0, not 0.4.
    let u: HashMap<String, f64> = b.metrics.utilisations().into_iter().collect();
    assert_eq!(u["light"], 0.0);
    assert_eq!(u["heavy"], 0.0);
    // A charge in the last second of an hour is gone in the first of the next.
    b.charge(h0 + 2 * hour - 1, &heavy, &db, &stmt(1), 5_000_000_000);
    assert_eq!(b.status(h0 + 2 * hour - 1)[0].spend, 5.0);
    assert_eq!(b.status(h0 + 2 * hour)[0].spend, 0.0);
}

#[test]
fn a_daily_reset_is_at_midnight_utc_and_persists_only_the_day() {
    let (mut b, _req, mut out) = budgets(&HOURLY.replace("hourly", "daily"));
    let role: Arc<str> = "t".into();
    let db: Arc<str> = "db".into();
    let day = 86_400 * 1000;
    let d0 = 20_000 * day; // 00:00:00 UTC
    b.charge(d0 + day - 5_000, &role, &db, &stmt(1), 3_000_000_000);
    b.charge(d0 + day + 5_000, &role, &db, &stmt(1), 2_000_000_000);
    b.evaluate(d0 + day - 4_000);
    b.evaluate(d0 + day + 6_000);
    let _ = decisions(&mut out);
    assert_eq!(b.status(d0 + day + 6_000)[0].spend, 2.0);
    // Only today's spend is persisted: yesterday's is pruned and never written back.
    b.snapshot(d0 + day + 6_000);
    let ledgers: Vec<LedgerSnapshot> = std::iter::from_fn(|| out.try_recv().ok())
        .filter_map(|m| match m {
            ToEnforcer::Ledgers(l) => Some(l),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(ledgers.len(), 1);
    let total: f64 = ledgers[0].2.iter().map(|(_, v)| v).sum();
    assert_eq!(total, 2.0, "{:?}", ledgers[0].2);
    assert!(ledgers[0].2.iter().all(|(s, _)| *s >= (d0 + day) / 1000));
}

/// Ledgers written by one [`Budgets::snapshot`].
fn written(out: &mut UnboundedReceiver<ToEnforcer>) -> usize {
    std::iter::from_fn(|| out.try_recv().ok())
        .filter_map(|m| match m {
            ToEnforcer::Ledgers(l) => Some(l.len()),
            _ => None,
        })
        .sum()
}

#[test]
fn a_ledger_is_written_when_it_moved_or_once_a_minute() {
    let (mut b, _req, mut out) = budgets(
        "enabled: true\n\
         tiers:\n  big: {budget: 1000, unit: exec_seconds, window_seconds: 3600}\n\
         default_tier: big\n",
    );
    let (role, db): (Arc<str>, Arc<str>) = ("t".into(), "db".into());
    let t0 = 1_000_000_000;
    // 0.1 s a second, snapshots every 5 s: 0.5 of spend between them, under 1 % (10).
    let mut writes = Vec::new();
    for sec in 0..180u64 {
        b.charge(t0 + sec * 1000, &role, &db, &stmt(1), 100_000_000);
        if sec % 5 == 4 {
            b.snapshot(t0 + sec * 1000 + 500);
            if written(&mut out) > 0 {
                writes.push(sec);
            }
        }
    }
    // The first, then once a minute: 3 writes in 3 minutes instead of 36.
    assert_eq!(writes, [4, 64, 124], "{writes:?}");
    // A burst worth 1 % of the budget is written at the next snapshot.
    b.charge(t0 + 180_000, &role, &db, &stmt(1), 10_000_000_000);
    b.snapshot(t0 + 180_500);
    assert_eq!(written(&mut out), 1);
    // Nothing charged: nothing written, however long.
    b.snapshot(t0 + 400_000);
    assert_eq!(written(&mut out), 0);
}

#[test]
fn unlock_effect_says_what_a_reset_forgets_and_gives_back() {
    use super::{
        policy::{ActionKind, Mode, Step, Unit},
        status::unlock_effect,
    };
    let lock = Step {
        at: 1.5,
        action: ActionKind::Lock,
        limit: None,
    };
    let text = unlock_effect(
        Mode::Enforce,
        (2500.0, Unit::PlanCost, 2.4),
        Some(&lock),
        Some(0.8),
    );
    assert_eq!(
        text,
        "forgets 2500.0 plan-cost units of spend (utilisation 240 % → 0 %); takes it off \
         step lock (pgmon.restore_role gives back LOGIN and the connection limit it had); \
         the ladder starts again when it spends past 80 % of its budget; one audit row \
         (source budget, action reset)"
    );
    let observed = unlock_effect(
        Mode::Observe,
        (2500.0, Unit::PlanCost, 2.4),
        Some(&lock),
        Some(0.8),
    );
    assert!(
        observed.contains("nothing to give back: observe mode applied nothing"),
        "{observed}"
    );
    let idle = unlock_effect(Mode::Enforce, (0.0, Unit::ExecSeconds, 0.0), None, None);
    assert_eq!(
        idle,
        "forgets nothing (no spend in the window); the role is on no step; one audit row \
         (source budget, action reset)"
    );
}
