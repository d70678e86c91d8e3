//! The people behind operator actions, as far as Ferry can tell them apart today.
//!
//! With an identity (`[identity]`, see [`crate::identity`]) the acting person is the
//! authenticated subject. With the shared operator token (break-glass) or the local database, it
//! is a name the caller sends (`X-Ferry-User`, `--user`). Two spellings of one name must be one person — otherwise
//! `alice` triggers a promotion and `Alice` and `ALICE` approve it — so names are compared in a
//! canonical form: Unicode compatibility normalization (NFKC, which folds full-width and other
//! look-alike presentation forms), lower case, normalized again, trimmed. Names carrying control
//! or invisible formatting characters are refused: they exist to look like someone else.

use unicode_normalization::UnicodeNormalization;

/// The longest name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 128;

/// How an operator action reached Ferry, recorded beside the approval.
/// The break-glass channel: the name is whatever `X-Ferry-User` claimed.
pub const VIA_OPERATOR_TOKEN: &str = "operator-token (X-Ferry-User as claimed, unverified)";
pub const VIA_LOCAL_DATABASE: &str = "local-database (ferry --config)";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a person's name is empty")]
    Empty,
    #[error("a person's name is longer than {MAX_NAME_CHARS} characters")]
    TooLong,
    #[error("a person's name may not contain control or invisible formatting characters (found U+{0:04X})")]
    Hidden(u32),
}

/// The canonical form of a person's name: `Alice`, `ALICE`, ` alice ` and full-width `ａｌｉｃｅ`
/// are all `alice`.
pub fn canonical(name: &str) -> Result<String, NameError> {
    let folded: String = name.nfkc().collect::<String>().to_lowercase().nfkc().collect();
    let folded = folded.trim();
    if folded.is_empty() {
        return Err(NameError::Empty);
    }
    if folded.chars().count() > MAX_NAME_CHARS {
        return Err(NameError::TooLong);
    }
    if let Some(c) = folded.chars().find(|c| is_hidden(*c)) {
        return Err(NameError::Hidden(c as u32));
    }
    Ok(folded.to_string())
}

/// Whether two names are one person. A name that is not valid matches nobody.
pub fn same(a: &str, b: &str) -> bool {
    matches!((canonical(a), canonical(b)), (Ok(a), Ok(b)) if a == b)
}

/// Control characters and the invisible format characters (zero-width spaces and joiners,
/// bidirectional overrides, the BOM, soft hyphen) that make two names look alike.
fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
            | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFB}' | '\u{E0000}'..='\u{E0FFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_name_are_one_person() {
        for spelling in ["alice", "Alice", "ALICE", " alice ", "ａｌｉｃｅ", "ALİCE".replace('İ', "I").as_str()]
        {
            assert_eq!(canonical(spelling).unwrap(), "alice", "{spelling:?}");
        }
        assert!(same("Renée", "RENÉE"));
        assert!(same("Rene\u{301}e", "Renée"), "combining and precomposed accents are one letter");
        assert!(!same("alice", "bob"));
    }

    #[test]
    fn hidden_characters_and_empty_names_are_refused() {
        assert_eq!(canonical("   "), Err(NameError::Empty));
        assert_eq!(canonical("al\u{200B}ice"), Err(NameError::Hidden(0x200B)));
        assert_eq!(canonical("alice\u{202E}"), Err(NameError::Hidden(0x202E)));
        assert_eq!(canonical("alice\nbob"), Err(NameError::Hidden(0x0A)));
        assert_eq!(canonical(&"a".repeat(MAX_NAME_CHARS + 1)), Err(NameError::TooLong));
        assert!(!same("al\u{200B}ice", "al\u{200B}ice"), "an invalid name matches nobody, not even itself");
    }
}
