//! `vdctl status`: a VideoDelivery's keys, agents and live traffic, read through the API server like kubectl.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use serde_json::Value;

use crate::traffic::{self, Sample, Traffic};

/// Agents scraped at most: more than a status line can show is what Prometheus is for.
const MAX_AGENTS: usize = 64;
/// One scrape through the pod proxy may take this long.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// The agent's admin port when its pod names none (the operator always names it "admin").
const DEFAULT_ADMIN_PORT: i32 = 9090;

pub fn run(name: &str, namespace: Option<&str>, interval: Option<Duration>) -> Result<ExitCode> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let client = kube::Client::try_default().await.context("no Kubernetes configuration (KUBECONFIG) found")?;
        let ns = namespace.map(str::to_owned).unwrap_or_else(|| client.default_namespace().to_owned());
        let gvk = GroupVersionKind::gvk("videodelivery.dev", "v1alpha1", "VideoDelivery");
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ApiResource::from_gvk(&gvk));
        let vd = api
            .get_opt(name)
            .await
            .with_context(|| format!("could not read VideoDelivery {ns}/{name}"))?
            .with_context(|| format!("VideoDelivery {ns}/{name} not found"))?;
        let status = vd.data.get("status").cloned().unwrap_or(Value::Null);
        for line in describe_delivery(&ns, name, &status) {
            println!("{line}");
        }

        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let selector = format!("app.kubernetes.io/name=videodelivery-agent,app.kubernetes.io/instance={name}");
        let listed = pods.list(&ListParams::default().labels(&selector)).await.context("could not list agent pods")?;
        let mut agents: Vec<(String, i32)> = Vec::new();
        let mut line = Vec::new();
        for p in &listed.items {
            let pod = p.metadata.name.clone().unwrap_or_default();
            let phase = p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_else(|| "Unknown".into());
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            line.push(format!("{pod} {phase}{}", if ready { ", ready" } else { "" }));
            if phase == "Running" {
                let port = admin_port(p);
                agents.push((pod, port));
            }
        }
        println!("  pods: {}", if line.is_empty() { "none".to_owned() } else { line.join("; ") });

        let Some(interval) = interval else { return Ok(ExitCode::SUCCESS) };
        if agents.is_empty() {
            println!("Traffic: no running agent pod to read");
            return Ok(ExitCode::SUCCESS);
        }
        let skipped = agents.len().saturating_sub(MAX_AGENTS);
        agents.truncate(MAX_AGENTS);
        let first = scrape_all(&client, &ns, &agents).await;
        let started = Instant::now();
        tokio::time::sleep(interval).await;
        let second = scrape_all(&client, &ns, &agents).await;
        let mut t = Traffic { seconds: started.elapsed().as_secs_f64(), ..Traffic::default() };
        let mut answered = 0;
        let mut failures = Vec::new();
        for ((pod, _), (a, b)) in agents.iter().zip(first.into_iter().zip(second)) {
            match (a, b) {
                (Ok(a), Ok(b)) => {
                    t.add(&a, &b);
                    answered += 1;
                }
                (Err(e), _) | (_, Err(e)) => failures.push(format!("  {pod}: no metrics: {e}")),
            }
        }
        let more = if skipped > 0 { format!(" ({skipped} more not read)") } else { String::new() };
        println!("Traffic over {:.1}s from {answered} of {} agents{more}:", t.seconds, agents.len());
        if answered > 0 {
            for line in t.describe() {
                println!("  {line}");
            }
        }
        for f in failures {
            println!("{f}");
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn admin_port(p: &Pod) -> i32 {
    p.spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|port| port.name.as_deref() == Some("admin"))
        .map_or(DEFAULT_ADMIN_PORT, |port| port.container_port)
}

/// Every agent's /metrics through the API server's pod proxy, at once; each answer or why there is none.
async fn scrape_all(client: &kube::Client, ns: &str, agents: &[(String, i32)]) -> Vec<Result<Vec<Sample>, String>> {
    let mut set = tokio::task::JoinSet::new();
    for (i, (pod, port)) in agents.iter().enumerate() {
        let client = client.clone();
        let path = format!("/api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/metrics");
        set.spawn(async move {
            let req = http::Request::get(path).body(Vec::new()).map_err(|e| e.to_string());
            let got = match req {
                Ok(req) => match tokio::time::timeout(SCRAPE_TIMEOUT, client.request_text(req)).await {
                    Err(_) => Err(format!("no answer within {}s", SCRAPE_TIMEOUT.as_secs())),
                    Ok(Err(kube::Error::Api(e))) if e.code == 403 => {
                        Err(format!("forbidden: reading agents' metrics needs get on pods/proxy ({})", e.message))
                    }
                    Ok(Err(e)) => Err(e.to_string()),
                    Ok(Ok(text)) => traffic::parse(&text).map_err(|e| e.to_string()),
                },
                Err(e) => Err(e),
            };
            (i, got)
        });
    }
    let mut out: Vec<Result<Vec<Sample>, String>> = agents.iter().map(|_| Err("not read".to_owned())).collect();
    while let Some(done) = set.join_next().await {
        if let Ok((i, got)) = done {
            out[i] = got;
        }
    }
    out
}

/// The VideoDelivery's condition, keys and agent counts, from its status.
fn describe_delivery(ns: &str, name: &str, status: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let ready = status["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "Ready"));
    out.push(match ready {
        Some(c) => format!(
            "VideoDelivery {ns}/{name}: Ready={} {}{}",
            c["status"].as_str().unwrap_or("Unknown"),
            c["reason"].as_str().unwrap_or(""),
            c["message"].as_str().map(|m| format!(": {m}")).unwrap_or_default()
        ),
        None => format!("VideoDelivery {ns}/{name}: no Ready condition yet (is the operator running?)"),
    });
    if let Some(url) = status["url"].as_str() {
        out.push(format!("  url: {url}"));
    }
    let keys = status["keys"].as_array().cloned().unwrap_or_default();
    let next = status["nextRotationTime"].as_str().map(|t| format!(" (next rotation {t})")).unwrap_or_default();
    out.push(format!("Keys{next}:"));
    if keys.is_empty() {
        out.push("  none yet".into());
    }
    for k in &keys {
        let state = k["state"].as_str().unwrap_or("?");
        let until = match (state, k["until"].as_str()) {
            ("pending", Some(t)) => format!(", active from {t}"),
            ("retiring", Some(t)) => format!(", accepted until {t}"),
            _ => String::new(),
        };
        out.push(format!(
            "  {:<24} {:<9} created {}{until}",
            k["id"].as_str().unwrap_or("?"),
            state,
            k["created"].as_str().unwrap_or("?")
        ));
    }
    let n = |v: &Value| v.as_i64().map_or("?".to_owned(), |n| n.to_string());
    out.push(format!("Agents: {}/{} ready", n(&status["readyAgents"]), n(&status["desiredAgents"])));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_without_anything_yet_reads_as_such() {
        let lines = describe_delivery("video", "media", &Value::Null);
        assert_eq!(
            lines,
            [
                "VideoDelivery video/media: no Ready condition yet (is the operator running?)",
                "Keys:",
                "  none yet",
                "Agents: ?/? ready"
            ]
        );
    }
}
