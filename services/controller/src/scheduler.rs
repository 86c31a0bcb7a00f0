//! The controller's client of the scheduler's control API: it applies each resource's rollout,
//! reads its status, aborts and deletes it, with the operator token it is given.

use std::time::Duration;

use aviary_proto::bearer::BearerToken;
use aviary_proto::rollout_service_client::RolloutServiceClient;
use aviary_proto::{ApplyRequest, CommandRequest, GetRequest, Rollout as PbRollout, RolloutRef};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

/// A control-API client (cheap to clone: one HTTP/2 channel underneath).
#[derive(Clone)]
pub struct Scheduler {
    client: RolloutServiceClient<InterceptedService<Channel, BearerToken>>,
}

/// Why a call to the scheduler failed.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The address or TLS settings are unusable.
    #[error("invalid scheduler settings: {0}")]
    Settings(String),
    /// The scheduler answered with an error.
    #[error("scheduler: {}: {}", .0.code(), .0.message())]
    Status(#[from] Status),
}

impl SchedulerError {
    /// The gRPC code, for a status error.
    pub fn code(&self) -> Option<Code> {
        match self {
            SchedulerError::Status(s) => Some(s.code()),
            SchedulerError::Settings(_) => None,
        }
    }
}

impl Scheduler {
    /// A client of `url` (`http://` or `https://`), connecting lazily so the controller starts
    /// while the scheduler is still coming up.
    ///
    /// # Errors
    /// [`SchedulerError::Settings`] for a bad URL, token or CA.
    pub fn new(
        url: &str,
        token: Option<&str>,
        ca_pem: Option<Vec<u8>>,
    ) -> Result<Self, SchedulerError> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| SchedulerError::Settings(format!("{url:?}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30));
        if ca_pem.is_some() || url.starts_with("https://") {
            aviary_runtime::install_crypto_provider();
            let mut tls = ClientTlsConfig::new();
            if let Some(pem) = ca_pem {
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| SchedulerError::Settings(e.to_string()))?;
        }
        let token = BearerToken::new(token).map_err(|e| SchedulerError::Settings(e.to_string()))?;
        let channel = endpoint.connect_lazy();
        Ok(Scheduler {
            client: RolloutServiceClient::with_interceptor(channel, token),
        })
    }

    /// Applies a rollout manifest; returns whether the stored spec changed.
    ///
    /// # Errors
    /// As the API: `INVALID_ARGUMENT` names the bad field.
    pub async fn apply(&self, manifest: String) -> Result<bool, SchedulerError> {
        let resp = self.client.clone().apply(ApplyRequest { manifest }).await?;
        Ok(resp.into_inner().changed)
    }

    /// The rollout `namespace/name`, or `None` when the scheduler has none.
    ///
    /// # Errors
    /// As the API.
    pub async fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<PbRollout>, SchedulerError> {
        match self
            .client
            .clone()
            .get(GetRequest {
                r#ref: Some(RolloutRef::new(namespace, name)),
            })
            .await
        {
            Ok(r) => Ok(Some(r.into_inner())),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(s.into()),
        }
    }

    /// Aborts the rollout (back to the primary).
    ///
    /// # Errors
    /// As the API (`FAILED_PRECONDITION` when it is not running).
    pub async fn abort(
        &self,
        namespace: &str,
        name: &str,
        reason: &str,
    ) -> Result<(), SchedulerError> {
        self.client
            .clone()
            .abort(CommandRequest {
                r#ref: Some(RolloutRef::new(namespace, name)),
                reason: reason.to_owned(),
            })
            .await?;
        Ok(())
    }

    /// Deletes a finished rollout; a missing one is not an error.
    ///
    /// # Errors
    /// As the API (`FAILED_PRECONDITION` while it still moves traffic).
    pub async fn delete(
        &self,
        namespace: &str,
        name: &str,
        reason: &str,
    ) -> Result<(), SchedulerError> {
        match self
            .client
            .clone()
            .delete(CommandRequest {
                r#ref: Some(RolloutRef::new(namespace, name)),
                reason: reason.to_owned(),
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(s.into()),
        }
    }
}
