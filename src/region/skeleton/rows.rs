//! The skeleton's rows in COPY text format, table by table, in load order
//! (organizations first, then what refers to them).

use super::Skeleton;
use crate::region::copy::CopyBuf;

/// The skeleton's rows, table by table, in load order.
pub fn skeleton_bufs(sk: &Skeleton) -> Vec<CopyBuf> {
    use crate::region::calendar::{programme_kind, SUBJECTS};
    let created = sk.spec.as_of.and_hms_opt(0, 0, 0).unwrap()
        - chrono::Duration::days(365 * (sk.years as i64));
    let admin = "op:region-admin";

    let mut orgs = CopyBuf::new("organizations", "id, regional_id, full_name, short_name, kind, inn, ogrn, kpp, okopf, okfs, okogu, okato, oktmo, licence_number, licence_issued_on, accreditation_number, head_name, head_position, phone, email, website, legal_address, actual_address, created_at, updated_at, updated_by, rosobr_id, okpo, active");
    for o in &sk.organizations {
        orgs.val(o.id)
            .text(&o.regional_id)
            .text(&o.full_name)
            .text(&o.short_name)
            .text(o.kind)
            .text(&o.inn)
            .text(&o.ogrn)
            .text(&o.kpp)
            .text("75403")
            .text("14")
            .text("4210007")
            .text(&o.okato)
            .text(&o.oktmo)
            .text(&o.licence_number)
            .date(o.licence_issued_on)
            .text(&o.accreditation_number)
            .text(&o.head_name)
            .text("Директор")
            .text(&o.phone)
            .text(&o.email)
            .text(&o.website)
            .text(&o.address)
            .text(&o.address)
            .ts(created)
            .ts(created)
            .text(admin)
            .text(&format!("{:032x}", 0x5c0_0000_u64 * 7919 + o.id as u64))
            .text(&format!("{:08}", 40_000_000 + o.id * 37))
            .val(true);
        orgs.end_row();
    }
    let (addresses, contacts) = registry_bufs(sk, created, admin);

    let mut subjects = CopyBuf::new("subjects", "id, code, name, pass_fail");
    for (i, s) in SUBJECTS.iter().enumerate() {
        subjects
            .val(i + 1)
            .text(s.code)
            .text(s.name)
            .val(s.pass_fail);
        subjects.end_row();
    }

    let mut teachers = CopyBuf::new("teachers", "id, organization_id, esia_id, snils, last_name, first_name, middle_name, sex, birth_date, citizenship, regional_account_id, position, qualification_category, education, speciality, restrictions, email, hired_on, employment_order_number, created_at, updated_at, updated_by");
    for t in &sk.teachers {
        teachers
            .val(t.id)
            .val(t.organization_id)
            .text(&t.esia_id)
            .opt_text(t.snils.as_deref())
            .text(&t.last_name)
            .text(&t.first_name)
            .text(&t.middle_name)
            .text(t.sex)
            .date(t.birth_date)
            .text("RUS")
            .text(&t.regional_account_id)
            .text(t.position)
            .opt_text(t.qualification)
            .text("высшее педагогическое")
            .text(&t.speciality)
            .null()
            .text(&format!(
                "{}@edu.tver.example",
                t.regional_account_id.to_lowercase()
            ))
            .date(t.hired_on)
            .text(&t.order_number)
            .ts(created)
            .ts(created)
            .text(admin);
        teachers.end_row();
    }

    let mut classes = CopyBuf::new("classes", "id, organization_id, academic_year, level, letter, homeroom_teacher_id, programme_kind, created_at, updated_at, updated_by");
    let mut teacher_classes = CopyBuf::new("teacher_classes", "teacher_id, class_id, subject_id");
    for c in &sk.classes {
        let made = crate::region::calendar::ymd(c.year, 8, 28)
            .and_hms_opt(12, 0, 0)
            .unwrap();
        classes
            .val(c.id)
            .val(c.organization_id)
            .val(c.year)
            .val(c.level)
            .text(super::letter(c.letter))
            .val(c.homeroom_teacher_id)
            .text(programme_kind(c.level))
            .ts(made)
            .ts(made)
            .text(&format!(
                "op:{}-secretary",
                sk.organizations[c.school].regional_id
            ));
        classes.end_row();
        for (subject, teacher) in &c.teacher_for {
            teacher_classes.val(teacher).val(c.id).val(subject + 1);
            teacher_classes.end_row();
        }
    }

    let mut students = CopyBuf::new("students", "id, esia_id, snils, last_name, first_name, middle_name, sex, birth_date, birth_place, citizenship, identity_document_kind, passport_series, passport_number, passport_issued_on, passport_issuer, birth_certificate_series, birth_certificate_number, birth_certificate_issued_on, civil_record_number, civil_record_date, regional_account_id, movement_first_member, health_group, address, created_at, updated_at, updated_by");
    for s in &sk.students {
        let p = &s.person;
        let (bs, bn, bi, rec) = &s.birth_certificate;
        students
            .val(s.id)
            .opt_text(p.esia_id.as_deref())
            .opt_text(p.snils.as_deref())
            .text(&p.last_name)
            .text(&p.first_name)
            .text(&p.middle_name)
            .text(p.sex)
            .date(p.birth_date)
            .text(&s.birth_place)
            .text("RUS")
            .text(if p.passport.is_some() {
                "passport"
            } else {
                "birth_certificate"
            })
            .opt_text(p.passport.as_ref().map(|x| x.0.as_str()))
            .opt_text(p.passport.as_ref().map(|x| x.1.as_str()))
            .opt_date(p.passport.as_ref().map(|x| x.2))
            .opt_text(
                p.passport
                    .as_ref()
                    .map(|_| "УМВД России по Тверской области"),
            )
            .text(bs)
            .text(bn)
            .date(*bi)
            .text(rec)
            .date(*bi)
            .text(&p.regional_account_id)
            .val(s.movement_first)
            .val(s.health_group)
            .text(&p.address)
            .ts(created)
            .ts(created)
            .text(admin);
        students.end_row();
    }

    let mut parents = CopyBuf::new("parents", "id, esia_id, snils, last_name, first_name, middle_name, sex, birth_date, citizenship, passport_series, passport_number, email, phone, regional_account_id, address, created_at, updated_at, updated_by");
    for pr in &sk.parents {
        let p = &pr.person;
        parents
            .val(pr.id)
            .opt_text(p.esia_id.as_deref())
            .opt_text(p.snils.as_deref())
            .text(&p.last_name)
            .text(&p.first_name)
            .text(&p.middle_name)
            .text(p.sex)
            .date(p.birth_date)
            .text("RUS")
            .opt_text(p.passport.as_ref().map(|x| x.0.as_str()))
            .opt_text(p.passport.as_ref().map(|x| x.1.as_str()))
            .text(&pr.email)
            .text(&pr.phone)
            .text(&p.regional_account_id)
            .text(&p.address)
            .ts(created)
            .ts(created)
            .text(admin);
        parents.end_row();
    }

    let mut links = CopyBuf::new("student_parents", "id, student_id, parent_id, relation, authority_document_kind, authority_document_number, authority_document_date, guardianship_body, created_at, updated_at, updated_by");
    let mut link_id = 0;
    for s in &sk.students {
        for (parent, relation) in &s.parent_ids {
            link_id += 1;
            let guardian = *relation == "guardian";
            links
                .val(link_id)
                .val(s.id)
                .val(parent)
                .text(relation)
                .text(if guardian {
                    "guardianship_decision"
                } else {
                    "birth_certificate"
                })
                .text(&if guardian {
                    format!("{}-р", 100 + link_id % 900)
                } else {
                    format!("{}{}", s.birth_certificate.0, s.birth_certificate.1)
                })
                .date(s.birth_certificate.2)
                .opt_text(guardian.then_some("Отдел опеки и попечительства администрации г. Твери"))
                .ts(created)
                .ts(created)
                .text(admin);
            links.end_row();
        }
    }

    let mut orders = CopyBuf::new("enrolment_orders", "id, organization_id, student_id, kind, number, order_date, effective_date, from_class_id, to_class_id, from_organization_id, to_organization_id, education_form, programme_kind, reason, created_at, updated_at, updated_by");
    for o in &sk.orders {
        let at = o.order_date.and_hms_opt(11, 0, 0).unwrap();
        orders
            .val(o.id)
            .val(o.organization_id)
            .val(o.student_id)
            .text(o.kind)
            .text(&o.number)
            .date(o.order_date)
            .date(o.effective_date)
            .opt_val(o.from_class_id)
            .opt_val(o.to_class_id)
            .opt_val((o.kind == "expulsion").then_some(o.organization_id))
            .opt_val(o.to_organization_id)
            .text(o.education_form)
            .text(o.programme_kind)
            .opt_text(o.reason)
            .ts(at)
            .ts(at)
            .text(&o.updated_by);
        orders.end_row();
    }

    let mut consents = CopyBuf::new("parental_consents", "id, student_id, parent_id, kind, status, granted_at, revoked_at, document_number, document_date, created_at, updated_at, updated_by");
    for c in &sk.consents {
        let last = c.revoked_at.unwrap_or(c.granted_at);
        consents
            .val(c.id)
            .val(c.student_id)
            .val(c.parent_id)
            .text(c.kind)
            .text(if c.revoked_at.is_some() {
                "revoked"
            } else {
                "granted"
            })
            .ts(c.granted_at)
            .opt_val(c.revoked_at.map(|r| r.format("%Y-%m-%d %H:%M:%S+03")))
            .text(&c.document_number)
            .date(c.granted_at.date())
            .ts(c.granted_at)
            .ts(last)
            .text(&c.updated_by);
        consents.end_row();
    }

    vec![
        orgs,
        addresses,
        contacts,
        subjects,
        teachers,
        classes,
        teacher_classes,
        students,
        parents,
        links,
        orders,
        consents,
    ]
}

