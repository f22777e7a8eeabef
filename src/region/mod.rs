//! The synthetic region: a deterministic, realistic regional journal at any
//! size, bulk-loaded through COPY, and a live workload that edits it the way
//! teachers and school secretaries do.
//!
//! Invariants:
//! - Same [`RegionSpec`] (seed, knobs, `as_of`), same rows: nothing reads the
//!   clock or the environment while generating.
//! - Identifiers are valid (SNILS, INN, OGRN checksums; document formats)
//!   except a configured share made invalid on purpose, recorded in the
//!   skeleton (`snils_invalid`, `invalid_ids`, …) so tests can tell them apart.
//! - Foreign keys hold: rows are loaded parents-first, each school-year chunk
//!   in one transaction.

pub mod calendar;
pub mod chunk;
pub mod copy;
pub mod load;
pub mod names;
pub mod rng;
pub mod skeleton;
pub mod workload;

use chrono::NaiveDate;

use crate::config::RegionConfig;

/// Everything that decides the region's content.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionSpec {
    pub seed: u64,
    pub schools: u32,
    pub students_per_school: u32,
    pub history_years: u32,
    pub as_of: NaiveDate,
    pub invalid_identifier_share: f64,
}

impl RegionSpec {
    /// The spec from config, with `as_of` defaulting to `today`.
    pub fn from_config(cfg: &RegionConfig, today: NaiveDate) -> RegionSpec {
        RegionSpec {
            seed: cfg.seed,
            schools: cfg.schools,
            students_per_school: cfg.students_per_school,
            history_years: cfg.history_years,
            as_of: cfg.as_of.unwrap_or(today),
            invalid_identifier_share: cfg.invalid_identifier_share,
        }
    }
}
