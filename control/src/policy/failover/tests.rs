//! The owner-side machine: one scripted sequence per rule, then random event sequences
//! checked against invariants computed independently of the machine.

use std::time::Duration;

use super::*;
use crate::test_rng::TestRng;

const HOLD: u64 = 1000;
const ACK: u64 = 50;
const RELEASE: u64 = 100;

fn params(failback: Failback, proxies: &[&str]) -> FailoverParams {
    FailoverParams {
        has_nic: true,
        proxies: proxies.iter().map(|p| p.to_string()).collect(),
        failback,
        hold_down: Duration::from_millis(HOLD),
        ack_timeout: Duration::from_millis(ACK),
        ack_retries: 3,
        release_delay: Duration::from_millis(RELEASE),
    }
}

fn ms(t: u64) -> Duration {
    Duration::from_millis(t)
}

// Actions.
fn req(p: &str) -> Action {
    Action::RequestProxy(p.into())
}
fn rel(p: &str) -> Action {
    Action::ReleaseProxy(p.into())
}
fn nic() -> Action {
    Action::SetUplink(Uplink::Nic)
}
fn via(p: &str) -> Action {
    Action::SetUplink(Uplink::Session(p.into()))
}
fn none() -> Action {
    Action::SetUplink(Uplink::None)
}
fn ann() -> Action {
    Action::Announce
}
fn carrier(on: bool) -> Action {
    Action::SetCarrier(on)
}

