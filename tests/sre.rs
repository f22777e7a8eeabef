//! The SRE surface: Prometheus rules (promtool), the Grafana dashboard, the
//! runbook links, the compose stack, and a real Prometheus scraping a
//! running pipeline until an alert fires.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vitrina::region::load;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const RULES: &str = "dashboards/prometheus/vitrina-rules.yml";
const RULE_TESTS: &str = "dashboards/prometheus/vitrina-rules.test.yml";
const DASHBOARD: &str = "dashboards/grafana/vitrina.json";

fn promtool() -> std::process::Command {
    std::process::Command::new("promtool")
}

fn rules() -> serde_yaml::Value {
    serde_yaml::from_str(&std::fs::read_to_string(root().join(RULES)).unwrap()).unwrap()
}

/// Every rule of the rules file.
fn all_rules() -> Vec<serde_yaml::Value> {
    rules()["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().clone())
        .collect()
}

/// Metric names in a PromQL expression (recording-rule names included).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let re = regex_lite::Regex::new(r"\b(vitrina[_:][a-z0-9_:]+|up)\b").unwrap();
    re.find_iter(expr).map(|m| m.as_str().to_string()).collect()
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(root().join(DASHBOARD)).unwrap())
        .expect("the dashboard is valid JSON")
}

fn dashboard_exprs() -> Vec<String> {
    dashboard()["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect()
}

/// GitHub-style anchors of the markdown headings in `path`.
fn anchors(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}

#[test]
fn promtool_checks_and_unit_tests_the_rules() {
    let check = promtool()
        .args(["check", "rules"])
        .arg(root().join(RULES))
        .output()
        .expect("promtool runs (scripts/bootstrap installs the prometheus package)");
    assert!(
        check.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let test = promtool()
        .args(["test", "rules"])
        .arg(root().join(RULE_TESTS))
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "promtool test rules: {}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    // Every alert has a case that fires it and one where it stays silent.
    let tests: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join(RULE_TESTS)).unwrap()).unwrap();
    let cases: Vec<(String, bool)> = tests["tests"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_sequence().unwrap().clone())
        .map(|c| {
            (
                c["alertname"].as_str().unwrap().to_string(),
                !c["exp_alerts"].as_sequence().unwrap().is_empty(),
            )
        })
        .collect();
    for r in all_rules().iter().filter(|r| r["alert"].is_string()) {
        let name = r["alert"].as_str().unwrap();
        assert!(
            cases.iter().any(|(n, fires)| n == name && *fires),
            "no test case fires {name}"
        );
        assert!(
            cases.iter().any(|(n, fires)| n == name && !*fires),
            "no test case keeps {name} silent"
        );
    }
}

#[test]
fn every_alert_links_to_a_runbook_section_that_exists() {
    let sections = anchors(&root().join("docs/operations.md"));
    for r in all_rules().iter().filter(|r| r["alert"].is_string()) {
        let url = r["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_else(|| panic!("{:?} has no runbook_url", r["alert"]));
        let (file, anchor) = url.split_once('#').expect("runbook_url names a section");
        assert_eq!(file, "docs/operations.md");
        assert!(
            sections.contains(anchor),
            "{:?} links to #{anchor}, not a section of docs/operations.md: {sections:?}",
            r["alert"]
        );
    }
}

#[test]
fn the_dashboard_is_provisionable_and_uses_only_recorded_or_exported_names() {
    let d = dashboard();
    assert!(d["title"].is_string() && d["uid"].is_string());
    let provisioned: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(
            root().join("dashboards/grafana/provisioning/datasources/prometheus.yml"),
        )
        .unwrap(),
    )
    .unwrap();
    let uid = provisioned["datasources"][0]["uid"].as_str().unwrap();
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_i64().unwrap()),
            "panel ids are unique"
        );
        for k in ["x", "y", "w", "h"] {
            assert!(
                p["gridPos"][k].is_i64(),
                "panel {} has gridPos.{k}",
                p["title"]
            );
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], uid,
            "panel {} uses the provisioned datasource",
            p["title"]
        );
        let targets = p["targets"].as_array().unwrap();
        assert!(
            !targets.is_empty(),
            "panel {} queries something",
            p["title"]
        );
    }
    // Recording rules used by the dashboard are defined.
    let recorded: BTreeSet<String> = all_rules()
        .iter()
        .filter_map(|r| r["record"].as_str().map(String::from))
        .collect();
    for e in dashboard_exprs() {
        for n in metric_names(&e).into_iter().filter(|n| n.contains(':')) {
            assert!(recorded.contains(&n), "{n} is not recorded by {RULES}");
        }
    }
}

