//! Prints the VideoDelivery CRD as YAML; its output is committed as crds/videodelivery.yaml.

use kube::CustomResourceExt;
use videodelivery_operator::crd::VideoDelivery;

fn main() -> anyhow::Result<()> {
    print!("{}", serde_yaml_ng::to_string(&VideoDelivery::crd())?);
    Ok(())
}
