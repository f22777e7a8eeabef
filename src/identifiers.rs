//! Russian identifiers that appear in school journals: SNILS, INN, OGRN, KPP,
//! passport and birth-certificate numbers.
//!
//! Two jobs live here and nowhere else:
//! - **validation**, with the checksum rules from `shared/domain.md`, so that
//!   capture can flag bad input instead of hashing garbage;
//! - **normalization**, the exact form that is hashed by depersonalization.
//!   Changing a normalization changes every depersonalized id downstream, so
//!   each rule is written out and unit-tested.
//!
//! The synthetic region uses the `*_check_digits` functions to make valid
//! numbers (and deliberately broken ones).
//!
//! Nothing here logs: these values are personal data.

use std::fmt;

/// Why an identifier was rejected. The variants never carry the value itself,
/// so an error can be logged or counted without leaking personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Wrong number of digits (or non-digit characters) after normalization.
    Format,
    /// Digits are fine, the check digits do not match.
    Checksum,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::Format => f.write_str("malformed"),
            Invalid::Checksum => f.write_str("checksum mismatch"),
        }
    }
}

fn digits_of(s: &str) -> Vec<u32> {
    s.chars().filter_map(|c| c.to_digit(10)).collect()
}

fn only_digits_and_separators(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_digit() || c == '-' || c == ' ' || c == '\u{a0}')
}

/// SNILS normalized for hashing: the 11 digits only (`112-233-445 95` → `11223344595`).
pub fn normalize_snils(raw: &str) -> Result<String, Invalid> {
    if !only_digits_and_separators(raw.trim()) {
        return Err(Invalid::Format);
    }
    let d = digits_of(raw);
    if d.len() != 11 {
        return Err(Invalid::Format);
    }
    let body: u64 = d[..9].iter().fold(0, |acc, &x| acc * 10 + x as u64);
    // The checksum applies to numbers above 001-001-998.
    if body > 1_001_998 {
        let check = d[9] * 10 + d[10];
        if check != snils_check(&d[..9]) {
            return Err(Invalid::Checksum);
        }
    }
    Ok(d.iter()
        .map(|x| char::from_digit(*x, 10).unwrap())
        .collect())
}

/// The two SNILS check digits of a 9-digit body: Σ dᵢ·(9−i+1), then mod 101 mod 100.
pub fn snils_check(body: &[u32]) -> u32 {
    debug_assert_eq!(body.len(), 9);
    let s: u32 = body
        .iter()
        .enumerate()
        .map(|(i, d)| d * (9 - i as u32))
        .sum();
    (s % 101) % 100
}

/// Formats 11 SNILS digits the way people write them: `112-233-445 95`.
pub fn format_snils(digits: &str) -> String {
    format!(
        "{}-{}-{} {}",
        &digits[0..3],
        &digits[3..6],
        &digits[6..9],
        &digits[9..11]
    )
}

const INN10_W: [u32; 9] = [2, 4, 10, 3, 5, 9, 4, 6, 8];
const INN12_W1: [u32; 10] = [7, 2, 4, 10, 3, 5, 9, 4, 6, 8];
const INN12_W2: [u32; 11] = [3, 7, 2, 4, 10, 3, 5, 9, 4, 6, 8];

fn weighted(d: &[u32], w: &[u32]) -> u32 {
    (d.iter().zip(w).map(|(a, b)| a * b).sum::<u32>() % 11) % 10
}

/// Check digit of a 10-digit (legal entity) INN from its first 9 digits.
pub fn inn10_check(first9: &[u32]) -> u32 {
    weighted(first9, &INN10_W)
}

/// Check digits 11 and 12 of a personal INN from its first 10 digits.
pub fn inn12_check(first10: &[u32]) -> (u32, u32) {
    let c11 = weighted(first10, &INN12_W1);
    let mut eleven = first10.to_vec();
    eleven.push(c11);
    (c11, weighted(&eleven, &INN12_W2))
}