#[test]
fn the_compose_stack_references_existing_files_and_the_code_defaults() {
    let dir = root().join("docker");
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("compose.yml")).unwrap()).unwrap();
    let services = compose["services"].as_mapping().unwrap();
    for name in [
        "kafka-1",
        "kafka-2",
        "kafka-3",
        "journal",
        "showcase",
        "capture",
        "projector",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(name), "compose has service {name}");
    }
    for (name, s) in services {
        for v in s["volumes"].as_sequence().cloned().unwrap_or_default() {
            let host = v.as_str().unwrap().split(':').next().unwrap();
            if host.starts_with('.') {
                assert!(
                    dir.join(host).exists(),
                    "{:?} mounts {host}, which does not exist",
                    name
                );
            }
        }
        if let Some(b) = s.get("build") {
            let ctx = dir.join(b["context"].as_str().unwrap());
            assert!(ctx.join(b["dockerfile"].as_str().unwrap()).exists());
        }
    }
    // The Dockerfile copies what the build needs.
    let dockerfile = std::fs::read_to_string(dir.join("Dockerfile")).unwrap();
    for l in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        for src in l
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .split_last()
            .unwrap()
            .1
        {
            assert!(
                root().join(src).exists(),
                "Dockerfile copies {src}, which does not exist"
            );
        }
    }
    // Ports agree with the code's defaults, and health checks use them.
    let d = vitrina::config::Config::default();
    let port = |listen: &str| listen.rsplit(':').next().unwrap().to_string();
    for (svc, listen) in [
        ("capture", d.capture.metrics_listen.as_str()),
        ("projector", d.projector.metrics_listen.as_str()),
        ("prostore", d.prostore.metrics_listen.as_str()),
        ("rdm", d.rdm.metrics_listen.as_str()),
    ] {
        let p = port(listen);
        let s = &services[svc];
        let ports: Vec<String> = s["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        assert!(
            ports.contains(&format!("{p}:{p}")),
            "{svc} publishes {p}: {ports:?}"
        );
        let hc = serde_yaml::to_string(&s["healthcheck"]["test"]).unwrap();
        assert!(
            hc.contains(&format!("localhost:{p}/")),
            "{svc} health check uses {p}"
        );
        let env = &s["environment"];
        let key = format!("VITRINA_{}__METRICS_LISTEN", svc.to_uppercase());
        assert_eq!(
            env[key.as_str()].as_str(),
            Some(format!("0.0.0.0:{p}").as_str())
        );
    }
    // Prometheus scrapes those ports and loads the rules file we test.
    let prom: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("prometheus.yml")).unwrap())
            .unwrap();
    let targets = serde_yaml::to_string(&prom["scrape_configs"]).unwrap();
    for t in [
        "capture:9464",
        "projector:9465",
        "prostore:9467",
        "rdm:9468",
    ] {
        assert!(targets.contains(t), "Prometheus scrapes {t}");
    }
    let mounted = serde_yaml::to_string(&services["prometheus"]["volumes"]).unwrap();
    let rule_file = prom["rule_files"][0].as_str().unwrap();
    assert!(
        mounted.contains(&format!("../{RULES}:{rule_file}")),
        "the rules file Prometheus loads is {RULES}"
    );
    // The compose config file is a valid vitrina config.
    let text = std::fs::read_to_string(dir.join("vitrina.toml")).unwrap();
    let c: vitrina::config::Config = toml::from_str(&text).expect("docker/vitrina.toml parses");
    c.validate().unwrap();
    assert_eq!(
        port(&c.capture.metrics_listen),
        port(&d.capture.metrics_listen)
    );
}

// ---------------------------------------------------------------------------
// A real Prometheus against a running pipeline.

