//! Depersonalization (обезличивание): what lets the showcase know a person
//! without knowing who they are.
//!
//! Invariants:
//! - A depersonalized id is the GOST R 34.11-2012 (Streebog) 512-bit hash,
//!   lowercase hex, of the value normalized by [`crate::identifiers`], with
//!   no salt, so the federal side can match a person across systems. In
//!   keyed mode it is HMAC-Streebog-512 with the regional secret instead.
//! - An identifier that fails validation is never hashed: the caller gets
//!   the reason ([`Invalid`]) and flags the event.
//! - Nothing here logs or formats raw values; [`Depersonalizer`]'s `Debug`
//!   hides the key.

use hmac::{Hmac, Mac};
use streebog::{Digest, Streebog512};

use crate::config::{HashForm, HashForms};
use crate::identifiers::{self, Invalid};

pub mod scrub;

/// How identifiers are hashed.
#[derive(Clone)]
pub enum Mode {
    /// Unsalted Streebog-512: matchable across systems (the federal default).
    Plain,
    /// HMAC-Streebog-512 with a regional secret: for topics that never need
    /// cross-system matching.
    Keyed(Vec<u8>),
}

#[derive(Clone)]
pub struct Depersonalizer {
    mode: Mode,
    forms: HashForms,
}

impl std::fmt::Debug for Depersonalizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.mode {
            Mode::Plain => f.write_str("Depersonalizer(streebog512)"),
            Mode::Keyed(_) => f.write_str("Depersonalizer(hmac-streebog512, key ***)"),
        }
    }
}

/// The kinds of identifier capture depersonalizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Snils,
    Passport,
    BirthCertificate,
}

impl IdKind {
    /// Stable name used in quality flags and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            IdKind::Snils => "snils",
            IdKind::Passport => "passport",
            IdKind::BirthCertificate => "birth_certificate",
        }
    }
}

impl Depersonalizer {
    pub fn new(mode: Mode) -> Self {
        Depersonalizer {
            mode,
            forms: HashForms::default(),
        }
    }

    /// Hashes the identifiers in `forms` (normalized by default).
    pub fn with_forms(mut self, forms: HashForms) -> Self {
        self.forms = forms;
        self
    }

    /// Hex digest of an already normalized value.
    pub fn digest(&self, normalized: &str) -> String {
        let bytes = match &self.mode {
            Mode::Plain => Streebog512::digest(normalized.as_bytes()).to_vec(),
            Mode::Keyed(key) => {
                let mut mac = <Hmac<Streebog512> as Mac>::new_from_slice(key)
                    .expect("HMAC accepts keys of any length");
                mac.update(normalized.as_bytes());
                mac.finalize().into_bytes().to_vec()
            }
        };
        hex(&bytes)
    }