/// Validates a 10- or 12-digit INN.
pub fn validate_inn(raw: &str) -> Result<(), Invalid> {
    let s = raw.trim();
    if !s.chars().all(|c| c.is_ascii_digit()) {
        return Err(Invalid::Format);
    }
    let d = digits_of(s);
    match d.len() {
        10 if inn10_check(&d[..9]) == d[9] => Ok(()),
        12 if inn12_check(&d[..10]) == (d[10], d[11]) => Ok(()),
        10 | 12 => Err(Invalid::Checksum),
        _ => Err(Invalid::Format),
    }
}

/// Check digit of a 13-digit OGRN (first 12 digits mod 11 mod 10) or a
/// 15-digit OGRNIP (first 14 digits mod 13 mod 10).
pub fn ogrn_check(body: &[u32]) -> u32 {
    let n: u64 = body.iter().fold(0, |acc, &x| acc * 10 + x as u64);
    match body.len() {
        12 => ((n % 11) % 10) as u32,
        14 => ((n % 13) % 10) as u32,
        other => panic!("OGRN body must have 12 or 14 digits, got {other}"),
    }
}

/// Validates an OGRN (13 digits) or OGRNIP (15 digits).
pub fn validate_ogrn(raw: &str) -> Result<(), Invalid> {
    let s = raw.trim();
    if !s.chars().all(|c| c.is_ascii_digit()) {
        return Err(Invalid::Format);
    }
    let d = digits_of(s);
    match d.len() {
        13 | 15 if ogrn_check(&d[..d.len() - 1]) == d[d.len() - 1] => Ok(()),
        13 | 15 => Err(Invalid::Checksum),
        _ => Err(Invalid::Format),
    }
}

/// Validates a KPP: `^\d{4}[\dA-Z]{2}\d{3}$`.
pub fn validate_kpp(raw: &str) -> Result<(), Invalid> {
    let b = raw.as_bytes();
    let ok = b.len() == 9
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4..6]
            .iter()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        && b[6..].iter().all(u8::is_ascii_digit);
    if ok {
        Ok(())
    } else {
        Err(Invalid::Format)
    }
}

/// Passport normalized for hashing: 4-digit series + 6-digit number, digits only.
pub fn normalize_passport(series: &str, number: &str) -> Result<String, Invalid> {
    let s = digits_of(series);
    let n = digits_of(number);
    if s.len() != 4
        || n.len() != 6
        || !only_digits_and_separators(series.trim())
        || !only_digits_and_separators(number.trim())
    {
        return Err(Invalid::Format);
    }
    Ok(s.iter()
        .chain(n.iter())
        .map(|x| char::from_digit(*x, 10).unwrap())
        .collect())
}

/// Maps Cyrillic look-alikes people type in the Roman part of a birth
/// certificate series to their Latin letters (І→I, Х→X, С→C, Л→L, У→V).
fn roman_lookalike(c: char) -> char {
    match c {
        'І' | 'і' | 'i' | 'Ӏ' | '1' => 'I',
        'Х' | 'х' | 'x' => 'X',
        'С' | 'с' | 'c' => 'C',
        'Л' | 'л' | 'l' => 'L',
        'У' | 'у' | 'v' => 'V',
        other => other,
    }
}

