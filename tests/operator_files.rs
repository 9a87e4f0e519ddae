//! The files an operator installs next to the daemon (packaging/): the Grafana dashboard is valid
//! JSON of the expected shape, and every compilerd metric that it or the Prometheus alert rules
//! name is one the daemon exports (a renamed metric must not leave a blank panel or a silent
//! alert). `promtool check rules` / `promtool test rules` run in .ci/run.

use std::collections::BTreeSet;

use compilerd::hooks::Hooks;
use compilerd::metrics::Metrics;

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every `compilerd_...` name in a text, without the histogram suffixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("compilerd_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(base.to_string());
        rest = &tail[end..];
    }
    names
}

fn exported() -> BTreeSet<String> {
    let m = Metrics::new();
    m.shared_cache_enabled();
    // The daemon registers its languages' run series at startup.
    m.register_languages(&["default"]);
    // Series that appear with their first sample.
    m.request_finished("compile", 200, std::time::Duration::ZERO);
    metric_names(&m.render())
}

#[test]
fn the_dashboard_is_valid_and_names_exported_metrics() {
    let text = read("packaging/grafana/compilerd-dashboard.json");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(dash["uid"], "compilerd-fleet");
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut titles = Vec::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("a numeric id")),
            "duplicate id"
        );
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(x + w <= 24 && g["h"].as_u64().unwrap() > 0, "{p}");
        if p["type"] == "row" {
            continue;
        }
        titles.push(p["title"].as_str().unwrap().to_lowercase());
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{} has no query", p["title"]);
        for t in targets {
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()));
        }
    }
    for want in [
        "status code",
        "run latency",
        "hit ratio",
        "pool and queue",
        "lameduck",
    ] {
        assert!(titles.iter().any(|t| t.contains(want)), "no {want} panel");
    }
    let missing: Vec<_> = metric_names(&text)
        .difference(&exported())
        .cloned()
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard names unknown metrics: {missing:?}"
    );
}

#[test]
fn the_alert_rules_name_exported_metrics() {
    let text = read("packaging/prometheus/compilerd-alerts.yml");
    let names = metric_names(&text);
    assert!(names.contains("compilerd_shared_cache_up"));
    let missing: Vec<_> = names.difference(&exported()).cloned().collect();
    assert!(
        missing.is_empty(),
        "the alert rules name unknown metrics: {missing:?}"
    );
    for alert in [
        "CompilerdDown",
        "CompilerdSandboxErrorsRising",
        "CompilerdOverloaded",
        "CompilerdSharedCacheDown",
        "CompilerdRunsTimingOut",
    ] {
        assert!(text.contains(&format!("alert: {alert}")), "{alert}");
    }
}
