//! The Grafana dashboard (`deploy/grafana/ringlog.json`) against a running broker. The
//! broker is started with a metrics listener, given a topic with records on two partitions, a
//! fetch and a consumer group's commit, so that every family has samples, the per-partition
//! and per-group ones included; then one scrape is compared with the dashboard:
//!
//! - every metric a query names (`expr`, a template variable's `query` or `definition`) is a
//!   series the broker exports with at least one sample (`ringlog_x_bucket` only where
//!   `ringlog_x` is a histogram, since only histograms export such series), and every
//!   `ringlog_` name in the dashboard's prose is such a series or an exported family;
//! - every label a query selects on, groups by or asks `label_values` for, and every
//!   `{{label}}` of a legend, is one those series carry (or one Prometheus adds to every
//!   target, [`TARGET_LABELS`]);
//! - every query's parentheses and braces balance, every panel has its own id, and every
//!   query reads the `datasource` template variable;
//! - every family the broker exports is charted, but for those left out on purpose
//!   ([`UNCHARTED`]), so that a new metric is not forgotten.
//!
//! The checker itself is tested on a small exposition with a dashboard that breaks each rule
//! once, so that a check that could never fail is caught.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use ringlog_tests::member::Member;
use ringlog_tests::metrics::exposition;
use ringlog_tests::process::{Server, ServerOptions};
use ringlog_tests::wire::{record, Connection};
use serde_json::Value;

/// The dashboard, as the repository ships it.
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/grafana/ringlog.json"
);
/// Labels Prometheus adds to every series of a target it scrapes; the broker never exports
/// them itself.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];
/// Object keys whose string values are PromQL (panel targets, query template variables).
const QUERY_KEYS: [&str; 3] = ["expr", "query", "definition"];
/// The datasource every panel and query reads.
const DATASOURCE_UID: &str = "${datasource}";

/// What one scrape exports.
#[derive(Debug, Default)]
struct Exported {
    /// Family name (from `# TYPE`) to its type: counter, gauge or histogram.
    families: BTreeMap<String, String>,
    /// Series name (as sample lines spell it) to the labels its samples carry.
    series: BTreeMap<String, BTreeSet<String>>,
}

impl Exported {
    fn parse(text: &str) -> Exported {
        let mut exported = Exported::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE NAME KIND");
                exported.families.insert(name.to_owned(), kind.to_owned());
            } else if !line.starts_with('#') && !line.is_empty() {
                let (name, labels) = sample_name_and_labels(line);
                exported.series.entry(name).or_default().extend(labels);
            }
        }
        exported
    }

    /// The family a series belongs to: its own name, or for `_bucket`, `_sum` and `_count`
    /// the histogram it is part of.
    fn family_of(&self, series: &str) -> Option<&str> {
        if self.families.contains_key(series) {
            return self
                .families
                .get_key_value(series)
                .map(|(name, _)| name.as_str());
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = series.strip_suffix(suffix)?;
            let (name, kind) = self.families.get_key_value(base)?;
            (kind == "histogram").then_some(name.as_str())
        })
    }

    /// Whether a family has at least one sample.
    fn family_has_samples(&self, family: &str) -> bool {
        self.series
            .keys()
            .any(|series| self.family_of(series) == Some(family))
    }
}

/// A sample line's series name and label names: `name{a="x",b="y"} value`.
fn sample_name_and_labels(line: &str) -> (String, Vec<String>) {
    let Some((name, rest)) = line.split_once('{') else {
        let name = line.split_whitespace().next().expect("a sample name");
        return (name.to_owned(), Vec::new());
    };
    let mut labels = Vec::new();
    let mut chars = rest.chars();
    loop {
        let label: String = chars.by_ref().take_while(|&c| c != '=').collect();
        labels.push(label.trim_start_matches(',').to_owned());
        assert_eq!(chars.next(), Some('"'), "a quoted label value in {line}");
        let mut escaped = false;
        for c in chars.by_ref() {
            match c {
                '"' if !escaped => break,
                '\\' if !escaped => escaped = true,
                _ => escaped = false,
            }
        }
        match chars.next() {
            Some(',') if chars.as_str().starts_with('}') => break,
            Some(',') => {}
            Some('}') => break,
            other => panic!("{other:?} after a label value in {line}"),
        }
    }
    (name.to_owned(), labels)
}

/// A PromQL token; numbers, durations in brackets and Grafana variables are left out.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Text(String),
    Punct(char),
}

