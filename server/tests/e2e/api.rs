//! The five RPCs end to end, with their status codes, on both backends.

use std::time::Duration;

use tessera::pb::RefreshRequest;
use tonic::Code;

use crate::helpers::{
    Backend, client_grant, eventually, on_both_backends, password_grant, spawn_app, spawn_app_with,
};

/// A grace window short enough to wait out: it is measured by the
/// database's clock, which a test cannot move.
const SHORT_GRACE: Duration = Duration::from_secs(1);

on_both_backends!(
    a_password_grant_issues_an_access_and_a_refresh_token,
    the_access_token_is_an_rfc9068_jwt_without_personal_data,
    wrong_password_unknown_user_and_disabled_user_look_the_same,
    a_client_credentials_grant_issues_no_refresh_token,
    a_wrong_client_secret_is_unauthenticated,
    scopes_may_be_narrowed_but_not_widened_at_issue,
    an_audience_must_be_allowed_for_the_principal,
    malformed_issue_requests_are_invalid_arguments,
    refresh_rotates_and_the_old_access_token_stays_valid,
    a_refresh_narrows_the_access_token_but_the_successor_keeps_the_scopes,
    a_reused_refresh_token_within_the_grace_window_gets_a_valid_pair,
    a_reused_refresh_token_after_the_grace_window_revokes_the_session,
    a_replay_within_the_grace_window_replaces_the_unused_successor,
    a_replay_after_the_successor_was_used_revokes_the_session,
    replays_within_the_grace_window_are_bounded,
    concurrent_refreshes_of_one_token_leave_at_most_one_live_chain,
    with_no_grace_concurrent_refreshes_of_one_token_end_the_session,
    refreshes_of_many_sessions_at_once_each_continue_their_own_chain,
    logins_racing_a_disable_never_leave_a_live_session,
    a_user_disabled_directly_in_the_database_cannot_refresh_or_log_in,
    an_expired_refresh_token_is_rejected,
    revoking_an_access_token_revokes_only_that_token,
    revoking_a_refresh_token_revokes_its_session_and_its_access_tokens,
    revoking_unknown_or_malformed_tokens_is_ok,
    revoke_rejects_empty_and_oversized_tokens,
    introspect_requires_a_bearer_token_with_the_introspect_scope,
    introspect_reports_an_active_refresh_token_and_not_a_spent_one,
    an_accepted_introspect_bearer_is_refused_once_revoked_or_expired,
    an_expired_access_token_is_inactive,
    disabling_a_user_revokes_their_tokens_and_blocks_login,
    jwks_verifies_access_tokens_with_a_standard_jwt_library,
);

async fn a_password_grant_issues_an_access_and_a_refresh_token(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    app.add_user("alice", "correct horse", &["read", "write"])
        .await;
    let tokens = app.login("alice", "correct horse").await.unwrap();
    assert_eq!(tokens.token_type, "Bearer");
    assert_eq!(tokens.expires_in, 600);
    assert!(tokens.refresh_token.starts_with("tsr_"));
    assert_eq!(tokens.refresh_expires_in, 30 * 24 * 3600);
    assert_eq!(tokens.scopes, ["read", "write"]);
    let bearer = app.introspector_token().await;
    let info = app
        .introspect_with(&bearer, &tokens.access_token)
        .await
        .unwrap();
    assert!(info.active);
    assert_eq!(info.token_type, "access_token");
    assert_eq!(info.scopes, ["read", "write"]);
}

async fn the_access_token_is_an_rfc9068_jwt_without_personal_data(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let sub = app.add_user("alice@example.com", "pw", &["read"]).await;
    let token = app
        .login("alice@example.com", "pw")
        .await
        .unwrap()
        .access_token;
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    assert!(header.kid.is_some());
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    for claim in [
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "nbf",
        "jti",
        "client_id",
        "scope",
        "sid",
    ] {
        assert!(claims.get(claim).is_some(), "missing {claim}");
    }
    assert_eq!(claims["sub"], sub.as_str());
    assert_eq!(claims["iss"], "tessera");
    assert_eq!(claims["aud"], "tessera");
    assert!(
        !payload.is_empty() && !claims.to_string().contains("alice"),
        "username leaked: {claims}"
    );
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        600
    );
}

