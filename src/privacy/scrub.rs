//! Free text without people in it: teachers write pupils' names into
//! comments, topics, homework and reasons («Иванову переписать»), and
//! sometimes a document number. Before a free-text field leaves capture,
//! every name of the region's students, parents and teachers and every
//! long number in it is replaced.
//!
//! Invariants:
//! - The dictionary of names lives in capture's memory only; it is loaded
//!   from the journal at start and grows with the person rows the stream
//!   carries (a name once seen is never forgotten, so a renamed pupil's old
//!   name stays covered).
//! - Matching is by whole word, case-insensitive, `ё` read as `е`, and
//!   covers the common case endings of Russian names (Иванов, Иванова,
//!   Иванову, Ивановым, Ивановой; Мария, Марии; Сергей, Сергея): a word
//!   matches when it, or its stem without an ending, plus one of the
//!   nominative endings, is a known name. Over-redaction of a word that
//!   looks like a declined name is accepted; a missed name is not.
//! - A run of six or more digits, possibly split by single spaces or
//!   hyphens (SNILS `112-233-445 95`, passports `45 10 123456`, certificate
//!   and phone numbers), is replaced whole.
//! - Nothing here logs a value; callers count replacements, never texts.

use std::collections::HashSet;

/// What a name is replaced with.
pub const NAME: &str = "[ФИО]";
/// What a number is replaced with.
pub const NUMBER: &str = "[номер]";

/// Endings stripped from a word before looking its stem up, longest first.
const ENDINGS: &[&str] = &[
    "ами", "ями", "ого", "его", "ому", "ему", "ыми", "ими", "ых", "их", "ой", "ей", "ым", "им",
    "ом", "ем", "ую", "юю", "ая", "яя", "ах", "ях", "а", "я", "у", "ю", "е", "ы", "и", "о",
];
/// Nominative endings a stem may take back.
const NOMINATIVE: &[&str] = &["", "а", "я", "й", "ь"];

/// The names capture knows, and the replacement of free text.
#[derive(Debug, Default, Clone)]
pub struct Scrubber {
    names: HashSet<String>,
    /// Every name without each nominative ending it has (three letters or
    /// more): a declined word matches when its stem is here, one lookup per
    /// ending instead of one per ending and nominative.
    stems: HashSet<String>,
}

/// Lowercase with `ё` read as `е`.
fn fold(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    fold_into(word, &mut out);
    out
}

/// [`fold`] into `out`, cleared first. Russian and ASCII letters are
/// lowered directly; others through Unicode's tables.
fn fold_into(word: &str, out: &mut String) {
    out.clear();
    for c in word.chars() {
        match c {
            'А'..='Я' => out.push(char::from_u32(c as u32 + 0x20).unwrap_or(c)),
            'ё' | 'Ё' => out.push('е'),
            'а'..='я' => out.push(c),
            c if c.is_ascii() => out.push(c.to_ascii_lowercase()),
            c => out.extend(c.to_lowercase().map(|c| if c == 'ё' { 'е' } else { c })),
        }
    }
}

/// A letter of a word: Russian and ASCII letters answered directly (the
/// common case), the rest by Unicode's tables.
fn is_word_char(c: char) -> bool {
    matches!(c, 'а'..='я' | 'А'..='Я' | 'ё' | 'Ё' | 'a'..='z' | 'A'..='Z')
        || (!c.is_ascii() && c.is_alphabetic())
}

impl Scrubber {
    /// Learns a name (any part: last, first or middle); names shorter than
    /// three letters are ignored (they would match common words).
    pub fn learn(&mut self, name: &str) {
        for part in name.split(|c: char| !is_word_char(c)) {
            if part.chars().count() >= 3 {
                let name = fold(part);
                for n in NOMINATIVE {
                    if let Some(stem) = name.strip_suffix(n) {
                        if stem.chars().count() >= 3 {
                            self.stems.insert(stem.to_string());
                        }
                    }
                }
                self.names.insert(name);
            }
        }
    }

    /// Names known.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Whether `word` is a known name, declined or not; `w` is scratch.
    fn is_name(&self, word: &str, w: &mut String) -> bool {
        if word.chars().count() < 3 {
            return false;
        }
        fold_into(word, w);
        if self.names.contains(w.as_str()) {
            return true;
        }
        ENDINGS.iter().any(|e| {
            w.strip_suffix(e)
                .is_some_and(|stem| stem.chars().count() >= 3 && self.stems.contains(stem))
        })
    }

