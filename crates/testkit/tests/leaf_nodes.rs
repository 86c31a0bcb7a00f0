//! The hub and leaf-node harness: subjects cross the leaf link both ways, a killed leaf
//! leaves the hub, and a leaf started again links up and carries subjects once more.
// Real processes on real time: its deadlines are wall-clock deadlines.
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use aviary_testkit::NatsHub;
use futures::StreamExt;

const DEADLINE: Duration = Duration::from_secs(10);

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Publishes `payload` on `subject` through `from` until `to`'s subscription (made first)
/// receives it: interest crosses a leaf link asynchronously, so the first publish may precede it.
async fn crosses(
    from: &async_nats::Client,
    to: &async_nats::Client,
    subject: &str,
    payload: &'static str,
) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
    let mut sub = to.subscribe(subject.to_owned()).await?;
    to.flush().await?;
    let started = std::time::Instant::now();
    while started.elapsed() < DEADLINE {
        from.publish(subject.to_owned(), payload.into()).await?;
        from.flush().await?;
        if let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
            return Ok(msg.payload == payload.as_bytes());
        }
    }
    Ok(false)
}

#[tokio::test]
async fn subjects_cross_the_leaf_link_both_ways() -> TestResult {
    let hub = NatsHub::start().await?;
    let eu = hub.start_leaf("eu").await?;
    let us = hub.start_leaf("us").await?;
    hub.wait_leaves(2).await?;
    let (hub_client, eu_client, us_client) = (
        hub.server().client().await?,
        eu.client().await?,
        us.client().await?,
    );

    assert!(crosses(&eu_client, &hub_client, "aviary.test.eu.up", "from eu").await?);
    assert!(crosses(&hub_client, &us_client, "aviary.test.us.down", "from hub").await?);
    // Leaf to leaf goes through the hub.
    assert!(crosses(&us_client, &eu_client, "aviary.test.eu.side", "from us").await?);

    // A request from the hub answered on a leaf.
    let mut service = eu_client.subscribe("aviary.test.eu.echo").await?;
    eu_client.flush().await?;
    let responder = tokio::spawn(async move {
        if let Some(msg) = service.next().await
            && let Some(reply) = msg.reply
        {
            let _ = eu_client.publish(reply, msg.payload).await;
            let _ = eu_client.flush().await;
        }
    });
    let answer = tokio::time::timeout(DEADLINE, async {
        loop {
            match hub_client
                .request("aviary.test.eu.echo", "ping".into())
                .await
            {
                Ok(msg) => break msg,
                // No responders yet: the subscription's interest has not crossed the link.
                Err(_) => tokio::task::yield_now().await,
            }
        }
    })
    .await?;
    assert_eq!(answer.payload, "ping".as_bytes());
    responder.await?;
    Ok(())
}

#[tokio::test]
async fn a_killed_leaf_leaves_the_hub_and_links_again_when_started() -> TestResult {
    let hub = NatsHub::start().await?;
    let mut eu = hub.start_leaf("eu").await?;
    hub.wait_leaves(1).await?;
    assert_eq!(hub.leaf_count().await?, 1);

    eu.kill();
    hub.wait_leaves(0).await?;
    eu.start_again().await?;
    hub.wait_leaves(1).await?;
    let (hub_client, eu_client) = (hub.server().client().await?, eu.client().await?);
    assert!(crosses(&eu_client, &hub_client, "aviary.test.eu.again", "back").await?);
    Ok(())
}

#[tokio::test]
async fn a_hub_with_a_leaf_login_links_only_leaves_that_give_it() -> TestResult {
    let hub = NatsHub::start_with_config("", Some(("leaf", "right"))).await?;
    // A leaf that dials with the wrong password (or none) is refused: the hub keeps no link.
    let wrong = aviary_testkit::NatsServer::start_with_config(&format!(
        "jetstream {{\n  domain: \"us\"\n}}\nleafnodes {{\n  reconnect: \"1s\"\n  \
         remotes = [ {{ url: \"nats-leaf://leaf:wrong@127.0.0.1:{}\" }} ]\n}}\n",
        hub.leaf_port()
    ))
    .await?;
    // The leaf the hub makes logs in and links.
    let eu = hub.start_leaf("eu").await?;
    hub.wait_leaves(1).await?;
    // The wrong leaf has had time to dial (and be refused) while the right one linked; its
    // log says so.
    let refused = || {
        let log = wrong.log();
        async move { log.to_lowercase().contains("authorization").then_some(()) }
    };
    let started = std::time::Instant::now();
    while refused().await.is_none() {
        assert!(
            started.elapsed() < DEADLINE,
            "no refusal in {}",
            wrong.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(hub.leaf_count().await?, 1);
    let (hub_client, eu_client) = (hub.server().client().await?, eu.client().await?);
    assert!(crosses(&eu_client, &hub_client, "aviary.test.eu.login", "in").await?);
    Ok(())
}
