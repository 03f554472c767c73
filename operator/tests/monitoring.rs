//! The chart's alerts and dashboard against series recorded from a real agent under a real load.
//!
//! `testdata/metrics/agent-load.prom` holds 41 scrapes, one a second, of a real agent's /metrics (the agent binary
//! on a local-storage FUSE file system, `record_agent_metrics` below): 20 quiet seconds of signed viewers whose
//! ranges the slice cache holds, then 20 seconds of an incident (unsigned and forged URLs, viewers seeking all
//! over a large file, a storage read that hangs past the storage timeout, a keyring file replaced by garbage).
//! The recording is committed rather than made at test time: the alert cases need the same values every run
//! (firing in the incident, not before), the recording needs root and FUSE, and promtool tests need fixed times.
//! Re-record with `cargo test -p videodelivery-operator --test monitoring -- --ignored record_agent_metrics`
//! after the agent's metrics change.
//!
//! The rules are rendered by helm with the rate window and `for` shrunk to the recording's seconds (the
//! expressions are the chart's own), and run with `promtool test rules`; every PromQL query of the dashboard is
//! run against the same series and must return finite values.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/videodelivery");
const RECORDING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/metrics/agent-load.prom");
/// The recording to use: `VD_RECORDING` (to try one made from another build of the agent), else the committed one.
fn recording_path() -> PathBuf {
    std::env::var_os("VD_RECORDING").map_or_else(|| RECORDING.into(), PathBuf::from)
}
/// Seconds between scrapes in the recording.
const SCRAPE_INTERVAL_S: u64 = 1;
/// Where the recording's incident starts, in seconds.
const INCIDENT_AT_S: u64 = 20;
/// What Prometheus attaches to every series it scrapes from an agent pod through the operator's PodMonitor
/// (its relabeling copies the pod's app.kubernetes.io/instance label, the VideoDelivery's name, into `delivery`).
const TARGET_LABELS: [(&str, &str); 5] = [
    ("namespace", "video"),
    ("delivery", "media"),
    ("pod", "media-agent-7d9f8c6b5-x2x4q"),
    ("instance", "10.244.0.17:9090"),
    ("job", "video/media-agent"),
];

