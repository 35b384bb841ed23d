//! The API matches its document (and the release profile limits debug info):
//! `docs/openapi.yaml` is the document the code generates,
//! the document is valid OpenAPI (openapi-spec-validator), and every route, called on a
//! real worker, answers what its schema says (openapi-core; `tests/openapi_check.py`).

use std::path::Path;
use std::process::Command;

use crate::common::{spawn_worker_with_token, venv, worker_api};

#[test]
fn the_committed_document_is_the_generated_one() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.yaml");
    let generated = sluice_runtime::api::openapi::yaml().unwrap();
    if std::env::var_os("SLUICE_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.yaml is not what the code generates: run `SLUICE_BLESS=1 cargo nextest run -E 'test(the_committed_document_is_the_generated_one)'`"
    );
}

#[test]
fn every_route_answers_as_its_schema_says() {
    let python = venv().join("bin/python");
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::create_dir_all(w.join("pipelines")).unwrap();
    let token = "openapi-test-token";
    let mut worker = spawn_worker_with_token(w, token);
    let api = worker_api(w, &mut worker);
    let out = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi_check.py"))
        .arg(&api)
        .arg(token)
        .output()
        .unwrap();
    let _ = worker.kill();
    let _ = worker.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}\nworker log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(w.join("worker-0.log")).unwrap_or_default()
    );
    assert!(stdout.contains(" 0 failure(s)"), "{stdout}");
}

/// The release binary stays small (issue 17: it was 1 GB, 860 MB of it RocksDB's C++ debug
/// info; 286 MB with line tables and symbols; 138 MB now, see README "Measured"): no debug
/// info anywhere (the C/C++ that dependencies build follows the profile's `debug`), no symbol
/// table; `--profile profiling` keeps both for `perf`. A release build takes many minutes
/// here, so this checks the profiles, not the size.
#[test]
fn the_release_profile_ships_without_debug_info_or_symbols() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
        .unwrap();
    let manifest: toml::Table = text.parse().unwrap();
    let release = &manifest["profile"]["release"];
    assert_eq!(release["debug"].as_bool(), Some(false));
    assert_eq!(release["strip"].as_str(), Some("symbols"));
    assert_eq!(release["package"]["*"]["debug"].as_bool(), Some(false));
    let profiling = &manifest["profile"]["profiling"];
    assert_eq!(profiling["inherits"].as_str(), Some("release"));
    assert_eq!(profiling["strip"].as_bool(), Some(false));
}
