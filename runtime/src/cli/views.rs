//! Tables for the JSON documents of `api::log` (topics, groups): the CLI renders them the
//! same way whether it read the log itself or asked a running worker's API.

use serde_json::Value;

use crate::output::table;

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn rows(v: &Value, list: &str, columns: &[&str]) -> Vec<Vec<String>> {
    v[list]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| columns.iter().map(|c| s(&i[*c])).collect())
                .collect()
        })
        .unwrap_or_default()
}

/// `sluice topics list`.
pub fn print_topics(v: &Value) {
    // OFFSETS, not records: transaction markers take offsets too.
    let rows = rows(v, "topics", &["name", "partitions", "offsets", "bytes"]);
    print!(
        "{}",
        table(&["TOPIC", "PARTITIONS", "OFFSETS", "BYTES"], &rows)
    );
}

/// `sluice topics describe`.
pub fn print_topic(v: &Value) {
    let partitions = v["partitions"].as_array().map_or(0, Vec::len);
    println!(
        "Topic: {}  Partitions: {partitions}{}",
        s(&v["name"]),
        if v["internal"] == Value::Bool(true) {
            "  (internal)"
        } else {
            ""
        }
    );
    let config = v["config"].as_object().cloned().unwrap_or_default();
    let overrides: Vec<String> = config
        .iter()
        .filter(|(_, c)| c["overridden"] == Value::Bool(true))
        .map(|(k, c)| format!("{k}={}", s(&c["value"])))
        .collect();
    println!(
        "Config overrides: {}",
        if overrides.is_empty() {
            "none".into()
        } else {
            overrides.join(", ")
        }
    );
    let columns = [
        "partition",
        "log_start_offset",
        "log_end_offset",
        "high_watermark",
        "last_stable_offset",
        "leader_epoch",
        "segments",
        "size_bytes",
    ];
    print!(
        "{}",
        table(
            &[
                "PARTITION",
                "LOG-START",
                "LOG-END",
                "HIGH-WATERMARK",
                "LAST-STABLE",
                "LEADER-EPOCH",
                "SEGMENTS",
                "BYTES"
            ],
            &rows(v, "partitions", &columns)
        )
    );
    let tiered = config
        .get("remote.storage.enable")
        .is_some_and(|c| s(&c["value"]) == "true")
        || rows(v, "partitions", &["remote_segments"])
            .iter()
            .any(|r| r[0] != "0" && r[0] != "-");
    if tiered {
        println!("Tiered storage (local disk and remote storage):");
        let columns = [
            "partition",
            "local_log_start_offset",
            "log_end_offset",
            "remote_log_start_offset",
            "remote_log_end_offset",
            "remote_segments",
            "remote_size_bytes",
        ];
        print!(
            "{}",
            table(
                &[
                    "PARTITION",
                    "LOCAL-START",
                    "LOCAL-END",
                    "REMOTE-START",
                    "REMOTE-END",
                    "REMOTE-SEGMENTS",
                    "REMOTE-BYTES"
                ],
                &rows(v, "partitions", &columns)
            )
        );
    }
    let config_rows: Vec<Vec<String>> = config
        .iter()
        .map(|(k, c)| {
            vec![
                k.clone(),
                s(&c["value"]),
                if c["overridden"] == Value::Bool(true) {
                    "topic".into()
                } else {
                    "default".into()
                },
            ]
        })
        .collect();
    print!("{}", table(&["CONFIG", "VALUE", "SOURCE"], &config_rows));
}

/// `sluice groups list`.
pub fn print_groups(v: &Value) {
    let rows = rows(v, "groups", &["group", "state", "members"]);
    print!("{}", table(&["GROUP", "STATE", "MEMBERS"], &rows));
}

/// `sluice groups describe`.
pub fn print_group(v: &Value) {
    println!(
        "Group: {}  State: {}  Members: {}",
        s(&v["group"]),
        s(&v["state"]),
        s(&v["members"])
    );
    let rows = rows(
        v,
        "partitions",
        &[
            "topic",
            "partition",
            "committed",
            "log_end",
            "lag",
            "member",
        ],
    );
    print!(
        "{}",
        table(
            &[
                "TOPIC",
                "PARTITION",
                "CURRENT-OFFSET",
                "LOG-END-OFFSET",
                "LAG",
                "MEMBER"
            ],
            &rows
        )
    );
}

/// `sluice cluster status`.
pub fn print_cluster(v: &Value) {
    let controller = match &v["controller"] {
        Value::Null => "none elected (a majority of the nodes must be up)".to_string(),
        c => format!("node {c}"),
    };
    println!(
        "Node {} sees: controller {controller}, term {}, metadata applied to index {}",
        s(&v["node_id"]),
        s(&v["term"]),
        s(&v["applied_index"])
    );
    let nodes = rows(
        v,
        "nodes",
        &["id", "addr", "state", "voter", "controller", "api"],
    );
    print!(
        "{}",
        table(
            &["NODE", "ADDRESS", "STATE", "VOTER", "CONTROLLER", "API"],
            &nodes
        )
    );
    let partitions: Vec<Vec<String>> = v["partitions"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let list = |k: &str| {
                        p[k].as_array().map_or(String::new(), |a| {
                            a.iter().map(s).collect::<Vec<_>>().join(",")
                        })
                    };
                    vec![
                        s(&p["topic"]),
                        s(&p["partition"]),
                        s(&p["leader"]),
                        s(&p["leader_epoch"]),
                        list("replicas"),
                        list("isr"),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if !partitions.is_empty() {
        print!(
            "{}",
            table(
                &["TOPIC", "PARTITION", "LEADER", "EPOCH", "REPLICAS", "ISR"],
                &partitions
            )
        );
    }
    println!(
        "Under-replicated partitions: {}; offline partitions: {}",
        s(&v["under_replicated_partitions"]),
        s(&v["offline_partitions"])
    );
    let pipelines = rows(v, "pipelines", &["name", "node"]);
    if !pipelines.is_empty() {
        print!("{}", table(&["PIPELINE", "RUNS ON NODE"], &pipelines));
    }
}
