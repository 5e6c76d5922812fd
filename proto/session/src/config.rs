//! Config-file plumbing both binaries share: a TOML file read into a typed,
//! `deny_unknown_fields` struct, with errors that name the file.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// The host's name, as the kernel knows it (`localhost` if unreadable):
/// the agent's default node id and hostname, the relay's certificate name
/// and advertised address.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

/// A config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid for this binary.
    #[error("config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why, with the offending key and line.
        source: Box<toml::de::Error>,
    },
}

/// Reads `path` as TOML into `T`.
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigFileError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

/// A configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file is unusable.
    #[error(transparent)]
    File(#[from] ConfigFileError),
    /// A setting is missing or has a bad value.
    #[error("setting `{key}`: {reason}")]
    Invalid {
        /// Which setting.
        key: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },
}

/// Parses a duration setting from a config file (e.g. `"5s"`, `"2m"`).
pub fn parse_duration(key: &'static str, text: &str) -> Result<std::time::Duration, ConfigError> {
    humantime::parse_duration(text).map_err(|e| ConfigError::Invalid {
        key,
        reason: format!("{text:?} is not a duration ({e}); write e.g. \"5s\" or \"2m\""),
    })
}
