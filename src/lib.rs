//! vitrina: change-data-capture from regional school journals to the
//! «Моя школа» showcase (витрина).
//!
//! # Layout
//!
//! ```text
//!   journal DB (PostgreSQL, wal_level=logical)
//!        │  logical replication (pgoutput)
//!        ▼
//!   capture ── depersonalize ── Avro ──▶ Kafka topics vitrina.<entity>.v1   (the event log)
//!                                             │
//!                                             ▼
//!                                        projector ──▶ showcase DB (PostgreSQL)
//!                                             ▲
//!                                        replay (shadow schema, atomic swap)
//! ```
//!
//! - [`config`]: the TOML file and `VITRINA_*` overrides, validated at start.
//! - [`stack`]: the local PostgreSQL cluster and tansu broker for demos and tests.
//! - [`journal`]: the reference journal schema (the capture source) and its migrations.
//! - [`region`]: the synthetic region generator, bulk loader and live workload.
//! - [`identifiers`]: SNILS/INN/OGRN/KPP/document validation and normalization.
//! - [`pg`]: PostgreSQL connections.

#![deny(rustdoc::broken_intra_doc_links)]

pub mod bench;
pub mod capture;
pub mod config;
pub mod events;
pub mod http;
pub mod identifiers;
pub mod journal;
pub mod kafka;
pub mod observability;
pub mod pg;
pub mod privacy;
pub mod progress;
pub mod projector;
pub mod region;
pub mod showcase;
pub mod stack;
pub mod status;
