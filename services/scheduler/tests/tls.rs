//! The control API over TLS with client certificates, and gRPC health checking.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;
use aviary_proto as pb;
use aviary_proto::rollout_service_client::RolloutServiceClient;
use aviary_testkit::{NatsServer, free_port};
use common::Replica;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

async fn connect(
    port: u16,
    tls: ClientTlsConfig,
) -> Result<RolloutServiceClient<Channel>, tonic::transport::Error> {
    let channel = Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(RolloutServiceClient::new(channel))
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_with_a_certificate_and_health_reports_serving() {
    let pki = tempfile::tempdir().unwrap();
    aviary_testkit::tls::make_pki(pki.path()).unwrap();
    let path = |f: &str| pki.path().join(f).display().to_string();
    let nats = NatsServer::start().await.unwrap();
    let port = free_port().unwrap();
    let (cert, key, ca) = (path("server.pem"), path("server.key"), path("ca.pem"));
    let extra = [
        "--tls-cert",
        cert.as_str(),
        "--tls-key",
        key.as_str(),
        "--tls-client-ca",
        ca.as_str(),
    ];
    let scheduler = Replica::start(&nats.url(), port, &extra);

    let ca_cert = Certificate::from_pem(std::fs::read(path("ca.pem")).unwrap());
    let identity = Identity::from_pem(
        std::fs::read(path("client.pem")).unwrap(),
        std::fs::read(path("client.key")).unwrap(),
    );
    let with_cert = ClientTlsConfig::new()
        .ca_certificate(ca_cert.clone())
        .identity(identity)
        .domain_name("localhost");
    let mut client =
        aviary_testkit::eventually(std::time::Duration::from_secs(10), "TLS API up", || {
            let tls = with_cert.clone();
            async move { connect(port, tls).await.ok() }
        })
        .await;
    assert!(client.list(pb::ListRequest::default()).await.is_ok());

    let channel = Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(with_cert.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "aviary.v1.RolloutService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    // No client certificate: the handshake (or the first call) fails.
    let without_cert = ClientTlsConfig::new()
        .ca_certificate(ca_cert)
        .domain_name("localhost");
    let refused = match connect(port, without_cert).await {
        Err(_) => true,
        Ok(mut c) => c.list(pb::ListRequest::default()).await.is_err(),
    };
    assert!(refused, "a client without a certificate must be refused");

    // Plain text is not served.
    let plain = RolloutServiceClient::connect(format!("http://127.0.0.1:{port}")).await;
    let plain_refused = match plain {
        Err(_) => true,
        Ok(mut c) => c.list(pb::ListRequest::default()).await.is_err(),
    };
    assert!(plain_refused, "plain text must be refused");

    scheduler.stop().await;
}