/// The promtool binary, built by tests/prometheus/build.sh (a no-op once built).
fn promtool() -> PathBuf {
    if let Some(p) = std::env::var_os("VD_PROMTOOL") {
        return p.into();
    }
    let script = Path::new(CHART).join("../../tests/prometheus/build.sh");
    let out = Command::new("bash").arg(&script).output().unwrap();
    assert!(out.status.success(), "tests/prometheus/build.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().last().expect("build.sh prints the path").into()
}

/// `helm template` of the chart with `--set-json` values (numbers stay numbers, as in a values file).
fn helm_template(dir: &Path, sets: &[&str]) -> String {
    let out = Command::new(vd_testsupport::binary("helm").unwrap())
        .args(["template", "vd", CHART, "--namespace", "ops"])
        .args(sets.iter().flat_map(|s| ["--set-json", s]))
        .env("HELM_CACHE_HOME", dir.join("helm/cache"))
        .env("HELM_CONFIG_HOME", dir.join("helm/config"))
        .env("HELM_DATA_HOME", dir.join("helm/data"))
        .output()
        .unwrap();
    assert!(out.status.success(), "helm template: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn rendered_kind(rendered: &str, kind: &str) -> Vec<Value> {
    rendered
        .split("\n---")
        .filter_map(|d| serde_yaml_ng::from_str::<Value>(d).ok())
        .filter(|d| d["kind"] == kind)
        .collect()
}

/// One sample line of the text exposition format: the metric name, its labels and the value.
fn parse_sample(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i + 1);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                    let mut value = String::new();
                    while let Some((_, c)) = chars.next() {
                        match c {
                            '\\' => match chars.next().map(|(_, c)| c) {
                                Some('n') => value.push('\n'),
                                Some(c) => value.push(c),
                                None => break,
                            },
                            '"' => break,
                            c => value.push(c),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                c => key.push(c),
            }
        }
        rest = &body[end?..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

/// The recording: one map of series to value per scrape.
fn recording() -> Vec<BTreeMap<String, f64>> {
    let text = std::fs::read_to_string(recording_path()).unwrap();
    let mut scrapes: Vec<BTreeMap<String, f64>> = Vec::new();
    for line in text.lines() {
        if line.starts_with("### scrape ") {
            scrapes.push(BTreeMap::new());
            continue;
        }
        let Some((name, mut labels, value)) = parse_sample(line) else { continue };
        for (k, v) in TARGET_LABELS {
            labels.insert(k.into(), v.into());
        }
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        scrapes.last_mut().expect("a scrape marker first").insert(format!("{name}{{{}}}", labels.join(",")), value);
    }
    scrapes
}

/// promtool `input_series`: each series with its value at every scrape (`_` where a scrape lacked it).
fn input_series(scrapes: &[BTreeMap<String, f64>]) -> Vec<Value> {
    let names: std::collections::BTreeSet<&String> = scrapes.iter().flat_map(|s| s.keys()).collect();
    names
        .into_iter()
        .map(|series| {
            let values: Vec<String> =
                scrapes.iter().map(|s| s.get(series).map_or("_".to_owned(), |v| v.to_string())).collect();
            json!({"series": series, "values": values.join(" ")})
        })
        .collect()
}

/// Series no agent exposes, written by hand in the shape their exporters give: kube-state-metrics for the agent
/// Deployment (3 desired; all 3 available until the incident, then 1), and the operator's next rotation time
/// (announced by the operator's metrics; at 5 s, so overdue from 5 s + the grace).
fn other_exporters_series(samples: usize) -> Vec<Value> {
    let ksm = r#"{namespace="video",deployment="media-agent",job="kube-state-metrics",instance="10.244.0.9:8080"}"#;
    let incident = (INCIDENT_AT_S / SCRAPE_INTERVAL_S) as usize;
    let repeat = |v: &str, n: usize| vec![v; n].join(" ");
    vec![
        json!({"series": format!("kube_deployment_spec_replicas{ksm}"), "values": repeat("3", samples)}),
        json!({
            "series": format!("kube_deployment_status_replicas_available{ksm}"),
            "values": format!("{} {}", repeat("3", incident), repeat("1", samples - incident)),
        }),
        json!({
            "series": r#"videodelivery_operator_next_rotation_timestamp_seconds{namespace="ops",job="ops/vd-videodelivery-metrics",delivery_namespace="video",delivery="media"}"#,
            "values": repeat("5", samples),
        }),
    ]
}

/// The values the rules are rendered with: the chart's expressions, with windows and thresholds sized to the
/// recording (its traffic is a few MiB/s for seconds, not a month of production).
const TEST_RULE_VALUES: &[&str] = &[
    "prometheusRule.enabled=true",
    r#"prometheusRule.rateWindow="10s""#,
    r#"prometheusRule.for="3s""#,
    // About 1 MiB/s in the quiet part, several MiB/s in the incident: 3 MiB/s held for a month.
    "prometheusRule.egressOverBudget.bytesPerMonth=8153726976000",
    "prometheusRule.rotationOverdue.graceSeconds=15",
    // One request in 40 waits the 1 s storage timeout: p99 interpolates to about 0.8 s.
    "prometheusRule.highTimeToFirstByte.p99Seconds=0.5",
];

/// Substitutes `{{ $labels.NAME }}` the way Prometheus renders an annotation; any other template is refused, so
/// an expected annotation never depends on a value the test cannot know.
fn render_annotation(template: &str, labels: &BTreeMap<String, String>) -> String {
    let mut out = template.to_owned();
    for (k, v) in labels {
        out = out.replace(&format!("{{{{ $labels.{k} }}}}"), v);
    }
    assert!(!out.contains("{{"), "annotation with a template the test cannot render: {template}");
    out
}

/// Each alert with the labels it fires with, the time it must not fire at, and the time it must fire at.
fn alert_cases() -> Vec<(&'static str, BTreeMap<&'static str, &'static str>, u64, u64)> {
    let delivery = BTreeMap::from([("namespace", "video"), ("delivery", "media")]);
    let mut pod = delivery.clone();
    pod.insert("pod", TARGET_LABELS[2].1);
    let ksm = BTreeMap::from([("namespace", "video"), ("delivery", "media"), ("deployment", "media-agent")]);
    let operator = BTreeMap::from([("delivery_namespace", "video"), ("delivery", "media")]);
    let quiet = INCIDENT_AT_S - 2;
    let incident = INCIDENT_AT_S + 18;
    vec![
        ("VideoDeliveryEgressOverBudget", delivery.clone(), quiet, incident),
        ("VideoDeliveryRefusalSpike", delivery.clone(), quiet, incident),
        ("VideoDeliveryStorageErrors", delivery.clone(), quiet, incident),
        ("VideoDeliveryAgentsBelowDesired", ksm, quiet, incident),
        ("VideoDeliveryKeyringReloadFailing", pod, quiet, INCIDENT_AT_S + 8),
        ("VideoDeliveryRotationOverdue", operator, 12, incident),
        ("VideoDeliveryLowCacheHitRatio", delivery.clone(), quiet, incident),
        ("VideoDeliveryHighTimeToFirstByte", delivery, quiet, incident),
    ]
}

fn run_promtool(dir: &Path, rules: &Value, tests: &Value) -> (bool, String) {
    std::fs::write(dir.join("rules.yaml"), serde_yaml_ng::to_string(rules).unwrap()).unwrap();
    std::fs::write(dir.join("tests.yaml"), serde_yaml_ng::to_string(tests).unwrap()).unwrap();
    let out = Command::new(promtool()).args(["test", "rules", "tests.yaml"]).current_dir(dir).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn every_alert_fires_in_the_recorded_incident_and_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let rendered = helm_template(dir.path(), TEST_RULE_VALUES);
    let rules = rendered_kind(&rendered, "PrometheusRule");
    assert_eq!(rules.len(), 1, "one PrometheusRule when enabled");
    let spec = rules[0]["spec"].clone();
    let alerts: Vec<&Value> =
        spec["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap()).collect();

    let scrapes = recording();
    assert!(scrapes.len() as u64 > INCIDENT_AT_S / SCRAPE_INTERVAL_S + 18, "{} scrapes recorded", scrapes.len());
    let mut series = input_series(&scrapes);
    series.extend(other_exporters_series(scrapes.len()));

    let cases = alert_cases();
    let names: Vec<&str> = alerts.iter().map(|a| a["alert"].as_str().unwrap()).collect();
    assert_eq!(names, cases.iter().map(|c| c.0).collect::<Vec<_>>(), "every alert of the chart has a case");

    let mut tests = Vec::new();
    for (alert, labels, quiet, firing) in &cases {
        let rule = alerts.iter().find(|a| a["alert"] == *alert).unwrap();
        let mut exp_labels: BTreeMap<String, String> =
            labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        for (k, v) in rule["labels"].as_object().unwrap() {
            exp_labels.insert(k.clone(), v.as_str().unwrap().to_owned());
        }
        let annotations: BTreeMap<String, String> = rule["annotations"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), render_annotation(v.as_str().unwrap(), &exp_labels)))
            .collect();
        tests.push(json!({"eval_time": format!("{quiet}s"), "alertname": alert, "exp_alerts": []}));
        tests.push(json!({
            "eval_time": format!("{firing}s"),
            "alertname": alert,
            "exp_alerts": [{"exp_labels": exp_labels, "exp_annotations": annotations}],
        }));
    }
    let test_file = json!({
        "rule_files": ["rules.yaml"],
        "evaluation_interval": format!("{SCRAPE_INTERVAL_S}s"),
        "tests": [{"interval": format!("{SCRAPE_INTERVAL_S}s"), "input_series": series, "alert_rule_test": tests}],
    });
    let (ok, out) = run_promtool(dir.path(), &spec, &test_file);
    assert!(ok, "promtool test rules failed:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn the_rule_is_opt_in_and_its_thresholds_are_the_values() {
    let dir = tempfile::tempdir().unwrap();
    assert!(rendered_kind(&helm_template(dir.path(), &[]), "PrometheusRule").is_empty(), "off by default");
    let rendered = helm_template(
        dir.path(),
        &[
            "prometheusRule.enabled=true",
            r#"prometheusRule.labels.release="kube-prometheus-stack""#,
            "prometheusRule.refusalSpike.ratio=0.35",
            "prometheusRule.egressOverBudget.bytesPerMonth=10995116277760",
            "prometheusRule.highTimeToFirstByte.enabled=false",
        ],
    );
    let rule = &rendered_kind(&rendered, "PrometheusRule")[0];
    assert_eq!(rule["metadata"]["labels"]["release"], "kube-prometheus-stack");
    let text = serde_json::to_string(&rule["spec"]).unwrap();
    assert!(text.contains("> 0.35"), "{text}");
    // A large budget stays an integer (helm would print 1.0995116277760e+13 for a float).
    assert!(text.contains("> 10995116277760"), "{text}");
    assert!(!text.contains("VideoDeliveryHighTimeToFirstByte"), "a disabled alert is left out");
    assert!(text.contains("[5m]"), "production window by default: {text}");

    // Both on pass `helm lint --strict`; a typo or an impossible threshold is refused with its path.
    let helm = |args: &[&str]| {
        Command::new(vd_testsupport::binary("helm").unwrap())
            .args(args)
            .env("HELM_CACHE_HOME", dir.path().join("helm/cache"))
            .env("HELM_CONFIG_HOME", dir.path().join("helm/config"))
            .env("HELM_DATA_HOME", dir.path().join("helm/data"))
            .output()
            .unwrap()
    };
    let lint = helm(&[
        "lint",
        "--strict",
        CHART,
        "--set-json",
        "prometheusRule.enabled=true",
        "--set-json",
        "grafanaDashboard.enabled=true",
    ]);
    assert!(
        lint.status.success(),
        "{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    for (bad, path) in [
        ("prometheusRule.refusalSpike.ratio=2", "/prometheusRule/refusalSpike/ratio"),
        ("prometheusRule.refusalSpke={}", "refusalSpke"),
        (r#"prometheusRule.rateWindow="5 minutes""#, "/prometheusRule/rateWindow"),
        ("grafanaDashboard.labels.grafana_dashboard=1", "/grafanaDashboard/labels/grafana_dashboard"),
    ] {
        let out = helm(&["template", "vd", CHART, "--set-json", bad]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(path), "{bad}: {err}");
    }
}

/// Every `expr` of the dashboard's panels and every query of its variables, with the variables substituted.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let substitute = |e: &str| {
        e.replace("$__rate_interval", "10s")
            .replace("${__range_s}", "30")
            .replace("$__range_s", "30")
            .replace("$__range", "30s")
            .replace("${namespace}", ".*")
            .replace("$namespace", ".*")
            .replace("${delivery}", ".*")
            .replace("$delivery", ".*")
            .replace("${price_per_gib}", "0.08")
            .replace("$price_per_gib", "0.08")
    };
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            out.push((format!("panel {:?} {}", panel["title"], target["refId"]), substitute(expr)));
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        let q = var["query"]["query"].as_str().or(var["query"].as_str()).unwrap_or_default();
        // label_values(SELECTOR, LABEL): the selector is the PromQL part.
        if let Some(inner) = q.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')'))
            && let Some((selector, label)) = inner.rsplit_once(',')
        {
            out.push((format!("variable {} ({})", var["name"], label.trim()), substitute(selector)));
        }
    }
    assert!(!out.iter().any(|(_, e)| e.contains('$')), "a variable left unsubstituted: {out:?}");
    out
}

