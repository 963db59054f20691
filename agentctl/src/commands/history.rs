//! `agentctl history SERVICE --env ENV`: what each host ran when, as recorded.

use super::context::environment;
use super::context::Context;
use crate::failure::{Code, Failure};
use crate::render::Report;
use crate::Globals;
use controlplane::release_history;

pub async fn run(g: &Globals, service: &str, env_name: &str) -> Result<Report, Failure> {
    let ctx = Context::load(g)?;
    environment(&ctx, env_name)?;
    if !ctx.set.services.keys().any(|s| s.as_str() == service) {
        let known: Vec<String> = ctx.set.services.keys().map(ToString::to_string).collect();
        return Err(Failure::new(Code::Invalid, anyhow::anyhow!("no service `{service}` in the manifests"))
            .hint(format!("known services: {}", known.join(", "))));
    }
    let steps = match ctx.read_store().await? {
        Some(store) => release_history::list(&store, env_name, service).await?,
        None => Vec::new(),
    };
    let text = crate::render::history::render(service, env_name, &steps);
    Ok(Report::new(text, serde_json::json!({ "environment": env_name, "service": service, "history": steps })))
}
