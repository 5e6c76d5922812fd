//! Node scopes: which of its tenant's nodes an API key or client
//! certificate may see, as a label selector (`env=staging`,
//! `region in (eu,us)`, `node=web-1`, `!gpu`).
//!
//! Every requirement of a scope must hold, whether they came as one
//! `--scope` with commas or as several `--scope`s. The key `node` is the
//! node's id (not a label of that name); every other key is one of the
//! node's labels, as its join token set them (or its agent's `--label`s,
//! for a node enrolled with a token that carried none). A node outside
//! the scope does not exist for its holder: the front answers it as a
//! missing node. An empty scope is the whole tenant.
//!
//! Pure: parsing and matching, no IO, no knowledge of where labels are kept.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// The forms a scope is written in, for errors and `--help`.
pub const FORMS: &str = "KEY=VALUE, KEY!=VALUE, KEY in (V1,V2), KEY notin (V1,V2), KEY, !KEY; \
                         the key `node` is the node's id";

/// Which nodes a credential may see; every requirement must hold.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Scope(Arc<[Requirement]>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: Box<str>,
    test: Test,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Test {
    Is(Box<str>),
    IsNot(Box<str>),
    In(Box<[Box<str>]>),
    NotIn(Box<[Box<str>]>),
    Has,
    HasNot,
}

/// A scope that cannot be read, with what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scope {text:?}: {why}; the accepted forms are {FORMS}")]
pub struct BadScope {
    text: String,
    why: String,
}

impl Scope {
    /// The whole tenant.
    pub fn all() -> Self {
        Self::default()
    }

    /// Whether this is the whole tenant.
    pub fn is_all(&self) -> bool {
        self.0.is_empty()
    }

    /// Reads the scope of several `--scope` texts, all of whose
    /// requirements must hold.
    pub fn parse_all<S: AsRef<str>>(texts: &[S]) -> Result<Self, BadScope> {
        let mut reqs = Vec::new();
        for text in texts {
            reqs.extend(parse(text.as_ref())?);
        }
        Ok(Self(reqs.into()))
    }

    /// This scope narrowed by `other`: both must hold.
    pub fn and(&self, other: &Scope) -> Scope {
        let mut reqs: Vec<Requirement> = self.0.to_vec();
        for r in other.0.iter() {
            if !reqs.contains(r) {
                reqs.push(r.clone());
            }
        }
        Self(reqs.into())
    }

    /// Whether node `node` with `labels` is in scope.
    pub fn admits(&self, node: &str, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| {
            let value = match &*r.key {
                "node" => Some(node),
                key => labels.get(key).map(String::as_str),
            };
            r.test.holds(value)
        })
    }

    /// Whether a node that will have exactly `labels`, and the id `node`
    /// if it is known already, is in scope whatever its id turns out to
    /// be: what a join token of a scoped enroller must satisfy.
    pub fn admits_enrolment(&self, node: Option<&str>, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match (&*r.key, node) {
            ("node", Some(id)) => r.test.holds(Some(id)),
            ("node", None) => false,
            (key, _) => r.test.holds(labels.get(key).map(String::as_str)),
        })
    }
}

impl Test {
    fn holds(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (Self::Is(want), Some(v)) => **want == *v,
            (Self::IsNot(want), v) => v != Some(&**want),
            (Self::In(set), Some(v)) => set.iter().any(|s| **s == *v),
            (Self::NotIn(set), v) => !v.is_some_and(|v| set.iter().any(|s| **s == *v)),
            (Self::Has, v) => v.is_some(),
            (Self::HasNot, v) => v.is_none(),
            (Self::Is(_) | Self::In(_), None) => false,
        }
    }
}

fn valid_word(word: &str) -> bool {
    !word.is_empty()
        && word.len() <= 253
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
}

