//! Validated identifiers: usernames, client ids, scopes and audiences.

use std::{collections::BTreeSet, fmt};

use super::InvalidInput;

/// True for RFC 6749 `NQCHAR` minus space: printable ASCII except `"` and `\`.
fn is_token_char(c: char) -> bool {
    matches!(c, '\x21' | '\x23'..='\x5B' | '\x5D'..='\x7E')
}

macro_rules! validated_name {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:literal, $allowed:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            #[doc = concat!("Checks that `s` is a valid ", $what, ".")]
            pub fn parse(s: &str) -> Result<Self, InvalidInput> {
                if s.is_empty() {
                    return Err(InvalidInput::new(concat!($what, " is empty")));
                }
                if s.len() > $max {
                    return Err(InvalidInput::new(concat!($what, " is longer than ", $max, " bytes")));
                }
                if let Some(c) = s.chars().find(|&c| !($allowed)(c)) {
                    return Err(InvalidInput(format!(
                        concat!($what, " {:?} has a character that is not allowed: {:?}"),
                        s.escape_debug().to_string(), c
                    )));
                }
                Ok(Self(s.to_owned()))
            }

            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

validated_name!(
    /// A user's login name: letters, digits and `.`, `_`, `-`, `@`.
    Username,
    "username",
    64,
    |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')
);

validated_name!(
    /// A client's (service account's) id: letters, digits and `.`, `_`, `-`, `:`.
    ClientId,
    "client id",
    128,
    |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')
);

validated_name!(
    /// One OAuth scope token (RFC 6749 §3.3).
    Scope,
    "scope",
    128,
    is_token_char
);

validated_name!(
    /// An audience a token may be issued for.
    Audience,
    "audience",
    256,
    is_token_char
);

/// The most scopes one principal or one request may name.
const MAX_SCOPES: usize = 64;

/// A set of scopes, kept sorted so its space-separated form is canonical.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScopeSet(BTreeSet<Scope>);

impl ScopeSet {
    /// Parses a list of scope strings (as sent in a request).
    pub fn parse_list<S: AsRef<str>>(items: &[S]) -> Result<Self, InvalidInput> {
        if items.len() > MAX_SCOPES {
            return Err(InvalidInput(format!(
                "too many scopes: {} (at most {MAX_SCOPES})",
                items.len()
            )));
        }
        items
            .iter()
            .map(|s| Scope::parse(s.as_ref()))
            .collect::<Result<BTreeSet<_>, _>>()
            .map(Self)
    }

    /// Parses the space-separated form used in the `scope` claim and in storage.
    pub fn parse_joined(s: &str) -> Result<Self, InvalidInput> {
        let items: Vec<&str> = tessera_token::split_scopes(s).collect();
        Self::parse_list(&items)
    }

    /// The space-separated form (RFC 6749 §3.3).
    pub fn joined(&self) -> String {
        let items: Vec<&str> = self.iter().collect();
        items.join(" ")
    }

    /// The scopes, in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(Scope::as_str)
    }

    /// True when there are no scopes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when `scope` is in the set.
    pub fn contains(&self, scope: &str) -> bool {
        self.0.iter().any(|s| s.as_str() == scope)
    }

    /// `self` narrowed to `requested`: all of `self` when nothing is
    /// requested, `requested` when it is a subset, else the first scope
    /// asked for that `self` does not hold.
    pub fn narrow(&self, requested: &Self) -> Result<Self, Scope> {
        if requested.is_empty() {
            return Ok(self.clone());
        }
        match requested.0.difference(&self.0).next() {
            None => Ok(requested.clone()),
            Some(missing) => Err(missing.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_username_with_a_space_is_rejected() {
        assert!(Username::parse("alice smith").is_err());
    }

    #[test]
    fn an_empty_username_is_rejected() {
        assert!(Username::parse("").is_err());
    }

    #[test]
    fn an_email_like_username_is_accepted() {
        assert_eq!(
            Username::parse("alice@example.com").unwrap().as_str(),
            "alice@example.com"
        );
    }

    #[test]
    fn an_error_names_the_value_and_the_character() {
        let error = Scope::parse("a b").unwrap_err().to_string();
        assert!(
            error.contains("\"a b\"") && error.contains("' '"),
            "{error}"
        );
    }

    #[test]
    fn a_scope_with_a_quote_or_backslash_is_rejected() {
        assert!(Scope::parse("a\"b").is_err());
        assert!(Scope::parse("a\\b").is_err());
        assert!(Scope::parse("a b").is_err());
    }

    #[test]
    fn an_empty_request_narrows_to_every_allowed_scope() {
        let allowed = ScopeSet::parse_list(&["read", "write"]).unwrap();
        assert_eq!(allowed.narrow(&ScopeSet::default()).as_ref(), Ok(&allowed));
    }

    #[test]
    fn a_scope_outside_the_allowed_set_is_named() {
        let allowed = ScopeSet::parse_list(&["read"]).unwrap();
        let asked = ScopeSet::parse_list(&["read", "admin"]).unwrap();
        assert_eq!(allowed.narrow(&asked), Err(Scope::parse("admin").unwrap()));
    }

    #[test]
    fn joined_scopes_are_sorted_and_round_trip() {
        let set = ScopeSet::parse_list(&["write", "read"]).unwrap();
        assert_eq!(set.joined(), "read write");
        assert_eq!(ScopeSet::parse_joined(&set.joined()).unwrap(), set);
    }

    #[test]
    fn more_than_the_maximum_number_of_scopes_is_rejected() {
        let many: Vec<String> = (0..=MAX_SCOPES).map(|i| format!("s{i}")).collect();
        assert!(ScopeSet::parse_list(&many).is_err());
    }
}