fn tokens(expr: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '"' | '\'' | '`' => {
                let mut text = String::new();
                while let Some(next) = chars.next() {
                    match next {
                        '\\' => text.extend(chars.next()),
                        next if next == c => break,
                        next => text.push(next),
                    }
                }
                tokens.push(Token::Text(text));
            }
            // A range or subquery duration: `[5m]`, `[$__rate_interval]`.
            '[' => while chars.next().is_some_and(|next| next != ']') {},
            // A Grafana variable: `$instance`, `${datasource}`.
            '$' => {
                while chars
                    .next_if(|&next| is_ident_char(next) || "{}".contains(next))
                    .is_some()
                {}
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let mut ident = String::from(c);
                while let Some(next) = chars.next_if(|&next| is_ident_char(next)) {
                    ident.push(next);
                }
                tokens.push(Token::Ident(ident));
            }
            c if c.is_ascii_digit() || c == '.' => {
                while chars
                    .next_if(|&next| next.is_ascii_alphanumeric() || next == '.')
                    .is_some()
                {}
            }
            c => tokens.push(Token::Punct(c)),
        }
    }
    tokens
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// What one query refers to.
#[derive(Debug, Default)]
struct Query {
    /// Every `ringlog_` series named, with the labels its selector matches on.
    series: Vec<(String, Vec<String>)>,
    /// Labels of `by (…)`, `without (…)`, `on (…)`, `ignoring (…)`.
    grouping: Vec<String>,
    /// `label_values(series, label)`: the series and the label.
    label_values: Vec<(String, String)>,
    /// Parentheses or braces that do not balance.
    unbalanced: bool,
}

fn parse_query(expr: &str) -> Query {
    let tokens = tokens(expr);
    let mut query = Query::default();
    let depth = |open, close| {
        tokens.iter().filter(|t| **t == Token::Punct(open)).count()
            != tokens.iter().filter(|t| **t == Token::Punct(close)).count()
    };
    query.unbalanced = depth('(', ')') || depth('{', '}');
    let ident = |index: usize| match tokens.get(index) {
        Some(Token::Ident(name)) => Some(name.as_str()),
        _ => None,
    };
    let mut last_series: Option<String> = None;
    let mut index = 0;
    while index < tokens.len() {
        match &tokens[index] {
            Token::Ident(name) if name.starts_with("ringlog_") => {
                let mut matched = Vec::new();
                if tokens.get(index + 1) == Some(&Token::Punct('{')) {
                    index += 2;
                    while index < tokens.len() && tokens[index] != Token::Punct('}') {
                        // A label name opens the selector or follows a comma.
                        let after_separator = matches!(tokens[index - 1], Token::Punct('{' | ','));
                        if let (Some(label), true) = (ident(index), after_separator) {
                            matched.push(label.to_owned());
                        }
                        index += 1;
                    }
                }
                query.series.push((name.clone(), matched));
                last_series = Some(name.clone());
            }
            Token::Ident(word) if ["by", "without", "on", "ignoring"].contains(&word.as_str()) => {
                index += 1;
                while index < tokens.len() && tokens[index] != Token::Punct(')') {
                    query.grouping.extend(ident(index).map(str::to_owned));
                    index += 1;
                }
            }
            Token::Punct(',')
                if tokens.first() == Some(&Token::Ident("label_values".to_owned())) =>
            {
                let series = last_series.clone().unwrap_or_default();
                query
                    .label_values
                    .extend(ident(index + 1).map(|label| (series.clone(), label.to_owned())));
            }
            _ => {}
        }
        index += 1;
    }
    query
}

/// The `{{label}}` names of a legend format.
fn legend_labels(legend: &str) -> Vec<String> {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|rest| rest.split_once("}}"))
        .map(|(label, _)| label.trim().to_owned())
        .collect()
}

/// Every `ringlog_` identifier of some text.
fn ringlog_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("ringlog_") {
        let preceded = rest[..start].chars().next_back().is_some_and(is_ident_char);
        let name: String = rest[start..]
            .chars()
            .take_while(|&c| is_ident_char(c))
            .collect();
        rest = &rest[start + name.len()..];
        if !preceded {
            names.push(name);
        }
    }
    names
}

/// Everything wrong with `dashboard` against what the broker exports; empty if nothing.
fn problems(dashboard: &Value, exported: &Exported) -> Vec<String> {
    let mut found = Vec::new();
    let mut queries = Vec::new();
    let mut prose = Vec::new();
    collect_strings(dashboard, None, &mut queries, &mut prose);
    for (expr, legend) in &queries {
        found.extend(query_problems(expr, legend.as_deref(), exported));
    }
    for text in prose {
        for name in ringlog_names(&text) {
            let known = exported.series.contains_key(&name)
                || (exported.families.contains_key(&name) && exported.family_has_samples(&name));
            if !known {
                found.push(format!("{name} (in {text:?}) is not exported"));
            }
        }
    }
    found.extend(structure_problems(dashboard));
    found
}