/// Each organization's structured addresses (its legal address and its
/// place of education, the same building) and contact points (phone,
/// e-mail, website), derived from the organization without drawing from
/// the generator's random stream.
fn registry_bufs(sk: &Skeleton, created: chrono::NaiveDateTime, admin: &str) -> (CopyBuf, CopyBuf) {
    use crate::region::names::{CITIES, STREETS};
    let mut addresses = CopyBuf::new("organization_addresses", "id, organization_id, use_address, type_address, text, city, district, state, postal_code, country, start_datetime, flat, building, house, street, updated_at, updated_by");
    let mut contacts = CopyBuf::new("organization_contacts", "id, organization_id, type_contact, value_type, use_cod, rank_contact, start_datetime, updated_at, updated_by");
    for o in &sk.organizations {
        let (city, index) = CITIES[o.city];
        let n = o.id as usize;
        let postal = format!("{index}{:03}", n % 100);
        let street = STREETS[n % STREETS.len()];
        let house = (n * 7) % 119 + 1;
        let text = format!("{postal}, Тверская обл., г. {city}, {street}, д. {house}");
        for (i, (use_address, type_address)) in [(1, 3), (2, 2)].into_iter().enumerate() {
            addresses
                .val(o.id * 2 - 1 + i as i64)
                .val(o.id)
                .val(use_address)
                .val(type_address)
                .text(&text)
                .text(city)
                .text(&format!("городской округ {city}"))
                .text("Тверская область")
                .text(&postal)
                .text("Россия")
                .ts(created)
                .null()
                .null()
                .val(house)
                .text(street)
                .ts(created)
                .text(admin);
            addresses.end_row();
        }
        for (i, (kind, value)) in [(1, &o.phone), (3, &o.email), (5, &o.website)]
            .into_iter()
            .enumerate()
        {
            contacts
                .val((o.id - 1) * 3 + 1 + i as i64)
                .val(o.id)
                .val(kind)
                .text(value)
                .val(1)
                .val(i + 1)
                .ts(created)
                .ts(created)
                .text(admin);
            contacts.end_row();
        }
    }
    (addresses, contacts)
}
