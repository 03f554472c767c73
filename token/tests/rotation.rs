//! Two-phase rotation walked second by second with short intervals.

use std::collections::HashMap;

use vd_token::rotation::{Event, RotationError, RotationPolicy, generate, next_rotation, rotate, start};
use vd_token::{Claims, KeyState, Keyring, Policy, RequestAuth, Scope, SignError, Signer, Verifier};

const POLICY: RotationPolicy =
    RotationPolicy { rotation_interval: 100, propagation_delay: 10, max_lifetime: 50, clock_skew: 5 };

/// A deterministic stand-in for the OS generator, so runs are repeatable.
fn counter() -> impl FnMut(&mut [u8]) -> Result<(), RotationError> {
    let mut n = 0u8;
    move |buf: &mut [u8]| {
        for b in buf.iter_mut() {
            n = n.wrapping_add(1);
            *b = n;
        }
        Ok(())
    }
}

fn verifier(ring: &Keyring) -> Verifier {
    Verifier::new(ring, Policy { max_lifetime: POLICY.max_lifetime, clock_skew: POLICY.clock_skew })
}

fn token(signer: &Signer, exp: u64) -> String {
    signer.token(&Claims {
        kid: signer.kid().into(),
        exp,
        nbf: None,
        scope: Scope::Path("/v/a.mp4".into()),
        ip: None,
        via: None,
    })
}

fn verifies(ring: &Keyring, token: &str, now: u64) -> bool {
    let q = format!("token={token}");
    verifier(ring).verify(&RequestAuth { path: "/v/a.mp4", query: Some(&q), ..Default::default() }, now).is_ok()
}

#[test]
fn a_reconcile_of_an_unchanged_keyring_changes_nothing() {
    let mut rng = counter();
    let ring = generate(1000, &mut rng).unwrap();
    for now in [1000, 1001, 1050, 1089] {
        let r = rotate(Some(&ring), now, &POLICY, false, &mut rng).unwrap();
        assert!(!r.changed(), "at {now}: {:?}", r.events);
        assert_eq!(r.keyring, ring);
        assert_eq!(r.next_deadline, 1090, "publish at interval - propagation delay");
    }
}

#[test]
fn full_cycle_second_by_second() {
    let mut rng = counter();
    let start = 1000;
    let mut ring = generate(start, &mut rng).unwrap();
    let mut history: HashMap<String, Vec<(u64, &'static str)>> = HashMap::new();
    let first = ring.active().unwrap().kid().to_owned();
    history.entry(first.clone()).or_default().push((start, "active"));
    let mut deadline = rotate(Some(&ring), start, &POLICY, false, &mut rng).unwrap().next_deadline;

    // Tokens signed at every second with whatever key a backend sees as active must verify until they expire.
    let mut issued: Vec<(String, u64)> = Vec::new();
    for now in start..start + 400 {
        let r = rotate(Some(&ring), now, &POLICY, false, &mut rng).unwrap();
        if r.changed() {
            assert_eq!(now, deadline, "something happened at {now} but the requeue deadline was {deadline}");
        } else {
            assert!(now < deadline || deadline == now, "deadline {deadline} passed at {now} without a change");
        }
        for e in &r.events {
            match e {
                Event::Published { kid, activate_after } => {
                    assert_eq!(*activate_after, now + POLICY.propagation_delay);
                    history.entry(kid.clone()).or_default().push((now, "pending"));
                }
                Event::Promoted { kid, retired, accept_until } => {
                    assert_eq!(*accept_until, now + POLICY.propagation_delay + POLICY.max_lifetime + POLICY.clock_skew);
                    history.entry(kid.clone()).or_default().push((now, "active"));
                    let retired = retired.clone().expect("a running keyring retires its active key");
                    history.entry(retired).or_default().push((now, "retiring"));
                }
                Event::Removed { kid } => history.entry(kid.clone()).or_default().push((now, "removed")),
                Event::Created { .. } => panic!("a keyring with keys is never recreated"),
            }
        }
        ring = r.keyring;
        deadline = r.next_deadline;
        assert_eq!(ring.keys().iter().filter(|k| k.state() == KeyState::Active).count(), 1, "at {now}");
        assert!(ring.keys().iter().filter(|k| k.state() == KeyState::Retiring).count() <= 1, "at {now}");

        issued.push((token(&Signer::new(&ring).unwrap(), now + POLICY.max_lifetime), now + POLICY.max_lifetime));
        for (tok, exp) in &issued {
            if now <= *exp {
                assert!(verifies(&ring, tok, now), "a token expiring at {exp} was refused at {now}");
            }
        }
    }

    // The first key: active from the start, retiring at 100, removed after its grace.
    assert_eq!(history[&first], vec![(1000, "active"), (1100, "retiring"), (1166, "removed")]);
    // Its successor: published at 90, active at 100, retiring at 200.
    let second: Vec<_> = history.values().filter(|h| h[0] == (1090, "pending")).collect();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0][..3], [(1090, "pending"), (1100, "active"), (1200, "retiring")]);
}

