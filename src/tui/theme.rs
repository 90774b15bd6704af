//! Console colour themes: TOML files of named colours, three of them built
//! in (from `themes/` in the repository), more from files the operator writes.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use ratatui::style::{Color, Modifier, Style};

/// The built-in themes, by name; the first is the default.
pub const BUILT_IN: [(&str, &str); 3] = [
    ("dark", include_str!("../../themes/dark.toml")),
    ("light", include_str!("../../themes/light.toml")),
    ("high-contrast", include_str!("../../themes/high-contrast.toml")),
];

/// Why a theme could not be used; every message names the file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ThemeError {
    /// The file could not be read.
    #[error("{file}: {reason}")]
    Unreadable {
        /// The theme file.
        file: String,
        /// What went wrong.
        reason: String,
    },
    /// The file is not valid TOML.
    #[error("{file}: not valid TOML: {reason}")]
    Syntax {
        /// The theme file.
        file: String,
        /// The parser's words, with line and column.
        reason: String,
    },
    /// A key this console does not know (a typo, most likely).
    #[error("{file}: unknown key '{key}'; theme keys are {}", KEYS.join(", "))]
    UnknownKey {
        /// The theme file.
        file: String,
        /// The key.
        key: String,
    },
    /// A value that is not a colour.
    #[error("{file}: key '{key}': {reason}")]
    BadColour {
        /// The theme file.
        file: String,
        /// The key.
        key: String,
        /// What is wrong with the value.
        reason: String,
    },
    /// A name that is neither built in nor a file.
    #[error(
        "unknown theme '{0}': use dark, light or high-contrast, a file in ~/.config/aic-console/themes/, or a path to a .toml file"
    )]
    UnknownName(String),
}

/// Every key a theme file may set.
pub const KEYS: [&str; 13] = [
    "fg",
    "bg",
    "muted",
    "accent",
    "border",
    "selection_fg",
    "selection_bg",
    "ok",
    "warn",
    "error",
    "alert_fg",
    "alert_bg",
    "sparkline",
];

/// The colours the console draws with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Theme {
    /// Ordinary text.
    pub fg: Color,
    /// The screen's background.
    pub bg: Color,
    /// Secondary text: times, ids, hints.
    pub muted: Color,
    /// Pane titles, the current tab, the session code.
    pub accent: Color,
    /// Pane borders.
    pub border: Color,
    /// Text of the selected row.
    pub selection_fg: Color,
    /// Background of the selected row.
    pub selection_bg: Color,
    /// Good news: connected, exit 0.
    pub ok: Color,
    /// Needs attention: pending, running.
    pub warn: Color,
    /// Bad news: denied, failed, disconnected.
    pub error: Color,
    /// Text of the "waiting for approval" badge.
    pub alert_fg: Color,
    /// Background of that badge.
    pub alert_bg: Color,
    /// The round-trip sparkline.
    pub sparkline: Color,
}

impl Default for Theme {
    fn default() -> Self {
        Self::built_in("dark").expect("the dark theme is built in")
    }
}

impl Theme {
    /// A built-in theme by name.
    pub fn built_in(name: &str) -> Option<Self> {
        let (_, text) = BUILT_IN.iter().find(|(n, _)| *n == name)?;
        // The built-in files are checked by a test; a broken one falls back to plain colours.
        Some(Self::parse(text, &format!("themes/{name}.toml"), Self::plain()).unwrap_or_else(|_| Self::plain()))
    }

    /// Terminal defaults with no colour at all.
    fn plain() -> Self {
        let c = Color::Reset;
        Self {
            fg: c,
            bg: c,
            muted: c,
            accent: c,
            border: c,
            selection_fg: c,
            selection_bg: c,
            ok: c,
            warn: c,
            error: c,
            alert_fg: c,
            alert_bg: c,
            sparkline: c,
        }
    }

    /// Parses theme `text` read from `file`; keys it leaves out keep `base`'s colours.
    pub fn parse(text: &str, file: &str, base: Theme) -> Result<Self, ThemeError> {
        let table: toml::Table = toml::from_str(text)
            .map_err(|e| ThemeError::Syntax { file: file.into(), reason: e.to_string().trim().replace('\n', " ") })?;
        let mut theme = base;
        for (key, value) in &table {
            let bad = |reason: String| ThemeError::BadColour { file: file.into(), key: key.clone(), reason };
            let colour = match value {
                toml::Value::String(s) => Color::from_str(s.trim()).map_err(|_| {
                    bad(format!("unknown colour {s:?} (use a name such as light-blue, \"#rrggbb\" or 0-255)"))
                })?,
                toml::Value::Integer(n) => u8::try_from(*n)
                    .map(Color::Indexed)
                    .map_err(|_| bad(format!("palette index {n} is out of range 0-255")))?,
                other => return Err(bad(format!("expected a colour, found a {}", other.type_str()))),
            };
            let slot = theme.slot(key).ok_or_else(|| ThemeError::UnknownKey { file: file.into(), key: key.clone() })?;
            *slot = colour;
        }
        Ok(theme)
    }

