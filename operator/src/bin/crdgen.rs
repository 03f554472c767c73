//! Prints the VideoDelivery CRD as YAML, with the default signing floors; its output is committed as
//! crds/videodelivery.yaml.
//!
//! `crdgen --chart` prints the same CRD as the Helm chart's template (charts/videodelivery/templates/crd.yaml):
//! behind `crds.enabled`, with `crds.keep`'s annotation, and with the chart's `signingFloors` values in the floor
//! rules. The floors are generated as sentinel durations and the sentinels replaced by template expressions, so the
//! template follows every change to the types; the chart test renders it back and compares it with this CRD.

use vd_token::duration::GoDuration;
use videodelivery_operator::crd::{SigningFloors, crd_with_floors};

/// Durations no real floor uses, each printed in a form found nowhere else in the CRD, with the value that
/// replaces it in the template.
const SENTINELS: [(u64, &str); 3] = [
    (9001 * 3600 + 60 + 1, "{{ .Values.signingFloors.propagationDelay }}"),
    (9002 * 3600 + 2 * 60 + 2, "{{ .Values.signingFloors.tokenLifetime }}"),
    (9003 * 3600 + 3 * 60 + 3, "{{ .Values.signingFloors.rotationInterval }}"),
];

fn chart_template() -> anyhow::Result<String> {
    let [p, t, r] = SENTINELS.map(|(secs, _)| GoDuration::from_secs(secs));
    let crd = crd_with_floors(&SigningFloors { propagation_delay: p, token_lifetime: t, rotation_interval: r });
    anyhow::ensure!(crd.metadata.annotations.is_none(), "the CRD has annotations: merge them with crds.keep's");
    // Text that looks like a template action is printed as itself.
    let mut yaml = serde_yaml_ng::to_string(&crd)?.replace("{{", r#"{{ "{{" }}"#);
    for (secs, expr) in SENTINELS {
        let sentinel = GoDuration::from_secs(secs).to_string();
        anyhow::ensure!(yaml.contains(&sentinel), "no signing floor {sentinel} in the generated CRD");
        yaml = yaml.replace(&sentinel, expr);
    }
    let keep = "metadata:\n  {{- if .Values.crds.keep }}\n  annotations:\n    \
                # Uninstalling the chart keeps the CRD, and with it every VideoDelivery and its keyring.\n    \
                helm.sh/resource-policy: keep\n  {{- end }}\n";
    anyhow::ensure!(yaml.matches("\nmetadata:\n").count() == 1, "no single top-level metadata in the CRD");
    let yaml = yaml.replacen("\nmetadata:\n", &format!("\n{keep}"), 1);
    Ok(format!(
        "{{{{- /* Generated from the operator's types by \
         `cargo run -p videodelivery-operator --bin crdgen -- --chart`: do not edit. */ -}}}}\n\
         {{{{- if .Values.crds.enabled }}}}\n{yaml}{{{{- end }}}}\n"
    ))
}

fn main() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        None => print!("{}", serde_yaml_ng::to_string(&crd_with_floors(&SigningFloors::default()))?),
        Some("--chart") => print!("{}", chart_template()?),
        Some(other) => anyhow::bail!("unknown argument {other:?}; crdgen takes none, or --chart"),
    }
    Ok(())
}