#[test]
fn a_token_signed_just_before_promotion_verifies_until_it_expires() {
    let mut rng = counter();
    let ring = generate(0, &mut rng).unwrap();
    let ring = rotate(Some(&ring), 90, &POLICY, false, &mut rng).unwrap().keyring;
    assert!(ring.keys().iter().any(|k| k.state() == KeyState::Pending));
    // A backend that has not yet seen the promotion signs with the old key at 99 + propagation delay.
    let old = Signer::new(&ring).unwrap();
    let promoted = rotate(Some(&ring), 100, &POLICY, false, &mut rng).unwrap().keyring;
    assert_ne!(Signer::new(&promoted).unwrap().kid(), old.kid());
    let late = token(&old, 110 + POLICY.max_lifetime);
    for now in [110, 150, 110 + POLICY.max_lifetime + POLICY.clock_skew] {
        assert!(verifies(&promoted, &late, now), "refused at {now}");
    }
}

#[test]
fn a_pending_key_is_accepted_but_never_signs() {
    let mut rng = counter();
    let ring = generate(0, &mut rng).unwrap();
    let active = ring.active().unwrap().kid().to_owned();
    let ring = rotate(Some(&ring), 0, &POLICY, true, &mut rng).unwrap().keyring;
    let pending = ring.keys().iter().find(|k| k.state() == KeyState::Pending).unwrap();
    assert_eq!(Signer::new(&ring).unwrap().kid(), active);
    let by_pending = token(&Signer::with_key(pending.kid(), pending.secret_bytes()), 30);
    assert!(verifies(&ring, &by_pending, 0));
}

#[test]
fn forced_rotation_publishes_at_once_and_only_once() {
    let mut rng = counter();
    let ring = generate(0, &mut rng).unwrap();
    let r = rotate(Some(&ring), 5, &POLICY, true, &mut rng).unwrap();
    assert!(matches!(r.events.as_slice(), [Event::Published { activate_after: 15, .. }]));
    assert_eq!(next_rotation(&r.keyring, &POLICY), 15);
    let again = rotate(Some(&r.keyring), 6, &POLICY, true, &mut rng).unwrap();
    assert!(!again.changed(), "a second request while one is pending does nothing");
    let promoted = rotate(Some(&again.keyring), 15, &POLICY, false, &mut rng).unwrap();
    assert!(matches!(promoted.events.as_slice(), [Event::Promoted { .. }]));
}

#[test]
fn an_operator_that_was_down_catches_up() {
    let mut rng = counter();
    let ring = generate(0, &mut rng).unwrap();
    let ring = rotate(Some(&ring), 90, &POLICY, false, &mut rng).unwrap().keyring;
    // Down from 91 to 1000: promotion is overdue, and so is the next publication.
    let r = rotate(Some(&ring), 1000, &POLICY, false, &mut rng).unwrap();
    assert!(matches!(r.events.as_slice(), [Event::Promoted { .. }]), "{:?}", r.events);
    assert_eq!(r.next_deadline, 1066, "first the retired key's removal");
    let r = rotate(Some(&r.keyring), 1066, &POLICY, false, &mut rng).unwrap();
    assert!(matches!(r.events.as_slice(), [Event::Removed { .. }]), "{:?}", r.events);
    assert_eq!(r.next_deadline, 1090, "then the next publication");
}

#[test]
fn rotation_refuses_an_interval_shorter_than_the_grace() {
    let mut rng = counter();
    let bad = RotationPolicy { rotation_interval: 65, ..POLICY };
    let err = rotate(None, 0, &bad, false, &mut rng).unwrap_err();
    assert!(err.to_string().contains("rotation interval (65s)"), "{err}");
}

#[test]
fn the_keyring_document_round_trips() {
    let mut rng = counter();
    let ring = rotate(None, 0, &POLICY, false, &mut rng).unwrap();
    assert!(matches!(ring.events.as_slice(), [Event::Created { .. }]));
    let again = Keyring::from_json(ring.keyring.to_json().as_bytes()).unwrap();
    assert_eq!(again, ring.keyring);
}

