-- What capture needs from a published table's replica identity
-- (src/capture/preflight.rs):
-- - tables whose events are keyed by the student (partition_by student_id)
--   log the whole old row on UPDATE and DELETE, so a delete travels on the
--   same Kafka partition as the row's other changes;
-- - lessons carry long homework text: an UPDATE that leaves a TOASTed
--   homework unchanged sends it only in a FULL old row.
-- Cost: UPDATE and DELETE on these tables write the old row to WAL too;
-- inserts, the bulk of a journal's writes, are unchanged.
ALTER TABLE journal.student_parents    REPLICA IDENTITY FULL;
ALTER TABLE journal.lessons            REPLICA IDENTITY FULL;
ALTER TABLE journal.grades             REPLICA IDENTITY FULL;
ALTER TABLE journal.attendance         REPLICA IDENTITY FULL;
ALTER TABLE journal.enrolment_orders   REPLICA IDENTITY FULL;
ALTER TABLE journal.parental_consents  REPLICA IDENTITY FULL;
ALTER TABLE journal.medical_exemptions REPLICA IDENTITY FULL;
