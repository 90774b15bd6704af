//! Config files for the binaries: one TOML table, every key checked against
//! the keys the binary knows, and errors that name the file, the key and what
//! was expected. Flags and `AIC_*` variables stay above the file; the binaries
//! decide that, this module only reads.

use std::path::{Path, PathBuf};

/// What is wrong with a config file; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists (or was named) but cannot be read.
    #[error("reading the config file {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        error: std::io::Error,
    },
    /// The file is not TOML.
    #[error("config file {}, line {line}: not valid TOML: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Line of the first error, from 1.
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// A key the binary does not know (often a typo).
    #[error("config file {}: unknown key `{key}`; expected one of {known}", path.display())]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key as written.
        key: String,
        /// The keys the binary knows, comma-separated.
        known: String,
    },
    /// A known key with a value of the wrong kind or form.
    #[error("config file {}, key `{key}`: expected {expected}, got {got}", path.display())]
    BadValue {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What the key takes, with an example.
        expected: String,
        /// The value as written in the file.
        got: String,
    },
}

/// A config file as read: its path (for errors) and its keys.
#[derive(Debug)]
pub struct ConfigFile {
    /// Where it was read from, named in every error.
    path: PathBuf,
    /// Its top-level keys; empty for a default file that does not exist.
    table: toml::Table,
}

impl ConfigFile {
    /// Reads `path`. A missing file is an empty config when `optional` (a
    /// default location nobody asked for), an error otherwise.
    pub fn read(path: &Path, optional: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(error) => return Err(ConfigError::Read { path: path.to_path_buf(), error }),
        };
        Self::parse(path, &text)
    }

    /// Parses `text` as the file at `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let table = toml::from_str::<toml::Table>(text).map_err(|e| {
            let at = e.span().map_or(0, |span| span.start.min(text.len()));
            let line = text[..at].matches('\n').count() + 1;
            ConfigError::Syntax { path: path.to_path_buf(), line, message: e.message().trim().to_string() }
        })?;
        Ok(Self { path: path.to_path_buf(), table })
    }

    /// An empty config, for when there is no file to read.
    pub fn empty(path: &Path) -> Self {
        Self { path: path.to_path_buf(), table: toml::Table::new() }
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Refuses any key not in `known`.
    pub fn check_keys(&self, known: &[&str]) -> Result<(), ConfigError> {
        match self.table.keys().find(|key| !known.contains(&key.as_str())) {
            None => Ok(()),
            Some(key) => {
                Err(ConfigError::UnknownKey { path: self.path.clone(), key: key.clone(), known: known.join(", ") })
            }
        }
    }

    fn bad(&self, key: &str, expected: &str, value: &toml::Value) -> ConfigError {
        ConfigError::BadValue {
            path: self.path.clone(),
            key: key.to_string(),
            expected: expected.to_string(),
            got: value.to_string(),
        }
    }

    /// A string key parsed by `parse`; `expected` says what it takes.
    pub fn parsed<T, E>(
        &self,
        key: &str,
        expected: &str,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Result<Option<T>, ConfigError> {
        let Some(value) = self.table.get(key) else { return Ok(None) };
        let parsed = value.as_str().and_then(|text| parse(text).ok());
        parsed.map(Some).ok_or_else(|| self.bad(key, expected, value))
    }

    /// A string key taken as it is (a URL, a path).
    pub fn string(&self, key: &str, expected: &str) -> Result<Option<String>, ConfigError> {
        self.parsed(key, expected, |text| Ok::<_, ()>(text.to_string()))
    }

    /// A whole-number key that fits `T`.
    pub fn integer<T: TryFrom<i64>>(&self, key: &str, expected: &str) -> Result<Option<T>, ConfigError> {
        let Some(value) = self.table.get(key) else { return Ok(None) };
        let number = value.as_integer().and_then(|n| T::try_from(n).ok());
        number.map(Some).ok_or_else(|| self.bad(key, expected, value))
    }

    /// A `true`/`false` key.
    pub fn boolean(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        let Some(value) = self.table.get(key) else { return Ok(None) };
        value.as_bool().map(Some).ok_or_else(|| self.bad(key, "true or false", value))
    }

    /// A key holding a list of strings, each parsed by `parse`.
    pub fn list<T, E>(
        &self,
        key: &str,
        expected: &str,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Result<Option<Vec<T>>, ConfigError> {
        let Some(value) = self.table.get(key) else { return Ok(None) };
        let items = value.as_array().ok_or_else(|| self.bad(key, expected, value))?;
        let parse_one = |item: &toml::Value| item.as_str().and_then(|text| parse(text).ok());
        items
            .iter()
            .map(|item| parse_one(item).ok_or_else(|| self.bad(key, expected, item)))
            .collect::<Result<_, _>>()
            .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> ConfigFile {
        ConfigFile::parse(Path::new("/etc/x.toml"), text).unwrap()
    }

    #[test]
    fn errors_name_file_key_and_expectation() {
        let err = ConfigFile::parse(Path::new("/etc/x.toml"), "a = 1\nb = ").unwrap_err().to_string();
        assert!(err.starts_with("config file /etc/x.toml, line 2: not valid TOML"), "{err}");
        let err = file("lisen = 1").check_keys(&["listen", "rate"]).unwrap_err().to_string();
        assert_eq!(err, "config file /etc/x.toml: unknown key `lisen`; expected one of listen, rate");
        let err = file("rate = \"many\"").integer::<u32>("rate", "a whole number").unwrap_err().to_string();
        assert_eq!(err, "config file /etc/x.toml, key `rate`: expected a whole number, got \"many\"");
        let err = file("rate = -1").integer::<u32>("rate", "a whole number").unwrap_err().to_string();
        assert!(err.ends_with("got -1"), "{err}");
        let err = file("p = [\"1\", 2]").list("p", "addresses", str::parse::<u8>).unwrap_err().to_string();
        assert!(err.ends_with("expected addresses, got 2"), "{err}");
    }

    #[test]
    fn reads_values_and_absent_keys() {
        let f = file("rate = 7\nname = \"x\"\non = true\np = [\"1\", \"2\"]");
        assert_eq!(f.integer::<u32>("rate", "").unwrap(), Some(7));
        assert_eq!(f.string("name", "").unwrap().as_deref(), Some("x"));
        assert_eq!(f.boolean("on").unwrap(), Some(true));
        assert_eq!(f.list("p", "", str::parse::<u8>).unwrap(), Some(vec![1, 2]));
        assert_eq!(f.integer::<u32>("missing", "").unwrap(), None);
        let missing = ConfigFile::read(Path::new("/nonexistent/aic.toml"), true).unwrap();
        assert_eq!(missing.integer::<u32>("rate", "").unwrap(), None);
        assert!(ConfigFile::read(Path::new("/nonexistent/aic.toml"), false).is_err());
    }
}