/// The problems of one query and its legend.
fn query_problems(expr: &str, legend: Option<&str>, exported: &Exported) -> Vec<String> {
    let mut found = Vec::new();
    let query = parse_query(expr);
    if query.unbalanced {
        found.push(format!("{expr}: parentheses or braces do not balance"));
    }
    let labels_of = |series: &str| -> BTreeSet<String> {
        let mut labels = exported.series.get(series).cloned().unwrap_or_default();
        labels.extend(TARGET_LABELS.iter().map(|label| (*label).to_owned()));
        labels
    };
    let mut available = BTreeSet::new();
    for (series, matched) in &query.series {
        if !exported.series.contains_key(series) {
            let family = exported.family_of(series);
            found.push(format!(
                "{expr}: {series} is not an exported series (its family: {family:?})"
            ));
            continue;
        }
        let labels = labels_of(series);
        for label in matched.iter().filter(|label| !labels.contains(*label)) {
            found.push(format!("{expr}: {series} has no label {label}"));
        }
        available.extend(labels);
    }
    for label in query
        .grouping
        .iter()
        .filter(|label| !available.contains(*label))
    {
        found.push(format!("{expr}: no series it reads has the label {label}"));
    }
    // After an aggregation only its grouping labels are left for the legend to show.
    let shown: BTreeSet<String> = if query.grouping.is_empty() {
        available
    } else {
        query.grouping.iter().cloned().collect()
    };
    for label in legend.map(legend_labels).unwrap_or_default() {
        if !shown.contains(&label) {
            found.push(format!(
                "{expr}: its legend shows {{{{{label}}}}}, a label it has not"
            ));
        }
    }
    for (series, label) in &query.label_values {
        if !labels_of(series).contains(label) {
            found.push(format!("{expr}: {series} has no label {label}"));
        }
    }
    found
}

/// Walks the dashboard: PromQL strings with their panel target's legend, and every other
/// string (titles, descriptions).
fn collect_strings(
    value: &Value,
    key: Option<&str>,
    queries: &mut Vec<(String, Option<String>)>,
    prose: &mut Vec<String>,
) {
    match value {
        Value::Object(object) => {
            for (key, value) in object {
                if let (Some(expr), true) = (value.as_str(), QUERY_KEYS.contains(&key.as_str())) {
                    let legend = object.get("legendFormat").and_then(Value::as_str);
                    queries.push((expr.to_owned(), legend.map(str::to_owned)));
                } else {
                    collect_strings(value, Some(key), queries, prose);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                collect_strings(item, key, queries, prose);
            }
        }
        Value::String(text) if key != Some("legendFormat") => prose.push(text.clone()),
        _ => {}
    }
}

/// Panel ids are unique, and every panel and target reads the `datasource` variable.
fn structure_problems(dashboard: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let mut ids = HashSet::new();
    let panels = dashboard["panels"].as_array().cloned().unwrap_or_default();
    if panels.is_empty() {
        found.push("no panels".to_owned());
    }
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or("?");
        if !ids.insert(panel["id"].as_u64()) {
            found.push(format!("panel {title:?}: id {} is not unique", panel["id"]));
        }
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            found.push(format!("panel {title:?} has no queries"));
        }
        for reader in targets.iter().chain([panel]) {
            if reader["datasource"]["uid"] != DATASOURCE_UID {
                found.push(format!("panel {title:?} does not read {DATASOURCE_UID}"));
            }
        }
    }
    found
}

/// A broker with a topic of two partitions holding records, one fetch, and a group that
/// committed on both partitions; returns its scrape.
fn scrape_a_working_broker() -> String {
    let dir = tempfile::tempdir().unwrap();
    let options = ServerOptions::default()
        .with("--metrics-listen", "127.0.0.1:0")
        .with("--group-initial-rebalance-delay-ms", "0");
    let server = Server::start(&dir.path().join("data"), &options);
    let metrics = server.metrics_address().expect("the serving line names it");
    let mut client = Connection::connect(server.address());
    assert_eq!(client.create_topic("dashboard", 2), 0);
    for partition in 0..2 {
        let value: &[u8] = b"value";
        let records = [
            record(None, Some(value), &[], 0),
            record(None, Some(value), &[], 1),
        ];
        let answer = client.produce("dashboard", partition, &records, -1);
        assert_eq!(answer.error_code, 0, "produce to partition {partition}");
    }
    assert_eq!(client.fetch_all("dashboard", 0, 0).len(), 2);
    let member = Member::join(&mut client, "dashboard-readers", "dashboard", &[0, 1], "").unwrap();
    member.commit(&mut client, &[1, 0]).unwrap();
    let text = exposition(metrics);
    server.stop_cleanly();
    text
}