    fn slot(&mut self, key: &str) -> Option<&mut Color> {
        Some(match key {
            "fg" => &mut self.fg,
            "bg" => &mut self.bg,
            "muted" => &mut self.muted,
            "accent" => &mut self.accent,
            "border" => &mut self.border,
            "selection_fg" => &mut self.selection_fg,
            "selection_bg" => &mut self.selection_bg,
            "ok" => &mut self.ok,
            "warn" => &mut self.warn,
            "error" => &mut self.error,
            "alert_fg" => &mut self.alert_fg,
            "alert_bg" => &mut self.alert_bg,
            "sparkline" => &mut self.sparkline,
            _ => return None,
        })
    }

    /// Reads the theme file at `path` (keys it leaves out come from the dark theme).
    pub fn from_file(path: &Path) -> Result<Self, ThemeError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ThemeError::Unreadable { file: file.clone(), reason: e.to_string() })?;
        Self::parse(&text, &file, Self::default())
    }

    /// Finds theme `spec`: a built-in name, a name in `user_dir` (`NAME.toml`),
    /// or a path to a file (anything with a `/` or ending in `.toml`).
    /// A relative path is taken from `relative_to`.
    pub fn resolve(spec: &str, user_dir: Option<&Path>, relative_to: &Path) -> Result<Self, ThemeError> {
        if spec.contains('/') || spec.ends_with(".toml") {
            let path = PathBuf::from(spec);
            let path = if path.is_absolute() { path } else { relative_to.join(path) };
            return Self::from_file(&path);
        }
        if let Some(theme) = Self::built_in(spec) {
            return Ok(theme);
        }
        match user_dir.map(|dir| dir.join(format!("{spec}.toml"))) {
            Some(path) if path.exists() => Self::from_file(&path),
            _ => Err(ThemeError::UnknownName(spec.into())),
        }
    }

    /// Ordinary text.
    pub fn text(&self) -> Style {
        Style::new().fg(self.fg).bg(self.bg)
    }

    /// Secondary text.
    pub fn dim(&self) -> Style {
        Style::new().fg(self.muted)
    }

    /// Titles and the current tab.
    pub fn title(&self) -> Style {
        Style::new().fg(self.accent).add_modifier(Modifier::BOLD)
    }

    /// The selected row.
    pub fn selected(&self) -> Style {
        Style::new().fg(self.selection_fg).bg(self.selection_bg).add_modifier(Modifier::BOLD)
    }

    /// The badge that says approvals are waiting.
    pub fn alert(&self) -> Style {
        Style::new().fg(self.alert_fg).bg(self.alert_bg).add_modifier(Modifier::BOLD)
    }

    /// Text in colour `c`.
    pub fn coloured(&self, c: Color) -> Style {
        Style::new().fg(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_themes_parse_completely() {
        for (name, text) in BUILT_IN {
            let theme = Theme::parse(text, name, Theme::plain()).unwrap();
            let table: toml::Table = toml::from_str(text).unwrap();
            assert_eq!(table.len(), KEYS.len(), "{name} sets every key");
            assert_eq!(Theme::built_in(name), Some(theme));
        }
        assert_ne!(Theme::built_in("dark"), Theme::built_in("light"));
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let base = Theme::default();
        let err = Theme::parse("accent = \"blurple\"", "themes/mine.toml", base).unwrap_err();
        assert_eq!(
            err.to_string(),
            "themes/mine.toml: key 'accent': unknown colour \"blurple\" (use a name such as light-blue, \"#rrggbb\" or 0-255)"
        );
        let err = Theme::parse("acent = \"red\"", "t.toml", base).unwrap_err();
        assert!(err.to_string().starts_with("t.toml: unknown key 'acent'; theme keys are fg, bg,"), "{err}");
        let err = Theme::parse("ok = true", "t.toml", base).unwrap_err();
        assert_eq!(err.to_string(), "t.toml: key 'ok': expected a colour, found a boolean");
        let err = Theme::parse("ok = 300", "t.toml", base).unwrap_err();
        assert_eq!(err.to_string(), "t.toml: key 'ok': palette index 300 is out of range 0-255");
        let err = Theme::parse("ok = \"red", "t.toml", base).unwrap_err();
        assert!(err.to_string().starts_with("t.toml: not valid TOML"), "{err}");
    }

    #[test]
    fn a_partial_theme_keeps_the_rest_and_accepts_every_colour_form() {
        let theme =
            Theme::parse("accent = \"#ff8800\"\nok = 34\nwarn = \"Light Yellow\"", "t", Theme::default()).unwrap();
        assert_eq!(
            (theme.accent, theme.ok, theme.warn),
            (Color::Rgb(255, 136, 0), Color::Indexed(34), Color::LightYellow)
        );
        assert_eq!(theme.error, Theme::default().error);
    }

    #[test]
    fn names_paths_and_user_themes_resolve() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mine.toml"), "accent = \"red\"").unwrap();
        assert_eq!(Theme::resolve("light", None, dir.path()), Ok(Theme::built_in("light").unwrap()));
        assert_eq!(Theme::resolve("mine", Some(dir.path()), Path::new("/")).unwrap().accent, Color::Red);
        assert_eq!(Theme::resolve("mine.toml", None, dir.path()).unwrap().accent, Color::Red);
        assert_eq!(Theme::resolve("nope", Some(dir.path()), dir.path()), Err(ThemeError::UnknownName("nope".into())));
        let missing = Theme::resolve("/no/such/theme.toml", None, dir.path()).unwrap_err().to_string();
        assert!(missing.starts_with("/no/such/theme.toml: "), "{missing}");
    }
}
