//! Prints the VideoDelivery CRD as YAML, with the default signing floors; its output is committed as
//! crds/videodelivery.yaml.

use videodelivery_operator::crd::{SigningFloors, crd_with_floors};

fn main() -> anyhow::Result<()> {
    print!("{}", serde_yaml_ng::to_string(&crd_with_floors(&SigningFloors::default()))?);
    Ok(())
}