#[test]
fn os_random_keys_differ() {
    let a = generate(0, &mut vd_token::rotation::os_random).unwrap();
    let b = generate(0, &mut vd_token::rotation::os_random).unwrap();
    assert_ne!(a.active().unwrap().secret_bytes(), b.active().unwrap().secret_bytes());
    assert_eq!(a.active().unwrap().secret_bytes().len(), 32);
}

#[test]
fn a_started_keyring_has_one_pending_key_and_refuses_to_sign() {
    let mut rng = counter();
    let r = start(1000, &POLICY, &mut rng).unwrap();
    let [key] = r.keyring.keys() else { panic!("one key: {:?}", r.keyring.keys()) };
    assert_eq!((key.state(), key.activate_after()), (KeyState::Pending, Some(1010)));
    assert!(r.keyring.is_starting() && r.keyring.active().is_none());
    assert_eq!(r.events, [Event::Published { kid: key.kid().to_owned(), activate_after: 1010 }]);
    assert_eq!((r.next_deadline, next_rotation(&r.keyring, &POLICY)), (1010, 1010));

    let err = Signer::new(&r.keyring).unwrap_err();
    assert_eq!(err, SignError::NotYetActive { kid: key.kid().to_owned(), activate_after: 1010 });
    let msg = err.to_string();
    assert!(msg.contains(key.kid()) && msg.contains("1010"), "{msg}");
    use base64::Engine;
    assert!(!msg.contains(&base64::engine::general_purpose::STANDARD.encode(key.secret_bytes())), "{msg}");

    // Verifiers accept the pending key already: agents load it before anyone signs with it.
    let by_pending = token(&Signer::with_key(key.kid(), key.secret_bytes()), 1040);
    assert!(verifies(&r.keyring, &by_pending, 1000));
    // The document round-trips as a starting keyring.
    assert_eq!(Keyring::from_json(r.keyring.to_json().as_bytes()).unwrap(), r.keyring);
}

#[test]
fn a_started_keyring_is_promoted_at_activate_after_retiring_nothing() {
    let mut rng = counter();
    let started = start(1000, &POLICY, &mut rng).unwrap().keyring;
    let kid = started.keys()[0].kid().to_owned();
    // (now, force, what happens): nothing before activate_after, even when a rotation is asked for.
    let cases: [(u64, bool, bool); 4] =
        [(1000, false, false), (1009, false, false), (1005, true, false), (1010, false, true)];
    for (now, force, promotes) in cases {
        let r = rotate(Some(&started), now, &POLICY, force, &mut rng).unwrap();
        if !promotes {
            assert!(!r.changed(), "at {now} (force {force}): {:?}", r.events);
            assert_eq!((r.keyring.clone(), r.next_deadline), (started.clone(), 1010), "at {now}");
            continue;
        }
        assert_eq!(
            r.events,
            [Event::Promoted { kid: kid.clone(), retired: None, accept_until: 1010 + POLICY.retirement_grace() }]
        );
        let active = r.keyring.active().expect("promoted");
        assert_eq!((active.kid(), active.activated_at(), active.activate_after()), (kid.as_str(), Some(1010), None));
        assert_eq!(r.keyring.keys().len(), 1, "nothing retired");
        assert_eq!(Signer::new(&r.keyring).unwrap().kid(), kid);
        // From here on it rotates like any keyring: the successor is published at interval - propagation delay.
        assert_eq!(r.next_deadline, 1100);
        assert_eq!(next_rotation(&r.keyring, &POLICY), 1110);
    }
}

#[test]
fn start_refuses_an_interval_shorter_than_the_grace() {
    let bad = RotationPolicy { rotation_interval: 65, ..POLICY };
    let err = start(0, &bad, &mut counter()).unwrap_err();
    assert!(matches!(err, RotationError::IntervalTooShort { .. }), "{err}");
}

#[test]
fn a_recreated_keyring_never_signs_before_agents_can_have_its_key() {
    let mut rng = counter();
    let mut ring = start(0, &POLICY, &mut rng).unwrap().keyring;
    for now in 0..300 {
        ring = rotate(Some(&ring), now, &POLICY, false, &mut rng).unwrap().keyring;
        match Signer::new(&ring) {
            Ok(signer) => {
                let key = ring.get(signer.kid()).unwrap();
                assert!(now >= key.activated_at().unwrap() && key.created_at() + POLICY.propagation_delay <= now);
            }
            Err(SignError::NotYetActive { activate_after, .. }) => {
                assert!(now < 10 && activate_after == 10, "at {now}")
            }
            Err(e) => panic!("at {now}: {e}"),
        }
    }
}