async fn wrong_password_unknown_user_and_disabled_user_look_the_same(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    app.add_user("alice", "right", &["read"]).await;
    app.add_user("bob", "right", &["read"]).await;
    app.disable_user("bob").await;
    let wrong = app.login("alice", "wrong").await.unwrap_err();
    let unknown = app.login("mallory", "right").await.unwrap_err();
    let disabled = app.login("bob", "right").await.unwrap_err();
    for status in [&wrong, &unknown, &disabled] {
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(status.message(), wrong.message());
    }
}

async fn a_client_credentials_grant_issues_no_refresh_token(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let secret = app.add_client("billing", &["invoices:read"], &[]).await;
    assert!(secret.starts_with("tsc_"));
    let tokens = app.issue(client_grant("billing", &secret)).await.unwrap();
    assert!(tokens.refresh_token.is_empty());
    assert_eq!(tokens.refresh_expires_in, 0);
    let bearer = app.introspector_token().await;
    let info = app
        .introspect_with(&bearer, &tokens.access_token)
        .await
        .unwrap();
    assert!(info.active);
    assert_eq!(info.sub, "billing");
    assert_eq!(info.client_id, "billing");
}

async fn a_wrong_client_secret_is_unauthenticated(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let secret = app.add_client("billing", &["read"], &[]).await;
    let mut wrong = secret.clone();
    wrong.pop();
    wrong.push(if secret.ends_with('A') { 'B' } else { 'A' });
    let bad = app
        .issue(client_grant("billing", &wrong))
        .await
        .unwrap_err();
    let unknown = app
        .issue(client_grant("nobody", &secret))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::Unauthenticated);
    assert_eq!(unknown.code(), Code::Unauthenticated);
    assert_eq!(bad.message(), unknown.message());
}

async fn scopes_may_be_narrowed_but_not_widened_at_issue(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    app.add_user("alice", "pw", &["read", "write"]).await;
    let mut request = password_grant("alice", "pw");
    request.scopes = vec!["read".into()];
    assert_eq!(app.issue(request.clone()).await.unwrap().scopes, ["read"]);
    request.scopes = vec!["read".into(), "admin".into()];
    assert_eq!(
        app.issue(request).await.unwrap_err().code(),
        Code::PermissionDenied
    );
}

async fn an_audience_must_be_allowed_for_the_principal(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let secret = app.add_client("svc", &["read"], &["billing-api"]).await;
    let mut request = client_grant("svc", &secret);
    request.audience = "billing-api".into();
    let token = app.issue(request.clone()).await.unwrap().access_token;
    let bearer = app.introspector_token().await;
    assert_eq!(
        app.introspect_with(&bearer, &token).await.unwrap().aud,
        ["billing-api"]
    );
    request.audience = "payroll-api".into();
    assert_eq!(
        app.issue(request).await.unwrap_err().code(),
        Code::PermissionDenied
    );
}

