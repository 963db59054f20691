//! `history`: what each host of (environment, service) came to run, when and how, as
//! recorded (`kubectl rollout history` for a fleet). Reads the store only.

use crate::release::ReleaseFacts;
use crate::store::{Store, StoreError};
use chrono::{DateTime, Utc};
use serde::Serialize;

/// One recorded step of one host, oldest first, with the release's one name.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub at: DateTime<Utc>,
    pub host: String,
    /// `promote`, `rollback`, `adopt`, `repair` or `forget`.
    pub kind: String,
    /// The release id (empty for `forget`).
    pub release_id: String,
    /// The image and commit the release was, when recorded.
    pub release: Option<ReleaseFacts>,
    pub plan_id: String,
    /// Whether this is what the host should be running now.
    pub current: bool,
}

/// The history of `service` in `env`, oldest first.
pub async fn list(store: &dyn Store, env: &str, service: &str) -> Result<Vec<Step>, StoreError> {
    let entries = store.history(env, service).await?;
    let mut facts = std::collections::BTreeMap::new();
    for e in entries.iter().filter(|e| !e.release_id.is_empty()) {
        if !facts.contains_key(&e.release_id) {
            let f = store.applied_release(env, service, &e.release_id).await?.map(|a| a.facts);
            facts.insert(e.release_id.clone(), f);
        }
    }
    let mut by_host: std::collections::BTreeMap<&str, Vec<crate::records::HistoryEntry>> = Default::default();
    for e in &entries {
        by_host.entry(e.host.as_str()).or_default().push(e.clone());
    }
    let current: std::collections::BTreeMap<&str, Option<String>> = by_host
        .iter()
        .map(|(h, es)| (*h, crate::history::current(&crate::history::stack(es)).map(str::to_owned)))
        .collect();
    // The last entry of a host that names its current release is marked.
    let mut last_of: std::collections::BTreeMap<&str, usize> = Default::default();
    for (i, e) in entries.iter().enumerate() {
        if current.get(e.host.as_str()).and_then(Option::as_deref) == Some(e.release_id.as_str()) {
            last_of.insert(e.host.as_str(), i);
        }
    }
    Ok(entries
        .iter()
        .enumerate()
        .map(|(i, e)| Step {
            at: e.at,
            host: e.host.clone(),
            kind: e.kind.clone(),
            release_id: e.release_id.clone(),
            release: facts.get(&e.release_id).cloned().flatten(),
            plan_id: e.plan_id.clone(),
            current: last_of.get(e.host.as_str()) == Some(&i),
        })
        .collect())
}
