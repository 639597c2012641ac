//! The HTTP client of a relay's face (`flyt-relay`'s `/info` and `POST /join`), for adding and
//! removing relays: `flyt relay add/remove` and the app's `relay_add`/`relay_remove`.
//!
//! Blocking (ureq): call it from a thread that may block (`tokio::task::spawn_blocking` in
//! async code). Plain `http://` only: this build has no TLS client.

use std::time::Duration;

use crdt_model::DeviceId;

/// How long one request to a relay may take, all told.
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// How long connecting may take (a dead address fails here, not after [`TIMEOUT`]).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why talking to a relay failed. The messages are lower-case clauses for the CLI's chain;
/// `peer::api` turns them into sentences.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayClientError {
    /// Not an `http://` URL.
    #[error("a relay URL starts with http:// (got {0:?})")]
    BadUrl(String),
    /// An `https://` URL, which this build cannot reach.
    #[error("this build reaches relays over http:// only ({0})")]
    Https(String),
    /// Nothing answered (refused, timed out, unknown host, the answer broke off).
    #[error("could not reach the relay at {url}")]
    Unreachable {
        /// The relay's URL.
        url: String,
        /// What the HTTP client said.
        #[source]
        source: ureq::Error,
    },
    /// Something answered, but not as a Flyt relay does.
    #[error("{url} did not answer like a Flyt relay (HTTP {status})")]
    NotARelay {
        /// The URL asked.
        url: String,
        /// The HTTP status it answered with.
        status: u16,
    },
    /// The relay answered with an error.
    #[error("the relay refused: {message} (HTTP {status})")]
    Refused {
        /// The relay's URL.
        url: String,
        /// The relay's own message.
        message: String,
        /// The HTTP status.
        status: u16,
    },
}

/// What a relay says about itself at `/info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayInfo {
    /// Its iroh endpoint (device) id.
    pub id: DeviceId,
    /// Direct UDP addresses of that endpoint.
    pub addrs: Vec<String>,
}

/// A relay URL as it is recorded: trimmed, no trailing `/`, `http://` only.
pub fn normalize(url: &str) -> Result<String, RelayClientError> {
    let url = url.trim().trim_end_matches('/');
    if url.starts_with("https://") {
        return Err(RelayClientError::Https(url.to_owned()));
    }
    match url.strip_prefix("http://") {
        Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => Ok(url.to_owned()),
        _ => Err(RelayClientError::BadUrl(url.to_owned())),
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into()
}

/// The relay's answer as JSON, or its error message as an error.
fn answer(
    url: &str,
    r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<serde_json::Value, RelayClientError> {
    let unreachable = |source| RelayClientError::Unreachable {
        url: url.to_owned(),
        source,
    };
    let mut r = r.map_err(unreachable)?;
    let status = r.status().as_u16();
    let body = r.body_mut().read_to_string().map_err(unreachable)?;
    let not_a_relay = || RelayClientError::NotARelay {
        url: url.to_owned(),
        status,
    };
    let json: serde_json::Value = serde_json::from_str(&body).map_err(|_| not_a_relay())?;
    if !(200..300).contains(&status) {
        let Some(message) = json["message"].as_str() else {
            return Err(not_a_relay());
        };
        return Err(RelayClientError::Refused {
            url: url.to_owned(),
            message: message.to_owned(),
            status,
        });
    }
    Ok(json)
}

/// `GET {url}/info`: who the relay is.
pub fn info(url: &str) -> Result<RelayInfo, RelayClientError> {
    let url = normalize(url)?;
    let json = answer(&url, agent().get(&format!("{url}/info")).call())?;
    let id = json["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| RelayClientError::NotARelay {
            url: format!("{url}/info"),
            status: 200,
        })?;
    let addrs = json["addrs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(RelayInfo { id, addrs })
}

/// `POST {url}/join` with a workspace document (saved), which must list the relay for it to
/// start serving the workspace, or no longer list it for it to stop.
pub fn join(url: &str, workspace: &[u8]) -> Result<(), RelayClientError> {
    let url = normalize(url)?;
    let r = agent()
        .post(&format!("{url}/join"))
        .header("content-type", "application/octet-stream")
        .send(workspace);
    answer(&url, r)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_trimmed_and_must_be_plain_http() {
        assert_eq!(
            normalize(" http://127.0.0.1:8787/ ").unwrap(),
            "http://127.0.0.1:8787"
        );
        assert!(matches!(
            normalize("https://relay.example"),
            Err(RelayClientError::Https(_))
        ));
        for bad in [
            "ftp://relay.example",
            "relay.example:8787",
            "http://",
            "http://a b",
            "",
        ] {
            assert!(
                matches!(normalize(bad), Err(RelayClientError::BadUrl(_))),
                "{bad:?}"
            );
        }
    }
}