    /// `text` with names and long numbers replaced, and how many
    /// replacements were made (0: `text` is returned unchanged).
    pub fn scrub(&self, text: &str) -> (String, u32) {
        let mut out = String::with_capacity(text.len());
        let mut replaced = 0u32;
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        let mut i = 0;
        // Whether the output ends with a name mark and only spaces since.
        let mut after_name: Option<usize> = None;
        let mut folded = String::new();
        while i < chars.len() {
            let (start, c) = chars[i];
            if is_word_char(c) {
                let mut j = i;
                while j < chars.len() && is_word_char(chars[j].1) {
                    j += 1;
                }
                let end = chars.get(j).map(|x| x.0).unwrap_or(text.len());
                let word = &text[start..end];
                if self.is_name(word, &mut folded) {
                    replaced += 1;
                    match after_name {
                        // «Иванов Иван» → one mark.
                        Some(len) => out.truncate(len),
                        None => out.push_str(NAME),
                    }
                    after_name = Some(out.len());
                } else {
                    out.push_str(word);
                    after_name = None;
                }
                i = j;
            } else if c.is_ascii_digit() {
                // A run of digits with single space or hyphen separators.
                let mut j = i;
                let mut digits = 0;
                let mut last_digit = i;
                while j < chars.len() {
                    let ch = chars[j].1;
                    if ch.is_ascii_digit() {
                        digits += 1;
                        last_digit = j;
                        j += 1;
                    } else if (ch == ' ' || ch == '-')
                        && j + 1 < chars.len()
                        && chars[j + 1].1.is_ascii_digit()
                    {
                        j += 1;
                    } else {
                        break;
                    }
                }
                let end = chars.get(last_digit + 1).map(|x| x.0).unwrap_or(text.len());
                if digits >= 6 {
                    replaced += 1;
                    out.push_str(NUMBER);
                } else {
                    out.push_str(&text[start..end]);
                }
                after_name = None;
                i = last_digit + 1;
            } else {
                out.push(c);
                if !c.is_whitespace() {
                    after_name = None;
                }
                i += 1;
            }
        }
        if replaced == 0 {
            return (text.to_string(), 0);
        }
        (out, replaced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The matching rule as the module docs state it, looked up the slow
    /// way: the word, or its stem plus each nominative ending.
    fn by_the_rule(s: &Scrubber, word: &str) -> bool {
        let w = fold(word);
        word.chars().count() >= 3
            && (s.names.contains(&w)
                || ENDINGS.iter().any(|e| {
                    w.strip_suffix(e).is_some_and(|stem| {
                        stem.chars().count() >= 3
                            && NOMINATIVE
                                .iter()
                                .any(|n| s.names.contains(&format!("{stem}{n}")))
                    })
                }))
    }

    #[test]
    fn the_stem_index_matches_exactly_what_the_rule_matches() {
        let s = scrubber();
        let mut words = vec![
            "болезнь",
            "ОРВИ",
            "соревнования",
            "Ива",
            "Ивы",
            "Мар",
            "Мари",
        ];
        let declined: Vec<String> = s
            .names
            .iter()
            .flat_map(|n| {
                let n = n.clone();
                ENDINGS.iter().chain(NOMINATIVE).flat_map(move |e| {
                    let stem = NOMINATIVE
                        .iter()
                        .filter_map(|m| n.strip_suffix(m))
                        .map(str::to_string)
                        .collect::<Vec<_>>();
                    stem.into_iter().map(move |st| format!("{st}{e}"))
                })
            })
            .collect();
        words.extend(declined.iter().map(String::as_str));
        for w in words {
            assert_eq!(s.is_name(w, &mut String::new()), by_the_rule(&s, w), "{w}");
        }
    }

    /// The direct paths for Russian and ASCII letters answer as Unicode's
    /// tables do, for every character of the Basic Multilingual Plane.
    #[test]
    fn letters_and_lowering_agree_with_unicode() {
        let mut w = String::new();
        for c in (0..0x1_0000u32).filter_map(char::from_u32) {
            assert_eq!(is_word_char(c), c.is_alphabetic(), "{c:?}");
            let by_tables: String = c
                .to_lowercase()
                .map(|c| if c == 'ё' { 'е' } else { c })
                .collect();
            fold_into(&c.to_string(), &mut w);
            assert_eq!(w, by_tables, "{c:?}");
        }
    }

    fn scrubber() -> Scrubber {
        let mut s = Scrubber::default();
        for n in [
            "Иванов",
            "Иванова",
            "Мария",
            "Сергей",
            "Игорь",
            "Ольга",
            "Петрович",
            "Семёнова",
        ] {
            s.learn(n);
        }
        s
    }

    #[test]
    fn surnames_in_their_common_cases_are_replaced() {
        let s = scrubber();
        for (text, want) in [
            ("Иванов не сдал тетрадь", "[ФИО] не сдал тетрадь"),
            ("Иванову переписать", "[ФИО] переписать"),
            ("поговорить с Ивановым", "поговорить с [ФИО]"),
            ("у Ивановой освобождение", "у [ФИО] освобождение"),
            ("мама Ивановых", "мама [ФИО]"),
            ("Марии Ивановой — 5", "[ФИО] — 5"),
            ("Сергея нет", "[ФИО] нет"),
            ("для Игоря", "для [ФИО]"),
            ("ИВАНОВ опоздал", "[ФИО] опоздал"),
            ("Семенова отвечала", "[ФИО] отвечала"),
            ("Ольгу Петровичу", "[ФИО]"),
        ] {
            assert_eq!(s.scrub(text).0, want, "{text}");
        }
    }

    #[test]
    fn words_that_are_not_names_stay() {
        let s = scrubber();
        for text in [
            "Контрольная работа по теме «Дроби»",
            "§ 12, упр. 3–5, стр. 45",
            "болезнь: ОРВИ",
            "урок 2026 года",
        ] {
            assert_eq!(s.scrub(text), (text.to_string(), 0), "{text}");
        }
    }

    #[test]
    fn document_and_phone_numbers_are_replaced() {
        let s = scrubber();
        assert_eq!(
            s.scrub("СНИЛС 112-233-445 95, паспорт 45 10 123456").0,
            "СНИЛС [номер], паспорт [номер]"
        );
        assert_eq!(
            s.scrub("свидетельство IV-МЮ 654321").0,
            "свидетельство IV-МЮ [номер]"
        );
        assert_eq!(s.scrub("звонить +7 912 345-67-89").0, "звонить +[номер]");
        assert_eq!(s.scrub("задачи 12-15 и 101").1, 0);
    }
}
