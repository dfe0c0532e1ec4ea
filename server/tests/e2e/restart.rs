//! A restart must never resurrect a spent or revoked token, and must keep
//! the keys (tokens issued before it stay verifiable).

use std::time::Duration;

use tonic::Code;

use crate::helpers::{Backend, on_both_backends, spawn_app_on, spawn_app_with};

on_both_backends!(a_restart_keeps_spent_and_revoked_tokens_dead);

/// Short enough to wait out (the database's clock measures it).
const GRACE: Duration = Duration::from_secs(1);

async fn a_restart_keeps_spent_and_revoked_tokens_dead(backend: Backend) {
    let (before, db) = spawn_app_with(backend, |s| s.tokens.refresh_reuse_grace = GRACE).await;
    before.add_user("alice", "pw", &["read"]).await;
    let first = before.login("alice", "pw").await.unwrap();
    let rotated = before.refresh(&first.refresh_token).await.unwrap();
    before.revoke(&rotated.access_token).await.unwrap();
    let other_session = before.login("alice", "pw").await.unwrap();
    before.revoke(&other_session.refresh_token).await.unwrap();
    before.stop().await;

    let after = spawn_app_on(&db, |s| s.tokens.refresh_reuse_grace = GRACE).await;
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
    tokio::time::sleep(GRACE).await;
    let replay = after.refresh(&first.refresh_token).await.unwrap_err();
    assert_eq!(replay.code(), Code::Unauthenticated);
    let revoked_session = after
        .refresh(&other_session.refresh_token)
        .await
        .unwrap_err();
    assert_eq!(revoked_session.code(), Code::Unauthenticated);
}
