//! Live traffic from two scrapes of the agents' /metrics: rates over the interval between them, for users without
//! Prometheus. Reads the Prometheus text format the agent writes (prometheus-client); a hand-written reader of its
//! sample lines, because that is all `vdctl status` needs and the crates that parse it pull in far more.

use std::collections::BTreeMap;

/// One sample: metric name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A sample line the reader could not make sense of, with its line number (1-based).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("line {line} of the metrics is not a sample: {text:?}")]
pub struct ParseError {
    pub line: usize,
    pub text: String,
}

/// The samples of one scrape. Comments (`# HELP`, `# TYPE`, `# EOF`) and blank lines are skipped.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = || ParseError { line: i + 1, text: line.chars().take(200).collect() };
        out.push(parse_line(line).ok_or_else(err)?);
    }
    Ok(out)
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        return None;
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let end = loop {
            // Skip separators, then either the closing brace or `key="value"`.
            while chars.next_if(|(_, c)| *c == ',' || c.is_whitespace()).is_some() {}
            let (i, c) = chars.next()?;
            if c == '}' {
                break i + 1;
            }
            let mut key = String::from(c);
            loop {
                let (_, c) = chars.next()?;
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.insert(key.trim().to_owned(), value);
        };
        rest = &body[end..];
    }
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some(Sample { name: name.to_owned(), labels, value })
}

fn sum(samples: &[Sample], name: &str) -> Option<f64> {
    let mut found = false;
    let total = samples.iter().filter(|s| s.name == name).inspect(|_| found = true).map(|s| s.value).sum();
    found.then_some(total)
}

fn by_label(samples: &[Sample], name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == name) {
        *out.entry(s.labels.get(label).cloned().unwrap_or_default()).or_insert(0.0) += s.value;
    }
    out
}

/// How much a counter grew between two scrapes of one agent; a counter that went down was reset (the agent
/// restarted), so all of its new value is growth.
fn growth(before: Option<f64>, after: Option<f64>) -> f64 {
    match (before, after) {
        (Some(b), Some(a)) if a >= b => a - b,
        (_, Some(a)) => a,
        _ => 0.0,
    }
}

fn growth_by(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, into: &mut BTreeMap<String, f64>) {
    for (k, a) in after {
        let g = growth(before.get(k).copied(), Some(*a));
        if g > 0.0 {
            *into.entry(k.clone()).or_insert(0.0) += g;
        }
    }
}

/// What the agents did between two scrapes, summed over the agents that answered both.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Traffic {
    pub seconds: f64,
    /// Body bytes sent to viewers.
    pub sent_bytes: f64,
    /// Body bytes read from object storage.
    pub storage_bytes: f64,
    /// Requests answered, by status code.
    pub requests: BTreeMap<String, f64>,
    /// Requests refused, by reason (the agent's refusals, or its token refusals where it has no other).
    pub refusals: BTreeMap<String, f64>,
    pub cache_hits: f64,
    /// Slices loaded from storage, or streamed past the cache.
    pub cache_misses: f64,
    /// Bodies being streamed at the second scrape.
    pub active_streams: f64,
}

const P: &str = "videodelivery_agent_";

impl Traffic {
    /// Adds one agent's growth between `before` and `after`, taken `seconds` apart.
    pub fn add(&mut self, before: &[Sample], after: &[Sample]) {
        let c = |name: &str| growth(sum(before, &format!("{P}{name}")), sum(after, &format!("{P}{name}")));
        self.sent_bytes += c("sent_bytes_total");
        self.storage_bytes += c("storage_read_bytes_total");
        self.cache_hits += c("cache_hits_total");
        self.cache_misses += c("cache_misses_total") + c("cache_streamed_slices_total");
        self.active_streams += sum(after, &format!("{P}active_streams")).unwrap_or(0.0);
        let requests = format!("{P}requests_total");
        growth_by(&by_label(before, &requests, "status"), &by_label(after, &requests, "status"), &mut self.requests);
        // Agents with the refusals counter count every refusal there; older ones count token refusals only.
        let refusals = [format!("{P}refusals_total"), format!("{P}token_rejections_total")]
            .into_iter()
            .find(|n| after.iter().any(|s| &s.name == n))
            .unwrap_or_default();
        growth_by(&by_label(before, &refusals, "reason"), &by_label(after, &refusals, "reason"), &mut self.refusals);
    }

    pub fn per_second(&self, v: f64) -> f64 {
        if self.seconds > 0.0 { v / self.seconds } else { 0.0 }
    }

    /// Slices served from cache against all slices served; None without any slice served.
    pub fn hit_ratio(&self) -> Option<f64> {
        let all = self.cache_hits + self.cache_misses;
        (all > 0.0).then(|| self.cache_hits / all)
    }

