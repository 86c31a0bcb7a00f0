//! KV compare-and-swap against a real nats-server: exactly one writer wins a race, the loser
//! gets `Conflict` and succeeds by re-reading.

mod common;

use aviary_bus::kv::{Bucket, Entry};
use aviary_bus::{BusError, BusErrorKind, names, setup};
use common::{TestResult, nats};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    step: u32,
    owner: String,
}

fn record(step: u32, owner: &str) -> Record {
    Record {
        step,
        owner: owner.to_owned(),
    }
}

async fn rollouts()
-> Result<(aviary_testkit::NatsServer, Bucket<Record>), Box<dyn std::error::Error + Send + Sync>> {
    let (server, _client, js) = nats().await?;
    setup::ensure_all(&js).await?;
    let bucket = Bucket::open(&js, names::BUCKET_ROLLOUTS).await?;
    Ok((server, bucket))
}

#[tokio::test]
async fn two_writers_race_exactly_one_wins_and_the_loser_retries() -> TestResult {
    let (_server, bucket) = rollouts().await?;
    let key = names::rollout_key("test", "podinfo")?;
    let created = bucket.create(&key, &record(0, "nobody")).await?;

    // Both writers read the same revision and decide.
    let seen_a = bucket.get(&key).await?.ok_or("missing")?;
    let seen_b = bucket.get(&key).await?.ok_or("missing")?;
    assert_eq!(seen_a.revision, created);
    assert_eq!(seen_b.revision, created);

    let (decision_a, decision_b) = (record(1, "a"), record(1, "b"));
    let (a, b) = tokio::join!(
        bucket.update(&key, &decision_a, seen_a.revision),
        bucket.update(&key, &decision_b, seen_b.revision),
    );
    let (winner, winner_revision, loser_error) = match (a, b) {
        (Ok(rev), Err(e)) => ("a", rev, e),
        (Err(e), Ok(rev)) => ("b", rev, e),
        other => panic!("exactly one writer must win, got {other:?}"),
    };
    assert_eq!(
        loser_error,
        BusError::Conflict {
            key: format!("{}/{key}", names::BUCKET_ROLLOUTS),
            current_revision: winner_revision,
        }
    );
    let stored = bucket.get(&key).await?.ok_or("missing")?;
    assert_eq!(stored.value, record(1, winner));

    // The loser re-reads and re-decides on top of the winner's write.
    let loser = if winner == "a" { "b" } else { "a" };
    let after = bucket
        .update_with(&key, |current| {
            let current = current?;
            Some(record(current.step + 1, loser))
        })
        .await?
        .ok_or("update_with wrote nothing")?;
    assert_eq!(after.value, record(2, loser));
    assert!(after.revision > winner_revision);
    assert_eq!(bucket.get(&key).await?, Some(after));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_with_retries_after_losing_a_race_inside_its_decision() -> TestResult {
    let (_server, bucket) = rollouts().await?;
    let key = "test.race";
    bucket.create(key, &record(0, "start")).await?;
    let mut calls = 0;
    let interloper = bucket.clone();
    let handle = tokio::runtime::Handle::current();

    // The first decision is overtaken by another writer before it is written.
    let result = bucket
        .update_with(key, |current| {
            let current = current?;
            calls += 1;
            if calls == 1 {
                tokio::task::block_in_place(|| {
                    handle.block_on(interloper.put(key, &record(10, "interloper")))
                })
                .ok()?;
            }
            Some(record(current.step + 1, "me"))
        })
        .await?
        .ok_or("nothing written")?;
    assert_eq!(calls, 2, "decided once more after the conflict");
    assert_eq!(
        result.value,
        record(11, "me"),
        "built on the interloper's write"
    );
    Ok(())
}

#[tokio::test]
async fn create_fails_when_the_key_exists_and_works_after_delete() -> TestResult {
    let (_server, bucket) = rollouts().await?;
    let rev = bucket.create("test.a", &record(0, "x")).await?;
    let err = bucket
        .create("test.a", &record(9, "y"))
        .await
        .expect_err("exists");
    assert_eq!(err.kind(), BusErrorKind::Conflict);
    assert!(matches!(err, BusError::Conflict { current_revision, .. } if current_revision == rev));

    let stale = bucket
        .delete("test.a", Some(rev + 100))
        .await
        .expect_err("stale delete");
    assert_eq!(stale.kind(), BusErrorKind::Conflict);
    bucket.delete("test.a", Some(rev)).await?;
    assert_eq!(bucket.get("test.a").await?, None);
    bucket.create("test.a", &record(1, "again")).await?;
    Ok(())
}

#[tokio::test]
async fn update_with_on_a_missing_key_creates_and_none_writes_nothing() -> TestResult {
    let (_server, bucket) = rollouts().await?;
    let untouched = bucket.update_with("test.none", |_| None).await?;
    assert_eq!(untouched, None);
    let created = bucket
        .update_with("test.new", |current| {
            assert!(current.is_none());
            Some(record(1, "me"))
        })
        .await?;
    assert!(matches!(created, Some(Entry { ref value, .. }) if *value == record(1, "me")));
    Ok(())
}

#[tokio::test]
async fn an_undecodable_value_is_an_error_not_an_overwrite() -> TestResult {
    let (_server, client, js) = nats().await?;
    setup::ensure_all(&js).await?;
    let raw = js.get_key_value(names::BUCKET_ROLLOUTS).await?;
    raw.put("test.bad", "{not json".into()).await?;
    drop(client);
    let bucket: Bucket<Record> = Bucket::new(raw);
    let err = bucket.get("test.bad").await.expect_err("garbage");
    assert_eq!(err.kind(), BusErrorKind::Decode);
    let err = bucket
        .update_with("test.bad", |_| Some(record(1, "me")))
        .await
        .expect_err("must not overwrite");
    assert_eq!(err.kind(), BusErrorKind::Decode);
    Ok(())
}
