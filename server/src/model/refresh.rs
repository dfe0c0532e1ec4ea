//! A refresh token's life, as a state with checked transitions (as
//! matrix-authentication-service's data model has it): *active* until
//! exchanged, then *spent* (with one current successor); a spent token
//! replayed inside the grace window hands its successor role to a new token,
//! and the replaced successor becomes *superseded*; everything is *revoked*
//! with its session. Expiry is a matter of time, checked alongside.
//!
//! The decision is made here, from a state the store read under a lock, and
//! the store carries it out in the same transaction: there is one decision
//! per presentation however many replicas are asked at once.

use std::time::Duration;

use super::UnixTime;

/// How spent tokens presented again are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeRules {
    /// How long after a token was spent it may be presented again by the
    /// same client retrying after a lost response. Zero means never.
    pub grace: Duration,
    /// How many such replays one token gets.
    pub max_replays: u32,
}

/// Where a stored refresh token is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshTokenState {
    /// Not exchanged yet: presenting it rotates it.
    Active,
    /// Exchanged for a successor.
    Spent {
        /// When, by the database's clock, in milliseconds since the epoch.
        at_ms: i64,
        /// True once its current successor has been exchanged in turn.
        successor_used: bool,
        /// Replays answered so far.
        replays: u32,
    },
    /// Replaced as its predecessor's successor by a replay, before it was
    /// used: whoever holds it now holds a copy someone else also replayed.
    Superseded,
    /// Its session was revoked (logout, detected theft) or its user disabled.
    Revoked,
}

/// What presenting a refresh token calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presentation {
    /// Active and unexpired: spend it and issue its successor.
    Rotate,
    /// Spent within the grace window, its successor still unused, replays
    /// left: the same client retrying after a lost response. Issue a new
    /// successor that replaces (supersedes) the unused one, so there is
    /// only ever one live chain.
    Replay,
    /// A spent token outside those bounds, or a superseded one: the token
    /// leaked (RFC 9700 §4.14.2). End the whole session.
    Theft,
    /// Revoked or expired: refuse, nothing else.
    Refuse,
}

impl RefreshTokenState {
    /// What presenting the token calls for, at `now` (the replica's clock,
    /// for expiry) and `db_now_ms` (the database's clock, for the grace
    /// window, so every replica measures it alike).
    pub fn on_presented(
        self,
        expires_at: UnixTime,
        now: UnixTime,
        db_now_ms: i64,
        rules: ExchangeRules,
    ) -> Presentation {
        match self {
            Self::Revoked => Presentation::Refuse,
            Self::Superseded => Presentation::Theft,
            Self::Active if expires_at <= now => Presentation::Refuse,
            Self::Active => Presentation::Rotate,
            Self::Spent {
                at_ms,
                successor_used,
                replays,
            } => {
                let grace_ms = i64::try_from(rules.grace.as_millis()).unwrap_or(i64::MAX);
                let within_grace = db_now_ms.saturating_sub(at_ms) < grace_ms;
                if within_grace && !successor_used && replays < rules.max_replays {
                    Presentation::Replay
                } else {
                    Presentation::Theft
                }
            }
        }
    }

    /// True when introspection may report it active (given it has not expired).
    pub fn is_active(self) -> bool {
        self == Self::Active
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: ExchangeRules = ExchangeRules {
        grace: Duration::from_secs(10),
        max_replays: 3,
    };

    fn t(secs: i64) -> UnixTime {
        UnixTime::from_secs(secs)
    }

    fn spent(at_ms: i64, successor_used: bool, replays: u32) -> RefreshTokenState {
        RefreshTokenState::Spent {
            at_ms,
            successor_used,
            replays,
        }
    }

    #[test]
    fn an_active_token_rotates_until_it_expires() {
        let active = RefreshTokenState::Active;
        assert_eq!(
            active.on_presented(t(100), t(99), 0, RULES),
            Presentation::Rotate
        );
        assert_eq!(
            active.on_presented(t(100), t(100), 0, RULES),
            Presentation::Refuse
        );
    }

    #[test]
    fn a_spent_token_is_a_replay_strictly_inside_the_grace_window_and_theft_after() {
        let token = spent(50_000, false, 0);
        assert_eq!(
            token.on_presented(t(999), t(0), 59_999, RULES),
            Presentation::Replay
        );
        assert_eq!(
            token.on_presented(t(999), t(0), 60_000, RULES),
            Presentation::Theft
        );
    }

    #[test]
    fn a_grace_of_zero_means_no_replay_even_in_the_same_millisecond() {
        let none = ExchangeRules {
            grace: Duration::ZERO,
            ..RULES
        };
        let token = spent(50_000, false, 0);
        assert_eq!(
            token.on_presented(t(999), t(0), 50_000, none),
            Presentation::Theft
        );
    }

    #[test]
    fn a_replay_after_the_successor_was_used_is_theft() {
        let token = spent(50_000, true, 0);
        assert_eq!(
            token.on_presented(t(999), t(0), 50_001, RULES),
            Presentation::Theft
        );
    }

    #[test]
    fn replays_are_counted_and_bounded() {
        assert_eq!(
            spent(50_000, false, 2).on_presented(t(999), t(0), 50_001, RULES),
            Presentation::Replay
        );
        assert_eq!(
            spent(50_000, false, 3).on_presented(t(999), t(0), 50_001, RULES),
            Presentation::Theft
        );
    }

    #[test]
    fn a_superseded_token_is_theft_and_a_revoked_one_is_refused() {
        assert_eq!(
            RefreshTokenState::Superseded.on_presented(t(999), t(0), 0, RULES),
            Presentation::Theft
        );
        assert_eq!(
            RefreshTokenState::Revoked.on_presented(t(999), t(0), 0, RULES),
            Presentation::Refuse
        );
        assert!(!RefreshTokenState::Revoked.is_active());
    }
}
