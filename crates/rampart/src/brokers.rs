//! Calls to users' broker hosts (OpenAlgo API) for `POST /accounts/{id}/refresh`.
//!
//! Every call goes through [`SafeClient`] (the address is checked again when
//! connecting, redirects are not followed, timeouts apply) and through the circuit breaker
//! of its host, kept in a bounded map. Failures are [`BrokerError`]: 502 when the broker
//! cannot be reached or answers badly, 504 on timeout, 503 + `Retry-After` while open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use url::Url;

use crate::circuit_breaker::{self, CircuitBreaker, Transition};
use crate::error::ApiError;
use crate::outbound::{OutboundError, OutboundPolicy, SafeClient, SsrfError};

/// Most broker hosts with a breaker of their own; past that, closed breakers are dropped.
pub const MAX_BREAKERS: usize = 1024;

/// Largest broker answer read, in bytes.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// Why fetching from a broker failed. `Display` is safe to show.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The host's circuit is open.
    #[error(transparent)]
    Open(#[from] circuit_breaker::Open),
    /// The host did not answer in time.
    #[error("the broker did not answer in time")]
    Timeout,
    /// The host could not be reached, or its address is no longer allowed.
    #[error("the broker could not be reached")]
    Unreachable,
    /// The host answered with an error or something that is not an OpenAlgo answer.
    #[error("the broker refused the request or answered badly")]
    BadAnswer,
}

impl From<BrokerError> for ApiError {
    fn from(error: BrokerError) -> Self {
        match error {
            BrokerError::Open(open) => Self::ServiceUnavailable {
                message: "The broker is unavailable; try again later".into(),
                retry_after: Some(open.retry_after),
            },
            BrokerError::Timeout => Self::GatewayTimeout,
            BrokerError::Unreachable | BrokerError::BadAnswer => Self::BadGateway,
        }
    }
}

/// The outbound client and the breakers of every broker host.
#[derive(Debug)]
pub struct Brokers {
    policy: Arc<OutboundPolicy>,
    client: SafeClient,
    settings: circuit_breaker::Settings,
    breakers: Mutex<HashMap<String, Arc<CircuitBreaker>>>,
}

impl Brokers {
    /// Brokers reached under `policy`, each call given `timeout` in all (connecting within
    /// at most 5 s of it), each host's circuit following `settings`.
    pub fn new(
        policy: OutboundPolicy,
        timeout: Duration,
        settings: circuit_breaker::Settings,
    ) -> Self {
        let policy = Arc::new(policy);
        let client = SafeClient::new(
            Arc::clone(&policy),
            timeout.min(Duration::from_secs(5)),
            timeout,
        )
        .with_max_response_bytes(MAX_ANSWER_BYTES);
        Self {
            policy,
            client,
            settings,
            breakers: Mutex::new(HashMap::new()),
        }
    }

    /// The `[accounts]` policy that host URLs are checked against.
    pub fn policy(&self) -> &OutboundPolicy {
        &self.policy
    }

    /// The breaker of a host (`scheme://host:port`).
    fn breaker(&self, host: &str) -> Arc<CircuitBreaker> {
        let mut breakers = self
            .breakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(breaker) = breakers.get(host) {
            return Arc::clone(breaker);
        }
        if breakers.len() >= MAX_BREAKERS {
            // Closed breakers carry at most a few recent failures; open ones must stay.
            breakers.retain(|_, breaker| breaker.state() != circuit_breaker::State::Closed);
        }
        let breaker = Arc::new(CircuitBreaker::new(self.settings));
        if breakers.len() < MAX_BREAKERS {
            breakers.insert(host.to_owned(), Arc::clone(&breaker));
        }
        breaker
    }

    /// Fetches an account's funds: `POST {host_url}/api/v1/funds` with `{"apikey": …}`,
    /// returning the answer's `data`, and the breaker transition this call caused.
    pub async fn funds(
        &self,
        host_url: &str,
        api_key: &str,
    ) -> (Result<Value, BrokerError>, Option<Transition>) {
        let Ok(url) = funds_url(&self.policy, host_url) else {
            return (Err(BrokerError::Unreachable), None);
        };
        let host = format!(
            "{}://{}:{}",
            url.scheme(),
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or_default()
        );
        let breaker = self.breaker(&host);
        let permit = match breaker.acquire() {
            Ok(permit) => permit,
            Err(open) => return (Err(open.into()), None),
        };
        let half_opened = permit.transition();
        let body = serde_json::json!({ "apikey": api_key });
        let (result, transition) = match self.client.post_json(&url, &body).await {
            Ok((status, _)) if status.is_server_error() => {
                tracing::info!(%status, "broker answered with a server error");
                (Err(BrokerError::BadAnswer), permit.failed())
            }
            Ok((status, bytes)) => {
                let answer: Option<Value> = serde_json::from_slice(&bytes).ok();
                let data = answer
                    .filter(|answer| status.is_success() && answer["status"] == "success")
                    .and_then(|mut answer| answer.get_mut("data").map(Value::take));
                match data {
                    Some(data) => (Ok(data), permit.succeeded()),
                    None => {
                        tracing::info!(%status, "broker refused the request or answered badly");
                        // The broker is up and answering; its refusal is not an outage.
                        (Err(BrokerError::BadAnswer), permit.succeeded())
                    }
                }
            }
            Err(OutboundError::Refused(refused)) => {
                tracing::warn!(error = %refused, "broker host refused by the outbound policy");
                drop(permit);
                (Err(BrokerError::Unreachable), None)
            }
            Err(OutboundError::Timeout) => (Err(BrokerError::Timeout), permit.failed()),
            Err(error) => {
                tracing::info!(%error, "broker call failed");
                (Err(BrokerError::Unreachable), permit.failed())
            }
        };
        (result, transition.or(half_opened))
    }
}

