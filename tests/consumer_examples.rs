//! The Batch Orchestrator and CJ Assessment examples, run end to end
//! against a real Postgres and broker through their `run` functions.

mod support;

#[allow(dead_code)]
#[path = "../examples/batch_orchestrator.rs"]
mod batch_orchestrator;
#[allow(dead_code)]
#[path = "../examples/cj_assessment.rs"]
mod cj_assessment;

use outbox::OutboxEvent;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_orchestrator_publishes_a_registration_in_one_transaction_and_its_transitions() {
    use batch_orchestrator::*;
    support::init_tracing();
    let bootstrap = support::bootstrap_servers();
    let db = support::TestDatabase::create("bos").await;
    let prefix = support::unique("bos");
    let topics: Vec<String> = [
        BatchEssaysRegistered::REGISTRATION.topic,
        EssaySpellcheckInitiateCommandV1::REGISTRATION.topic,
        BatchPhaseCompletedV1::REGISTRATION.topic,
        BatchPipelineErrorV1::REGISTRATION.topic,
    ]
    .iter()
    .map(|t| format!("{prefix}{t}"))
    .collect();
    support::create_topics(&bootstrap, &topics, 3).await;
    let collector = support::Collector::start(&bootstrap, &topics);

    let essays = 40;
    let report = run(Settings {
        database_url: db.url.clone(),
        bootstrap: bootstrap.clone(),
        topic_prefix: prefix.clone(),
        essays,
    })
    .await
    .expect("the example runs");

    let expected = 2 * (essays + 1) + 2;
    assert_eq!(report.events_published, expected);
    assert_eq!(report.events_delivered, expected as u64);
    assert!(report.repeated_transition_refused);
    collector.wait_for(expected, Duration::from_secs(60)).await;
    let all = collector.settle(Duration::from_secs(2)).await;
    assert_eq!(
        all.len(),
        expected,
        "every event once, nothing from the refused transition"
    );

    let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
    for m in &all {
        *by_type.entry(m.headers["event_type"].clone()).or_default() += 1;
    }
    assert_eq!(by_type["BatchEssaysRegistered"], 2);
    assert_eq!(by_type["EssaySpellcheckInitiateCommandV1"], 2 * essays);
    assert_eq!(by_type["BatchPhaseCompletedV1"], 1);
    assert_eq!(by_type["BatchPipelineErrorV1"], 1);

    // A registration's events share the registration transaction's correlation id.
    for registered in [&report.completed, &report.failed] {
        let ids: BTreeSet<String> = registered
            .event_ids
            .iter()
            .map(ToString::to_string)
            .collect();
        let of_tx: Vec<_> = all
            .iter()
            .filter(|m| ids.contains(&m.headers["event_id"]))
            .collect();
        assert_eq!(of_tx.len(), essays + 1);
        assert!(of_tx
            .iter()
            .all(|m| m.headers["correlation_id"] == registered.correlation_id.to_string()));
    }
    let phase = all
        .iter()
        .find(|m| m.headers["event_type"] == "BatchPhaseCompletedV1")
        .unwrap();
    assert_eq!(phase.payload["data"]["batch_id"], report.completed.batch_id);
    assert_eq!(phase.payload["data"]["essays_completed"], essays);
    let error = all
        .iter()
        .find(|m| m.headers["event_type"] == "BatchPipelineErrorV1")
        .unwrap();
    assert_eq!(error.payload["data"]["batch_id"], report.failed.batch_id);
    let failed: Vec<String> =
        serde_json::from_value(error.payload["data"]["failed_essay_ids"].clone()).unwrap();
    assert_eq!(failed, report.failed_essays);

    let states: Vec<(String, String)> =
        sqlx::query_as("SELECT batch_id, state FROM bos_batches ORDER BY batch_id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        states,
        [
            (
                report.completed.batch_id.clone(),
                "spellcheck_completed".to_owned()
            ),
            (report.failed.batch_id.clone(), "failed".to_owned())
        ]
    );
    collector.stop();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cj_assessment_consumes_through_the_inbox_and_publishes_in_the_same_transaction() {
    use cj_assessment::*;
    support::init_tracing();
    let bootstrap = support::bootstrap_servers();
    let db = support::TestDatabase::create("cj").await;
    let prefix = support::unique("cj");
    let assessed = format!("{prefix}{}", CJAssessmentCompletedV1::REGISTRATION.topic);
    support::create_topics(&bootstrap, std::slice::from_ref(&assessed), 3).await;
    let collector = support::Collector::start(&bootstrap, &[assessed]);

    let essays = 8;
    let report = run(Settings {
        database_url: db.url.clone(),
        bootstrap: bootstrap.clone(),
        topic_prefix: prefix.clone(),
        group_id: format!("{prefix}cj_assessment_service"),
        essays,
        once: true,
    })
    .await
    .expect("the example runs");

    assert_eq!(
        report.consumer.handled, essays as u64,
        "{:?}",
        report.consumer
    );
    assert_eq!(report.consumer.dead_lettered, 0);
    assert_eq!(report.rankings.len(), essays);
    assert_eq!(
        report.rankings.iter().map(|r| r.rank).collect::<Vec<_>>(),
        (1..=essays as u32).collect::<Vec<_>>()
    );

    collector.wait_for(1, Duration::from_secs(60)).await;
    let got = collector.settle(Duration::from_secs(2)).await;
    assert_eq!(got.len(), 1, "one assessment for the batch");
    let m = &got[0];
    assert_eq!(m.headers["event_type"], "CJAssessmentCompletedV1");
    assert_eq!(m.payload["source_service"], "cj_assessment_service");
    assert_eq!(m.payload["aggregate_type"], "cj_batch");
    assert_eq!(m.payload["data"]["batch_id"], report.batch_id);
    assert_eq!(
        m.payload["data"]["rankings"].as_array().map(Vec::len),
        Some(essays)
    );
    assert_eq!(
        m.headers["correlation_id"],
        report.correlation_id.to_string(),
        "the assessment carries the spellcheck events' correlation id"
    );

    let inbox: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT event_id FROM event_inbox WHERE consumer = $1 ORDER BY event_id",
    )
    .bind(format!("{prefix}cj_assessment_service"))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut expected = report.spellcheck_event_ids.clone();
    expected.sort();
    assert_eq!(inbox, expected, "one inbox row per consumed event");
    let state: String = sqlx::query_scalar("SELECT state FROM cj_batches WHERE batch_id = $1")
        .bind(&report.batch_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(state, "completed");
    collector.stop();
    db.drop_db().await;
}