    /// Validates, normalizes and hashes one identifier. `second` is the
    /// number for two-part documents (series, number).
    pub fn identifier(
        &self,
        kind: IdKind,
        first: &str,
        second: Option<&str>,
    ) -> Result<String, Invalid> {
        // Validated in every form: an invalid identifier is never hashed.
        let (normalized, form) = match kind {
            IdKind::Snils => (identifiers::normalize_snils(first)?, self.forms.snils),
            IdKind::Passport => (
                identifiers::normalize_passport(first, second.unwrap_or(""))?,
                self.forms.passport,
            ),
            IdKind::BirthCertificate => (
                identifiers::normalize_birth_certificate(first, second.unwrap_or(""))?,
                self.forms.birth_certificate,
            ),
        };
        Ok(match form {
            HashForm::Normalized => self.digest(&normalized),
            HashForm::Stripped => {
                let stripped: String = first
                    .chars()
                    .chain(second.unwrap_or("").chars())
                    .filter(|c| !c.is_whitespace())
                    .collect();
                self.digest(&stripped)
            }
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streebog512_matches_the_standard_test_vector() {
        // GOST R 34.11-2012, example 1: M1 = "012345678901234567890123456789012345678901234567890123456789012".
        let d = Depersonalizer::new(Mode::Plain);
        assert_eq!(
            d.digest("012345678901234567890123456789012345678901234567890123456789012"),
            "1b54d01a4af5b9d5cc3d86d68d285462b19abc2475222f35c085122be4ba1ffa00ad30f8767b3a82384c6574f024c311e2a481332b08ef7f41797891c1646f48"
        );
    }

    /// The test vectors of docs/capture.md, "Hash forms".
    #[test]
    fn each_hash_form_has_its_test_vector() {
        let normalized = Depersonalizer::new(Mode::Plain);
        let stripped = Depersonalizer::new(Mode::Plain).with_forms(HashForms {
            snils: HashForm::Stripped,
            ..HashForms::default()
        });
        let raw = "112-233-445 95";
        assert_eq!(
            normalized.identifier(IdKind::Snils, raw, None).unwrap(),
            normalized.digest("11223344595")
        );
        assert_eq!(
            stripped.identifier(IdKind::Snils, raw, None).unwrap(),
            normalized.digest("112-233-44595")
        );
        assert_eq!(
            normalized.digest("11223344595"),
            SNILS_NORMALIZED_VECTOR,
            "Streebog-512 of 11223344595"
        );
        assert_eq!(
            normalized.digest("112-233-44595"),
            SNILS_STRIPPED_VECTOR,
            "Streebog-512 of 112-233-44595"
        );
        // Invalid stays unhashed in either form.
        assert_eq!(
            stripped.identifier(IdKind::Snils, "112-233-445 96", None),
            Err(Invalid::Checksum)
        );
    }

    const SNILS_NORMALIZED_VECTOR: &str = "afb81d49fa9d55c7701efd5735300c4950b2259178d60e0a134d4d30b277640d8fc3c26b19c451be6ba071bc8069f9df0b1fa3e094ad42508d120acb9be7e733";
    const SNILS_STRIPPED_VECTOR: &str = "ac1ff209643f37cd5c48c9db78985df28ee942227bd968698ec7fafd32913c239a972412a9c907e0d4498f82cc0fb30d01552340e6f97fa9a5ec992da7c1a535";

    #[test]
    fn snils_is_hashed_in_its_normalized_form() {
        let d = Depersonalizer::new(Mode::Plain);
        let a = d.identifier(IdKind::Snils, "112-233-445 95", None).unwrap();
        let b = d.identifier(IdKind::Snils, "11223344595", None).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, d.digest("11223344595"));
        assert_eq!(a.len(), 128);
        assert!(!a.contains("11223344595"));
    }

    #[test]
    fn invalid_identifiers_are_not_hashed() {
        let d = Depersonalizer::new(Mode::Plain);
        assert_eq!(
            d.identifier(IdKind::Snils, "112-233-445 96", None),
            Err(Invalid::Checksum)
        );
        assert_eq!(
            d.identifier(IdKind::Passport, "45 0", Some("123456")),
            Err(Invalid::Format)
        );
    }

    #[test]
    fn lookalike_birth_certificates_hash_alike() {
        let d = Depersonalizer::new(Mode::Plain);
        assert_eq!(
            d.identifier(IdKind::BirthCertificate, "ІУ-МЮ", Some("123456"))
                .unwrap(),
            d.identifier(IdKind::BirthCertificate, "IV-МЮ", Some("123456"))
                .unwrap()
        );
    }

    #[test]
    fn keyed_mode_differs_from_plain_and_depends_on_the_key() {
        let plain = Depersonalizer::new(Mode::Plain).digest("11223344595");
        let k1 = Depersonalizer::new(Mode::Keyed(b"region-69".to_vec())).digest("11223344595");
        let k2 = Depersonalizer::new(Mode::Keyed(b"region-70".to_vec())).digest("11223344595");
        assert_ne!(plain, k1);
        assert_ne!(k1, k2);
        assert!(
            !format!("{:?}", Depersonalizer::new(Mode::Keyed(b"secret".to_vec())))
                .contains("secret")
        );
    }
}
