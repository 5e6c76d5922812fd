//! Swarm's filter expressions, parsed once for every filter:
//! `key==value` and `key!=value`, where the value is a plain string, a
//! glob (`*`, `?`) or a `/regex/`; a value starting with `~` (`key==~value`,
//! Swarm's spelling) or the operator `~=` makes the expression soft, so a
//! filter drops it when no node would match. Plain values and globs match
//! without regard to case, as Swarm's did; a regex matches as written.

use std::fmt;

use regex::Regex;

/// One parsed expression.
#[derive(Debug, Clone)]
pub struct Expr {
    /// What it is about (`node`, `region`, `image`, ...).
    pub key: String,
    /// `false` for `!=`.
    pub equal: bool,
    /// How the value is matched.
    pub value: Matcher,
    /// Dropped when nothing matches, instead of ruling every node out.
    pub soft: bool,
    /// As written, for messages.
    pub text: String,
}

/// How an expression's value matches a string.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// The same string, any case: as written, and `key=value` lowercased
    /// (for looking it up among labels).
    Plain(String, String),
    /// A glob or a regex, compiled.
    Pattern(Regex),
}

/// Why an expression cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExprError {
    /// No `==`, `!=` or `~=`.
    #[error("{0:?} has no operator: write key==value, key!=value, or key==~value for a soft one")]
    NoOperator(String),
    /// Nothing before the operator.
    #[error("{0:?} names no key before its operator")]
    NoKey(String),
    /// A key outside `[A-Za-z0-9._-]`.
    #[error("{0:?}: a key holds only letters, digits, '.', '_' and '-'")]
    BadKey(String),
    /// A `/regex/` that does not compile.
    #[error("{text:?}: the regex does not compile: {reason}")]
    BadRegex {
        /// The expression.
        text: String,
        /// The regex crate's words.
        reason: String,
    },
}

impl Expr {
    /// Parses `key==value`, `key!=value`, `key==~value`, `key~=value`.
    pub fn parse(text: &str) -> Result<Self, ExprError> {
        let text = text.trim();
        let (key, equal, mut value, mut soft) = if let Some((k, v)) = text.split_once("==") {
            (k, true, v, false)
        } else if let Some((k, v)) = text.split_once("!=") {
            (k, false, v, false)
        } else if let Some((k, v)) = text.split_once("~=") {
            (k, true, v, true)
        } else {
            return Err(ExprError::NoOperator(text.to_owned()));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(ExprError::NoKey(text.to_owned()));
        }
        if !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(ExprError::BadKey(text.to_owned()));
        }
        if let Some(rest) = value.strip_prefix('~') {
            value = rest;
            soft = true;
        }
        let value = value.trim();
        let matcher = if value.len() >= 2 && value.starts_with('/') && value.ends_with('/') {
            let re = Regex::new(&value[1..value.len() - 1]).map_err(|e| ExprError::BadRegex {
                text: text.to_owned(),
                reason: e.to_string(),
            })?;
            Matcher::Pattern(re)
        } else if value.contains(['*', '?']) {
            let mut pattern = String::from("(?i)^");
            for c in value.chars() {
                match c {
                    '*' => pattern.push_str(".*"),
                    '?' => pattern.push('.'),
                    c => pattern.push_str(&regex::escape(&c.to_string())),
                }
            }
            pattern.push('$');
            Matcher::Pattern(Regex::new(&pattern).expect("an escaped glob always compiles"))
        } else {
            Matcher::Plain(
                value.to_owned(),
                format!("{key}={value}").to_ascii_lowercase(),
            )
        };
        Ok(Self {
            key: key.to_ascii_lowercase(),
            equal,
            value: matcher,
            soft,
            text: text.to_owned(),
        })
    }

    /// Whether `value` (the node's, the container's, ...) satisfies this
    /// expression's value, before its `==`/`!=` is applied.
    pub fn matches_value(&self, value: &str) -> bool {
        match &self.value {
            Matcher::Plain(want, _) => want.eq_ignore_ascii_case(value),
            Matcher::Pattern(re) => re.is_match(value),
        }
    }

    /// Whether an object with these values for the key (none when it has
    /// no such key) satisfies the expression: `==` wants one to match,
    /// `!=` wants none to.
    pub fn holds<'a>(&self, mut values: impl Iterator<Item = &'a str>) -> bool {
        values.any(|v| self.matches_value(v)) == self.equal
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holds(text: &str, value: &str) -> bool {
        Expr::parse(text).unwrap().holds(std::iter::once(value))
    }

    #[test]
    fn plain_values_match_any_case_and_not_equal_inverts() {
        assert!(holds("region==us-east", "US-EAST"));
        assert!(!holds("region==us-east", "us-west"));
        assert!(holds("region!=us-east", "us-west"));
        assert!(!holds("region!=us-east", "us-east"));
    }

    #[test]
    fn globs_and_regexes_match_the_whole_value_or_as_written() {
        assert!(holds("node==web-*", "web-12"));
        assert!(!holds("node==web-*", "db-web-1"));
        assert!(holds("node==web-?", "web-1"));
        assert!(!holds("node==web-?", "web-12"));
        assert!(holds("kernel==/^6\\.[0-9]+/", "6.1.0-13-amd64"));
        assert!(!holds("kernel==/^5\\./", "6.1.0"));
        assert!(holds("storagedriver!=/overlay.*/", "vfs"));
        assert!(holds("name==a.b", "A.B"), "a dot in a plain value is a dot");
        assert!(!holds("name==a.b", "axb"));
    }

    #[test]
    fn both_soft_spellings_are_soft_and_keep_their_operator() {
        let e = Expr::parse("region==~eu").unwrap();
        assert!(e.soft && e.equal && e.holds(std::iter::once("eu")));
        let e = Expr::parse("region~=eu").unwrap();
        assert!(e.soft && e.equal);
        let e = Expr::parse("region!=~eu").unwrap();
        assert!(e.soft && !e.equal);
        assert!(!Expr::parse("region==eu").unwrap().soft);
    }

    #[test]
    fn a_missing_key_fails_equal_and_passes_not_equal() {
        let eq = Expr::parse("disk==ssd").unwrap();
        let ne = Expr::parse("disk!=ssd").unwrap();
        assert!(!eq.holds(std::iter::empty()));
        assert!(ne.holds(std::iter::empty()));
    }

    #[test]
    fn malformed_expressions_say_what_is_wrong() {
        assert_eq!(
            Expr::parse("region=us").unwrap_err(),
            ExprError::NoOperator("region=us".into())
        );
        assert_eq!(
            Expr::parse("==us").unwrap_err(),
            ExprError::NoKey("==us".into())
        );
        assert!(matches!(
            Expr::parse("a b==c").unwrap_err(),
            ExprError::BadKey(_)
        ));
        let bad = Expr::parse("node==/(/").unwrap_err();
        assert!(bad.to_string().contains("does not compile"), "{bad}");
    }
}
