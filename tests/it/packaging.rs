//! The Debian package's derived files: packaging/deb/relay.toml and
//! packaging/deb/mailbridge.service are exactly what `mailbridge generate
//! packaging` makes from the shipped relay.toml and unit (so they cannot
//! drift), the packaged config loads and `check` names the missing password,
//! the real binary writes man pages and completions, and Cargo.toml's
//! cargo-deb assets point at the files it writes.
//! (The installed package itself is tested by packaging/test-deb.sh.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use clap_complete::Shell;
use mailbridge::config::Config;
use mailbridge::packaging::{self, PACKAGED_CONFIG_FILE, PACKAGED_SPOOL, PACKAGED_UNIT_FILE};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn read(p: &str) -> String {
    std::fs::read_to_string(repo(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn mailbridge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mailbridge"))
        .args(args)
        .output()
        .unwrap()
}

const REGENERATE: &str =
    "out of date: run `cargo run -- generate packaging packaging/deb` and commit the result";

/// packaging/deb/FILE, asserted to be `want`.
fn committed(file: &str, want: &str) -> String {
    let text = read(&format!("packaging/deb/{file}"));
    assert!(text == want, "packaging/deb/{file} is {REGENERATE}");
    text
}

#[test]
fn packaged_relay_toml_is_the_shipped_one_with_packaged_paths() {
    let want = packaging::packaged_config(&read("relay.toml")).unwrap();
    let committed = committed(PACKAGED_CONFIG_FILE, &want);
    // The only lines that differ are the header (before the shipped file's
    // second line) and the paths.
    let shipped = read("relay.toml");
    let body = shipped.lines().nth(1).unwrap();
    let header_end = committed.find(body).unwrap();
    for line in committed[header_end..]
        .lines()
        .filter(|l| !shipped.lines().any(|s| s == *l))
    {
        assert!(
            line.contains("/etc/mailbridge") || line.contains("/var/lib/mailbridge"),
            "unexpected change: {line}"
        );
    }
}

#[test]
fn packaged_unit_is_the_shipped_one_with_the_packaged_binary() {
    let want = packaging::packaged_unit(&read("packaging/mailbridge.service")).unwrap();
    let committed = committed(PACKAGED_UNIT_FILE, &want);
    let exec = committed
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .unwrap();
    assert_eq!(
        exec,
        "ExecStart=/usr/bin/mailbridge --config /etc/mailbridge/relay.toml run"
    );
}

#[test]
fn generate_packaging_writes_the_committed_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = mailbridge(&["generate", "packaging", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    for f in [PACKAGED_CONFIG_FILE, PACKAGED_UNIT_FILE] {
        let written = std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert!(
            written == read(&format!("packaging/deb/{f}")),
            "{f} is {REGENERATE}"
        );
    }
}

#[test]
fn packaged_config_loads_and_check_names_the_missing_password() {
    let config = Config::load(&repo("packaging/deb/relay.toml")).unwrap();
    assert_eq!(config.smtp.spool_dir, Path::new(PACKAGED_SPOOL));
    assert!(config
        .accounts
        .iter()
        .all(|a| a.password.secret().is_none()));
    let out = mailbridge(&[
        "-c",
        repo("packaging/deb/relay.toml").to_str().unwrap(),
        "check",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stdout.contains("password: FAILED") && stdout.contains("`password` key"),
        "{stdout}"
    );
}

#[test]
fn generated_man_pages_and_completions_come_from_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let d = |sub: &str| dir.path().join(sub).to_str().unwrap().to_string();
    let out = mailbridge(&["generate", "man", &d("man")]);
    assert!(out.status.success(), "{out:?}");
    let man = std::fs::read_to_string(dir.path().join("man/mailbridge.8")).unwrap();
    assert!(man.contains(".TH mailbridge 8"), "{man}");
    assert!(man.contains("hash\\-password") && man.contains("MAILBRIDGE_CONFIG"));
    assert!(dir.path().join("man/mailbridge-queue-list.8").is_file());
    for shell in ["bash", "zsh", "fish"] {
        let out = mailbridge(&["generate", "completions", shell, &d("completions")]);
        assert!(out.status.success(), "{out:?}");
    }
    // The bash script loads and registers completion for `mailbridge`.
    let bash = dir.path().join("completions/mailbridge");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p mailbridge",
            bash.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("mailbridge"));
    let zsh = std::fs::read_to_string(dir.path().join("completions/_mailbridge")).unwrap();
    assert!(zsh.starts_with("#compdef mailbridge"), "{zsh}");
    let fish = std::fs::read_to_string(dir.path().join("completions/mailbridge.fish")).unwrap();
    assert!(fish.contains("complete -c mailbridge"), "{fish}");
}

#[test]
fn cargo_deb_assets_are_the_generated_and_packaged_files() {
    let manifest: toml::Value = toml::from_str(&read("Cargo.toml")).unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    let assets: Vec<(String, String, String)> = deb["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_array().unwrap();
            let s = |i: usize| a[i].as_str().unwrap().to_string();
            (s(0), s(1), s(2))
        })
        .collect();
    let has = |src: &str, dest: &str, mode: &str| {
        assets
            .iter()
            .any(|(s, d, m)| s == src && d == dest && m == mode)
    };
    assert!(
        has("target/release/mailbridge", "usr/bin/", "755"),
        "{assets:?}"
    );
    assert!(has(
        "packaging/deb/relay.toml",
        "etc/mailbridge/relay.toml",
        "640"
    ));
    assert!(has(
        "target/generated/man/*.8",
        "usr/share/man/man8/",
        "644"
    ));
    for (shell, dest) in [
        (Shell::Bash, "usr/share/bash-completion/completions/"),
        (Shell::Zsh, "usr/share/zsh/vendor-completions/"),
        (Shell::Fish, "usr/share/fish/vendor_completions.d/"),
    ] {
        let name = packaging::completion_file_name(shell);
        let src = format!("target/generated/completions/{name}");
        assert!(
            has(&src, &format!("{dest}{name}"), "644"),
            "{shell}: {assets:?}"
        );
    }
    // Every source outside target/ is in the tree (cargo-deb would fail late).
    for (src, _, _) in assets.iter().filter(|(s, _, _)| !s.starts_with("target/")) {
        assert!(repo(src).is_file(), "{src}");
    }
    assert_eq!(deb["maintainer-scripts"].as_str(), Some("packaging/deb/"));
    for script in ["postinst", "postrm"] {
        assert!(read(&format!("packaging/deb/{script}")).contains("#DEBHELPER#"));
    }
}
