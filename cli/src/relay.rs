//! Talking to a relay's HTTP face for `flyt relay add`: its `/info`, then `POST /join`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use crdt_model::DeviceId;

/// What `flyt relay add` needs from `/info`.
pub struct RelayInfo {
    pub id: DeviceId,
    pub addrs: Vec<String>,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(15)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// The relay's answer as JSON, or its error message as an error.
fn answer(url: &str, mut r: ureq::http::Response<ureq::Body>) -> Result<serde_json::Value> {
    let status = r.status();
    let body = r
        .body_mut()
        .read_to_string()
        .with_context(|| format!("reading the answer of {url}"))?;
    let json: serde_json::Value = serde_json::from_str(&body)
        .with_context(|| format!("{url} did not answer like a Flyt relay (HTTP {status})"))?;
    if !status.is_success() {
        let msg = json["message"].as_str().unwrap_or("no reason given");
        bail!("the relay refused: {msg} (HTTP {status})");
    }
    Ok(json)
}

/// `GET {url}/info`.
pub fn info(url: &str) -> Result<RelayInfo> {
    if url.starts_with("https://") {
        bail!("this build reaches relays over http:// only ({url})");
    }
    if !url.starts_with("http://") {
        bail!("a relay URL starts with http:// (got {url:?})");
    }
    let r = agent()
        .get(&format!("{url}/info"))
        .call()
        .with_context(|| format!("could not reach the relay at {url}"))?;
    let json = answer(url, r)?;
    let id = json["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{url}/info has no valid relay id"))?;
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

/// `POST {url}/join` with the workspace document.
pub fn join(url: &str, workspace: &[u8]) -> Result<()> {
    let r = agent()
        .post(&format!("{url}/join"))
        .header("content-type", "application/octet-stream")
        .send(workspace)
        .with_context(|| format!("could not reach the relay at {url}"))?;
    answer(url, r)?;
    Ok(())
}