#[test]
fn every_metric_and_label_the_dashboard_reads_is_exported() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let text = scrape_a_working_broker();
    let exported = Exported::parse(&text);
    for series in [
        "ringlog_partition_high_watermark",
        "ringlog_group_lag",
        "ringlog_produce_latency_seconds_bucket",
    ] {
        assert!(exported.series.contains_key(series), "{series}:\n{text}");
    }
    let problems = problems(&dashboard, &exported);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Every family the broker exports is on the dashboard, so a new one is not forgotten.
    let mut queries = Vec::new();
    collect_strings(&dashboard, None, &mut queries, &mut Vec::new());
    let read: BTreeSet<String> = queries
        .iter()
        .flat_map(|(expr, _)| parse_query(expr).series)
        .filter_map(|(series, _)| exported.family_of(&series).map(str::to_owned))
        .collect();
    let unread: Vec<&str> = exported
        .families
        .keys()
        .map(String::as_str)
        .filter(|family| !read.contains(*family) && !UNCHARTED.contains(family))
        .collect();
    assert!(
        unread.is_empty(),
        "exported, not on the dashboard: {unread:?}"
    );
}

/// Families the dashboard leaves out on purpose: the committed offsets are charted as the lag
/// they make, and the log start offset moves only with retention.
const UNCHARTED: [&str; 2] = [
    "ringlog_group_committed_offset",
    "ringlog_partition_log_start_offset",
];

#[test]
fn the_checker_finds_each_kind_of_mistake() {
    let exported = Exported::parse(
        "# TYPE ringlog_a_total counter\n\
         ringlog_a_total{api=\"Produce\"} 1\n\
         # TYPE ringlog_b_seconds histogram\n\
         ringlog_b_seconds_bucket{le=\"0.5\"} 1\n\
         ringlog_b_seconds_bucket{le=\"+Inf\"} 1\n\
         ringlog_b_seconds_sum 0.1\n\
         ringlog_b_seconds_count 1\n\
         # TYPE ringlog_c gauge\n\
         ringlog_c{topic=\"t\",partition=\"0\"} 3\n\
         # TYPE ringlog_d gauge\n",
    );
    let target = |expr: &str, legend: &str| {
        serde_json::json!({"datasource": {"uid": DATASOURCE_UID}, "refId": "A",
                           "expr": expr, "legendFormat": legend})
    };
    let dashboard = |targets: Vec<Value>, description: &str| {
        serde_json::json!({"panels": [{"id": 1, "type": "timeseries", "title": "p",
                                       "description": description,
                                       "datasource": {"uid": DATASOURCE_UID},
                                       "targets": targets}]})
    };
    let good = dashboard(
        vec![
            target(
                "sum by (api, instance) (rate(ringlog_a_total{api=~\"$api\"}[$__rate_interval]))",
                "{{api}}",
            ),
            target(
                "histogram_quantile(0.99, sum by (le) (rate(ringlog_b_seconds_bucket[5m])))",
                "p99",
            ),
            target("ringlog_c{topic=~\"$topic\"}", "{{topic}}-{{partition}}"),
        ],
        "Reads ringlog_a_total and ringlog_b_seconds.",
    );
    assert_eq!(problems(&good, &exported), Vec::<String>::new());
    for (expr, legend, description) in [
        ("rate(ringlog_a_totl[1m])", "", ""),
        ("rate(ringlog_c_bucket[1m])", "", ""),
        ("rate(ringlog_a_total_count[1m])", "", ""),
        ("ringlog_b_seconds", "", ""),
        ("ringlog_d", "", ""),
        ("ringlog_c{topik=\"t\"}", "", ""),
        ("sum by (partiton) (ringlog_c)", "", ""),
        ("ringlog_c", "{{partiton}}", ""),
        ("sum(rate(ringlog_a_total[1m])", "", ""),
        ("ringlog_c", "", "See ringlog_e."),
    ] {
        let broken = dashboard(vec![target(expr, legend)], description);
        let found = problems(&broken, &exported);
        assert!(
            !found.is_empty(),
            "{expr} {legend} {description}: no problem found"
        );
    }
    let mut label_values = good.clone();
    label_values["templating"] = serde_json::json!({"list": [
        {"query": "label_values(ringlog_c{instance=~\"$instance\"}, topik)"}]});
    assert_eq!(problems(&label_values, &exported).len(), 1);
    let mut no_datasource = good;
    no_datasource["panels"][0]["targets"][0]["datasource"]["uid"] = "prometheus".into();
    assert_eq!(problems(&no_datasource, &exported).len(), 1);
}