fn prom_query(addr: &str, q: &str) -> Vec<serde_json::Value> {
    let (code, body) = common::http_get(
        addr,
        &format!(
            "/api/v1/query?query={}",
            vitrina::connections::percent_encode(q)
        ),
    );
    assert_eq!(code, 200, "query {q}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn firing(addr: &str) -> BTreeSet<String> {
    let (_, body) = common::http_get(addr, "/api/v1/alerts");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|a| a["state"] == "firing")
        .map(|a| a["labels"]["alertname"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Metric names in Prometheus text exposition.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_pipeline_sees_it_move_and_fires_when_capture_stops() {
    let cfg = common::journal_db("t_sre").await;
    let db = common::db_name(&cfg);
    let spec = common::small_region(61, 1, 20, 0.1);
    load::load(&cfg, &spec, 2, false, false).await.unwrap();
    let showcase = common::fresh_db("t_sre_show").await;
    let show_db = common::db_name(&showcase);
    let name = format!("sre{}", std::process::id());
    let ports: Vec<String> = common::free_ports(5)
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let (cap_at, proj_at, replay_at, prom_at, feed_at) = (
        ports[0].clone(),
        ports[1].clone(),
        ports[2].clone(),
        ports[3].clone(),
        ports[4].clone(),
    );
    let mut capture = common::spawn_vitrina(
        "capture",
        &db,
        &name,
        &name,
        &[
            ("VITRINA_CAPTURE__METRICS_LISTEN", cap_at.as_str()),
            ("VITRINA_LOG", "warn,vitrina=info,vitrina::capture=debug"),
        ],
    );
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    assert_eq!(
        common::http_get(&cap_at, "/readyz"),
        (200, "ready\n".into())
    );
    assert_eq!(common::http_get(&cap_at, "/healthz").0, 200);
    let mut projector = common::spawn_vitrina(
        "project",
        &db,
        &name,
        &format!("{name}-projector"),
        &[
            ("VITRINA_SHOWCASE__DATABASE", show_db.as_str()),
            ("VITRINA_PROJECTOR__METRICS_LISTEN", proj_at.as_str()),
            ("VITRINA_PROJECTOR__SLA_BUDGET_S", "20"),
            ("VITRINA_PROJECTOR__AT_RISK_S", "10"),
            ("VITRINA_PROJECTOR__QUALITY_INTERVAL_S", "2"),
            ("VITRINA_LOG", "warn,vitrina=info,vitrina::projector=debug"),
            ("VITRINA_LOG_JSON", "1"),
        ],
    );

    let mut feed = common::spawn_vitrina(
        "prostore feed",
        &db,
        &name,
        &format!("{name}-prostore"),
        &[
            ("VITRINA_PROSTORE__METRICS_LISTEN", feed_at.as_str()),
            ("VITRINA_PROSTORE__DELTA_INTERVAL_MS", "1000"),
        ],
    );

    // The RDM client, against the stand-in service (tests/rdm.rs tests it
    // against the service's own description; here it must only export).
    let rdm_ports = common::free_ports(2);
    let (mock_port, rdm_at) = (rdm_ports[0], format!("127.0.0.1:{}", rdm_ports[1]));
    let tables: serde_json::Map<String, serde_json::Value> = vitrina::rdm::TABLES
        .iter()
        .map(|t| {
            let cols: Vec<&str> = t.columns.iter().map(|c| c.name).collect();
            let req: Vec<&str> = t
                .columns
                .iter()
                .filter(|c| c.required)
                .map(|c| c.name)
                .collect();
            (
                t.name.to_string(),
                serde_json::json!({"columns": cols, "required": req, "primary_key": t.primary_key}),
            )
        })
        .collect();
    let tables_file = root().join(format!("target/test-logs/{name}-rdm-tables.json"));
    std::fs::write(&tables_file, serde_json::Value::Object(tables).to_string()).unwrap();
    let mock_log =
        std::fs::File::create(root().join(format!("target/test-logs/{name}-rdm-mock.log")))
            .unwrap();
    let mut mock = std::process::Command::new("python3");
    mock.arg(root().join("tests/rdm_mock.py"))
        .args(["--port", &mock_port.to_string(), "--processing-ms", "100"])
        .arg("--tables")
        .arg(&tables_file)
        .stdout(mock_log.try_clone().unwrap())
        .stderr(mock_log);
    common::dies_with_test(&mut mock);
    let mut mock = mock.spawn().unwrap();
    let mock_url = format!("http://127.0.0.1:{mock_port}");
    let mut rdm = common::spawn_vitrina(
        "rdm upload",
        &db,
        &name,
        &format!("{name}-rdm"),
        &[
            ("VITRINA_PROSTORE__METRICS_LISTEN", "127.0.0.1:0"),
            ("VITRINA_RDM__URL", mock_url.as_str()),
            ("VITRINA_RDM__METRICS_LISTEN", rdm_at.as_str()),
            ("VITRINA_RDM__BATCH_INTERVAL_MS", "1000"),
            ("VITRINA_RDM__STATUS_POLL_MS", "100"),
        ],
    );

    // Prometheus with the rules as shipped, their `for:` shortened to 5 s.
    let dir = root().join(format!("target/test-logs/prometheus-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rules = std::fs::read_to_string(root().join(RULES)).unwrap();
    let re = regex_lite::Regex::new(r"for: \d+m").unwrap();
    std::fs::write(
        dir.join("rules.yml"),
        re.replace_all(&rules, "for: 5s").as_ref(),
    )
    .unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [rules.yml]
scrape_configs:
  - job_name: vitrina-capture
    static_configs: [{{targets: ['{cap_at}']}}]
  - job_name: vitrina-projector
    static_configs: [{{targets: ['{proj_at}']}}]
"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let mut prom = std::process::Command::new("prometheus");
    prom.arg(format!(
        "--config.file={}",
        dir.join("prometheus.yml").display()
    ))
    .arg(format!(
        "--storage.tsdb.path={}",
        dir.join("data").display()
    ))
    .arg(format!("--web.listen-address={prom_at}"))
    .stdout(log.try_clone().unwrap())
    .stderr(log);
    common::dies_with_test(&mut prom);
    let mut prom = prom
        .spawn()
        .expect("prometheus runs (scripts/bootstrap installs the prometheus package)");
    wait_for("Prometheus ready", Duration::from_secs(60), || {
        common::http_get(&prom_at, "/-/ready").0 == 200
    });

    let p = prom_at.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("both targets scraped", Duration::from_secs(60), || {
            prom_query(&p, "up == 1").len() == 2
        })
    })
    .await
    .unwrap();

    // Bad input on both sides: a retyped column (capture dead letter) and
    // bytes that are no event (projector dead letter).
    let c = vitrina::pg::connect(&cfg).await.unwrap();
    c.batch_execute(
        "ALTER TABLE journal.subjects ALTER COLUMN pass_fail TYPE text;
         INSERT INTO journal.subjects (id, code, name, pass_fail) VALUES (998, 'Y', 'Проба', 'maybe');",
    )
    .await
    .unwrap();
    {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let p: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", common::stack().brokers())
            .create()
            .unwrap();
        let topic = format!("{name}.grade.v1");
        p.send(
            FutureRecord::to(&topic).key("x").payload(b"not an event"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }
    let load_task = common::spawn_workload(&cfg, 8, 0, 3);
    let report = load_task.await.unwrap();
    assert_eq!(report.failed_transactions, 0);

    // The pipeline's metrics are in Prometheus and moving.
    let p = prom_at.clone();
    tokio::task::spawn_blocking(move || {
        wait_for(
            "capture events rate > 0 in Prometheus",
            Duration::from_secs(60),
            || prom_query(&p, "sum(rate(vitrina_capture_events_total[15s])) > 0").len() == 1,
        );
        wait_for(
            "projector events rate > 0 in Prometheus",
            Duration::from_secs(60),
            || prom_query(&p, "sum(rate(vitrina_projector_events_total[15s])) > 0").len() == 1,
        );
        wait_for(
            "freshness and SLA state in Prometheus",
            Duration::from_secs(60),
            || {
                !prom_query(&p, "vitrina_showcase_freshness_seconds").is_empty()
                    && !prom_query(&p, "vitrina:showcase_breached:bool").is_empty()
            },
        );
    })
    .await
    .unwrap();

    // A replay exports its own metrics while it runs: sample them.
    let replay_names = {
        let (db, name, show_db, at) =
            (db.clone(), name.clone(), show_db.clone(), replay_at.clone());
        let child = std::thread::spawn(move || {
            common::run_vitrina(
                &db,
                &name,
                &["replay", "--no-swap"],
                &[
                    ("VITRINA_SHOWCASE__DATABASE", &show_db),
                    ("VITRINA_PROJECTOR__REPLAY_METRICS_LISTEN", &at),
                ],
            )
        });
        let mut names = BTreeSet::new();
        while !child.is_finished() {
            let (code, text) = common::http_get(&replay_at, "/metrics");
            if code == 200 {
                names.extend(exported(&text));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = child.join().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        names
    };

    // Every name the dashboard and the rules use is exported by the running
    // pipeline (or recorded by the rules).
    let mut have = replay_names;
    have.extend(exported(&common::http_get(&cap_at, "/metrics").1));
    have.extend(exported(&common::http_get(&proj_at, "/metrics").1));
    // The feed's fed-through gauge appears after its first delta interval.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = common::http_get(&feed_at, "/metrics").1;
        if text.contains("vitrina_prostore_fed_through_seconds ")
            || std::time::Instant::now() > deadline
        {
            have.extend(exported(&text));
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The RDM client's histograms appear once it has had a file accepted.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let text = common::http_get(&rdm_at, "/metrics").1;
        if text.contains("vitrina_rdm_commit_to_accepted_seconds_count")
            || std::time::Instant::now() > deadline
        {
            have.extend(exported(&text));
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    have.insert("up".into());
    let mut used = BTreeSet::new();
    for e in dashboard_exprs() {
        used.extend(metric_names(&e));
    }
    for r in all_rules() {
        used.extend(metric_names(r["expr"].as_str().unwrap()));
        if let Some(rec) = r["record"].as_str() {
            have.insert(rec.to_string());
        }
    }
    let missing: Vec<&String> = used.iter().filter(|n| !have.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "used by dashboards or rules but not exported: {missing:?}\nexported: {have:?}"
    );

    // The on-call view reads the same pipeline.
    let out = common::run_vitrina(
        &db,
        &name,
        &["status", "--json"],
        &[("VITRINA_SHOWCASE__DATABASE", &show_db)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &st["pipeline"];
    assert!(p["capture"]["active_pid"].is_i64(), "capture streams: {p}");
    assert!(p["capture"]["retained_wal_bytes"].is_i64(), "{p}");
    assert_eq!(
        p["showcase"]["entities"].as_array().unwrap().len(),
        vitrina::events::ENTITIES.len(),
        "{p}"
    );
    assert!(p["showcase"]["freshness_s"].as_f64().unwrap() < 20.0, "{p}");
    assert!(
        p["dead_letters"].as_i64().unwrap() >= 2,
        "both dead letters counted: {p}"
    );

    // Stop capture: Prometheus sees it down, and freshness breaches the
    // shortened budget (20 s).
    common::kill(&mut capture, libc::SIGTERM);
    let p = prom_at.clone();
    tokio::task::spawn_blocking(move || {
        wait_for(
            "VitrinaCaptureDown and VitrinaFreshnessOverBudget firing",
            Duration::from_secs(120),
            || {
                let f = firing(&p);
                f.contains("VitrinaCaptureDown") && f.contains("VitrinaFreshnessOverBudget")
            },
        );
        let f = firing(&p);
        assert!(f.contains("VitrinaDeadLetters"), "dead letters seen: {f:?}");
        assert!(
            !f.contains("VitrinaProjectorDown"),
            "the projector is up: {f:?}"
        );
    })
    .await
    .unwrap();
    common::kill(&mut projector, libc::SIGTERM);
    common::kill(&mut feed, libc::SIGTERM);
    common::kill(&mut rdm, libc::SIGTERM);
    common::kill(&mut mock, libc::SIGTERM);
    common::kill(&mut prom, libc::SIGTERM);

    // One span per batch, with its source positions: capture's per journal
    // transaction, the projector's per apply batch (as JSON log lines).
    let cap_log = common::log_tail(&name, 100_000);
    assert!(
        cap_log.contains("capture_txn") && cap_log.contains("commit_lsn"),
        "capture logs its transaction spans"
    );
    let proj_log = common::log_tail(&format!("{name}-projector"), 100_000);
    let span_line = proj_log
        .lines()
        .find(|l| l.contains("projector_batch") && l.contains("last_commit_lsn"))
        .expect("the projector logs its batch spans");
    let v: serde_json::Value = serde_json::from_str(span_line).expect("JSON log lines");
    assert!(
        v["span"]["first_commit_lsn"]
            .as_str()
            .unwrap()
            .contains('/'),
        "{v}"
    );
}