/// The requirements of one text, split at the commas outside parentheses.
fn parse(text: &str) -> Result<Vec<Requirement>, BadScope> {
    let bad = |why: &str| BadScope {
        text: text.to_owned(),
        why: why.to_owned(),
    };
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| bad("a `)` without its `(`"))?
            }
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(bad("a `(` without its `)`"));
    }
    parts.push(&text[start..]);
    parts
        .into_iter()
        .map(|part| one(part.trim()).map_err(|why| bad(&why)))
        .collect()
}

fn one(part: &str) -> Result<Requirement, String> {
    let key_of = |k: &str| -> Result<Box<str>, String> {
        let k = k.trim();
        match valid_word(k) {
            true => Ok(k.into()),
            false => Err(format!(
                "{k:?} is not a label key (letters, digits, `._-/`)"
            )),
        }
    };
    let value_of = |v: &str| -> Result<Box<str>, String> {
        let v = v.trim();
        match v.is_empty() || valid_word(v) {
            true => Ok(v.into()),
            false => Err(format!(
                "{v:?} is not a label value (letters, digits, `._-/`)"
            )),
        }
    };
    if part.is_empty() {
        return Err("an empty requirement".into());
    }
    if let Some((key, value)) = part.split_once("!=") {
        return Ok(Requirement {
            key: key_of(key)?,
            test: Test::IsNot(value_of(value)?),
        });
    }
    if let Some((key, value)) = part.split_once('=') {
        let value = value.strip_prefix('=').unwrap_or(value);
        return Ok(Requirement {
            key: key_of(key)?,
            test: Test::Is(value_of(value)?),
        });
    }
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement {
            key: key_of(key)?,
            test: Test::HasNot,
        });
    }
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    match words.as_slice() {
        [key] => Ok(Requirement {
            key: key_of(key)?,
            test: Test::Has,
        }),
        [key, rest] => {
            let rest = rest.trim_start();
            let (negated, set) = match (rest.strip_prefix("notin"), rest.strip_prefix("in")) {
                (Some(set), _) => (true, set),
                (None, Some(set)) => (false, set),
                _ => return Err(format!("{rest:?} is not `in (...)` or `notin (...)`")),
            };
            let inner = set
                .trim()
                .strip_prefix('(')
                .and_then(|s| s.strip_suffix(')'))
                .ok_or_else(|| format!("{set:?} is not a list in parentheses, e.g. (eu,us)"))?;
            let values = inner
                .split(',')
                .map(value_of)
                .collect::<Result<Box<[_]>, _>>()?;
            let key = key_of(key)?;
            Ok(Requirement {
                key,
                test: match negated {
                    true => Test::NotIn(values),
                    false => Test::In(values),
                },
            })
        }
        _ => Err("an empty requirement".into()),
    }
}

impl fmt::Display for Scope {
    /// As `parse_all` reads it back: requirements joined by commas;
    /// `*` for the whole tenant.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_all() {
            return f.write_str("*");
        }
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let key = &r.key;
            match &r.test {
                Test::Is(v) => write!(f, "{key}={v}")?,
                Test::IsNot(v) => write!(f, "{key}!={v}")?,
                Test::In(set) => write!(f, "{key} in ({})", set.join(","))?,
                Test::NotIn(set) => write!(f, "{key} notin ({})", set.join(","))?,
                Test::Has => write!(f, "{key}")?,
                Test::HasNot => write!(f, "!{key}")?,
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope({self})")
    }
}

impl serde::Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "*" | "" => Ok(Self::all()),
            text => Self::parse_all(&[text]).map_err(serde::de::Error::custom),
        }
    }
}

