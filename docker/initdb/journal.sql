-- The journal stand-in's roles, as a region's DBA would set them up
-- (docs/operations.md, "Least privilege"). Run once by the postgres image
-- at the first start, as the journal's superuser.
--
-- capture: REPLICATION and SELECT only. The journal's tables are created
-- later (`vitrina migrate` against this server, or a real journal's own
-- migrations), so SELECT comes from default privileges; the publication
-- is the DBA's, FOR ALL TABLES here because the stand-in starts empty
-- (a real journal lists the mapped tables, see the runbook).
CREATE ROLE vitrina_capture LOGIN REPLICATION PASSWORD 'capture-password';
ALTER DEFAULT PRIVILEGES FOR ROLE journal_owner GRANT USAGE ON SCHEMAS TO vitrina_capture;
ALTER DEFAULT PRIVILEGES FOR ROLE journal_owner GRANT SELECT ON TABLES TO vitrina_capture;
CREATE PUBLICATION vitrina FOR ALL TABLES;