#[test]
fn every_dashboard_query_returns_values_on_the_recorded_series() {
    let dir = tempfile::tempdir().unwrap();
    assert!(rendered_kind(&helm_template(dir.path(), &[]), "ConfigMap").is_empty(), "off by default");
    let rendered = helm_template(dir.path(), &["grafanaDashboard.enabled=true"]);
    let maps = rendered_kind(&rendered, "ConfigMap");
    assert_eq!(maps.len(), 1, "one dashboard ConfigMap");
    assert_eq!(maps[0]["metadata"]["labels"]["grafana_dashboard"], "1", "the Grafana sidecar's label");
    let data = maps[0]["data"].as_object().unwrap();
    assert_eq!(data.len(), 1);
    let dashboard: Value = serde_json::from_str(data.values().next().unwrap().as_str().unwrap()).unwrap();

    let queries = dashboard_queries(&dashboard);
    let titles: Vec<&str> =
        dashboard["panels"].as_array().unwrap().iter().filter_map(|p| p["title"].as_str()).collect();
    for want in ["Egress", "offload", "cost", "hit ratio", "first byte", "streams", "Refusals", "Keys"] {
        assert!(titles.iter().any(|t| t.contains(want)), "a panel about {want:?} in {titles:?}");
    }

    // Each query, evaluated in the incident, returns at least one finite value: `count(q == q)` drops NaN
    // (0/0 ratios) and counts what is left, `or vector(0)` makes "no data" a 0 promtool can compare.
    let scrapes = recording();
    let eval = INCIDENT_AT_S + 18;
    let expr_tests: Vec<Value> = queries
        .iter()
        .map(|(_, q)| {
            json!({
                "expr": format!("(count(({q}) == ({q})) >= bool 1) or vector(0)"),
                "eval_time": format!("{eval}s"),
                "exp_samples": [{"labels": "{}", "value": 1}],
            })
        })
        .collect();
    let test_file = json!({
        "rule_files": ["rules.yaml"],
        "evaluation_interval": format!("{SCRAPE_INTERVAL_S}s"),
        "tests": [{"interval": format!("{SCRAPE_INTERVAL_S}s"), "input_series": input_series(&scrapes), "promql_expr_test": expr_tests}],
    });
    let (ok, out) = run_promtool(dir.path(), &json!({"groups": []}), &test_file);
    assert!(
        ok,
        "a dashboard query failed or returned nothing; queries in order:\n{}\n\npromtool:\n{out}",
        queries.iter().enumerate().map(|(i, (w, q))| format!("{i}: {w}: {q}")).collect::<Vec<_>>().join("\n")
    );
}

