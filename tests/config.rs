//! Config fixtures: every valid file loads; every invalid one is refused with the file, the line
//! and the key its `# expect: LINE KEY WORDS...` comment names.

use crbroker::config::Config;
use std::path::Path;

fn fixtures(kind: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/config_fixtures")
        .join(kind);
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty());
    files
}

#[test]
fn valid_fixtures_load() {
    for path in fixtures("valid") {
        Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

#[test]
fn repository_config_toml_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let config = Config::load(&path).unwrap();
    assert_eq!(config.domain(), "example.net");
}

#[test]
fn invalid_fixtures_name_file_line_and_key() {
    for path in fixtures("invalid") {
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no expect line", path.display()));
        let mut words = expect.split_whitespace();
        let line: usize = words.next().unwrap().parse().unwrap();
        let key = words.next().unwrap();
        let message_words: Vec<&str> = words.collect();
        let err = match Config::load(&path) {
            Ok(_) => panic!("{} loaded but should not", path.display()),
            Err(e) => e,
        };
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!("{}:{line}: {key}: ", path.display())),
            "{shown}"
        );
        for word in message_words {
            assert!(shown.contains(word), "{shown} lacks {word:?}");
        }
        assert_eq!(shown.lines().count(), 1, "one line: {shown}");
    }
}
