//! Credential guessing is slowed per account and address, never by locking
//! the real user out; passwords follow the configured rules.

use std::time::Duration;

use tessera_server::{HashingSettings, Password, ScopeSet, Username, open_admin};
use tonic::Code;

use crate::helpers::{Backend, client_grant, eventually, password_grant, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_a_password_is_slowed_without_locking_the_real_user_out() {
    let (app, _db) = spawn_app(Backend::Sqlite).await;
    app.add_user("alice", "correct horse", &["read"]).await;
    let mut attacker = app.client_from("127.0.0.1").await;
    let mut real_user = app.client_from("127.0.0.2").await;

    let mut answers = Vec::new();
    for n in 0..8 {
        let status = attacker
            .issue(password_grant("alice", &format!("guess {n}")))
            .await
            .unwrap_err();
        answers.push(status.code());
    }
    // Five free failures, the sixth starts a delay, the rest are refused
    // at once, without hashing.
    assert_eq!(answers[..6], [Code::Unauthenticated; 6]);
    assert_eq!(answers[6..], [Code::ResourceExhausted; 2]);
    // Even the right password waits out the delay from that address...
    let delayed = attacker
        .issue(password_grant("alice", "correct horse"))
        .await
        .unwrap_err();
    assert_eq!(delayed.code(), Code::ResourceExhausted);
    assert!(delayed.message().contains("retry in"), "{delayed:?}");
    // ...but the real user, elsewhere, is never held back.
    for _ in 0..3 {
        real_user
            .issue(password_grant("alice", "correct horse"))
            .await
            .unwrap();
    }
    // An unknown account is throttled the same way: no enumeration.
    for n in 0..6 {
        let _ = attacker
            .issue(password_grant("nobody", &format!("guess {n}")))
            .await;
    }
    assert_eq!(
        attacker
            .issue(password_grant("nobody", "x"))
            .await
            .unwrap_err()
            .code(),
        Code::ResourceExhausted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_a_client_secret_is_slowed_the_same_way() {
    let (app, _db) = spawn_app(Backend::Sqlite).await;
    let secret = app.add_client("billing", &["read"], &[]).await;
    let mut attacker = app.client_from("127.0.0.1").await;
    for n in 0..6 {
        let status = attacker
            .issue(client_grant("billing", &format!("tsc_guess{n}")))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    assert_eq!(
        attacker
            .issue(client_grant("billing", &secret))
            .await
            .unwrap_err()
            .code(),
        Code::ResourceExhausted
    );
    let mut service = app.client_from("127.0.0.3").await;
    service
        .issue(client_grant("billing", &secret))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_fill_the_hashing_queue() {
    let (app, _db) = spawn_app(Backend::Sqlite).await;
    app.add_user("alice", "correct horse", &["read"]).await;
    let attacker = app.client_from("127.0.0.1").await;
    let flood: Vec<_> = (0..200)
        .map(|n| {
            let mut attacker = attacker.clone();
            tokio::spawn(async move {
                attacker
                    .issue(password_grant(&format!("user{n}"), "guess"))
                    .await
                    .unwrap_err()
                    .code()
            })
        })
        .collect();
    let mut real_user = app.client_from("127.0.0.2").await;
    let ok = real_user
        .issue(password_grant("alice", "correct horse"))
        .await;
    assert!(
        ok.is_ok(),
        "the real user was refused during a flood: {ok:?}"
    );
    let mut evaluated = 0;
    for code in flood {
        match code.await.unwrap() {
            Code::ResourceExhausted => {}
            Code::Unauthenticated => evaluated += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    // The address's free failures (50), plus the logins that were already
    // hashing (16) when its delay began; the rest waited in the address's
    // own line and were refused when their turn came.
    assert!(
        evaluated <= 50 + 16,
        "{evaluated} of 200 in-flight guesses were evaluated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_shorter_than_the_minimum_is_refused() {
    let (app, _db) = spawn_app(Backend::Sqlite).await;
    let mut settings = app.settings.clone();
    settings.password_min_length = 8;
    let admin = open_admin(&settings, std::sync::Arc::new(app.clock.clone()))
        .await
        .unwrap();
    let short = admin
        .add_user(
            Username::parse("alice").unwrap(),
            &Password::parse("1234567".into()).unwrap(),
            ScopeSet::parse_list(&["read"]).unwrap(),
            Vec::new(),
            ScopeSet::default(),
        )
        .await
        .unwrap_err();
    assert!(short.to_string().contains("shorter than 8"), "{short}");
    admin
        .add_user(
            Username::parse("alice").unwrap(),
            &Password::parse("12345678".into()).unwrap(),
            ScopeSet::parse_list(&["read"]).unwrap(),
            Vec::new(),
            ScopeSet::default(),
        )
        .await
        .unwrap();
}

#[test]
fn argon2_settings_below_the_owasp_floor_are_refused_unless_allowed() {
    let mut settings = tessera_server::Settings::new("/tmp/unused");
    settings.hashing.iterations = 1;
    let refused = settings.validate().unwrap_err().to_string();
    assert!(refused.contains("OWASP"), "{refused}");
    settings.hashing.allow_weak = true;
    assert!(settings.validate().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_hashed_with_older_parameters_is_rehashed_at_login() {
    let (app, _db) = spawn_app(Backend::Sqlite).await;
    // Added with weak, older parameters, as an earlier configuration would.
    let mut old = app.settings.clone();
    old.hashing = HashingSettings {
        memory_kib: 1024,
        iterations: 1,
        allow_weak: true,
        ..old.hashing
    };
    let admin = open_admin(&old, std::sync::Arc::new(app.clock.clone()))
        .await
        .unwrap();
    admin
        .add_user(
            Username::parse("alice").unwrap(),
            &Password::parse("correct horse".into()).unwrap(),
            ScopeSet::parse_list(&["read"]).unwrap(),
            Vec::new(),
            ScopeSet::default(),
        )
        .await
        .unwrap();
    let stored = || async {
        app.store
            .find_user(&Username::parse("alice").unwrap())
            .await
            .unwrap()
            .unwrap()
            .password_hash
    };
    assert!(stored().await.contains("m=1024,t=1"));
    app.login("alice", "correct horse").await.unwrap();
    let rehashed = eventually(Duration::from_secs(5), || async {
        stored().await.contains("m=19456,t=2,p=1")
    })
    .await;
    assert!(rehashed.is_some(), "still {}", stored().await);
    // The new hash verifies.
    app.login("alice", "correct horse").await.unwrap();
}
