//! The console's own settings file (`~/.config/aic-console/config.toml`):
//! which theme to use and whether to ring the bell. Reading it changes nothing.

use std::path::{Path, PathBuf};

use super::theme::{Theme, ThemeError};

/// Why the settings file could not be used; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable or not valid TOML.
    #[error("{file}: {reason}")]
    Unreadable {
        /// The settings file.
        file: String,
        /// What went wrong.
        reason: String,
    },
    /// A key the console does not know, or a value of the wrong kind.
    #[error("{file}: key '{key}': {reason}")]
    BadKey {
        /// The settings file.
        file: String,
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The theme it names is broken or missing.
    #[error(transparent)]
    Theme(#[from] ThemeError),
}

/// The settings, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// A theme name or path, if the file sets one.
    pub theme: Option<String>,
    /// Ring the terminal bell when a command starts waiting for approval.
    pub bell: bool,
    /// The directory the file is in: relative theme paths start there.
    pub dir: PathBuf,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self { theme: None, bell: true, dir: PathBuf::from(".") }
    }
}

/// `~/.config/aic-console` (or `$XDG_CONFIG_HOME/aic-console`).
pub fn config_dir() -> Option<PathBuf> {
    directories::BaseDirs::new().map(|dirs| dirs.config_dir().join("aic-console"))
}

/// `config.toml` in [`config_dir`].
pub fn default_path() -> Option<PathBuf> {
    config_dir().map(|dir| dir.join("config.toml"))
}

impl ConsoleConfig {
    /// Reads the file at `path`. A missing file gives the defaults unless `required`.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Self { dir, ..Self::default() });
            }
            Err(e) => return Err(ConfigError::Unreadable { file, reason: e.to_string() }),
        };
        Self::parse(&text, &file, dir)
    }

    /// Parses settings `text` from `file`, which lives in `dir`.
    pub fn parse(text: &str, file: &str, dir: PathBuf) -> Result<Self, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Unreadable {
            file: file.into(),
            reason: format!("not valid TOML: {}", e.to_string().trim().replace('\n', " ")),
        })?;
        let mut config = Self { dir, ..Self::default() };
        for (key, value) in &table {
            let bad = |reason: &str| ConfigError::BadKey { file: file.into(), key: key.clone(), reason: reason.into() };
            match key.as_str() {
                "theme" => {
                    config.theme = Some(value.as_str().ok_or_else(|| bad("expected a theme name or path"))?.into())
                }
                "bell" => config.bell = value.as_bool().ok_or_else(|| bad("expected true or false"))?,
                _ => return Err(bad("unknown key; the console reads 'theme' and 'bell'")),
            }
        }
        Ok(config)
    }

    /// The theme to use: `flag` (from the command line, relative to the
    /// working directory) first, then this file's, then dark.
    pub fn theme(&self, flag: Option<&str>) -> Result<Theme, ThemeError> {
        let user_dir = config_dir().map(|d| d.join("themes"));
        match (flag, &self.theme) {
            (Some(spec), _) => Theme::resolve(spec, user_dir.as_deref(), Path::new(".")),
            (None, Some(spec)) => Theme::resolve(spec, user_dir.as_deref(), &self.dir),
            (None, None) => Ok(Theme::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_errors_name_file_and_key() {
        let c = ConsoleConfig::parse("theme = \"light\"\nbell = false", "c.toml", "/etc".into()).unwrap();
        assert_eq!((c.theme.as_deref(), c.bell), (Some("light"), false));
        assert_eq!(c.theme(None).unwrap(), Theme::built_in("light").unwrap());
        assert_eq!(c.theme(Some("high-contrast")).unwrap(), Theme::built_in("high-contrast").unwrap());
        let err = ConsoleConfig::parse("colour = 1", "c.toml", ".".into()).unwrap_err().to_string();
        assert_eq!(err, "c.toml: key 'colour': unknown key; the console reads 'theme' and 'bell'");
        let err = ConsoleConfig::parse("bell = \"yes\"", "c.toml", ".".into()).unwrap_err().to_string();
        assert_eq!(err, "c.toml: key 'bell': expected true or false");
    }

    #[test]
    fn a_theme_path_in_the_file_is_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mine.toml"), "accent = \"blurple\"").unwrap();
        std::fs::write(dir.path().join("config.toml"), "theme = \"mine.toml\"").unwrap();
        let config = ConsoleConfig::load(&dir.path().join("config.toml"), true).unwrap();
        let err = config.theme(None).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "{}: key 'accent': unknown colour \"blurple\"",
                dir.path().join("mine.toml").display()
            )),
            "{err}"
        );
        assert!(ConsoleConfig::load(&dir.path().join("none.toml"), false).unwrap().bell);
        assert!(ConsoleConfig::load(&dir.path().join("none.toml"), true).is_err());
    }
}
