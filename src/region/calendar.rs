//! The school calendar and curriculum of the synthetic region.

use chrono::{Datelike, Duration, NaiveDate, Weekday};

/// Start year of the academic year containing `d` (1 September – 31 August).
pub fn academic_year_of(d: NaiveDate) -> i32 {
    if d.month() >= 9 {
        d.year()
    } else {
        d.year() - 1
    }
}

pub fn ymd(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).expect("valid calendar date")
}

/// A grading period: quarters for levels 2–9, halves for 10–11.
#[derive(Debug, Clone, Copy)]
pub struct Period {
    pub code: &'static str,
    pub ends: NaiveDate,
}

pub fn periods(year: i32, level: i16) -> Vec<Period> {
    if level >= 10 {
        vec![
            Period {
                code: "H1",
                ends: ymd(year, 12, 27),
            },
            Period {
                code: "H2",
                ends: ymd(year + 1, 5, 25),
            },
        ]
    } else {
        vec![
            Period {
                code: "Q1",
                ends: ymd(year, 10, 24),
            },
            Period {
                code: "Q2",
                ends: ymd(year, 12, 27),
            },
            Period {
                code: "Q3",
                ends: ymd(year + 1, 3, 20),
            },
            Period {
                code: "Q4",
                ends: ymd(year + 1, 5, 25),
            },
        ]
    }
}

/// School days of academic year `year` (Monday–Friday, without holidays and
/// breaks), up to and including `until`.
pub fn school_days(year: i32, until: NaiveDate) -> Vec<NaiveDate> {
    let end = ymd(year + 1, 5, 25).min(until);
    let breaks = [
        (ymd(year, 10, 25), ymd(year, 11, 4)),
        (ymd(year, 12, 28), ymd(year + 1, 1, 8)),
        (ymd(year + 1, 3, 21), ymd(year + 1, 3, 29)),
    ];
    let holidays = [
        ymd(year + 1, 2, 23),
        ymd(year + 1, 3, 8),
        ymd(year + 1, 5, 1),
        ymd(year + 1, 5, 9),
    ];
    let mut out = Vec::new();
    let mut d = ymd(year, 9, 1);
    while d <= end {
        let weekend = matches!(d.weekday(), Weekday::Sat | Weekday::Sun);
        let on_break = breaks.iter().any(|(a, b)| d >= *a && d <= *b);
        if !weekend && !on_break && !holidays.contains(&d) {
            out.push(d);
        }
        d += Duration::days(1);
    }
    out
}

pub struct Subject {
    pub code: &'static str,
    pub name: &'static str,
    pub pass_fail: bool,
    /// In primary school (levels 1–4) taught by the class's own teacher.
    pub homeroom: bool,
    /// Lessons per week at levels 1..=11.
    pub hours: [u8; 11],
}