/// Reads `KEY=VALUE` label texts (a join token's `--label`s).
pub fn parse_labels<S: AsRef<str>>(texts: &[S]) -> Result<BTreeMap<String, String>, String> {
    texts
        .iter()
        .map(|t| {
            let t = t.as_ref();
            match t.split_once('=') {
                Some((k, v)) if valid_word(k) && (v.is_empty() || valid_word(v)) => {
                    Ok((k.to_owned(), v.to_owned()))
                }
                _ => Err(format!(
                    "label {t:?} is not KEY=VALUE (letters, digits, `._-/`), e.g. env=staging"
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn each_form_selects_what_its_name_says() {
        let staging = labels(&[("env", "staging"), ("region", "eu")]);
        let prod = labels(&[("env", "prod"), ("region", "us"), ("gpu", "1")]);
        let bare = labels(&[]);
        let cases: &[(&str, [bool; 3])] = &[
            ("env=staging", [true, false, false]),
            ("env==staging", [true, false, false]),
            ("env!=staging", [false, true, true]),
            ("region in (eu,us)", [true, true, false]),
            ("region notin (eu)", [false, true, true]),
            ("gpu", [false, true, false]),
            ("!gpu", [true, false, true]),
            ("env=prod,region=us", [false, true, false]),
            ("node=web-1", [true, false, false]),
            ("node in (web-1, web-2)", [true, true, false]),
        ];
        for (text, want) in cases {
            let scope = Scope::parse_all(&[text]).unwrap();
            let got = [
                scope.admits("web-1", &staging),
                scope.admits("web-2", &prod),
                scope.admits("web-3", &bare),
            ];
            assert_eq!(&got, want, "{text}");
            // What is stored reads back as the same scope.
            assert_eq!(Scope::parse_all(&[scope.to_string()]).unwrap(), scope);
        }
    }

    #[test]
    fn several_scopes_must_all_hold_and_none_is_everything() {
        let scope = Scope::parse_all(&["env=staging", "region in (eu,us)"]).unwrap();
        assert!(scope.admits("n", &labels(&[("env", "staging"), ("region", "us")])));
        assert!(!scope.admits("n", &labels(&[("env", "staging"), ("region", "ap")])));
        let all = Scope::parse_all::<&str>(&[]).unwrap();
        assert!(all.is_all() && all.admits("n", &labels(&[])));
        assert_eq!(all.to_string(), "*");
        let narrowed = Scope::parse_all(&["env=staging"])
            .unwrap()
            .and(&Scope::parse_all(&["node=a"]).unwrap());
        assert_eq!(narrowed.to_string(), "env=staging,node=a");
    }

    #[test]
    fn a_malformed_scope_is_refused_with_the_accepted_forms() {
        for text in [
            "",
            "env=",
            "region in eu",
            "region in (eu",
            "a)",
            "e nv=x",
            "env=sta ging",
            "region within (eu)",
            "=x",
        ] {
            match Scope::parse_all(&[text]) {
                Err(e) => assert!(e.to_string().contains("KEY in (V1,V2)"), "{e}"),
                Ok(s) if text == "env=" => assert_eq!(s.to_string(), "env="),
                Ok(s) => panic!("{text:?} read as {s}"),
            }
        }
    }

    #[test]
    fn an_enrolment_is_in_scope_only_by_what_the_token_fixes() {
        let scope = Scope::parse_all(&["env=staging"]).unwrap();
        assert!(scope.admits_enrolment(None, &labels(&[("env", "staging")])));
        assert!(!scope.admits_enrolment(None, &labels(&[("env", "prod")])));
        assert!(!scope.admits_enrolment(None, &labels(&[])));
        let by_node = Scope::parse_all(&["node=web-1"]).unwrap();
        assert!(!by_node.admits_enrolment(None, &labels(&[])));
        assert!(by_node.admits_enrolment(Some("web-1"), &labels(&[])));
    }

    #[test]
    fn labels_are_key_value() {
        assert_eq!(
            parse_labels(&["env=staging", "tier="]).unwrap(),
            labels(&[("env", "staging"), ("tier", "")])
        );
        assert!(parse_labels(&["env"]).unwrap_err().contains("KEY=VALUE"));
    }
}