async fn malformed_issue_requests_are_invalid_arguments(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    app.add_user("alice", "pw", &["read"]).await;
    let mut no_grant = password_grant("alice", "pw");
    no_grant.grant = None;
    let long_password = "x".repeat(1025);
    let mut bad_scope = password_grant("alice", "pw");
    bad_scope.scopes = vec!["has space".into()];
    let mut bad_audience = password_grant("alice", "pw");
    bad_audience.audience = "a\"b".into();
    for request in [
        no_grant,
        password_grant("", "pw"),
        password_grant("alice", ""),
        password_grant("alice", &long_password),
        password_grant("alice smith", "pw"),
        client_grant("svc", ""),
        client_grant("svc", &"s".repeat(300)),
        bad_scope,
        bad_audience,
    ] {
        let status = app.issue(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
}

async fn refresh_rotates_and_the_old_access_token_stays_valid(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    app.add_user("alice", "pw", &["read"]).await;
    let first = app.login("alice", "pw").await.unwrap();
    let second = app.refresh(&first.refresh_token).await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_ne!(second.access_token, first.access_token);
    let bearer = app.introspector_token().await;
    let old = app
        .introspect_with(&bearer, &first.access_token)
        .await
        .unwrap();
    let new = app
        .introspect_with(&bearer, &second.access_token)
        .await
        .unwrap();
    assert!(old.active && new.active);
    assert_eq!(old.sid, new.sid);
    // The new refresh token rotates again.
    assert!(app.refresh(&second.refresh_token).await.is_ok());
}

async fn a_refresh_narrows_the_access_token_but_the_successor_keeps_the_scopes(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    app.add_user("alice", "pw", &["read", "write"]).await;
    let first = app.login("alice", "pw").await.unwrap();
    let narrowed = app
        .client
        .clone()
        .refresh(RefreshRequest {
            refresh_token: first.refresh_token,
            scopes: vec!["read".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(narrowed.scopes, ["read"]);
    // RFC 6749 §6: the new refresh token has the scope of the one presented.
    let widened_again = app
        .client
        .clone()
        .refresh(RefreshRequest {
            refresh_token: narrowed.refresh_token,
            scopes: vec!["read".into(), "write".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(widened_again.scopes, ["read", "write"]);
    let beyond = app
        .client
        .clone()
        .refresh(RefreshRequest {
            refresh_token: widened_again.refresh_token,
            scopes: vec!["admin".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(beyond.code(), Code::PermissionDenied);
    assert!(beyond.message().contains("admin"), "{beyond:?}");
}

async fn a_reused_refresh_token_within_the_grace_window_gets_a_valid_pair(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    app.add_user("alice", "pw", &["read"]).await;
    let first = app.login("alice", "pw").await.unwrap();
    let _lost_response = app.refresh(&first.refresh_token).await.unwrap();
    let retried = app.refresh(&first.refresh_token).await.unwrap();
    let bearer = app.introspector_token().await;
    assert!(
        app.introspect_with(&bearer, &retried.access_token)
            .await
            .unwrap()
            .active
    );
    assert!(app.refresh(&retried.refresh_token).await.is_ok());
}

async fn a_reused_refresh_token_after_the_grace_window_revokes_the_session(backend: Backend) {
    let (app, _db) = spawn_app_with(backend, |s| s.tokens.refresh_reuse_grace = SHORT_GRACE).await;
    app.add_user("alice", "pw", &["read"]).await;
    let first = app.login("alice", "pw").await.unwrap();
    let second = app.refresh(&first.refresh_token).await.unwrap();
    tokio::time::sleep(SHORT_GRACE + Duration::from_millis(100)).await;
    let replay = app.refresh(&first.refresh_token).await.unwrap_err();
    assert_eq!(replay.code(), Code::Unauthenticated);
    // The legitimate holder's tokens die with the session.
    assert_eq!(
        app.refresh(&second.refresh_token).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let bearer = app.introspector_token().await;
    for token in [&first.access_token, &second.access_token] {
        assert!(!app.introspect_with(&bearer, token).await.unwrap().active);
    }
    // Another session of the same user is untouched.
    let other = app.login("alice", "pw").await.unwrap();
    assert!(
        app.introspect_with(&bearer, &other.access_token)
            .await
            .unwrap()
            .active
    );
}

/// True when `refresh_token` no longer works and `access_token` is inactive.
async fn session_is_dead(
    app: &crate::helpers::TestApp,
    refresh_token: &str,
    access_token: &str,
) -> bool {
    let bearer = app.introspector_token().await;
    app.refresh(refresh_token).await.is_err()
        && !app
            .introspect_with(&bearer, access_token)
            .await
            .unwrap()
            .active
}

async fn a_replay_within_the_grace_window_replaces_the_unused_successor(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    app.add_user("alice", "pw", &["read"]).await;
    let first = app.login("alice", "pw").await.unwrap();
    let legitimate = app.refresh(&first.refresh_token).await.unwrap();
    // A thief replays the stolen token inside the window, before the
    // legitimate client used its successor: it gets a pair...
    let thief = app.refresh(&first.refresh_token).await.unwrap();
    // ...but only one chain lives: the legitimate successor was replaced,
    // and presenting it reveals the theft and ends the session.
    let revealed = app.refresh(&legitimate.refresh_token).await.unwrap_err();
    assert_eq!(revealed.code(), Code::Unauthenticated);
    assert!(session_is_dead(&app, &thief.refresh_token, &thief.access_token).await);
}

async fn a_replay_after_the_successor_was_used_revokes_the_session(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    app.add_user("alice", "pw", &["read"]).await;
    let first = app.login("alice", "pw").await.unwrap();
    let second = app.refresh(&first.refresh_token).await.unwrap();
    let third = app.refresh(&second.refresh_token).await.unwrap();
    // Within the window, but the successor was already used: not a retry.
    let replay = app.refresh(&first.refresh_token).await.unwrap_err();
    assert_eq!(replay.code(), Code::Unauthenticated);
    assert!(session_is_dead(&app, &third.refresh_token, &third.access_token).await);
}

async fn replays_within_the_grace_window_are_bounded(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    app.add_user("alice", "pw", &["read"]).await;
    let first = app.login("alice", "pw").await.unwrap();
    app.refresh(&first.refresh_token).await.unwrap();
    for replay in 1..=3 {
        assert!(
            app.refresh(&first.refresh_token).await.is_ok(),
            "replay {replay}"
        );
    }
    let fourth = app.refresh(&first.refresh_token).await.unwrap_err();
    assert_eq!(fourth.code(), Code::Unauthenticated);
}

/// Presents `token` `n` times at once; returns the answers.
async fn concurrent_refreshes(
    app: &crate::helpers::TestApp,
    token: &str,
    n: usize,
) -> Vec<Result<tessera::pb::RefreshResponse, tonic::Status>> {
    refreshes_at_once(app, &vec![token.to_owned(); n]).await
}

/// Presents every one of `tokens` at once; returns the answers, in order.
async fn refreshes_at_once(
    app: &crate::helpers::TestApp,
    tokens: &[String],
) -> Vec<Result<tessera::pb::RefreshResponse, tonic::Status>> {
    let attempts: Vec<_> = tokens
        .iter()
        .map(|token| {
            let mut client = app.client.clone();
            let token = token.clone();
            tokio::spawn(async move {
                client
                    .refresh(RefreshRequest {
                        refresh_token: token,
                        scopes: Vec::new(),
                    })
                    .await
                    .map(tonic::Response::into_inner)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for attempt in attempts {
        answers.push(attempt.await.unwrap());
    }
    answers
}

async fn concurrent_refreshes_of_one_token_leave_at_most_one_live_chain(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    app.add_user("alice", "pw", &["read"]).await;
    let first = app.login("alice", "pw").await.unwrap();
    let answers = concurrent_refreshes(&app, &first.refresh_token, 50).await;
    let mut successors = Vec::new();
    for answer in answers {
        match answer {
            Ok(pair) => successors.push(pair),
            Err(s) => assert_eq!(s.code(), Code::Unauthenticated, "{s:?}"),
        }
    }
    // One rotation and at most three replays; past that, theft.
    assert!(
        (1..=4).contains(&successors.len()),
        "{} succeeded",
        successors.len()
    );
    let mut live = 0;
    for successor in &successors {
        if app.refresh(&successor.refresh_token).await.is_ok() {
            live += 1;
        }
    }
    assert!(
        live <= 1,
        "{live} live chains after 50 concurrent refreshes"
    );
}

async fn refreshes_of_many_sessions_at_once_each_continue_their_own_chain(backend: Backend) {
    // Refreshes arriving together are written together (one statement or
    // one transaction for many): each must get its own session's answer.
    let (app, _db) = spawn_app(backend).await;
    let bearer = app.introspector_token().await;
    let mut chains = Vec::new();
    for i in 0..24 {
        let (name, scope) = (format!("user{i}"), format!("s{i}"));
        let sub = app.add_user(&name, "pw", &[&scope]).await;
        let first = app.login(&name, "pw").await.unwrap();
        chains.push((name, scope, sub, first.refresh_token));
    }
    for _wave in 0..2 {
        let tokens: Vec<String> = chains.iter().map(|c| c.3.clone()).collect();
        let answers = refreshes_at_once(&app, &tokens).await;
        for (chain, answer) in chains.iter_mut().zip(answers) {
            let (name, scope, sub, token) = chain;
            let pair = answer.unwrap();
            let access = app
                .introspect_with(&bearer, &pair.access_token)
                .await
                .unwrap();
            assert!(access.active, "{name}");
            assert_eq!(
                (&access.sub, &access.scopes[..]),
                (&*sub, &[scope.clone()][..]),
                "{name}"
            );
            let next = app
                .introspect_with(&bearer, &pair.refresh_token)
                .await
                .unwrap();
            assert!(next.active && next.username == *name, "{name}: {next:?}");
            let spent = app.introspect_with(&bearer, token).await.unwrap();
            assert!(!spent.active, "{name}'s presented token is spent");
            *token = pair.refresh_token;
        }
    }
}

async fn with_no_grace_concurrent_refreshes_of_one_token_end_the_session(backend: Backend) {
    let (app, _db) =
        spawn_app_with(backend, |s| s.tokens.refresh_reuse_grace = Duration::ZERO).await;
    app.add_user("alice", "pw", &["read"]).await;
    let first = app.login("alice", "pw").await.unwrap();
    let answers = concurrent_refreshes(&app, &first.refresh_token, 16).await;
    let successors: Vec<_> = answers.into_iter().filter_map(Result::ok).collect();
    assert!(
        successors.len() <= 1,
        "{} succeeded with no grace",
        successors.len()
    );
    // Fifteen reuses were theft: the session, and the one successor, are dead.
    for successor in &successors {
        assert!(session_is_dead(&app, &successor.refresh_token, &successor.access_token).await);
    }
    assert!(session_is_dead(&app, &first.refresh_token, &first.access_token).await);
}

async fn logins_racing_a_disable_never_leave_a_live_session(backend: Backend) {
    // One hash at a time, so most logins are still waiting for argon2 when
    // the disable commits: they read the user before it, and finish after.
    let (app, _db) = spawn_app_with(backend, |s| s.hashing.max_concurrent = 1).await;
    app.add_user("alice", "pw", &["read"]).await;
    let logins: Vec<_> = (0..8)
        .map(|_| {
            let mut client = app.client.clone();
            tokio::spawn(async move { client.issue(password_grant("alice", "pw")).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    app.disable_user("alice").await;
    let mut issued = Vec::new();
    for login in logins {
        match login.await.unwrap() {
            Ok(tokens) => issued.push(tokens.into_inner()),
            Err(s) => assert_eq!(s.code(), Code::Unauthenticated, "{s:?}"),
        }
    }
    println!("{} of 8 logins racing the disable got tokens", issued.len());
    let bearer = app.introspector_token().await;
    for tokens in &issued {
        assert_eq!(
            app.refresh(&tokens.refresh_token).await.unwrap_err().code(),
            Code::Unauthenticated,
            "a session survived the disable"
        );
        let dead = eventually(Duration::from_secs(3), || async {
            !app.introspect_with(&bearer, &tokens.access_token)
                .await
                .unwrap()
                .active
        })
        .await;
        assert!(dead.is_some(), "an access token survived the disable");
    }
    assert_eq!(
        app.login("alice", "pw").await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

async fn a_user_disabled_directly_in_the_database_cannot_refresh_or_log_in(backend: Backend) {
    let (app, db) = spawn_app(backend).await;
    app.add_user("alice", "pw", &["read"]).await;
    let tokens = app.login("alice", "pw").await.unwrap();
    // Behind Tessera's back: the flag only, no revocation.
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    sqlx::query("UPDATE users SET disabled_at = 1 WHERE username = 'alice'")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        app.refresh(&tokens.refresh_token).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        app.login("alice", "pw").await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

async fn an_expired_refresh_token_is_rejected(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    app.add_user("alice", "pw", &["read"]).await;
    let first = app.login("alice", "pw").await.unwrap();
    app.clock.advance(Duration::from_secs(30 * 24 * 3600 + 1));
    assert_eq!(
        app.refresh(&first.refresh_token).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

async fn revoking_an_access_token_revokes_only_that_token(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    app.add_user("alice", "pw", &["read"]).await;
    let first = app.login("alice", "pw").await.unwrap();
    let second = app.refresh(&first.refresh_token).await.unwrap();
    app.revoke(&first.access_token).await.unwrap();
    let bearer = app.introspector_token().await;
    let revoked = app
        .introspect_with(&bearer, &first.access_token)
        .await
        .unwrap();
    assert_eq!(
        revoked,
        Default::default(),
        "an inactive answer says nothing else"
    );
    assert!(
        app.introspect_with(&bearer, &second.access_token)
            .await
            .unwrap()
            .active
    );
    assert!(app.refresh(&second.refresh_token).await.is_ok());
}

async fn revoking_a_refresh_token_revokes_its_session_and_its_access_tokens(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    app.add_user("alice", "pw", &["read"]).await;
    let first = app.login("alice", "pw").await.unwrap();
    let second = app.refresh(&first.refresh_token).await.unwrap();
    app.revoke(&second.refresh_token).await.unwrap();
    let bearer = app.introspector_token().await;
    for token in [
        &first.access_token,
        &second.access_token,
        &second.refresh_token,
    ] {
        assert!(!app.introspect_with(&bearer, token).await.unwrap().active);
    }
    assert_eq!(
        app.refresh(&second.refresh_token).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    // Revoking again is still OK.
    app.revoke(&second.refresh_token).await.unwrap();
}

async fn revoking_unknown_or_malformed_tokens_is_ok(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    for token in [
        "tsr_unknown",
        "not-a-jwt",
        "a.b.c",
        "eyJhbGciOiJub25lIn0.e30.",
    ] {
        app.revoke(token)
            .await
            .unwrap_or_else(|s| panic!("{token}: {s:?}"));
    }
}

async fn revoke_rejects_empty_and_oversized_tokens(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    assert_eq!(
        app.revoke("").await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        app.revoke(&"a".repeat(8 * 1024 + 1))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
}

async fn introspect_requires_a_bearer_token_with_the_introspect_scope(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    app.add_user("alice", "pw", &["read"]).await;
    let user_token = app.login("alice", "pw").await.unwrap().access_token;
    let no_bearer = app
        .client
        .clone()
        .introspect(tessera::pb::IntrospectRequest {
            token: user_token.clone(),
            token_type_hint: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(no_bearer.code(), Code::Unauthenticated);
    let garbage = app
        .introspect_with("garbage", &user_token)
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), Code::Unauthenticated);
    let without_scope = app
        .introspect_with(&user_token, &user_token)
        .await
        .unwrap_err();
    assert_eq!(without_scope.code(), Code::PermissionDenied);
    let bearer = app.introspector_token().await;
    app.revoke(&bearer).await.unwrap();
    let revoked_bearer = app.introspect_with(&bearer, &user_token).await.unwrap_err();
    assert_eq!(revoked_bearer.code(), Code::Unauthenticated);
}

async fn an_accepted_introspect_bearer_is_refused_once_revoked_or_expired(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    app.add_user("alice", "pw", &["read"]).await;
    let token = app.login("alice", "pw").await.unwrap().access_token;
    let revoked = app.introspector_token().await;
    let expiring = app.introspector_token().await;
    for bearer in [&revoked, &expiring] {
        assert!(app.introspect_with(bearer, &token).await.unwrap().active);
    }
    app.revoke(&revoked).await.unwrap();
    let refused = app.introspect_with(&revoked, &token).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    app.clock.advance(Duration::from_secs(600 + 6));
    let refused = app.introspect_with(&expiring, &token).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
}

async fn introspect_reports_an_active_refresh_token_and_not_a_spent_one(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let sub = app.add_user("alice", "pw", &["read"]).await;
    let first = app.login("alice", "pw").await.unwrap();
    let bearer = app.introspector_token().await;
    let info = app
        .introspect_with(&bearer, &first.refresh_token)
        .await
        .unwrap();
    assert!(info.active);
    assert_eq!(info.token_type, "refresh_token");
    assert_eq!(info.username, "alice");
    assert_eq!(info.sub, sub);
    app.refresh(&first.refresh_token).await.unwrap();
    assert!(
        !app.introspect_with(&bearer, &first.refresh_token)
            .await
            .unwrap()
            .active
    );
}

async fn an_expired_access_token_is_inactive(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    app.add_user("alice", "pw", &["read"]).await;
    let token = app.login("alice", "pw").await.unwrap().access_token;
    app.clock.advance(Duration::from_secs(600 + 4)); // inside the 5 s leeway
    let bearer = app.introspector_token().await;
    assert!(app.introspect_with(&bearer, &token).await.unwrap().active);
    app.clock.advance(Duration::from_secs(2));
    let bearer = app.introspector_token().await;
    assert!(!app.introspect_with(&bearer, &token).await.unwrap().active);
}

async fn disabling_a_user_revokes_their_tokens_and_blocks_login(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    app.add_user("alice", "pw", &["read"]).await;
    app.add_user("bob", "pw", &["read"]).await;
    let alice = app.login("alice", "pw").await.unwrap();
    let bob = app.login("bob", "pw").await.unwrap();
    app.disable_user("alice").await;
    let bearer = app.introspector_token().await;
    // The command ran out of process (like `tessera user disable`): the
    // server learns of it from the revocation log.
    let gone = crate::helpers::eventually(Duration::from_secs(2), || async {
        !app.introspect_with(&bearer, &alice.access_token)
            .await
            .unwrap()
            .active
    })
    .await;
    assert!(gone.is_some(), "alice's access token still active");
    assert!(
        app.introspect_with(&bearer, &bob.access_token)
            .await
            .unwrap()
            .active
    );
    assert_eq!(
        app.refresh(&alice.refresh_token).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        app.login("alice", "pw").await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

async fn jwks_verifies_access_tokens_with_a_standard_jwt_library(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    app.add_user("alice", "pw", &["read"]).await;
    let token = app.login("alice", "pw").await.unwrap().access_token;
    let jwks = app.jwks().await;
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&jwks).unwrap();
    let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
    let jwk = set.find(&kid).expect("the signing key is published");
    let raw: serde_json::Value = serde_json::from_str(&jwks).unwrap();
    assert!(raw["keys"][0].get("d").is_none(), "private key published");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["tessera"]);
    validation.set_issuer(&["tessera"]);
    let decoded = jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
        &validation,
    )
    .unwrap();
    assert_eq!(decoded.claims["scope"], "read");
}
