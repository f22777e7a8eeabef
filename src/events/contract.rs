//! The event contract: which domain events exist and what their state
//! carries. This is what streaming consumers code against; the Avro schemas
//! in `avro/` are generated from it (`vitrina schemas --write avro`) and a
//! test keeps the two in step.
//!
//! No field here carries a name of a student or parent, or a raw document
//! number: documents appear only as depersonalized hashes.

/// Avro type of a state field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Long,
    Int,
    Double,
    Bool,
    Str,
    /// Days since the epoch (Avro `date`).
    Date,
    /// Microseconds since the epoch, UTC (Avro `timestamp-micros`).
    Timestamp,
    /// Microseconds since midnight (Avro `time-micros`).
    Time,
}

/// What a field may carry, for the privacy rules at the capture boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Codes, ids, dates, hashes: published as they are.
    Plain,
    /// Text people type (comments, topics, homework, reasons): published
    /// only after capture replaces people's names and document numbers.
    FreeText,
    /// Medical detail: never on a general topic; only on the restricted
    /// topic, and only while the student's parent consents.
    Medical,
    /// Medical detail when field `.0` equals `.1` (the reason of an illness
    /// mark); free text otherwise.
    MedicalWhen(&'static str, &'static str),
}

impl Class {
    /// The mark in the field's Avro doc and `vitrina schemas`.
    pub fn label(self) -> Option<&'static str> {
        match self {
            Class::Plain => None,
            Class::FreeText => Some("free_text"),
            Class::Medical | Class::MedicalWhen(..) => Some("medical"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub ty: Ty,
    pub nullable: bool,
    pub doc: &'static str,
    pub class: Class,
}

#[derive(Debug, Clone, Copy)]
pub struct Entity {
    /// Topic and mapping name: `vitrina.<name>.v1`.
    pub name: &'static str,
    /// Avro record name of the state (`Grade`); the event is `GradeEvent`.
    pub record: &'static str,
    pub doc: &'static str,
    pub fields: &'static [Field],
}

const fn f(name: &'static str, ty: Ty, doc: &'static str) -> Field {
    Field {
        name,
        ty,
        nullable: false,
        doc,
        class: Class::Plain,
    }
}
const fn o(name: &'static str, ty: Ty, doc: &'static str) -> Field {
    Field {
        name,
        ty,
        nullable: true,
        doc,
        class: Class::Plain,
    }
}
/// Optional free text.
const fn t(name: &'static str, doc: &'static str) -> Field {
    Field {
        name,
        ty: Ty::Str,
        nullable: true,
        doc,
        class: Class::FreeText,
    }
}
/// Optional medical detail (`when`: only when that field has that value).
const fn m(
    name: &'static str,
    doc: &'static str,
    when: Option<(&'static str, &'static str)>,
) -> Field {
    Field {
        name,
        ty: Ty::Str,
        nullable: true,
        doc,
        class: match when {
            Some((f, v)) => Class::MedicalWhen(f, v),
            None => Class::Medical,
        },
    }
}

use Ty::*;

pub const ENTITIES: &[Entity] = &[
    Entity {
        name: "grade",
        record: "Grade",
        doc: "A grade (отметка): current grades belong to a lesson; term, year, exam and final grades to a class and subject.",
        fields: &[
            f("id", Long, "Journal id of the grade."),
            f("student_id", Long, "Journal id of the student."),
            o("lesson_id", Long, "Lesson of a current grade; null for term, year, exam and final grades."),
            f("class_id", Long, "Class the grade was given in."),
            f("subject_id", Long, "Subject."),
            f("teacher_id", Long, "Teacher who gave the grade."),
            f("kind", Str, "current, term, year, exam or final."),
            o("period", Str, "Q1..Q4 or H1..H2 for term grades, Y for year grades, GIA for exams, F for final grades."),
            o("mark", Int, "Mark on the five-point scale (1..5); null for pass/fail subjects."),
            o("passed", Bool, "Pass/fail result (зачёт) for pass/fail subjects; null otherwise."),
            f("weight", Double, "Weight of the mark in the weighted average."),
            t("comment", "Teacher's note, e.g. the kind of work; names and document numbers replaced."),
            f("created_at", Timestamp, "When the grade was entered."),
            f("updated_at", Timestamp, "When it was last changed."),
        ],
    },
    Entity {
        name: "attendance",
        record: "Attendance",
        doc: "An attendance mark (посещаемость) of one student at one lesson. The reason of an illness (code Б) is medical detail: the showcase shows it only while a parent's consent to medical-data transfer is active.",
        fields: &[
            f("id", Long, "Journal id of the mark."),
            f("lesson_id", Long, "Lesson."),
            f("student_id", Long, "Student."),
            f("code", Str, "Н absent, Б ill, У excused, ОП late."),
            m("reason", "Reason as entered, names replaced. For code Б it is medical detail: null here, on the restricted topic under consent.", Some(("code", "Б"))),
            o("minutes_late", Int, "Minutes late, for ОП."),
            f("teacher_id", Long, "Teacher who entered the mark."),
            f("created_at", Timestamp, "When the mark was entered."),
            f("updated_at", Timestamp, "When it was last changed."),
        ],
    },
    Entity {
        name: "enrolment_order",
        record: "EnrolmentOrder",
        doc: "A student's line in an enrolment order (приказ о движении контингента).",
        fields: &[
            f("id", Long, "Journal id of the order line."),
            f("organization_id", Long, "Organization that issued the order."),
            f("student_id", Long, "Student the order concerns."),
            f("kind", Str, "admission, enrolment, transfer, expulsion or graduation."),
            f("number", Str, "Order number; a mass order has one number for many students."),
            f("order_date", Date, "Date of the order."),
            f("effective_date", Date, "Date it takes effect."),
            o("from_class_id", Long, "Class the student leaves."),
            o("to_class_id", Long, "Class the student joins."),
            o("from_organization_id", Long, "Organization the student leaves."),
            o("to_organization_id", Long, "Organization the student joins."),
            f("education_form", Str, "full_time, part_time, extramural, family or self_education."),
            f("programme_kind", Str, "primary_general, basic_general, secondary_general or adapted."),
            t("reason", "Reason stated in the order; names and document numbers replaced."),
        ],
    },
    Entity {
        name: "student",
        record: "Student",
        doc: "A student (обучающийся), depersonalized: no names, no raw document numbers, no address.",
        fields: &[
            f("id", Long, "Journal id of the student."),
            o("esia_id", Str, "ESIA (Госуслуги) account id; null until the family registers one."),
            o("snils_hash", Str, "Streebog-512 hex of the normalized SNILS; null when absent or invalid (see quality)."),
            o("passport_hash", Str, "Streebog-512 hex of passport series+number; null when absent or invalid."),
            o("birth_certificate_hash", Str, "Streebog-512 hex of the normalized birth certificate; null when absent or invalid."),
            f("identity_document_kind", Str, "birth_certificate, passport or foreign_document."),
            f("sex", Str, "M or F."),
            f("birth_date", Date, "Date of birth."),
            f("citizenship", Str, "ISO 3166 alpha-3 code."),
            f("regional_account_id", Str, "Id in the regional registry."),
            f("movement_first_member", Bool, "Member of «Движение первых»."),
            o("health_group", Int, "Health group 1..5."),
        ],
    },
    Entity {
        name: "parent",
        record: "Parent",
        doc: "A parent or legal representative, depersonalized: no names, no raw document numbers, no address or phone.",
        fields: &[
            f("id", Long, "Journal id."),
            o("esia_id", Str, "ESIA account id."),
            o("snils_hash", Str, "Streebog-512 hex of the normalized SNILS."),
            o("passport_hash", Str, "Streebog-512 hex of passport series+number."),
            f("birth_date", Date, "Date of birth."),
            f("citizenship", Str, "ISO 3166 alpha-3 code."),
            f("regional_account_id", Str, "Id in the regional registry."),
            o("email", Str, "E-mail, as the showcase model lists it."),
        ],
    },
    Entity {
        name: "parent_link",
        record: "ParentLink",
        doc: "A student–parent link with the document confirming the authority.",
        fields: &[
            f("id", Long, "Journal id of the link."),
            f("student_id", Long, "Student."),
            f("parent_id", Long, "Parent or legal representative."),
            f("relation", Str, "mother, father, guardian, trustee or adoptive_parent."),
            f("authority_document_kind", Str, "birth_certificate, guardianship_decision, …"),
            o("authority_document_hash", Str, "Streebog-512 hex of the authority document number."),
            o("authority_document_date", Date, "Date of that document."),
            o("guardianship_body", Str, "Guardianship authority, for guardians."),
        ],
    },
    Entity {
        name: "teacher",
        record: "Teacher",
        doc: "A teacher or staff member, depersonalized.",
        fields: &[
            f("id", Long, "Journal id."),
            f("organization_id", Long, "Place of work."),
            f("esia_id", Str, "ESIA account id."),
            o("snils_hash", Str, "Streebog-512 hex of the normalized SNILS."),
            f("birth_date", Date, "Date of birth."),
            f("citizenship", Str, "ISO 3166 alpha-3 code."),
            f("regional_account_id", Str, "Id in the regional registry."),
            f("position", Str, "Position."),
            o("qualification_category", Str, "Qualification category."),
            o("education", Str, "Education."),
            o("speciality", Str, "Speciality."),
            o("restrictions", Str, "Restrictions on teaching, if any."),
            o("email", Str, "Work e-mail."),
            f("hired_on", Date, "Date of employment."),
            f("employment_order_number", Str, "Employment order number."),
        ],
    },
    Entity {
        name: "teaching_assignment",
        record: "TeachingAssignment",
        doc: "Which teacher teaches which subject in which class (classes taught).",
        fields: &[
            f("teacher_id", Long, "Teacher."),
            f("class_id", Long, "Class."),
            f("subject_id", Long, "Subject."),
        ],
    },
    Entity {
        name: "organization",
        record: "Organization",
        doc: "An educational organization (образовательная организация) with its registry codes.",
        fields: &[
            f("id", Long, "Journal id."),
            f("regional_id", Str, "Regional id."),
            f("full_name", Str, "Full name."),
            f("short_name", Str, "Short name."),
            f("kind", Str, "school, gymnasium, lyceum, boarding_school or education_centre."),
            f("inn", Str, "INN (ИНН) as recorded; see quality for checksum failures."),
            f("ogrn", Str, "OGRN (ОГРН) as recorded."),
            f("kpp", Str, "KPP (КПП)."),
            f("okopf", Str, "OKOPF code."),
            f("okfs", Str, "OKFS code."),
            f("okogu", Str, "OKOGU code."),
            f("okato", Str, "OKATO code."),
            f("oktmo", Str, "OKTMO code."),
            o("licence_number", Str, "Licence registry number."),
            o("licence_issued_on", Date, "Licence date."),
            o("accreditation_number", Str, "Accreditation number."),
            f("head_name", Str, "Head of the organization (a public registry fact)."),
            f("head_position", Str, "Head's position."),
            o("phone", Str, "Contact phone."),
            o("email", Str, "Contact e-mail."),
            o("website", Str, "Website."),
            f("legal_address", Str, "Legal address."),
            f("actual_address", Str, "Place of education."),
            o("rosobr_id", Str, "Id in Rosobrnadzor's registry of organizations (a public registry fact)."),
            o("okpo", Str, "OKPO code."),
            o("active", Bool, "The organization operates (false: closed or reorganized)."),
            o("parent_id", Long, "The organization this one is a branch of."),
        ],
    },
    Entity {
        name: "organization_address",
        record: "OrganizationAddress",
        doc: "A structured address of an organization (legal or place of education); people's addresses are never published.",
        fields: &[
            f("id", Long, "Journal id."),
            f("organization_id", Long, "Organization."),
            o("use_address", Int, "Use code, as RDM ADDRESS use_address (the reference journal: 1 legal, 2 place of education)."),
            f("type_address", Int, "Type code, as RDM ADDRESS type_address (the reference journal: 1 postal, 2 physical, 3 both)."),
            f("text", Str, "The whole address as one line."),
            o("city", Str, "City or settlement."),
            o("district", Str, "District."),
            o("state", Str, "Region (subject of the federation)."),
            o("postal_code", Str, "Postal code."),
            o("country", Str, "Country."),
            o("start_datetime", Timestamp, "In use since."),
            o("end_datetime", Timestamp, "In use until."),
            o("flat", Str, "Room or office."),
            o("building", Str, "Building (корпус, строение)."),
            o("house", Str, "House number."),
            o("street", Str, "Street."),
        ],
    },
    Entity {
        name: "organization_contact",
        record: "OrganizationContact",
        doc: "A contact point of an organization (phone, e-mail, website); people's contacts are never published.",
        fields: &[
            f("id", Long, "Journal id."),
            f("organization_id", Long, "Organization."),
            f("type_contact", Int, "Kind code, as RDM TELECOM type_contact (the reference journal: 1 phone, 3 e-mail, 5 website)."),
            f("value_type", Str, "The phone number, address or URL."),
            o("use_cod", Int, "Use code, as RDM TELECOM use_cod (the reference journal: 1 work)."),
            o("rank_contact", Int, "Preference order (1 = first)."),
            o("start_datetime", Timestamp, "In use since."),
            o("end_datetime", Timestamp, "In use until."),
        ],
    },
    Entity {
        name: "class",
        record: "Class",
        doc: "A class (класс) in one academic year.",
        fields: &[
            f("id", Long, "Journal id."),
            f("organization_id", Long, "Organization."),
            f("academic_year", Int, "Start year of the academic year (2025 = 2025/26)."),
            f("level", Int, "Level 1..11."),
            f("letter", Str, "Letter (А, Б, …)."),
            o("homeroom_teacher_id", Long, "Homeroom teacher."),
            f("programme_kind", Str, "Education programme kind."),
        ],
    },
    Entity {
        name: "subject",
        record: "Subject",
        doc: "A subject (предмет).",
        fields: &[
            f("id", Long, "Journal id."),
            f("code", Str, "Code."),
            f("name", Str, "Name."),
            f("pass_fail", Bool, "Assessed pass/fail rather than with marks."),
        ],
    },
    Entity {
        name: "lesson",
        record: "Lesson",
        doc: "A lesson in the schedule, with its topic and homework.",
        fields: &[
            f("id", Long, "Journal id."),
            f("class_id", Long, "Class."),
            f("subject_id", Long, "Subject."),
            f("teacher_id", Long, "Teacher."),
            f("lesson_date", Date, "Date."),
            f("slot", Int, "Lesson number in the day."),
            f("starts_at", Time, "Start time (local)."),
            f("ends_at", Time, "End time (local)."),
            o("room", Str, "Room."),
            t("topic", "Topic; names replaced."),
            t("homework", "Homework assigned; names and document numbers replaced."),
            o("homework_due", Date, "When the homework is due."),
        ],
    },
    Entity {
        name: "consent",
        record: "Consent",
        doc: "A parent's consent (согласие), e.g. to the transfer of medical data.",
        fields: &[
            f("id", Long, "Journal id."),
            f("student_id", Long, "Student the consent concerns."),
            f("parent_id", Long, "Parent who gave it."),
            f("kind", Str, "medical_data_transfer, personal_data_processing or photo_publication."),
            f("status", Str, "granted or revoked."),
            f("granted_at", Timestamp, "When it was granted."),
            o("revoked_at", Timestamp, "When it was revoked."),
            f("document_date", Date, "Date of the consent document."),
        ],
    },
    Entity {
        name: "medical_exemption",
        record: "MedicalExemption",
        doc: "An exemption from classes for illness from ЕМИАС. Medical detail: shown only while consent is active.",
        fields: &[
            f("id", Long, "Journal id."),
            f("student_id", Long, "Student."),
            f("starts_on", Date, "First day."),
            f("ends_on", Date, "Last day."),
            f("source", Str, "Source system (ЕМИАС)."),
            m("diagnosis_group", "ICD-10 group. Medical detail: null here, on the restricted topic under consent.", None),
            m("pe_group", "Physical-education group after illness. Medical detail: null here, on the restricted topic under consent.", None),
        ],
    },
];

pub fn entity(name: &str) -> Option<&'static Entity> {
    ENTITIES.iter().find(|e| e.name == name)
}

impl Entity {
    pub fn field(&self, name: &str) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Position of field `name` in the state.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }

    /// Whether any field carries medical detail.
    pub fn has_medical(&self) -> bool {
        self.fields
            .iter()
            .any(|f| matches!(f.class, Class::Medical | Class::MedicalWhen(..)))
    }
}

impl PartialEq for Entity {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