/// Birth certificate normalized for hashing: `<ROMAN>-<ДВЕ БУКВЫ><6 digits>`,
/// e.g. `IV-МЮ123456`. The Roman part is mapped from Cyrillic look-alikes to
/// Latin, the letters are upper-cased Cyrillic, spaces are removed.
pub fn normalize_birth_certificate(series: &str, number: &str) -> Result<String, Invalid> {
    let compact: String = series
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>();
    let (roman, letters) = compact.split_once('-').ok_or(Invalid::Format)?;
    let roman: String = roman.chars().map(roman_lookalike).collect();
    if roman.is_empty() || !roman.chars().all(|c| "IVXLC".contains(c)) {
        return Err(Invalid::Format);
    }
    let letters: String = letters.chars().flat_map(char::to_uppercase).collect();
    if letters.chars().count() != 2
        || !letters
            .chars()
            .all(|c| ('А'..='Я').contains(&c) || c == 'Ё')
    {
        return Err(Invalid::Format);
    }
    let n: String = number.chars().filter(|c| !c.is_whitespace()).collect();
    if n.len() != 6 || !n.chars().all(|c| c.is_ascii_digit()) {
        return Err(Invalid::Format);
    }
    Ok(format!("{roman}-{letters}{n}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snils_from_domain_doc_normalizes() {
        // 112-233-445 95 is the classic valid example.
        assert_eq!(normalize_snils("112-233-445 95").unwrap(), "11223344595");
        assert_eq!(normalize_snils("11223344595").unwrap(), "11223344595");
    }

    #[test]
    fn snils_checksum_rejects_wrong_digits() {
        assert_eq!(normalize_snils("112-233-445 96"), Err(Invalid::Checksum));
        assert_eq!(normalize_snils("112-233-445 9"), Err(Invalid::Format));
        assert_eq!(normalize_snils("112-233-445 9x"), Err(Invalid::Format));
    }

    #[test]
    fn snils_low_numbers_have_no_checksum() {
        assert!(normalize_snils("001-001-997 00").is_ok());
    }

    #[test]
    fn snils_check_handles_100_and_101() {
        // Body whose weighted sum is exactly 101 → 0, exactly 100 → 0.
        // 9*0+8*0+...: construct sums directly.
        let body = [0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(snils_check(&body), 0);
        // Sum 100: d1=9 (81) + d2=2 (16) + d9=3 (3) = 100.
        assert_eq!(snils_check(&[9, 2, 0, 0, 0, 0, 0, 0, 3]), 0);
        // Sum 101 → 0; sum 102 → 1.
        assert_eq!(snils_check(&[9, 2, 0, 0, 0, 0, 0, 1, 2]), 0);
        assert_eq!(snils_check(&[9, 2, 0, 0, 0, 0, 0, 1, 3]), 1);
        // Below 100 the sum itself is the check number.
        assert_eq!(snils_check(&[0, 0, 0, 0, 0, 0, 0, 0, 7]), 7);
    }

    #[test]
    fn inn_examples() {
        // Well-known valid legal-entity INN (Sberbank): 7707083893.
        assert!(validate_inn("7707083893").is_ok());
        assert_eq!(validate_inn("7707083894"), Err(Invalid::Checksum));
        // Valid personal INN example: 500100732259.
        assert!(validate_inn("500100732259").is_ok());
        assert_eq!(validate_inn("500100732258"), Err(Invalid::Checksum));
        assert_eq!(validate_inn("77070838"), Err(Invalid::Format));
    }

    #[test]
    fn ogrn_examples() {
        // Sberbank OGRN 1027700132195.
        assert!(validate_ogrn("1027700132195").is_ok());
        assert_eq!(validate_ogrn("1027700132196"), Err(Invalid::Checksum));
        // OGRNIP example 304500116000157.
        assert!(validate_ogrn("304500116000157").is_ok());
    }

    #[test]
    fn kpp_pattern() {
        assert!(validate_kpp("773601001").is_ok());
        assert!(validate_kpp("7736AB001").is_ok());
        assert!(validate_kpp("7736ab001").is_err());
        assert!(validate_kpp("77360100").is_err());
    }

    #[test]
    fn passport_normalization() {
        assert_eq!(normalize_passport("45 08", "123456").unwrap(), "4508123456");
        assert_eq!(normalize_passport("450", "123456"), Err(Invalid::Format));
    }

    #[test]
    fn birth_certificate_maps_cyrillic_lookalikes() {
        // Cyrillic І and У typed for Roman I and V.
        assert_eq!(
            normalize_birth_certificate("ІУ-мю", "123456").unwrap(),
            "IV-МЮ123456"
        );
        assert_eq!(
            normalize_birth_certificate("XII-АБ", "000001").unwrap(),
            "XII-АБ000001"
        );
        // Latin letters in the Cyrillic part are invalid.
        assert_eq!(
            normalize_birth_certificate("IV-MU", "123456"),
            Err(Invalid::Format)
        );
        assert_eq!(
            normalize_birth_certificate("IV-МЮ", "12345"),
            Err(Invalid::Format)
        );
    }
}