/// Makes `testdata/metrics/agent-load.prom`: the agent binary on a FUSE file system (one file whose reads hang),
/// a quiet load, then an incident, with a scrape of /metrics every second. Needs root (FUSE) and a built agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "re-records testdata/metrics/agent-load.prom; run by hand after the agent's metrics change"]
async fn record_agent_metrics() {
    recorder::record().await;
}

mod recorder {
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;
    use vd_testsupport::{Hang, HangFs, Process};
    use vd_token::{Carrier, Signer, UrlRequest};

    use super::{INCIDENT_AT_S, SCRAPE_INTERVAL_S};

    const SCRAPES: u64 = 41;
    const HOT: usize = 256 * 1024;
    const COLD: usize = 32 * 1024 * 1024;
    const SLICE: usize = 64 * 1024;

    type Http = Client<HttpConnector, Empty<Bytes>>;

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    async fn get(http: &Http, url: &str, range: Option<String>) -> Option<u16> {
        let mut req = http::Request::get(url);
        if let Some(r) = range {
            req = req.header("range", r);
        }
        let resp = tokio::time::timeout(Duration::from_secs(10), http.request(req.body(Empty::new()).unwrap()))
            .await
            .ok()?
            .ok()?;
        let status = resp.status().as_u16();
        tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect()).await.ok()?.ok()?;
        Some(status)
    }

    pub async fn record() {
        let exe = std::env::current_exe().unwrap();
        let agent_bin = exe.parent().unwrap().parent().unwrap().join("videodelivery-agent");
        assert!(agent_bin.exists(), "build the agent first: cargo build -p videodelivery-agent");
        let fs = HangFs::mount(&[
            ("hot.mp4", Hang::Never, HOT),
            ("cold.mp4", Hang::Never, COLD),
            ("stuck.mp4", Hang::Read, HOT),
        ])
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let keyring = dir.path().join("keyring.json");
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let ring = vd_token::rotation::generate(now, &mut vd_token::rotation::os_random).unwrap();
        std::fs::write(&keyring, ring.to_json()).unwrap();
        let (port, admin) = (free_port(), free_port());
        let mut cmd = std::process::Command::new(&agent_bin);
        cmd.arg(format!("--storage=file://{}", fs.path().display()))
            .arg(format!("--keyring={}", keyring.display()))
            .arg(format!("--listen=127.0.0.1:{port}"))
            .arg(format!("--admin-listen=127.0.0.1:{admin}"))
            .args(["--rate-limit=0", "--storage-timeout=1s", "--cache-size-mib=1", "--slice-size-kib=64"]);
        let agent = Process::spawn(cmd, dir.path().join("agent.log")).unwrap();
        let http: Http = Client::builder(TokioExecutor::new()).build_http();
        let metrics_url = format!("http://127.0.0.1:{admin}/metrics");
        let started = Instant::now();
        while get(&http, &format!("http://127.0.0.1:{admin}/readyz"), None).await != Some(200) {
            assert!(started.elapsed() < Duration::from_secs(20), "the agent did not get ready: {}", agent.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let base = format!("http://127.0.0.1:{port}");
        let signer = Signer::new(&ring).unwrap();
        let sign = |path: &str| {
            signer
                .url(&UrlRequest {
                    base_url: &base,
                    path,
                    exp: now + 3600,
                    nbf: None,
                    prefix: None,
                    ip: None,
                    carrier: Carrier::Query,
                })
                .unwrap()
        };
        let (hot, cold, stuck) = (sign("/videos/hot.mp4"), sign("/videos/cold.mp4"), sign("/videos/stuck.mp4"));
        // One character of the signature changed: well-formed, but not what the key signs (bad_signature).
        let forged = {
            let at = hot.find("signature=").unwrap() + "signature=".len();
            let swap = if &hot[at..at + 1] == "A" { "B" } else { "A" };
            let mut f = hot.clone();
            f.replace_range(at..at + 1, swap);
            f
        };
        let unsigned = format!("{base}/videos/hot.mp4");

        let mut out = String::from(
            "# Scrapes of a real agent's /metrics, one a second: 20 s of signed viewers on cached ranges, then an\n\
             # incident (unsigned and forged URLs, seeks all over a 32 MiB file through a 1 MiB cache, a read that\n\
             # hangs past --storage-timeout=1s, the keyring file replaced by garbage at 20 s).\n\
             # Made by `cargo test -p videodelivery-operator --test monitoring -- --ignored record_agent_metrics`.\n",
        );
        let mut tick = tokio::time::interval(Duration::from_secs(SCRAPE_INTERVAL_S));
        let mut seek = 0usize;
        let mut tasks = Vec::new();
        for i in 0..SCRAPES {
            tick.tick().await;
            let t = i * SCRAPE_INTERVAL_S;
            let body = http
                .request(http::Request::get(&metrics_url).body(Empty::new()).unwrap())
                .await
                .unwrap()
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes();
            out.push_str(&format!("### scrape {i} at {t}s\n{}", String::from_utf8_lossy(&body)));
            let incident = t >= INCIDENT_AT_S;
            if t == INCIDENT_AT_S {
                std::fs::write(&keyring, b"{ not a keyring").unwrap();
            }
            // The quiet load: 10 viewers a second on the first slices of a short file (cache hits after the first).
            let mut wave: Vec<(String, Option<String>)> = (0..10)
                .map(|k| (hot.clone(), Some(format!("bytes={}-{}", k % 4 * SLICE, k % 4 * SLICE + SLICE - 1))))
                .collect();
            if incident {
                for _ in 0..8 {
                    // Seeks 8 slices long at scattered offsets of the large file: misses through a 1 MiB cache.
                    seek = (seek + 7_340_033) % (COLD - 8 * SLICE);
                    let from = seek / SLICE * SLICE;
                    wave.push((cold.clone(), Some(format!("bytes={from}-{}", from + 8 * SLICE - 1))));
                }
                wave.extend((0..10).map(|_| (unsigned.clone(), None)));
                wave.extend((0..10).map(|_| (forged.clone(), None)));
                wave.push((stuck.clone(), None));
            }
            for (url, range) in wave {
                let http = http.clone();
                tasks.push(tokio::spawn(async move { get(&http, &url, range).await }));
            }
        }
        for t in tasks {
            let _ = t.await;
        }
        drop(agent);
        drop(fs);
        let path = super::recording_path();
        std::fs::write(&path, out).unwrap();
        eprintln!("wrote {}", path.display());
    }
}
