//! vitrina: change-data-capture from regional school journals to the
//! «Моя школа» showcase (витрина).
//!
//! # The flow
//!
//! ```text
//!   journal ──▶ capture ──▶ events ──▶ kafka ──▶ projector ──▶ showcase
//!   (PostgreSQL,  (WAL → mapped,   (contract,  (the event   (consumer →     (PostgreSQL read
//!    pgoutput)     hashed rows)     Avro codec)  log)         apply txns)     model, replay)
//! ```
//!
//! Data moves one way. Each stage depends only on the stages before it and
//! on [`connections`], [`config`] and [`error`]; nothing in the pipeline
//! depends on the local development stack.
//!
//! # Layout
//!
//! The pipeline:
//! - [`journal`]: the reference journal schema (the capture source) and its migrations.
//! - [`capture`]: preflight, initial load, the replication stream, publisher and acker, heartbeats.
//! - [`privacy`]: depersonalization (Streebog-512, plain or keyed).
//! - [`identifiers`]: SNILS/INN/OGRN/KPP/document validation and normalization.
//! - [`events`]: the event contract, Avro schemas, the single-object codec (no I/O).
//! - [`kafka`]: topics, the idempotent producer, end offsets.
//! - [`projector`]: source (consumer), sink (apply), freshness, replay.
//! - [`showcase`]: the read model: schema, order-safe apply, consent, quality.
//!
//! What every stage shares:
//! - [`config`]: the TOML file and `VITRINA_*` overrides, validated at start.
//! - [`connections`]: the journal, the showcase and Kafka, built from config.
//! - [`error`]: transient vs definite, backoff, supervision.
//! - [`lsn`]: log sequence numbers as text.
//! - [`failpoint`]: the fault tests' failpoints (only with the `failpoints` feature).
//! - [`pg`]: PostgreSQL connections and error text.
//! - [`http`], [`observability`], [`status`]: `/metrics`, `/healthz`, `/readyz`, metric names, the on-call view.
//!
//! Development tools (never pointed at a region's journal without
//! `--allow-database`, see [`devtools`]):
//! - [`stack`]: the local PostgreSQL cluster and the nisshi broker.
//! - [`region`]: the synthetic region generator, bulk loader and live workload.
//! - [`demo`], [`bench`]: the demo and the benchmarks.

#![deny(rustdoc::broken_intra_doc_links)]

pub mod bench;
pub mod capture;
pub mod config;
pub mod connections;
pub mod demo;
pub mod devtools;
pub mod error;
pub mod events;
pub mod failpoint;
pub mod http;
pub mod identifiers;
pub mod journal;
pub mod kafka;
pub mod lsn;
pub mod observability;
pub mod pg;
pub mod privacy;
pub mod progress;
pub mod projector;
pub mod prostore;
pub mod rdm;
pub mod region;
pub mod showcase;
pub mod stack;
pub mod status;
