//! A restart must never resurrect a spent or revoked token, and must keep
//! the keys (tokens issued before it stay verifiable).

use std::time::Duration;

use tonic::Code;

use crate::helpers::{Backend, on_both_backends, spawn_app, spawn_app_on};

on_both_backends!(a_restart_keeps_spent_and_revoked_tokens_dead);

async fn a_restart_keeps_spent_and_revoked_tokens_dead(backend: Backend) {
    let (before, db) = spawn_app(backend).await;
    before.add_user("alice", "pw", &["read"]).await;
    let first = before.login("alice", "pw").await.unwrap();
    let rotated = before.refresh(&first.refresh_token).await.unwrap();
    before.revoke(&rotated.access_token).await.unwrap();
    let other_session = before.login("alice", "pw").await.unwrap();
    before.revoke(&other_session.refresh_token).await.unwrap();
    before.stop().await;

    let after = spawn_app_on(&db, |_| {}).await;
    let bearer = after.introspector_token().await;
    // Keys survived: a token signed before the restart still verifies.
    assert!(
        after
            .introspect_with(&bearer, &first.access_token)
            .await
            .unwrap()
            .active
    );
    // Revocations survived.
    assert!(
        !after
            .introspect_with(&bearer, &rotated.access_token)
            .await
            .unwrap()
            .active
    );
    assert!(
        !after
            .introspect_with(&bearer, &other_session.access_token)
            .await
            .unwrap()
            .active
    );
    // The spent refresh token is still spent: past the grace window it is theft.
    after.clock.advance(Duration::from_secs(11));
    let replay = after.refresh(&first.refresh_token).await.unwrap_err();
    assert_eq!(replay.code(), Code::Unauthenticated);
    let revoked_session = after
        .refresh(&other_session.refresh_token)
        .await
        .unwrap_err();
    assert_eq!(revoked_session.code(), Code::Unauthenticated);
}
