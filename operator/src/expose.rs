//! What the gateway or ingress controller says of the objects `spec.expose` makes: an applied HTTPRoute or Ingress
//! is not yet a way in for viewers. A route serves once a Gateway it names has accepted it and resolved its
//! backends (`status.parents[].conditions`); an Ingress once its controller has published an address
//! (`status.loadBalancer.ingress`).

use k8s_openapi::api::networking::v1::Ingress;

use crate::crd::GatewayParentRef;

/// The controller's verdict on an applied route or Ingress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Viewers can come in; the text says who let them (for the condition's message).
    Serving(String),
    /// Nobody has answered yet (no controller, or not yet).
    Pending(String),
    /// A controller answered no; the text carries its reason and message.
    Refused(String),
}

/// Status conditions Gateway API controllers write are short strings; a message longer than this is cut so that
/// one odd controller cannot bloat the VideoDelivery's status.
const MAX_MESSAGE: usize = 512;

fn cut(s: &str) -> String {
    match s.char_indices().nth(MAX_MESSAGE) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The verdict on the HTTPRoute `name` (its JSON, as read back after the apply) whose `parentRefs` are `parents`
/// and which lives in `namespace`. Serving when one of those Gateways says Accepted=True and, if it says anything
/// about them, ResolvedRefs=True; refused when every Gateway that answered said no.
pub fn route(name: &str, namespace: &str, parents: &[GatewayParentRef], route: &serde_json::Value) -> Verdict {
    let statuses = route.pointer("/status/parents").and_then(|p| p.as_array()).cloned().unwrap_or_default();
    let mut refusals = Vec::new();
    for p in parents {
        let ns = p.namespace.as_deref().unwrap_or(namespace);
        let gateway = format!("Gateway {ns}/{}", p.name);
        let ours = statuses.iter().filter(|s| {
            let r = &s["parentRef"];
            r["name"] == p.name.as_str()
                && r["namespace"].as_str().unwrap_or(namespace) == ns
                && r["kind"].as_str().is_none_or(|k| k == "Gateway")
                && p.section_name.as_deref().is_none_or(|sec| r["sectionName"].as_str().is_none_or(|s| s == sec))
        });
        for s in ours {
            let conditions = s["conditions"].as_array().cloned().unwrap_or_default();
            let find = |t: &str| conditions.iter().find(|c| c["type"] == t).cloned();
            // Traefik, for one, writes a reason without a message.
            let said = |c: &serde_json::Value| {
                let (status, reason) = (c["status"].as_str().unwrap_or("?"), c["reason"].as_str().unwrap_or(""));
                match c["message"].as_str().unwrap_or("") {
                    "" => format!("{status} ({reason})"),
                    m => format!("{status} ({reason}: {})", cut(m)),
                }
            };
            let controller = s["controllerName"].as_str().unwrap_or("its controller");
            match (find("Accepted"), find("ResolvedRefs")) {
                (Some(a), r) if a["status"] == "True" && r.as_ref().is_none_or(|r| r["status"] == "True") => {
                    return Verdict::Serving(format!("accepted by {gateway} ({controller})"));
                }
                (Some(a), _) if a["status"] != "True" => {
                    refusals.push(format!("{gateway} did not accept HTTPRoute {name}: Accepted={}", said(&a)));
                }
                (_, Some(r)) if r["status"] != "True" => refusals
                    .push(format!("{gateway} cannot route HTTPRoute {name} to the agents: ResolvedRefs={}", said(&r))),
                _ => {}
            }
        }
    }
    if refusals.is_empty() {
        let names: Vec<String> =
            parents.iter().map(|p| format!("{}/{}", p.namespace.as_deref().unwrap_or(namespace), p.name)).collect();
        Verdict::Pending(format!(
            "no Gateway has accepted HTTPRoute {name} yet (status.parents says nothing from Gateway {}): is a \
             Gateway controller running for it, and does its listener allow routes from namespace {namespace}?",
            names.join(", ")
        ))
    } else {
        Verdict::Refused(refusals.join("; "))
    }
}

/// The verdict on an applied Ingress: serving once its controller published where it listens.
pub fn ingress(ingress: &Ingress) -> Verdict {
    let name = ingress.metadata.name.as_deref().unwrap_or_default();
    let addresses: Vec<String> = ingress
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref()?.ingress.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| i.ip.or(i.hostname))
        .collect();
    if addresses.is_empty() {
        let class = ingress.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref()).unwrap_or("the default class");
        Verdict::Pending(format!(
            "no ingress controller has published an address for Ingress {name} yet (status.loadBalancer is empty): is \
             a controller running for {class}?"
        ))
    } else {
        Verdict::Serving(format!("its controller serves it at {}", addresses.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parent(name: &str) -> GatewayParentRef {
        GatewayParentRef { name: name.into(), namespace: None, section_name: Some("https".into()) }
    }

    fn with(parents: serde_json::Value) -> serde_json::Value {
        json!({"status": {"parents": parents}})
    }

    #[test]
    fn a_route_serves_once_a_named_gateway_accepts_it_and_resolves_its_backends() {
        let p = [parent("public")];
        assert!(matches!(route("media", "apps", &p, &json!({})), Verdict::Pending(m) if m.contains("apps/public")));
        let accepted = |resolved: &str| {
            with(
                json!([{"parentRef": {"name": "public", "sectionName": "https"}, "controllerName": "traefik.io/gateway-controller",
                "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": ""},
                               {"type": "ResolvedRefs", "status": resolved, "reason": "BackendNotFound", "message": "no Service media-agent"}]}]),
            )
        };
        assert_eq!(
            route("media", "apps", &p, &accepted("True")),
            Verdict::Serving("accepted by Gateway apps/public (traefik.io/gateway-controller)".into())
        );
        let Verdict::Refused(m) = route("media", "apps", &p, &accepted("False")) else { panic!() };
        assert!(m.contains("ResolvedRefs=False (BackendNotFound: no Service media-agent)"), "{m}");
        let refused = with(json!([{"parentRef": {"name": "public", "namespace": "apps"},
            "conditions": [{"type": "Accepted", "status": "False", "reason": "NotAllowedByListeners", "message": "namespace not allowed"}]}]));
        let Verdict::Refused(m) = route("media", "apps", &p, &refused) else { panic!() };
        assert_eq!(
            m,
            "Gateway apps/public did not accept HTTPRoute media: Accepted=False (NotAllowedByListeners: namespace not allowed)"
        );
        let terse = with(json!([{"parentRef": {"name": "public", "namespace": "apps"},
            "conditions": [{"type": "Accepted", "status": "False", "reason": "NoMatchingListenerHostname", "message": ""}]}]));
        let Verdict::Refused(m) = route("media", "apps", &p, &terse) else { panic!() };
        assert!(m.ends_with("Accepted=False (NoMatchingListenerHostname)"), "{m}");
        // Another Gateway's answer is not ours.
        let other = with(json!([{"parentRef": {"name": "elsewhere"},
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": ""}]}]));
        assert!(matches!(route("media", "apps", &p, &other), Verdict::Pending(_)));
        let long = "x".repeat(5000);
        let bloated = with(json!([{"parentRef": {"name": "public"},
            "conditions": [{"type": "Accepted", "status": "False", "reason": "R", "message": long}]}]));
        let Verdict::Refused(m) = route("media", "apps", &p, &bloated) else { panic!() };
        assert!(m.len() < 700, "{}", m.len());
    }

    #[test]
    fn an_ingress_serves_once_its_controller_published_an_address() {
        let mut i: Ingress =
            serde_json::from_value(json!({"metadata": {"name": "media"}, "spec": {"ingressClassName": "traefik"}}))
                .unwrap();
        assert!(matches!(ingress(&i), Verdict::Pending(m) if m.contains("for traefik")));
        i.status = serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}]}})).unwrap();
        assert_eq!(ingress(&i), Verdict::Serving("its controller serves it at 192.0.2.7".into()));
    }
}
