//! Proof 7: migrations apply, roll back and re-apply cleanly; a relay
//! without the tables refuses to start with the fix in its error.

mod fixtures;
mod support;

use outbox::{Relay, RelayError, SchemaName, MIGRATOR};

async fn tables(pool: &sqlx::PgPool, schema: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = $1 AND table_name LIKE 'event_outbox%' ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn migrations_apply_roll_back_and_reapply() {
    let db = support::TestDatabase::create("migrate").await;
    outbox::migrate(&db.pool).await.unwrap();
    assert_eq!(
        tables(&db.pool, "public").await,
        ["event_outbox", "event_outbox_lease", "event_outbox_relay"]
    );
    outbox::migrate(&db.pool).await.expect("idempotent");
    let leases: i64 = sqlx::query_scalar("SELECT count(*) FROM event_outbox_lease")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(leases, 64);
    MIGRATOR.undo(&db.pool, 0).await.expect("rolls back");
    assert!(tables(&db.pool, "public").await.is_empty());
    outbox::migrate(&db.pool).await.expect("re-applies");
    assert_eq!(tables(&db.pool, "public").await.len(), 3);
    db.drop_db().await;
}

#[tokio::test]
async fn migrations_into_a_configured_schema() {
    let db = support::TestDatabase::create("schema").await;
    let schema = SchemaName::new("file_service").unwrap();
    outbox::migrate_in_schema(&db.pool, &schema).await.unwrap();
    assert_eq!(tables(&db.pool, "file_service").await.len(), 3);
    assert!(tables(&db.pool, "public").await.is_empty());
    db.drop_db().await;
}

#[tokio::test]
async fn relay_without_tables_names_the_fix() {
    let db = support::TestDatabase::create("notable").await;
    let err = Relay::new(
        db.pool.clone(),
        fixtures::kafka("127.0.0.1:1"),
        fixtures::relay_config(""),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RelayError::MissingTable { .. }), "{err}");
    assert!(err.to_string().contains("run the migrations"), "{err}");
    db.drop_db().await;
}

#[tokio::test]
async fn relay_refuses_non_idempotent_producer_settings() {
    let db = support::TestDatabase::create("idem").await;
    outbox::migrate(&db.pool).await.unwrap();
    let mut kafka = fixtures::kafka("127.0.0.1:1");
    kafka.set("acks", "1");
    let err = Relay::new(db.pool.clone(), kafka, fixtures::relay_config(""))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("requires acks=all"), "{err}");
    db.drop_db().await;
}

#[tokio::test]
async fn relay_without_privileges_names_the_grant() {
    let db = support::TestDatabase::create("noprivs").await;
    outbox::migrate(&db.pool).await.unwrap();
    let role = format!(
        "outbox_ro_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    sqlx::query(&format!("CREATE ROLE {role} LOGIN"))
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(&format!("GRANT SELECT ON event_outbox TO {role}"))
        .execute(&db.pool)
        .await
        .unwrap();
    let options = <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(&db.url)
        .unwrap()
        .username(&role);
    let pool = sqlx::PgPool::connect_with(options).await.unwrap();
    let err = Relay::new(
        pool.clone(),
        fixtures::kafka("127.0.0.1:1"),
        fixtures::relay_config(""),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RelayError::MissingPrivileges { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("INSERT, UPDATE, DELETE") && text.contains("GRANT"),
        "{text}"
    );
    pool.close().await;
    db.drop_db().await;
    let admin = sqlx::PgPool::connect(&support::database_url())
        .await
        .unwrap();
    sqlx::query(&format!("DROP ROLE IF EXISTS {role}"))
        .execute(&admin)
        .await
        .unwrap();
}