/// `{host_url}/api/v1/funds`, checked against the policy.
fn funds_url(policy: &OutboundPolicy, host_url: &str) -> Result<Url, SsrfError> {
    let mut url = policy.check_url(host_url)?;
    let path = format!("{}/api/v1/funds", url.path().trim_end_matches('/'));
    url.set_path(&path);
    url.set_query(None);
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_funds_path_is_appended_to_the_base_url() {
        let policy = OutboundPolicy::default();
        for (base, expected) in [
            (
                "https://broker.example.com",
                "https://broker.example.com/api/v1/funds",
            ),
            (
                "https://broker.example.com/",
                "https://broker.example.com/api/v1/funds",
            ),
            (
                "https://broker.example.com/openalgo/",
                "https://broker.example.com/openalgo/api/v1/funds",
            ),
        ] {
            assert_eq!(funds_url(&policy, base).unwrap().as_str(), expected);
        }
        assert!(funds_url(&policy, "http://10.0.0.1").is_err());
    }

    #[test]
    fn errors_map_to_the_documented_statuses() {
        let open = circuit_breaker::Open {
            retry_after: Duration::from_secs(3),
        };
        assert_eq!(ApiError::from(BrokerError::Open(open)).status(), 503);
        assert_eq!(ApiError::from(BrokerError::Timeout).status(), 504);
        assert_eq!(ApiError::from(BrokerError::Unreachable).status(), 502);
        assert_eq!(ApiError::from(BrokerError::BadAnswer).status(), 502);
    }

    fn loopback_policy() -> OutboundPolicy {
        OutboundPolicy::new(true, &[], &["127.0.0.1/32".parse().unwrap()]).unwrap()
    }

    #[tokio::test]
    async fn a_broker_that_never_answers_times_out_and_counts_as_a_failure() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        // Accepts and holds connections without ever answering.
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                open.push(stream);
            }
        });
        let settings = circuit_breaker::Settings {
            failures: 2,
            ..circuit_breaker::Settings::default()
        };
        let brokers = Brokers::new(loopback_policy(), Duration::from_millis(300), settings);
        let url = format!("http://{address}");
        let (first, transition) = brokers.funds(&url, "key").await;
        assert!(matches!(first, Err(BrokerError::Timeout)), "{first:?}");
        assert_eq!(transition, None);
        let (_, transition) = brokers.funds(&url, "key").await;
        assert_eq!(transition, Some(Transition::Opened));
        let (third, _) = brokers.funds(&url, "key").await;
        assert!(matches!(third, Err(BrokerError::Open(_))), "{third:?}");
        held.abort();
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let brokers = Brokers::new(
            loopback_policy(),
            Duration::from_secs(2),
            circuit_breaker::Settings::default(),
        );
        let (result, _) = brokers.funds(&format!("http://{address}"), "key").await;
        assert!(
            matches!(result, Err(BrokerError::Unreachable)),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn a_forbidden_host_is_never_contacted() {
        let brokers = Brokers::new(
            OutboundPolicy::default(),
            Duration::from_secs(2),
            circuit_breaker::Settings::default(),
        );
        for url in ["http://127.0.0.1:1", "https://10.0.0.1", "https://[::1]:1"] {
            let (result, _) = brokers.funds(url, "key").await;
            assert!(matches!(result, Err(BrokerError::Unreachable)), "{url}");
        }
    }

    #[test]
    fn the_breaker_map_stays_bounded() {
        let brokers = Brokers::new(
            OutboundPolicy::default(),
            Duration::from_secs(1),
            circuit_breaker::Settings::default(),
        );
        for index in 0..(MAX_BREAKERS + 10) {
            let _ = brokers.breaker(&format!("https://host{index}:443"));
        }
        assert!(brokers.breakers.lock().unwrap().len() <= MAX_BREAKERS);
        let first = brokers.breaker("https://same:443");
        let again = brokers.breaker("https://same:443");
        assert!(Arc::ptr_eq(&first, &again));
    }
}
