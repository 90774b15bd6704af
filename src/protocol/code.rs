//! Session codes: `AIC-XXXX-XXXX-XXXX`, the credential that names one machine.

use std::fmt;
use std::str::FromStr;

/// The 32 symbols a code is written in: digits and capitals without `I L O U`,
/// so that a code read aloud or off a screen cannot be misread.
pub const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// How many symbols a code carries (5 bits each: 60 bits from the OS CSPRNG).
pub const SYMBOLS: usize = 12;

/// The prefix every canonical code starts with.
pub const PREFIX: &str = "AIC";

/// A parsed, valid session code. `Display` gives the canonical form.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionCode([u8; SYMBOLS]);

/// Why a string is not a session code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// A symbol outside the alphabet; `I`, `L`, `O` and `U` get their own hint.
    #[error(
        "{0:?} is not used in session codes (they never contain I, L, O or U); check the code, e.g. AIC-7K3P-WX9M-RTBN"
    )]
    BadSymbol(char),
    /// Too few or too many symbols.
    #[error("a session code has 12 symbols after AIC- (AIC-XXXX-XXXX-XXXX); this one has {0}")]
    WrongLength(usize),
}

impl SessionCode {
    /// A new random code from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut bytes = [0u8; SYMBOLS];
        getrandom::fill(&mut bytes).expect("the OS random number generator failed");
        // 256 is a multiple of 32, so masking to 5 bits keeps every symbol equally likely.
        Self(bytes.map(|b| ALPHABET[usize::from(b & 31)]))
    }

    /// The canonical text, `AIC-XXXX-XXXX-XXXX`.
    pub fn canonical(&self) -> String {
        self.to_string()
    }

    /// Only the last group shown (`AIC-****-****-RTBN`): enough to tell
    /// which of a machine's codes something came with, not enough to use it.
    pub fn masked(&self) -> String {
        let last = std::str::from_utf8(&self.0[8..12]).unwrap_or("");
        format!("{PREFIX}-****-****-{last}")
    }
}

impl FromStr for SessionCode {
    type Err = CodeError;

    /// Accepts any case, with or without the `AIC` prefix and dashes, and
    /// surrounding white space.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let rest = match s.get(..PREFIX.len()) {
            Some(p) if p.eq_ignore_ascii_case(PREFIX) => &s[PREFIX.len()..],
            _ => s,
        };
        let mut out = [0u8; SYMBOLS];
        let mut n = 0;
        for c in rest.chars().filter(|c| *c != '-') {
            let up = c.to_ascii_uppercase();
            if !up.is_ascii() || !ALPHABET.contains(&(up as u8)) {
                return Err(CodeError::BadSymbol(c));
            }
            if n < SYMBOLS {
                out[n] = up as u8;
            }
            n += 1;
        }
        if n != SYMBOLS {
            return Err(CodeError::WrongLength(n));
        }
        Ok(Self(out))
    }
}

impl fmt::Display for SessionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |r: std::ops::Range<usize>| std::str::from_utf8(&self.0[r]).unwrap_or("");
        write!(f, "{PREFIX}-{}-{}-{}", s(0..4), s(4..8), s(8..12))
    }
}

/// Debug never prints the code itself: it is a credential and Debug output
/// ends up in logs.
impl fmt::Debug for SessionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionCode(AIC-****-****-****)")
    }
}

impl serde::Serialize for SessionCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SessionCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn masked_shows_only_the_last_group() {
        let code: SessionCode = "AIC-7K3P-WX9M-RTBN".parse().unwrap();
        assert_eq!(code.masked(), "AIC-****-****-RTBN");
    }

    #[test]
    fn parses_loose_forms() {
        let c: SessionCode = "AIC-7K3P-WX9M-RTBN".parse().unwrap();
        assert_eq!(c.to_string(), "AIC-7K3P-WX9M-RTBN");
        for loose in ["aic-7k3p-wx9m-rtbn", "7K3PWX9MRTBN", " aic7k3pwx9mrtbn\n", "AIC-7K3P-WX9MRTBN"] {
            assert_eq!(loose.parse::<SessionCode>().unwrap(), c, "{loose}");
        }
    }

    #[test]
    fn rejects_ambiguous_letters_by_name() {
        for (bad, ch) in [
            ("AIC-7K3P-WX9M-RTBI", 'I'),
            ("AIC-7K3P-WX9M-RTBl", 'l'),
            ("AIC-OK3P-WX9M-RTBN", 'O'),
            ("AIC-7K3P-WX9M-RTBU", 'U'),
        ] {
            let err = bad.parse::<SessionCode>().unwrap_err();
            assert_eq!(err, CodeError::BadSymbol(ch));
            assert!(err.to_string().contains("never contain I, L, O or U"), "{err}");
        }
    }

    #[test]
    fn rejects_wrong_length() {
        assert_eq!("AIC-7K3P".parse::<SessionCode>(), Err(CodeError::WrongLength(4)));
        assert_eq!("AIC-7K3P-WX9M-RTBN-1".parse::<SessionCode>(), Err(CodeError::WrongLength(13)));
        assert_eq!("".parse::<SessionCode>(), Err(CodeError::WrongLength(0)));
    }

    #[test]
    fn debug_hides_the_code() {
        let c = SessionCode::generate();
        assert!(!format!("{c:?}").contains(&c.to_string()[4..8]));
    }

    proptest! {
        #[test]
        fn generated_codes_round_trip(_seed in 0u32..1000) {
            let c = SessionCode::generate();
            let text = c.to_string();
            prop_assert_eq!(text.len(), 18);
            prop_assert_eq!(text.parse::<SessionCode>().unwrap(), c);
            prop_assert_eq!(text.to_lowercase().replace('-', "").parse::<SessionCode>().unwrap(), c);
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,40}") {
            let _ = s.parse::<SessionCode>();
        }
    }
}
