//! A refresh token's life, as a state with checked transitions (as
//! matrix-authentication-service's data model has it): *active* until
//! exchanged, then *spent*; *revoked* with its session, from either.
//! Expiry is a matter of time, not state, and is checked alongside.

use std::time::Duration;

use super::UnixTime;

/// Where a stored refresh token is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshTokenState {
    /// Not exchanged yet: presenting it rotates it.
    Active,
    /// Exchanged for a successor at `at`.
    Spent {
        /// When it was exchanged.
        at: UnixTime,
    },
    /// Its session was revoked: logout, detected theft, disabled user.
    Revoked,
}

/// A transition the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {from:?} refresh token cannot be {to}")]
pub struct InvalidTransition {
    from: RefreshTokenState,
    to: &'static str,
}

/// What presenting a refresh token calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presentation {
    /// Active and unexpired: spend it and issue its successor.
    Rotate,
    /// Spent within the reuse grace window: the same client retrying after
    /// a lost response; answer without ending the session.
    GraceReplay,
    /// Spent before the grace window: the token leaked (RFC 9700 §4.14.2);
    /// end the whole session.
    Theft,
    /// Revoked or expired: refuse, nothing else.
    Refuse,
}

impl RefreshTokenState {
    /// The state of a stored token: its session's revocation wins over its
    /// spent time.
    pub fn from_stored(spent_at: Option<UnixTime>, session_revoked: bool) -> Self {
        match (session_revoked, spent_at) {
            (true, _) => Self::Revoked,
            (false, Some(at)) => Self::Spent { at },
            (false, None) => Self::Active,
        }
    }

    /// What presenting the token at `now` calls for, given when it expires
    /// and the reuse grace window.
    pub fn on_presented(
        self,
        expires_at: UnixTime,
        now: UnixTime,
        grace: Duration,
    ) -> Presentation {
        match self {
            Self::Revoked => Presentation::Refuse,
            Self::Active if expires_at <= now => Presentation::Refuse,
            Self::Active => Presentation::Rotate,
            Self::Spent { at } if now <= at.plus(grace) => Presentation::GraceReplay,
            Self::Spent { .. } => Presentation::Theft,
        }
    }

    /// Active → spent at `at`.
    pub fn spend(self, at: UnixTime) -> Result<Self, InvalidTransition> {
        match self {
            Self::Active => Ok(Self::Spent { at }),
            from => Err(InvalidTransition { from, to: "spent" }),
        }
    }

    /// True when introspection reports it active (given it has not expired).
    pub fn is_active(self) -> bool {
        self == Self::Active
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(10);

    fn t(secs: i64) -> UnixTime {
        UnixTime::from_secs(secs)
    }

    #[test]
    fn an_active_token_rotates_until_it_expires() {
        let active = RefreshTokenState::Active;
        assert_eq!(
            active.on_presented(t(100), t(99), GRACE),
            Presentation::Rotate
        );
        assert_eq!(
            active.on_presented(t(100), t(100), GRACE),
            Presentation::Refuse
        );
    }

    #[test]
    fn a_spent_token_is_a_replay_inside_the_grace_window_and_theft_after() {
        let spent = RefreshTokenState::Active.spend(t(50)).unwrap();
        assert_eq!(
            spent.on_presented(t(100), t(60), GRACE),
            Presentation::GraceReplay
        );
        assert_eq!(
            spent.on_presented(t(100), t(61), GRACE),
            Presentation::Theft
        );
    }

    #[test]
    fn a_revoked_token_is_refused_and_cannot_be_spent() {
        let revoked = RefreshTokenState::from_stored(Some(t(5)), true);
        assert_eq!(revoked, RefreshTokenState::Revoked);
        assert_eq!(
            revoked.on_presented(t(100), t(6), GRACE),
            Presentation::Refuse
        );
        assert!(revoked.spend(t(7)).is_err());
    }

    #[test]
    fn a_token_is_spent_only_once() {
        let spent = RefreshTokenState::Active.spend(t(1)).unwrap();
        assert!(spent.spend(t(2)).is_err());
    }
}
