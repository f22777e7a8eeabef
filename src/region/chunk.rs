//! The bulky part of a region, one school and academic year at a time:
//! lessons (schedule, topics, homework), grades, attendance and ЕМИАС medical
//! exemptions. A chunk depends only on the skeleton and (seed, school, year),
//! so chunks can be generated in any order and in parallel, and ids are
//! allocated from a per-chunk range.

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, Timelike};

use super::calendar::{self, school_days, subject_id, SUBJECTS};
use super::copy::CopyBuf;
use super::names;
use super::rng::Rng;
use super::skeleton::{teacher_of, timetable, Skeleton};

/// Ids of rows in chunk `n` start at `n * ID_STRIDE + 1`.
pub const ID_STRIDE: i64 = 1 << 26;

pub const LESSON_COLUMNS: &str = "id, class_id, subject_id, teacher_id, lesson_date, slot, starts_at, ends_at, room, topic, homework, homework_due, created_at, updated_at, updated_by";
pub const GRADE_COLUMNS: &str = "id, student_id, lesson_id, class_id, subject_id, teacher_id, kind, period, mark, passed, weight, comment, created_at, updated_at, updated_by";
pub const ATTENDANCE_COLUMNS: &str = "id, lesson_id, student_id, code, reason, minutes_late, teacher_id, created_at, updated_at, updated_by";
pub const EXEMPTION_COLUMNS: &str = "id, student_id, starts_on, ends_on, source, document_number, diagnosis_group, pe_group, created_at, updated_at, updated_by";

pub struct Chunk {
    pub school: usize,
    pub year_index: usize,
    pub lessons: CopyBuf,
    pub grades: CopyBuf,
    pub attendance: CopyBuf,
    pub exemptions: CopyBuf,
}

impl Chunk {
    pub fn rows(&self) -> u64 {
        self.lessons.rows + self.grades.rows + self.attendance.rows + self.exemptions.rows
    }
}

/// Chunk number of (school, year index): the id range it allocates from.
pub fn chunk_no(sk: &Skeleton, school: usize, yi: usize) -> i64 {
    (school * sk.years + yi) as i64
}

fn ts(d: NaiveDate, minutes_after_midnight: i64) -> NaiveDateTime {
    d.and_hms_opt(0, 0, 0).unwrap() + Duration::minutes(minutes_after_midnight)
}

#[derive(Clone, Copy, PartialEq)]
enum Day {
    Present,
    Ill(usize),
    Excused,
}

