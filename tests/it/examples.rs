//! Every example config in examples/ parses and validates, so the docs stay true.

use lambdaml::job::JobConfig;

#[test]
fn every_example_config_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let cfg = JobConfig::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
            cfg.validate()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 5, "only {seen} example configs found");
}