    /// The lines `vdctl status` prints under "Traffic".
    pub fn describe(&self) -> Vec<String> {
        let rate = |v: f64| self.per_second(v);
        let mut lines = vec![
            format!("egress            {}/s", bytes(rate(self.sent_bytes))),
            format!("read from storage {}/s", bytes(rate(self.storage_bytes))),
        ];
        let total: f64 = self.requests.values().sum();
        let statuses: Vec<String> = self.requests.iter().map(|(s, n)| format!("{s}: {:.1}/s", rate(*n))).collect();
        lines.push(if statuses.is_empty() {
            "requests          none".to_owned()
        } else {
            format!("requests          {:.1}/s ({})", rate(total), statuses.join(", "))
        });
        lines.push(match self.hit_ratio() {
            Some(r) => format!(
                "cache hit ratio   {:.1}% of {:.1} slices/s",
                r * 100.0,
                rate(self.cache_hits + self.cache_misses)
            ),
            None => "cache hit ratio   - (no slices served)".to_owned(),
        });
        let mut refusals: Vec<(&String, &f64)> = self.refusals.iter().collect();
        refusals.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
        let refusals: Vec<String> = refusals.iter().map(|(r, n)| format!("{r} {:.1}/s", rate(**n))).collect();
        lines.push(format!(
            "refusals          {}",
            if refusals.is_empty() { "none".into() } else { refusals.join(", ") }
        ));
        lines.push(format!("active streams    {}", self.active_streams));
        lines
    }
}

/// 1536 -> "1.5 KiB".
pub fn bytes(v: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = v;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{v:.0} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scrapes of a real agent under load (see operator/tests/monitoring.rs): quiet until 20 s, then an incident.
    const RECORDING: &str = include_str!("../../testdata/metrics/agent-load.prom");

    fn scrape(at: usize) -> Vec<Sample> {
        let text = RECORDING.split("### scrape ").nth(at + 1).unwrap();
        parse(text.split_once('\n').unwrap().1).unwrap()
    }

    fn between(a: usize, b: usize) -> Traffic {
        let mut t = Traffic { seconds: (b - a) as f64, ..Traffic::default() };
        t.add(&scrape(a), &scrape(b));
        t
    }

    #[test]
    fn reads_every_line_of_a_real_scrape() {
        let s = scrape(10);
        assert!(s.len() > 50, "{} samples", s.len());
        let bucket = s.iter().find(|s| s.name.ends_with("_bucket") && s.labels["le"] == "+Inf").unwrap();
        assert_eq!(bucket.value, sum(&s, "videodelivery_agent_time_to_first_byte_seconds_count").unwrap());
        assert!(s.iter().any(|s| s.name == "videodelivery_agent_keyring_keys" && s.labels["state"] == "active"));
    }

    #[test]
    fn the_quiet_part_is_cached_signed_traffic() {
        let t = between(10, 15);
        assert!(t.per_second(t.sent_bytes) > 100_000.0, "{t:?}");
        assert!(t.hit_ratio().unwrap() > 0.9, "{t:?}");
        assert!(t.refusals.is_empty(), "{t:?}");
        assert!(t.requests.keys().all(|s| s == "206"), "{t:?}");
    }

    #[test]
    fn the_incident_shows_its_refusals_misses_and_storage_errors() {
        let t = between(30, 35);
        assert!(t.hit_ratio().unwrap() < 0.5, "{t:?}");
        assert!(t.per_second(t.refusals["bad_signature"]) >= 5.0, "{t:?}");
        assert!(t.per_second(t.refusals["missing"]) >= 5.0, "{t:?}");
        assert!(t.requests.contains_key("504"), "the hanging read timed out: {t:?}");
        let text = t.describe().join("\n");
        assert!(text.contains("refusals          bad_signature"), "{text}");
        assert!(text.contains("MiB/s"), "{text}");
    }

    #[test]
    fn a_restarted_agent_counts_from_zero() {
        let mut t = Traffic { seconds: 1.0, ..Traffic::default() };
        t.add(&scrape(30), &scrape(2));
        assert_eq!(t.sent_bytes, sum(&scrape(2), "videodelivery_agent_sent_bytes_total").unwrap());
    }

    #[test]
    fn odd_lines_are_refused_with_their_number_and_never_panic() {
        assert_eq!(parse("# HELP x y\nx 1\n\nx{a=\"b\\\"c\",d=\"\"} 2.5\n").unwrap()[1].labels["a"], "b\"c");
        for bad in ["x{a=\"b\" 1", "x{a} 1", "x", "{a=\"b\"} 1", "x{a=\"b\"} one", "x{a=\"\\"] {
            let e = parse(&format!("ok 1\n{bad}")).unwrap_err();
            assert_eq!(e.line, 2, "{bad}");
        }
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(3.0 * 1024.0 * 1024.0), "3.0 MiB");
    }
}
