//! Topic names, validated as Kafka validates them.
//!
//! Invariant: a [`TopicName`] holds 1 to [`TOPIC_NAME_LEN_MAX`] characters, each an ASCII
//! letter, digit, `.`, `_` or `-`, and is neither `.` nor `..`. Because every character is
//! ASCII and none is `/`, a name is always a safe single path component, which is what lets
//! `{data_dir}/{topic}-{partition}` name a partition directory.
//!
//! Kafka also warns that `.` and `_` collide in metric names (`a.b` and `a_b` become the
//! same metric); its broker refuses to create a topic whose [`TopicName::collision_key`]
//! equals an existing topic's, and so does our registry.

use std::fmt;

use crate::limits::TOPIC_NAME_LEN_MAX;

/// Why a string is not a legal topic name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicNameError {
    /// The name is the empty string.
    #[error("topic name is empty")]
    Empty,
    /// The name is longer than Kafka allows.
    #[error("topic name is {len} characters long; the limit is {max}", max = TOPIC_NAME_LEN_MAX)]
    TooLong { len: usize },
    /// The name holds a character outside `[a-zA-Z0-9._-]`.
    #[error(
        "topic name holds {character:?} at index {index}; \
         only ASCII letters, digits, '.', '_' and '-' are legal"
    )]
    IllegalChar { character: char, index: usize },
    /// The name is `.` or `..`, which would name a directory, not a topic.
    #[error("topic name cannot be {0:?}")]
    Reserved(&'static str),
}

/// A validated topic name; see the module documentation for what "valid" means.
///
/// ```
/// use ringlog_engine::topic::TopicName;
/// let name = TopicName::new("orders.eu").unwrap();
/// assert_eq!(name.as_str(), "orders.eu");
/// assert_eq!(name.collision_key(), "orders_eu");
/// assert!(TopicName::new("orders/eu").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicName(String);

impl TopicName {
    /// Validates `name` and wraps it.
    pub fn new(name: impl Into<String>) -> Result<TopicName, TopicNameError> {
        let name = name.into();
        validate(&name)?;
        Ok(TopicName(name))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name with every `.` replaced by `_`. Two distinct topics whose keys are equal
    /// would share metric names, so the registry refuses to hold both.
    pub fn collision_key(&self) -> String {
        self.0.replace('.', "_")
    }
}

fn validate(name: &str) -> Result<(), TopicNameError> {
    if name.is_empty() {
        return Err(TopicNameError::Empty);
    }
    // Checking characters before the length names the first bad character of a long
    // non-ASCII name rather than a byte count the user did not type.
    if let Some((index, character)) = name.chars().enumerate().find(|(_, c)| !is_legal(*c)) {
        return Err(TopicNameError::IllegalChar { character, index });
    }
    if name.len() > TOPIC_NAME_LEN_MAX {
        return Err(TopicNameError::TooLong { len: name.len() });
    }
    match name {
        "." => Err(TopicNameError::Reserved(".")),
        ".." => Err(TopicNameError::Reserved("..")),
        _ => Ok(()),
    }
}

fn is_legal(character: char) -> bool {
    character.is_ascii_alphanumeric() || matches!(character, '.' | '_' | '-')
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for TopicName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TopicName {
    type Error = TopicNameError;

    fn try_from(name: String) -> Result<TopicName, TopicNameError> {
        TopicName::new(name)
    }
}

impl TryFrom<&str> for TopicName {
    type Error = TopicNameError;

    fn try_from(name: &str) -> Result<TopicName, TopicNameError> {
        TopicName::new(name)
    }
}

impl std::str::FromStr for TopicName {
    type Err = TopicNameError;

    fn from_str(name: &str) -> Result<TopicName, TopicNameError> {
        TopicName::new(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_legal_character_class() {
        for name in [
            "a",
            "A",
            "0",
            "orders",
            "a.b_c-D9",
            "__consumer_offsets",
            "...",
            ".a",
        ] {
            assert_eq!(TopicName::new(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn length_limit_is_inclusive_at_249() {
        let longest = "x".repeat(TOPIC_NAME_LEN_MAX);
        assert!(TopicName::new(longest.clone()).is_ok());
        let too_long = format!("{longest}x");
        assert_eq!(
            TopicName::new(too_long),
            Err(TopicNameError::TooLong { len: 250 })
        );
    }

    #[test]
    fn empty_and_dot_names_are_refused() {
        assert_eq!(TopicName::new(""), Err(TopicNameError::Empty));
        assert_eq!(TopicName::new("."), Err(TopicNameError::Reserved(".")));
        assert_eq!(TopicName::new(".."), Err(TopicNameError::Reserved("..")));
    }

    #[test]
    fn illegal_character_is_named_with_its_index() {
        let cases = [
            ("a/b", '/', 1),
            ("a b", ' ', 1),
            ("topic\0", '\0', 5),
            ("é", 'é', 0),
            ("ok+", '+', 2),
            ("x:y", ':', 1),
        ];
        for (name, character, index) in cases {
            assert_eq!(
                TopicName::new(name),
                Err(TopicNameError::IllegalChar { character, index }),
                "{name:?}"
            );
        }
        let message = TopicName::new("a/b").unwrap_err().to_string();
        assert!(
            message.contains("'/'") && message.contains("index 1"),
            "{message}"
        );
    }

    #[test]
    fn collision_key_folds_dots_into_underscores_only() {
        let dotted = TopicName::new("a.b.c").unwrap();
        let underscored = TopicName::new("a_b_c").unwrap();
        let dashed = TopicName::new("a-b-c").unwrap();
        assert_eq!(dotted.collision_key(), underscored.collision_key());
        assert_ne!(dotted.collision_key(), dashed.collision_key());
        assert_eq!(dotted.as_str(), "a.b.c", "the name itself keeps its dots");
    }

    #[test]
    fn parses_through_the_std_conversions() {
        let parsed: TopicName = "t1".parse().unwrap();
        assert_eq!(parsed, TopicName::try_from("t1").unwrap());
        assert_eq!(parsed.to_string(), "t1");
        assert_eq!(
            TopicName::try_from(String::from("bad name")),
            Err(TopicNameError::IllegalChar {
                character: ' ',
                index: 3
            })
        );
    }
}