// Events.
fn link(up: bool) -> Event<'static> {
    Event::NicLink(up)
}
fn sess(peer: &'static str, up: bool) -> Event<'static> {
    Event::Session { peer, up }
}
fn plink(peer: &'static str, usable: bool) -> Event<'static> {
    Event::PeerLink { peer, usable }
}
fn ack(peer: &'static str, accepted: bool) -> Event<'static> {
    Event::Ack { peer, accepted }
}
const TICK: Event<'static> = Event::Tick;

type Step = (u64, Event<'static>, Vec<Action>);

/// Runs the steps, comparing each step's actions exactly.
fn run(m: &mut Failover, steps: Vec<Step>) {
    for (i, (t, ev, want)) in steps.into_iter().enumerate() {
        let got = m.handle(ms(t), ev);
        assert_eq!(got, want, "step {i}: {ev:?} at {t} ms");
        assert_eq!(m.carrier(), m.uplink() != Uplink::None, "step {i}: carrier");
    }
}

/// NIC up at 0, sessions b and c (and d when listed) up with usable NICs.
fn started(failback: Failback, proxies: &[&'static str]) -> Failover {
    let mut m = Failover::new(params(failback, proxies));
    assert_eq!(m.uplink(), Uplink::None);
    assert!(!m.carrier());
    run(
        &mut m,
        vec![(0, link(true), vec![nic(), carrier(true), ann()])],
    );
    for p in proxies {
        run(
            &mut m,
            vec![(0, sess(p, true), vec![]), (0, plink(p, true), vec![])],
        );
    }
    m
}

#[test]
fn fails_over_then_cascades_then_loses_carrier_then_regains_it() {
    let mut m = started(Failback::Always, &["b", "c"]);
    run(
        &mut m,
        vec![
            // Local NIC dies: the first proxy takes over at once, uplink before the ack.
            (10, link(false), vec![req("b"), via("b"), ann()]),
            (11, ack("b", true), vec![]),
            // b dies: c takes over; b dropped our MACs with its session.
            (20, sess("b", false), vec![req("c"), via("c"), ann()]),
            (21, ack("c", true), vec![]),
            // c loses its own NIC: no path left, carrier off; c still holds our MACs.
            (
                30,
                plink("c", false),
                vec![none(), carrier(false), rel("c")],
            ),
            // b returns: carrier on at once, no hold-down when there is no path.
            (40, sess("b", true), vec![]),
            (
                41,
                plink("b", true),
                vec![req("b"), via("b"), carrier(true), ann()],
            ),
        ],
    );
    assert_eq!(m.uplink(), Uplink::Session("b".into()));
}

#[test]
fn proxy_nic_loss_moves_to_the_next_proxy() {
    let mut m = started(Failback::Always, &["b", "c"]);
    run(
        &mut m,
        vec![
            (10, link(false), vec![req("b"), via("b"), ann()]),
            (10, ack("b", true), vec![]),
            (
                20,
                plink("b", false),
                vec![req("c"), via("c"), ann(), rel("b")],
            ),
            (20, ack("c", true), vec![]),
            // b's NIC returns: under `always`, we stay on c.
            (30, plink("b", true), vec![]),
            (30 + HOLD + 1, TICK, vec![]),
        ],
    );
}

#[test]
fn failback_always_waits_for_the_hold_down_then_releases_after_the_burst() {
    let mut m = started(Failback::Always, &["b", "c"]);
    run(
        &mut m,
        vec![
            (10, link(false), vec![req("b"), via("b"), ann()]),
            (10, ack("b", true), vec![]),
            (100, link(true), vec![]),
            (100 + HOLD - 1, TICK, vec![]),
            (100 + HOLD, TICK, vec![nic(), ann()]),
            // b keeps our MACs during the announcement burst, then is released.
            (100 + HOLD + RELEASE - 1, TICK, vec![]),
            (100 + HOLD + RELEASE, TICK, vec![rel("b")]),
        ],
    );
}

#[test]
fn failback_always_stays_between_proxies() {
    let mut m = started(Failback::Always, &["b", "c"]);
    run(
        &mut m,
        vec![
            (10, link(false), vec![req("b"), via("b"), ann()]),
            (10, ack("b", true), vec![]),
            (20, sess("b", false), vec![req("c"), via("c"), ann()]),
            (20, ack("c", true), vec![]),
            (30, sess("b", true), vec![]),
            (30, plink("b", true), vec![]),
            (30 + 5 * HOLD, TICK, vec![]),
        ],
    );
    assert_eq!(m.uplink(), Uplink::Session("c".into()));
}

#[test]
fn failback_better_returns_to_a_higher_priority_proxy() {
    let mut m = started(Failback::Better, &["b", "c", "d"]);
    run(
        &mut m,
        vec![
            (10, link(false), vec![req("b"), via("b"), ann()]),
            (10, ack("b", true), vec![]),
            (20, sess("b", false), vec![req("c"), via("c"), ann()]),
            (20, ack("c", true), vec![]),
            (30, sess("b", true), vec![]),
            (30, plink("b", true), vec![]),
            (30 + HOLD - 1, TICK, vec![]),
            (30 + HOLD, TICK, vec![req("b"), via("b"), ann()]),
            (30 + HOLD, ack("b", true), vec![]),
            (30 + HOLD + RELEASE, TICK, vec![rel("c")]),
            // And to the NIC when it is stable.
            (2000, link(true), vec![]),
            (2000 + HOLD, TICK, vec![nic(), ann()]),
            (2000 + HOLD + RELEASE, TICK, vec![rel("b")]),
        ],
    );
}

#[test]
fn failback_better_does_not_move_to_a_lower_priority_proxy() {
    let mut m = started(Failback::Better, &["b", "c", "d"]);
    run(
        &mut m,
        vec![
            (10, link(false), vec![req("b"), via("b"), ann()]),
            (10, ack("b", true), vec![]),
            (20, sess("c", false), vec![]),
            (30, sess("c", true), vec![]),
            (30, plink("c", true), vec![]),
            (30 + 3 * HOLD, TICK, vec![]),
        ],
    );
    assert_eq!(m.uplink(), Uplink::Session("b".into()));
}

#[test]
fn failback_never_stays_until_the_proxy_fails() {
    let mut m = started(Failback::Never, &["b", "c"]);
    run(
        &mut m,
        vec![
            (10, link(false), vec![req("b"), via("b"), ann()]),
            (10, ack("b", true), vec![]),
            (20, link(true), vec![]),
            (20 + 10 * HOLD, TICK, vec![]),
            // b fails: the NIC is the best usable path.
            (20 + 10 * HOLD + 1, sess("b", false), vec![nic(), ann()]),
        ],
    );
    assert_eq!(m.next_deadline(), None, "nothing pending");
}

#[test]
fn hold_down_restarts_on_every_flap() {
    let mut m = started(Failback::Always, &["b"]);
    run(
        &mut m,
        vec![
            (10, link(false), vec![req("b"), via("b"), ann()]),
            (10, ack("b", true), vec![]),
            (100, link(true), vec![]),
            (600, link(false), vec![]),
            (700, link(true), vec![]),
            // 1100 would end the first hold-down; the flap restarted it at 700.
            (1100, TICK, vec![]),
            (1699, TICK, vec![]),
            (1700, TICK, vec![nic(), ann()]),
        ],
    );
}

#[test]
fn a_flapping_nic_fails_over_at_once_every_time_but_fails_back_only_when_stable() {
    let mut m = started(Failback::Always, &["b"]);
    run(
        &mut m,
        vec![
            (10, link(false), vec![req("b"), via("b"), ann()]),
            (10, ack("b", true), vec![]),
            (1010, link(true), vec![]),
            (2010, TICK, vec![nic(), ann()]),
            // Down again during the release delay: straight back to b, which still has our
            // MACs, so no new request and no release afterwards.
            (2015, link(false), vec![via("b"), ann()]),
            (2030, link(true), vec![]),
            (2040, link(false), vec![]),
            (2050, link(true), vec![]),
            (2010 + RELEASE + 10, TICK, vec![]),
            (2050 + HOLD - 1, TICK, vec![]),
            (2050 + HOLD, TICK, vec![nic(), ann()]),
        ],
    );
}

#[test]
fn a_forced_move_takes_the_nic_even_during_its_hold_down() {
    let mut m = started(Failback::Always, &["b", "c"]);
    run(
        &mut m,
        vec![
            (10, link(false), vec![req("b"), via("b"), ann()]),
            (10, ack("b", true), vec![]),
            (100, link(true), vec![]),
            // b dies 10 ms into the NIC's hold-down: the NIC beats c.
            (110, sess("b", false), vec![nic(), ann()]),
        ],
    );
}

#[test]
fn refusal_moves_on_and_is_forgotten_when_the_session_restarts() {
    let mut m = started(Failback::Better, &["b", "c"]);
    run(
        &mut m,
        vec![
            (10, link(false), vec![req("b"), via("b"), ann()]),
            (
                11,
                ack("b", false),
                vec![req("c"), via("c"), ann(), rel("b")],
            ),
            (12, ack("c", true), vec![]),
            // b stays refused while its session lasts, even under `better`.
            (12 + 2 * HOLD, TICK, vec![]),
            (3000, sess("b", false), vec![]),
            (3001, sess("b", true), vec![]),
            (3001, plink("b", true), vec![]),
            (3001 + HOLD, TICK, vec![req("b"), via("b"), ann()]),
        ],
    );
}

#[test]
fn unanswered_requests_are_retried_then_abandoned() {
    let mut m = started(Failback::Always, &["b", "c"]);
    run(
        &mut m,
        vec![
            (0, link(false), vec![req("b"), via("b"), ann()]),
            (ACK - 1, TICK, vec![]),
            (ACK, TICK, vec![req("b")]),
            (2 * ACK, TICK, vec![req("b")]),
            (3 * ACK, TICK, vec![req("b")]),
            (4 * ACK, TICK, vec![req("c"), via("c"), ann(), rel("b")]),
            (4 * ACK + 1, ack("c", true), vec![]),
            (100 * ACK, TICK, vec![]),
        ],
    );
    assert!(m.proxy_status()[0].refused);
    assert!(m.proxy_status()[1].installed);
}

#[test]
fn a_late_ack_stops_the_retries() {
    let mut m = started(Failback::Always, &["b"]);
    run(
        &mut m,
        vec![
            (0, link(false), vec![req("b"), via("b"), ann()]),
            (ACK, TICK, vec![req("b")]),
            (ACK + 10, ack("b", true), vec![]),
        ],
    );
    assert_eq!(m.next_deadline(), None);
}

#[test]
fn resync_asks_the_proxy_in_use_again_with_retries() {
    let mut m = started(Failback::Always, &["b", "c"]);
    // On the NIC: nothing to tell anyone.
    assert_eq!(m.resync(ms(5)), vec![]);
    run(
        &mut m,
        vec![
            (10, link(false), vec![req("b"), via("b"), ann()]),
            (11, ack("b", true), vec![]),
        ],
    );
    assert_eq!(m.next_deadline(), None);
    // The MAC set changed: b is asked again and the ack is awaited like a first one.
    assert_eq!(m.resync(ms(20)), vec![req("b")]);
    assert_eq!(m.next_deadline(), Some(ms(20 + ACK)));
    run(
        &mut m,
        vec![
            (20 + ACK, TICK, vec![req("b")]),
            (21 + ACK, ack("b", true), vec![]),
        ],
    );
    assert_eq!(m.next_deadline(), None);
    // A refusal of the new set (say, a MAC another client holds) moves us on.
    assert_eq!(m.resync(ms(200)), vec![req("b")]);
    run(
        &mut m,
        vec![(
            201,
            ack("b", false),
            vec![req("c"), via("c"), ann(), rel("b")],
        )],
    );
    // No path at all: nothing to resync.
    run(
        &mut m,
        vec![
            (202, ack("c", true), vec![]),
            (
                210,
                plink("c", false),
                vec![none(), carrier(false), rel("c")],
            ),
        ],
    );
    assert_eq!(m.resync(ms(220)), vec![]);
}

#[test]
fn upstream_probe_failure_counts_as_nic_failure() {
    let mut m = started(Failback::Always, &["b"]);
    run(
        &mut m,
        vec![
            (10, Event::Upstream(false), vec![req("b"), via("b"), ann()]),
            (10, ack("b", true), vec![]),
            (20, Event::Upstream(true), vec![]),
            (20 + HOLD, TICK, vec![nic(), ann()]),
        ],
    );
    assert!(m.nic_usable());
}

#[test]
fn with_no_path_left_a_nic_whose_link_returns_is_taken_before_its_probe_answers() {
    let mut m = started(Failback::Always, &["b"]);
    run(
        &mut m,
        vec![
            (10, link(false), vec![req("b"), via("b"), ann()]),
            // As the daemon reports it: after a link loss only a new answer proves the NIC.
            (10, Event::Upstream(false), vec![]),
            (10, ack("b", true), vec![]),
            (20, sess("b", false), vec![none(), carrier(false)]),
            // The link returns; the probe has not answered since the link loss, and cannot
            // without carrier: the NIC is taken anyway.
            (30, link(true), vec![nic(), carrier(true), ann()]),
        ],
    );
    assert!(!m.nic_usable());
    assert_eq!(m.uplink(), Uplink::Nic);
    // A proxy that becomes usable is preferred to an unproven NIC...
    run(
        &mut m,
        vec![
            (40, sess("b", true), vec![]),
            (40, plink("b", true), vec![req("b"), via("b"), ann()]),
            (40, ack("b", true), vec![]),
            // ...until the probe answers and the NIC has been stable for the hold-down.
            (50, Event::Upstream(true), vec![]),
            (50 + HOLD, TICK, vec![nic(), ann()]),
            (50 + HOLD + RELEASE, TICK, vec![rel("b")]),
        ],
    );
    // Link down again with no proxy: no path, no carrier.
    run(
        &mut m,
        vec![
            (3000, sess("b", false), vec![]),
            (3010, link(false), vec![none(), carrier(false)]),
            (3010, Event::Upstream(false), vec![]),
            // Back on the NIC as the last resort; the probe's first answer proves the
            // switch forwards: announced again, as the first burst may have been lost.
            (3020, link(true), vec![nic(), carrier(true), ann()]),
            (3900, Event::Upstream(true), vec![ann()]),
            (3950, Event::Upstream(true), vec![]),
        ],
    );
    assert!(m.nic_usable());
}

#[test]
fn starts_on_a_proxy_when_the_nic_is_down() {
    let mut m = Failover::new(params(Failback::Always, &["b"]));
    run(
        &mut m,
        vec![
            (0, link(false), vec![]),
            (5, sess("b", true), vec![]),
            (
                6,
                plink("b", true),
                vec![req("b"), via("b"), carrier(true), ann()],
            ),
            (6, ack("b", true), vec![]),
        ],
    );
}

#[test]
fn a_remote_domain_has_no_nic() {
    let mut p = params(Failback::Always, &["b", "c"]);
    p.has_nic = false;
    let mut m = Failover::new(p);
    run(
        &mut m,
        vec![
            (0, link(true), vec![]),
            (1, sess("c", true), vec![]),
            (
                1,
                plink("c", true),
                vec![req("c"), via("c"), carrier(true), ann()],
            ),
            (1, ack("c", true), vec![]),
            (2, sess("b", true), vec![]),
            (2, plink("b", true), vec![]),
            (2 + HOLD, TICK, vec![]),
            (3000, sess("c", false), vec![req("b"), via("b"), ann()]),
            (3000, ack("b", true), vec![]),
            (3001, sess("b", false), vec![none(), carrier(false)]),
        ],
    );
}

#[test]
fn unknown_peers_and_stale_events_are_ignored() {
    let mut m = started(Failback::Always, &["b"]);
    run(
        &mut m,
        vec![
            (1, sess("zz", false), vec![]),
            (1, plink("zz", false), vec![]),
            (1, ack("zz", false), vec![]),
            // A link report for a session that is down changes nothing.
            (2, sess("b", false), vec![]),
            (3, plink("b", true), vec![]),
            (4, link(false), vec![none(), carrier(false)]),
            // Repeated "up" does not clear anything or re-request.
            (5, sess("b", true), vec![]),
            (
                5,
                plink("b", true),
                vec![req("b"), via("b"), carrier(true), ann()],
            ),
            (6, sess("b", true), vec![]),
            (7, ack("b", true), vec![]),
            (8, ack("b", true), vec![]),
        ],
    );
}

#[test]
fn a_proxy_waiting_for_release_that_fails_is_released_at_once() {
    let mut m = started(Failback::Always, &["b"]);
    run(
        &mut m,
        vec![
            (10, link(false), vec![req("b"), via("b"), ann()]),
            (10, ack("b", true), vec![]),
            (20, link(true), vec![]),
            (20 + HOLD, TICK, vec![nic(), ann()]),
            (20 + HOLD + 10, plink("b", false), vec![rel("b")]),
            (20 + HOLD + RELEASE, TICK, vec![]),
        ],
    );
}

#[test]
fn deadlines_and_time_going_backwards() {
    let mut m = started(Failback::Better, &["b", "c"]);
    assert_eq!(m.next_deadline(), None);
    run(
        &mut m,
        vec![(10, link(false), vec![req("b"), via("b"), ann()])],
    );
    assert_eq!(m.next_deadline(), Some(ms(10 + ACK)));
    run(&mut m, vec![(11, ack("b", true), vec![])]);
    assert_eq!(m.next_deadline(), None);
    run(&mut m, vec![(100, link(true), vec![])]);
    assert_eq!(m.next_deadline(), Some(ms(100 + HOLD)));
    // An event stamped in the past is taken as happening now (101 ms is the latest seen).
    run(
        &mut m,
        vec![
            (101, TICK, vec![]),
            (5, link(false), vec![]),
            (6, link(true), vec![]),
        ],
    );
    assert_eq!(m.next_deadline(), Some(ms(101 + HOLD)));
}

#[test]
fn params_from_config() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/");
    let cfg = Config::load(format!("{dir}example-full.toml")).expect("config");
    let local = FailoverParams::for_local_domains(&cfg);
    assert!(local.has_nic);
    assert_eq!(local.proxies, ["n2", "n3"]);
    assert_eq!(local.release_delay, ms(100));
    assert_eq!(local.ack_timeout, ms(50));
    let bmc = cfg
        .domains
        .iter()
        .find(|d| !d.local)
        .expect("remote domain");
    let remote = FailoverParams::for_remote_domain(&cfg, bmc);
    assert!(!remote.has_nic);
    assert_eq!(remote.proxies, ["n3", "n2"]);
}

// ---------------------------------------------------------------------------------------
// Random event sequences.

/// What the test knows independently of the machine, from the events it sent.
struct Model {
    has_nic: bool,
    nic_up: bool,
    upstream: bool,
    nic_since: Option<Duration>,
    session: Vec<bool>,
    link: Vec<bool>,
    refused: Vec<bool>,
    since: Vec<Option<Duration>>,
}

impl Model {
    fn nic_usable(&self) -> bool {
        self.has_nic && self.nic_up && self.upstream
    }
    fn usable(&self, i: usize) -> bool {
        self.session[i] && self.link[i] && !self.refused[i]
    }
    fn refresh(&mut self, now: Duration) {
        let n = self.nic_usable();
        self.nic_since = if n {
            Some(self.nic_since.unwrap_or(now))
        } else {
            None
        };
        for i in 0..self.session.len() {
            self.since[i] = if self.usable(i) {
                Some(self.since[i].unwrap_or(now))
            } else {
                None
            };
        }
    }
}

/// The state the actions describe, replayed by the test.
#[derive(Default)]
struct Shadow {
    uplink: Option<Uplink>,
    carrier: bool,
    installed: std::collections::BTreeSet<String>,
}

/// How often the interesting transitions happened, so the random test cannot pass by
/// never reaching them.
#[derive(Default, Debug)]
struct Tally {
    failovers: u64,
    failbacks: u64,
    carrier_off: u64,
    retransmits: u64,
    proxy_to_proxy: u64,
}

fn random_run(
    seed: u64,
    failback: Failback,
    has_nic: bool,
    acks_time_out: bool,
    tally: &mut Tally,
) {
    const PEERS: [&str; 3] = ["p0", "p1", "p2"];
    let mut p = params(failback, &PEERS);
    p.has_nic = has_nic;
    if !acks_time_out {
        // Long enough never to fire: refusals then come only from the events we send,
        // so the model can track them without looking at the machine.
        p.ack_timeout = Duration::from_secs(1_000_000);
    }
    let hold = p.hold_down;
    let mut m = Failover::new(p);
    let mut rng = TestRng::new(seed);
    let mut model = Model {
        has_nic,
        nic_up: false,
        upstream: true,
        nic_since: None,
        session: vec![false; 3],
        link: vec![false; 3],
        refused: vec![false; 3],
        since: vec![None; 3],
    };
    let mut shadow = Shadow {
        uplink: Some(Uplink::None),
        ..Shadow::default()
    };
    let mut now = Duration::ZERO;
    for step in 0..400 {
        // Mostly short gaps, sometimes long enough for hold-downs and timeouts to expire;
        // sometimes exactly the machine's next deadline.
        now += match rng.below(10) {
            0..=5 => ms(rng.below(40)),
            6..=7 => ms(rng.below(3 * HOLD)),
            // Deadlines further out are the disabled ack timeouts: never reached.
            _ => m
                .next_deadline()
                .map(|d| d.saturating_sub(now))
                .filter(|gap| *gap <= ms(10 * HOLD))
                .unwrap_or(Duration::ZERO),
        };
        let i = rng.below(3) as usize;
        let peer = PEERS[i];
        let ev = match rng.below(12) {
            0 | 1 => Event::NicLink(rng.chance(60)),
            2 => Event::Upstream(rng.chance(70)),
            3..=5 => Event::Session {
                peer,
                up: rng.chance(60),
            },
            6..=8 => Event::PeerLink {
                peer,
                usable: rng.chance(70),
            },
            9 => Event::Ack {
                peer,
                accepted: rng.chance(80),
            },
            _ => Event::Tick,
        };
        // Machine first, then the model from the same event.
        let sessions_before = model.session.clone();
        let actions = m.handle(now, ev);
        match ev {
            Event::NicLink(up) => model.nic_up = up,
            Event::Upstream(ok) => model.upstream = ok,
            Event::Session { up, .. } => {
                if up != model.session[i] {
                    model.session[i] = up;
                    model.link[i] = false;
                    model.refused[i] = false;
                }
            }
            Event::PeerLink { usable, .. } => {
                if model.session[i] {
                    model.link[i] = usable;
                }
            }
            Event::Ack { accepted, .. } => {
                if model.session[i] && !accepted {
                    model.refused[i] = true;
                }
            }
            Event::Tick => {}
        }
        if acks_time_out {
            // Timed-out proxies count as refusing: take that one fact from the machine.
            for (j, st) in m.proxy_status().iter().enumerate() {
                model.refused[j] = st.refused;
            }
        }
        model.refresh(now);
        let ctx = format!("seed {seed:#x} step {step} {ev:?} at {now:?}: {actions:?}");

        // Tally the transitions.
        let before = shadow.uplink.clone();
        for a in &actions {
            match (a, &before) {
                (Action::SetUplink(Uplink::Nic), Some(Uplink::Session(_))) => tally.failbacks += 1,
                (Action::SetUplink(Uplink::Session(_)), Some(Uplink::Nic)) => tally.failovers += 1,
                (Action::SetUplink(Uplink::Session(_)), Some(Uplink::Session(_))) => {
                    tally.proxy_to_proxy += 1
                }
                (Action::SetCarrier(false), _) => tally.carrier_off += 1,
                _ => {}
            }
        }
        if !actions.iter().any(|a| matches!(a, Action::SetUplink(_))) {
            tally.retransmits += actions
                .iter()
                .filter(|a| matches!(a, Action::RequestProxy(_)))
                .count() as u64;
        }

        // Every move away from a path that still works must be a failback the policy
        // allows, to a path that has been stable for the hold-down.
        let stable = |since: Option<Duration>| since.is_some_and(|s| now >= s + hold);
        let pos = |p: &str| PEERS.iter().position(|x| *x == p).expect("known peer");
        for a in &actions {
            let Action::SetUplink(to) = a else { continue };
            let old_works = match &before {
                Some(Uplink::Nic) => model.nic_usable(),
                Some(Uplink::Session(p)) => model.usable(pos(p)),
                _ => false,
            };
            if !old_works {
                continue;
            }
            let ok = match (&before, to) {
                (Some(Uplink::Session(_)), Uplink::Nic) => {
                    failback != Failback::Never && stable(model.nic_since)
                }
                (Some(Uplink::Session(p)), Uplink::Session(q)) => {
                    failback == Failback::Better && pos(q) < pos(p) && stable(model.since[pos(q)])
                }
                _ => false,
            };
            assert!(ok, "{ctx}: left working {before:?} for {to:?}");
        }

        // Replay the actions.
        for a in &actions {
            match a {
                Action::RequestProxy(p) => {
                    let j = PEERS.iter().position(|x| x == p).expect("known peer");
                    // Retransmissions fire before the event is applied.
                    assert!(
                        model.session[j] || sessions_before[j],
                        "{ctx}: request to a peer without session"
                    );
                    shadow.installed.insert(p.clone());
                }
                Action::ReleaseProxy(p) => {
                    assert!(
                        shadow.installed.remove(p),
                        "{ctx}: release of {p} never requested"
                    );
                }
                Action::SetUplink(u) => {
                    if let Uplink::Session(p) = u {
                        assert!(
                            shadow.installed.contains(p),
                            "{ctx}: uplink to {p} before its request"
                        );
                    }
                    assert_ne!(
                        shadow.uplink.as_ref(),
                        Some(u),
                        "{ctx}: no-op uplink change"
                    );
                    shadow.uplink = Some(u.clone());
                }
                Action::SetCarrier(c) => {
                    assert_ne!(shadow.carrier, *c, "{ctx}: carrier set twice to {c}");
                    shadow.carrier = *c;
                }
                Action::Announce => {
                    assert!(
                        !matches!(shadow.uplink, Some(Uplink::None)),
                        "{ctx}: announce without a path"
                    );
                }
            }
        }
        if actions
            .iter()
            .any(|a| matches!(a, Action::SetUplink(u) if *u != Uplink::None))
        {
            assert_eq!(
                actions.iter().filter(|a| **a == Action::Announce).count(),
                1,
                "{ctx}: one burst per move"
            );
        }
        // Sessions that went down took our MACs with them.
        for (j, peer) in PEERS.iter().enumerate() {
            if !model.session[j] {
                shadow.installed.remove(*peer);
            }
        }
        let uplink = m.uplink();
        assert_eq!(
            shadow.uplink.as_ref(),
            Some(&uplink),
            "{ctx}: actions disagree with uplink"
        );
        assert_eq!(
            shadow.carrier,
            m.carrier(),
            "{ctx}: actions disagree with carrier"
        );

        // Invariants.
        let any_usable = model.nic_usable() || (0..3).any(|j| model.usable(j));
        let last_resort = !any_usable && model.has_nic && model.nic_up;
        assert_eq!(
            m.carrier(),
            any_usable || last_resort,
            "{ctx}: carrier iff some path is usable, or the NIC's link is up"
        );
        assert_eq!(m.carrier(), uplink != Uplink::None, "{ctx}");
        match &uplink {
            Uplink::Nic => assert!(
                model.nic_usable() || last_resort,
                "{ctx}: uplink on an unusable NIC while something else is usable"
            ),
            Uplink::Session(p) => {
                assert!(model.usable(pos(p)), "{ctx}: uplink on a dead proxy");
            }
            Uplink::None => {}
        }
        if model.nic_usable() && failback != Failback::Never && stable(model.nic_since) {
            assert_eq!(uplink, Uplink::Nic, "{ctx}: stable NIC not chosen");
        }
        if let Uplink::Session(p) = &uplink {
            let cur = PEERS.iter().position(|x| x == p).expect("known");
            if failback == Failback::Better {
                for (j, better) in PEERS.iter().enumerate().take(cur) {
                    assert!(
                        !(model.usable(j) && stable(model.since[j])),
                        "{ctx}: stayed on {p} although {better} is stable"
                    );
                }
            }
            // A forced move never skips the NIC: if we are on a proxy while the NIC is
            // usable, the NIC cannot have been usable at the moment of the move, which the
            // stable-NIC check above already bounds for always/better.
        }
        // Our MACs sit only on the current proxy and on proxies within their release
        // delay, which must still work.
        for p in &shadow.installed {
            let j = PEERS.iter().position(|x| x == p).expect("known");
            let current = uplink == Uplink::Session(p.clone());
            assert!(
                current || model.usable(j),
                "{ctx}: MACs left on unusable {p}"
            );
        }
        let st = m.proxy_status();
        for (j, peer) in PEERS.iter().enumerate() {
            assert_eq!(
                st[j].installed,
                shadow.installed.contains(*peer),
                "{ctx}: installed {peer}"
            );
            assert_eq!(st[j].session_up, model.session[j], "{ctx}");
        }
        if let Some(d) = m.next_deadline() {
            assert!(d > now, "{ctx}: deadline {d:?} not in the future");
        }
    }
}

#[test]
fn random_sequences_keep_the_invariants() {
    let mut runs = 0;
    let mut tally = Tally::default();
    for seed in 0..150u64 {
        for failback in [Failback::Always, Failback::Better, Failback::Never] {
            for (has_nic, acks_time_out) in [(true, false), (true, true), (false, false)] {
                random_run(
                    seed * 7919 + 1,
                    failback,
                    has_nic,
                    acks_time_out,
                    &mut tally,
                );
                runs += 1;
            }
        }
    }
    assert_eq!(runs, 150 * 9);
    println!("{tally:?}");
    assert!(tally.failovers > 1000, "{tally:?}");
    assert!(tally.failbacks > 1000, "{tally:?}");
    assert!(tally.carrier_off > 1000, "{tally:?}");
    assert!(tally.retransmits > 100, "{tally:?}");
    assert!(tally.proxy_to_proxy > 1000, "{tally:?}");
}
