//! Reference journal migrations: apply on an empty database, apply again
//! without change, refuse an edited migration.

mod common;

use vitrina::journal;

/// Everything that describes the schema: columns, constraints, indexes.
async fn schema_fingerprint(c: &tokio_postgres::Client) -> Vec<String> {
    let mut out = Vec::new();
    for q in [
        "SELECT table_name || '.' || column_name || ':' || data_type || ':' || is_nullable || ':' || coalesce(column_default, '')
         FROM information_schema.columns WHERE table_schema = 'journal' ORDER BY 1",
        "SELECT conrelid::regclass::text || ':' || conname || ':' || pg_get_constraintdef(oid)
         FROM pg_constraint WHERE connamespace = 'journal'::regnamespace ORDER BY 1",
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'journal' ORDER BY 1",
        "SELECT version || ':' || name || ':' || checksum FROM journal.schema_migrations ORDER BY version",
    ] {
        for r in c.query(q, &[]).await.unwrap() {
            out.push(r.get::<_, String>(0));
        }
    }
    out
}

#[tokio::test]
async fn migrations_apply_on_empty_database_then_change_nothing() {
    let cfg = common::fresh_db("t_migrate").await;
    let mut c = vitrina::pg::connect(&cfg).await.unwrap();
    let first = journal::migrate(&mut c).await.unwrap();
    assert_eq!(first, vec![1, 2, 3]);
    let after_first = schema_fingerprint(&c).await;
    assert!(
        after_first.len() > 100,
        "schema has tables, constraints, indexes"
    );

    let second = journal::migrate(&mut c).await.unwrap();
    assert!(
        second.is_empty(),
        "nothing applied the second time: {second:?}"
    );
    assert_eq!(schema_fingerprint(&c).await, after_first);

    // Every table has a primary key.
    let without_pk: Vec<String> = c
        .query(
            "SELECT c.relname::text FROM pg_class c
             WHERE c.relnamespace = 'journal'::regnamespace AND c.relkind = 'r'
               AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype = 'p')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        without_pk.is_empty(),
        "tables without a primary key: {without_pk:?}"
    );
}

#[tokio::test]
async fn an_edited_applied_migration_is_refused() {
    let cfg = common::journal_db("t_migrate_edit").await;
    let mut c = vitrina::pg::connect(&cfg).await.unwrap();
    c.execute(
        "UPDATE journal.schema_migrations SET checksum = 'deadbeefdeadbeef' WHERE version = 1",
        &[],
    )
    .await
    .unwrap();
    let err = journal::migrate(&mut c).await.unwrap_err().to_string();
    assert!(err.contains("was changed after it was applied"), "{err}");
}