/// Generates the chunk of `school` in academic year index `yi`.
pub fn generate(sk: &Skeleton, school: usize, yi: usize) -> Chunk {
    let seed = sk.spec.seed;
    let mut rng = Rng::derive(seed, &[2, school as u64, yi as u64]);
    let year = sk.first_year + yi as i32;
    // The live workload owns the as-of day itself.
    let days = school_days(year, sk.spec.as_of - Duration::days(1));
    let base = chunk_no(sk, school, yi) * ID_STRIDE;
    let (mut lesson_id, mut grade_id, mut att_id, mut ex_id) = (base, base, base, base);
    let mut ch = Chunk {
        school,
        year_index: yi,
        lessons: CopyBuf::new("lessons", LESSON_COLUMNS),
        grades: CopyBuf::new("grades", GRADE_COLUMNS),
        attendance: CopyBuf::new("attendance", ATTENDANCE_COLUMNS),
        exemptions: CopyBuf::new("medical_exemptions", EXEMPTION_COLUMNS),
    };

    // Each student's days: ill (with an episode), excused, or present.
    let roster_all: Vec<usize> = sk.school_students[school]
        .iter()
        .copied()
        .filter(|&s| sk.class_of(&sk.students[s], yi).is_some())
        .collect();
    let mut day_state: Vec<Vec<Day>> = Vec::with_capacity(roster_all.len());
    for &si in &roster_all {
        let st = &sk.students[si];
        let mut v = vec![Day::Present; days.len()];
        let mut d = 0;
        while d < days.len() {
            if rng.chance(st.sickliness) {
                let len = rng.range(3, 9) as usize;
                let illness = rng.below(names::ILLNESSES.len() as u64) as usize;
                let end = (d + len).min(days.len());
                for slot in &mut v[d..end] {
                    *slot = Day::Ill(illness);
                }
                if rng.chance(0.7) {
                    ex_id += 1;
                    let (code, _) = names::ILLNESSES[illness];
                    let last = days[end - 1];
                    let doctor = format!("emias:{}", 700_000 + rng.below(9000));
                    ch.exemptions
                        .val(ex_id)
                        .val(st.id)
                        .date(days[d])
                        .date(last)
                        .text("ЕМИАС")
                        .text(&format!(
                            "ЕМИАС-{}-{}",
                            year,
                            1_000_000 + rng.below(9_000_000)
                        ))
                        .text(code)
                        .opt_text(rng.chance(0.3).then_some("подготовительная"))
                        .ts(ts(last, 17 * 60))
                        .ts(ts(last, 17 * 60))
                        .text(&doctor);
                    ch.exemptions.end_row();
                }
                d = end + 1;
            } else {
                if rng.chance(0.003) {
                    v[d] = Day::Excused;
                }
                d += 1;
            }
        }
        day_state.push(v);
    }

    for &class_idx in sk.class_index[school][yi].iter().flatten() {
        let class = &sk.classes[class_idx];
        let tt = timetable(class, seed);
        let roster: Vec<(usize, usize)> = roster_all
            .iter()
            .enumerate()
            .filter(|(_, &s)| sk.class_of(&sk.students[s], yi) == Some(class_idx))
            .map(|(k, &s)| (k, s))
            .collect();
        let graded = class.level >= 2;
        let periods = calendar::periods(year, class.level);
        // Current marks per (roster position, subject): Σ mark·weight, Σ weight, by period.
        let mut sums =
            vec![vec![vec![(0.0f64, 0.0f64); periods.len()]; SUBJECTS.len()]; roster.len()];
        let room = format!("{}", 100 + (class_idx % 40));
        for (di, &day) in days.iter().enumerate() {
            let weekday = day.weekday().num_days_from_monday() as usize;
            let period = periods
                .iter()
                .position(|p| day <= p.ends)
                .unwrap_or(periods.len() - 1);
            for (slot0, &subject) in tt[weekday].iter().enumerate() {
                let slot = slot0 as i16 + 1;
                let teacher = teacher_of(class, subject);
                let teacher_esia = &sk.teachers[teacher as usize - 1].esia_id;
                let (starts, ends) = calendar::slot_times(slot);
                lesson_id += 1;
                let topic_no = di / 5 + 1;
                let homework = rng
                    .chance(0.7)
                    .then(|| format!("§{}, упр. {}", topic_no, rng.range(1, 400)));
                let entered = ts(
                    day,
                    (ends.num_seconds_from_midnight() / 60) as i64 + rng.range(2, 240),
                );
                ch.lessons
                    .val(lesson_id)
                    .val(class.id)
                    .val(subject_id(subject))
                    .val(teacher)
                    .date(day)
                    .val(slot)
                    .val(starts.format("%H:%M"))
                    .val(ends.format("%H:%M"))
                    .text(&room)
                    .text(&format!("{}: тема {}", SUBJECTS[subject].name, topic_no))
                    .opt_text(homework.as_deref())
                    .opt_date(
                        homework
                            .as_ref()
                            .map(|_| day + Duration::days(if weekday == 4 { 3 } else { 1 })),
                    )
                    .ts(entered)
                    .ts(entered)
                    .text(teacher_esia);
                ch.lessons.end_row();

                let control = graded && rng.chance(0.06);
                for (ri, &(k, si)) in roster.iter().enumerate() {
                    let st = &sk.students[si];
                    if st.left_on.is_some_and(|l| day >= l) {
                        continue;
                    }
                    let state = day_state[k][di];
                    let code: Option<(&str, Option<String>, Option<i16>)> = match state {
                        Day::Ill(ill) => Some((
                            "Б",
                            Some(format!("болезнь: {}", names::ILLNESSES[ill].1)),
                            None,
                        )),
                        Day::Excused => Some((
                            "У",
                            Some(
                                (*rng.pick(&[
                                    "соревнования",
                                    "семейные обстоятельства (заявление родителей)",
                                    "олимпиада",
                                ]))
                                .to_string(),
                            ),
                            None,
                        )),
                        Day::Present if rng.chance(0.008) => Some(("Н", None, None)),
                        Day::Present if rng.chance(0.006) => {
                            Some(("ОП", None, Some(rng.range(3, 20) as i16)))
                        }
                        Day::Present => None,
                    };
                    if let Some((code, reason, late)) = &code {
                        att_id += 1;
                        ch.attendance
                            .val(att_id)
                            .val(lesson_id)
                            .val(st.id)
                            .text(code)
                            .opt_text(reason.as_deref())
                            .opt_val(*late)
                            .val(teacher)
                            .ts(entered)
                            .ts(entered)
                            .text(teacher_esia);
                        ch.attendance.end_row();
                        if *code != "ОП" {
                            continue;
                        }
                    }
                    if !graded || !(control || rng.chance(0.12)) {
                        continue;
                    }
                    grade_id += 1;
                    let pass_fail = SUBJECTS[subject].pass_fail;
                    let weight = if control { 2.0 } else { 1.0 };
                    let mark = if pass_fail {
                        None
                    } else if rng.chance(0.002) {
                        Some(1i16)
                    } else {
                        Some(rng.normal(st.ability, 0.75).round().clamp(2.0, 5.0) as i16)
                    };
                    if let Some(m) = mark {
                        let acc = &mut sums[ri][subject][period];
                        acc.0 += m as f64 * weight;
                        acc.1 += weight;
                    }
                    ch.grades
                        .val(grade_id)
                        .val(st.id)
                        .val(lesson_id)
                        .val(class.id)
                        .val(subject_id(subject))
                        .val(teacher)
                        .text("current")
                        .null()
                        .opt_val(mark)
                        .opt_val(pass_fail.then(|| rng.chance(0.97)))
                        .val(format!("{weight:.1}"))
                        .opt_text(control.then_some("контрольная работа"))
                        .ts(entered)
                        .ts(entered)
                        .text(teacher_esia);
                    ch.grades.end_row();
                }
            }
        }

        // Term, year, exam and final grades for finished periods.
        if !graded {
            continue;
        }
        let as_of = sk.spec.as_of;
        for (ri, &(_, si)) in roster.iter().enumerate() {
            let st = &sk.students[si];
            for (subject, s) in SUBJECTS.iter().enumerate() {
                if s.hours[class.level as usize - 1] == 0 {
                    continue;
                }
                let teacher = teacher_of(class, subject);
                let teacher_esia = sk.teachers[teacher as usize - 1].esia_id.clone();
                let mut term_marks = Vec::new();
                let mut emit = |kind: &str,
                                period: &str,
                                mark: Option<i16>,
                                day: NaiveDate,
                                rng: &mut Rng,
                                ch: &mut Chunk| {
                    grade_id += 1;
                    ch.grades
                        .val(grade_id)
                        .val(st.id)
                        .null()
                        .val(class.id)
                        .val(subject_id(subject))
                        .val(teacher)
                        .text(kind)
                        .text(period)
                        .opt_val(mark)
                        .opt_val(mark.is_none().then(|| rng.chance(0.98)))
                        .val("1.0")
                        .null()
                        .ts(ts(day, 16 * 60))
                        .ts(ts(day, 16 * 60))
                        .text(&teacher_esia);
                    ch.grades.end_row();
                };
                for (pi, p) in periods.iter().enumerate() {
                    if p.ends >= as_of || st.left_on.is_some_and(|l| l <= p.ends) {
                        continue;
                    }
                    let (sum, w) = sums[ri][subject][pi];
                    let mark = if s.pass_fail {
                        None
                    } else if w > 0.0 {
                        Some((sum / w).round() as i16)
                    } else {
                        continue; // not assessed (н/а)
                    };
                    if let Some(m) = mark {
                        term_marks.push(m as f64);
                    }
                    emit("term", p.code, mark, p.ends, &mut rng, &mut ch);
                }
                let year_end = calendar::ymd(year + 1, 5, 28);
                if year_end < as_of && st.left_on.is_none_or(|l| l > year_end) {
                    let mark = if s.pass_fail {
                        None
                    } else if term_marks.is_empty() {
                        continue;
                    } else {
                        Some(
                            (term_marks.iter().sum::<f64>() / term_marks.len() as f64).round()
                                as i16,
                        )
                    };
                    emit("year", "Y", mark, year_end, &mut rng, &mut ch);
                    if (class.level == 9 || class.level == 11) && !s.pass_fail {
                        if matches!(s.code, "RUS" | "ALG") {
                            let exam =
                                Some(rng.normal(st.ability, 0.6).round().clamp(2.0, 5.0) as i16);
                            emit(
                                "exam",
                                "GIA",
                                exam,
                                calendar::ymd(year + 1, 6, 5),
                                &mut rng,
                                &mut ch,
                            );
                        }
                        emit(
                            "final",
                            "F",
                            mark,
                            calendar::ymd(year + 1, 6, 20),
                            &mut rng,
                            &mut ch,
                        );
                    }
                }
            }
        }
    }
    ch
}
