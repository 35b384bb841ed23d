//! The pipeline key reference (`docs/pipeline-reference.md`) is generated from the doc
//! comments of the config structs and kept in sync here: when a field is added, renamed or
//! re-documented this test fails; `SLUICE_BLESS=1` rewrites the page.

use std::path::Path;

/// (section heading, source file, struct, TOML path prefix)
const SECTIONS: &[(&str, &str, &str, &str)] = &[
    ("Top level", "runtime/src/pipeline.rs", "PipelineConfig", ""),
    (
        "[[topics]]",
        "runtime/src/pipeline.rs",
        "TopicSpec",
        "topics[].",
    ),
    (
        "[[sources]]",
        "runtime/src/pipeline.rs",
        "SourceSpec",
        "sources[].",
    ),
    (
        "sources[].file",
        "connectors/src/file/source.rs",
        "FileSourceConfig",
        "sources[].file.",
    ),
    (
        "sources[].http",
        "connectors/src/http_ingest/mod.rs",
        "HttpIngestConfig",
        "sources[].http.",
    ),
    (
        "sources[].http-poll",
        "connectors/src/http_poll/mod.rs",
        "HttpPollSourceConfig",
        "sources[].http-poll.",
    ),
    (
        "sources[].postgres-cdc",
        "connectors/src/postgres_cdc/mod.rs",
        "PostgresCdcConfig",
        "sources[].postgres-cdc.",
    ),
    (
        "[[sinks]]",
        "runtime/src/pipeline.rs",
        "SinkSpec",
        "sinks[].",
    ),
    (
        "sinks[].file",
        "connectors/src/file/sink.rs",
        "FileSinkConfig",
        "sinks[].file.",
    ),
    (
        "sinks[].object-store",
        "connectors/src/objstore/config.rs",
        "ObjectStoreSinkConfig",
        "sinks[].object-store.",
    ),
    (
        "sinks[].elasticsearch",
        "connectors/src/elasticsearch/config.rs",
        "ElasticsearchSinkConfig",
        "sinks[].elasticsearch.",
    ),
    (
        "sinks[].http",
        "connectors/src/http_sink/config.rs",
        "HttpSinkConfig",
        "sinks[].http.",
    ),
];

/// The TOML shape of a Rust field type.
fn toml_type(rust: &str) -> String {
    let t = rust.trim().trim_end_matches(',');
    if let Some(inner) = t.strip_prefix("Option<").and_then(|r| r.strip_suffix('>')) {
        return format!("{} (optional)", toml_type(inner));
    }
    if t == "Vec<String>" {
        return "array of strings".into();
    }
    if t.starts_with("Vec<") {
        return "array of tables".into();
    }
    if t.starts_with("BTreeMap<") {
        return "table of strings".into();
    }
    match t {
        "String" | "Spanned<String>" => "string".into(),
        "u32" | "u64" | "usize" => "integer".into(),
        "bool" => "boolean".into(),
        "FileFormat" => "string: `lines`, `json`, `csv`".into(),
        "SinkFormat" => "string: `value`, `envelope`".into(),
        "ObjectFormat" => "string: `json`, `parquet`".into(),
        "DocumentId" => "string: `key`, `offset`".into(),
        "Tombstones" => "string: `delete`, `ignore`".into(),
        "Method" => "string: `POST`, `PUT`".into(),
        "BodyFormat" => "string: `single`, `array`, `ndjson`".into(),
        "Guarantee" => "string: `exactly-once`, `at-least-once`".into(),
        "Interval" => "duration string: `500ms`, `10s`, `5m`, `1h`".into(),
        "SnapshotMode" => "string: `initial`, `never`, `when-needed`".into(),
        "tls::TlsMode" => {
            "string: `disable`, `prefer`, `require`, `verify-ca`, `verify-full`".into()
        }
        "std::path::PathBuf" | "PathBuf" => "string: a file path".into(),
        "JsonPath" => "string: a JSON path (`$`, `.name`, `['name']`, `[N]`, `[*]`)".into(),
        "FileSourceConfig"
        | "FileSinkConfig"
        | "HttpIngestConfig"
        | "HttpPollSourceConfig"
        | "ObjectStoreSinkConfig"
        | "ElasticsearchSinkConfig"
        | "HttpSinkConfig"
        | "PostgresCdcConfig" => "table".into(),
        other => other.into(),
    }
}

fn kebab(name: &str) -> String {
    name.replace('_', "-")
}

/// The reference page, from the structs' fields and doc comments.
fn generate(repo: &Path) -> String {
    let mut out = String::from(
        "# Pipeline file reference\n\n\
         Generated from the doc comments of the config structs by\n\
         `tests/tests/pipeline_reference.rs` (`SLUICE_BLESS=1` regenerates it). Unknown keys are\n\
         errors. See the README's \"Pipelines and the worker\" for an example.\n",
    );
    for (heading, file, name, prefix) in SECTIONS {
        let text = std::fs::read_to_string(repo.join(file)).unwrap();
        let start = text
            .find(&format!("pub struct {name} {{"))
            .unwrap_or_else(|| panic!("{name} not found in {file}"));
        let body = &text[start..];
        let body = &body[body.find('{').unwrap() + 1..body.find("\n}").unwrap()];
        out.push_str(&format!(
            "\n## {heading}\n\n| key | type | meaning |\n|---|---|---|\n"
        ));
        let mut doc: Vec<String> = Vec::new();
        for line in body.lines().map(str::trim) {
            if let Some(d) = line.strip_prefix("///") {
                doc.push(d.trim().to_string());
            } else if let Some(field) = line.strip_prefix("pub ") {
                let (fname, ty) = field.split_once(':').unwrap();
                out.push_str(&format!(
                    "| `{prefix}{}` | {} | {} |\n",
                    kebab(fname.trim()),
                    toml_type(ty),
                    doc.join(" ").replace('|', "\\|")
                ));
                doc.clear();
            }
        }
    }
    out
}

#[test]
fn the_reference_page_matches_the_config_structs() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let page = repo.join("docs/pipeline-reference.md");
    let generated = generate(repo);
    if std::env::var_os("SLUICE_BLESS").is_some() {
        std::fs::create_dir_all(page.parent().unwrap()).unwrap();
        std::fs::write(&page, &generated).unwrap();
    }
    let current = std::fs::read_to_string(&page).unwrap_or_default();
    assert!(
        current == generated,
        "docs/pipeline-reference.md is out of date: run SLUICE_BLESS=1 cargo nextest run -E 'test(reference_page)'"
    );
    // Every documented key exists: a file using them all parses.
    for key in [
        "partitions",
        "key-field",
        "max-line-bytes",
        "roll-records",
        "roll-bytes",
    ] {
        assert!(generated.contains(key), "{key}");
    }
}
