//! Config fixtures in `assets/configs`: every valid file loads and validates;
//! every invalid one is refused with a message naming the key given on its
//! first line (`# expect: KEY`).

use dml_shared::config::{Config, Preset};
use std::path::{Path, PathBuf};

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/configs")
}

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

/// The key named by the fixture's first line, `# expect: KEY`.
fn expected_key(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let first = text.lines().next().unwrap_or_default();
    first
        .strip_prefix("# expect:")
        .map(|k| k.trim().to_string())
        .unwrap_or_else(|| panic!("{}: first line must be `# expect: KEY`", path.display()))
}

#[test]
fn every_valid_fixture_loads_and_validates() {
    for path in toml_files(&configs_dir().join("valid")) {
        let c = Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        c.validate().unwrap();
    }
}

#[test]
fn every_invalid_fixture_is_refused_naming_its_key() {
    let files = toml_files(&configs_dir().join("invalid"));
    assert!(files.len() >= 20, "only {} invalid fixtures", files.len());
    for path in files {
        let key = expected_key(&path);
        let err = match Config::load(&path) {
            Ok(c) => panic!("{} loaded but should fail on {key}: {c:?}", path.display()),
            // The file name must not be what satisfies the check.
            Err(e) => e.to_string().replace(&path.display().to_string(), "<file>"),
        };
        assert!(
            err.contains(&key),
            "{}: error does not name \"{key}\": {err}",
            path.display()
        );
        // Validation errors (dotted keys or top-level addresses) quote key and value.
        if key.contains('.') {
            assert!(
                err.contains(&format!("key \"{key}\" = \"")),
                "{}: {err}",
                path.display()
            );
        }
    }
}

#[test]
fn an_unknown_key_is_an_error_not_ignored() {
    let path = configs_dir().join("invalid/unknown-membership-key.toml");
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(err.contains("pingg_interval"), "{err}");
    assert!(
        err.contains("unknown-membership-key.toml"),
        "names the file: {err}"
    );
}

#[test]
fn example_configs_load_and_match_their_preset_exactly() {
    for (name, preset) in [
        ("local", Preset::Local),
        ("lan", Preset::Lan),
        ("wan", Preset::Wan),
    ] {
        let path = configs_dir().join(format!("{name}.toml"));
        let c = Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(c.preset, preset);
        let defaults = Config::preset(preset);
        assert_eq!(
            c.membership, defaults.membership,
            "{name}.toml [membership]"
        );
        assert_eq!(c.api, defaults.api, "{name}.toml [api]");
        assert!(!c.introducers.is_empty(), "{name}.toml names introducers");
    }
}

#[test]
fn overrides_keep_the_other_preset_values() {
    let c = Config::load(&configs_dir().join("valid/overrides.toml")).unwrap();
    let local = Config::preset(Preset::Local);
    assert_eq!(c.membership.m, 4);
    assert_eq!(c.membership.ping_timeout.as_millis(), 100);
    assert_eq!(c.membership.suspicion_min, local.membership.suspicion_min);
    assert_eq!(c.introducers.len(), 2);
    assert_eq!(c.api.handshake_timeout.as_secs(), 5);
    assert_eq!(c.api.max_connections, local.api.max_connections);
    assert_eq!(c.control.maintenance_period.as_millis(), 500);
    assert_eq!(c.control.rpc_timeout, local.control.rpc_timeout);
    assert_eq!(c.inference.fetch_timeout.as_secs(), 30);
    assert_eq!(c.inference.lease_timeout, local.inference.lease_timeout);
    let empty = Config::load(&configs_dir().join("valid/empty.toml")).unwrap();
    assert_eq!(empty, Config::preset(Preset::Lan));
}
