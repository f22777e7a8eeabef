-- The showcase's roles (docs/operations.md, "Least privilege"), run once by
-- the postgres image at the first start, as the showcase's superuser.
-- The projector may create schemas and owns what it creates; readers (the
-- federal side's loaders) read schema showcase only, granted by the
-- projector (projector.readers), across replay swaps too.
CREATE ROLE vitrina_projector LOGIN PASSWORD 'projector-password';
GRANT CREATE, CONNECT ON DATABASE showcase TO vitrina_projector;
CREATE ROLE showcase_reader LOGIN PASSWORD 'reader-password';
GRANT CONNECT ON DATABASE showcase TO showcase_reader;