/// The curriculum (after the federal basic plans, simplified).
pub const SUBJECTS: &[Subject] = &[
    Subject {
        code: "RUS",
        name: "Русский язык",
        pass_fail: false,
        homeroom: true,
        hours: [5, 5, 5, 5, 6, 6, 4, 3, 3, 2, 2],
    },
    Subject {
        code: "LITR",
        name: "Литературное чтение",
        pass_fail: false,
        homeroom: true,
        hours: [4, 4, 4, 3, 0, 0, 0, 0, 0, 0, 0],
    },
    Subject {
        code: "LIT",
        name: "Литература",
        pass_fail: false,
        homeroom: false,
        hours: [0, 0, 0, 0, 3, 3, 2, 2, 3, 3, 3],
    },
    Subject {
        code: "MATH",
        name: "Математика",
        pass_fail: false,
        homeroom: true,
        hours: [4, 4, 4, 4, 5, 5, 0, 0, 0, 0, 0],
    },
    Subject {
        code: "ALG",
        name: "Алгебра",
        pass_fail: false,
        homeroom: false,
        hours: [0, 0, 0, 0, 0, 0, 3, 3, 3, 3, 3],
    },
    Subject {
        code: "GEOM",
        name: "Геометрия",
        pass_fail: false,
        homeroom: false,
        hours: [0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2],
    },
    Subject {
        code: "PROB",
        name: "Вероятность и статистика",
        pass_fail: false,
        homeroom: false,
        hours: [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1],
    },
    Subject {
        code: "WORLD",
        name: "Окружающий мир",
        pass_fail: false,
        homeroom: true,
        hours: [2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0],
    },
    Subject {
        code: "ENG",
        name: "Английский язык",
        pass_fail: false,
        homeroom: false,
        hours: [0, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3],
    },
    Subject {
        code: "HIST",
        name: "История",
        pass_fail: false,
        homeroom: false,
        hours: [0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2],
    },
    Subject {
        code: "SOC",
        name: "Обществознание",
        pass_fail: false,
        homeroom: false,
        hours: [0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2],
    },
    Subject {
        code: "GEO",
        name: "География",
        pass_fail: false,
        homeroom: false,
        hours: [0, 0, 0, 0, 1, 1, 2, 2, 2, 1, 1],
    },
    Subject {
        code: "BIO",
        name: "Биология",
        pass_fail: false,
        homeroom: false,
        hours: [0, 0, 0, 0, 1, 1, 1, 2, 2, 1, 1],
    },
    Subject {
        code: "PHYS",
        name: "Физика",
        pass_fail: false,
        homeroom: false,
        hours: [0, 0, 0, 0, 0, 0, 2, 2, 3, 2, 2],
    },
    Subject {
        code: "CHEM",
        name: "Химия",
        pass_fail: false,
        homeroom: false,
        hours: [0, 0, 0, 0, 0, 0, 0, 2, 2, 1, 1],
    },
    Subject {
        code: "INF",
        name: "Информатика",
        pass_fail: false,
        homeroom: false,
        hours: [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1],
    },
    Subject {
        code: "MUS",
        name: "Музыка",
        pass_fail: false,
        homeroom: false,
        hours: [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    },
    Subject {
        code: "ART",
        name: "Изобразительное искусство",
        pass_fail: false,
        homeroom: true,
        hours: [1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0],
    },
    Subject {
        code: "TECH",
        name: "Труд (технология)",
        pass_fail: false,
        homeroom: true,
        hours: [1, 1, 1, 1, 2, 2, 2, 1, 1, 0, 0],
    },
    Subject {
        code: "PE",
        name: "Физическая культура",
        pass_fail: false,
        homeroom: false,
        hours: [2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2],
    },
    Subject {
        code: "OBZR",
        name: "Основы безопасности и защиты Родины",
        pass_fail: false,
        homeroom: false,
        hours: [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1],
    },
    Subject {
        code: "ORKSE",
        name: "Основы религиозных культур и светской этики",
        pass_fail: true,
        homeroom: true,
        hours: [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
    },
    Subject {
        code: "PROJ",
        name: "Индивидуальный проект",
        pass_fail: true,
        homeroom: false,
        hours: [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1],
    },
];

/// Subject id of `SUBJECTS[i]` (ids are 1-based positions).
pub fn subject_id(i: usize) -> i64 {
    i as i64 + 1
}

/// Lesson start times: 08:30, then 45-minute lessons with 10-minute breaks.
pub fn slot_times(slot: i16) -> (chrono::NaiveTime, chrono::NaiveTime) {
    let start = 8 * 60 + 30 + (slot as u32 - 1) * 55;
    let end = start + 45;
    (
        chrono::NaiveTime::from_hms_opt(start / 60, start % 60, 0).unwrap(),
        chrono::NaiveTime::from_hms_opt(end / 60, end % 60, 0).unwrap(),
    )
}

pub fn programme_kind(level: i16) -> &'static str {
    match level {
        1..=4 => "primary_general",
        5..=9 => "basic_general",
        _ => "secondary_general",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_school_year_has_about_165_days() {
        let n = school_days(2024, ymd(2030, 1, 1)).len();
        assert!((150..=180).contains(&n), "{n}");
    }

    #[test]
    fn weekly_load_fits_the_day() {
        for level in 0..11 {
            let h: u32 = SUBJECTS.iter().map(|s| s.hours[level] as u32).sum();
            assert!((20..=35).contains(&h), "level {} has {h} hours", level + 1);
        }
    }

    #[test]
    fn academic_year_boundaries() {
        assert_eq!(academic_year_of(ymd(2026, 8, 31)), 2025);
        assert_eq!(academic_year_of(ymd(2026, 9, 1)), 2026);
    }
}
