//! Topic names.

/// `<prefix>.<entity>.v1`
pub fn topic(prefix: &str, entity: &str) -> String {
    format!("{prefix}.{entity}.v1")
}

/// The event topics of every entity of the contract (not the dead-letter
/// topic).
pub fn event_topics(prefix: &str) -> Vec<String> {
    crate::events::ENTITIES
        .iter()
        .map(|e| topic(prefix, e.name))
        .collect()
}

/// The restricted topic: medical detail under consent, compacted, keyed
/// `<entity>:<key>` (see [`crate::events::Detail`]).
pub fn detail_topic(prefix: &str) -> String {
    format!("{prefix}.medical_detail.v1")
}

/// Capture's own state (the initial load's progress), compacted, keyed
/// by slot: [`crate::capture::load_state`].
pub fn capture_state_topic(prefix: &str) -> String {
    format!("{prefix}.capture_state.v1")
}

/// Where changes that cannot be mapped or encoded go, with their reason.
pub fn dead_letter_topic(prefix: &str) -> String {
    format!("{prefix}.deadletter.v1")
}
