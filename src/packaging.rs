//! What the Debian package ships that is derived from this code base, so it
//! cannot drift from it: the man page and shell completions (from the clap
//! definition in [`crate::cli`]), and the packaged relay.toml and systemd
//! unit (the shipped ones with the packaged paths). `mailbridge generate`
//! writes them; `packaging/build-deb.sh` runs it before `cargo deb`.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Subcommand};
use clap_complete::Shell;

use crate::cli::Cli;

/// The shipped, commented configuration and the from-source unit.
const SHIPPED_CONFIG: &str = include_str!("../relay.toml");
const SHIPPED_UNIT: &str = include_str!("../packaging/mailbridge.service");

/// File names `generate packaging` writes (the package's copies live in
/// packaging/deb/, where cargo-deb takes them from).
pub const PACKAGED_CONFIG_FILE: &str = "relay.toml";
pub const PACKAGED_UNIT_FILE: &str = "mailbridge.service";

/// Where the package puts the binary, the configuration and the spool.
pub const PACKAGED_BINARY: &str = "/usr/bin/mailbridge";
pub const PACKAGED_CONFIG: &str = "/etc/mailbridge/relay.toml";
pub const PACKAGED_SPOOL: &str = "/var/lib/mailbridge/spool";

/// Lines of the shipped relay.toml the packaged one changes: the header and
/// every path (relative paths would resolve against the read-only /etc).
const CONFIG_EDITS: [(&str, &str); 5] = [
    (
        "# mailbridge configuration.\n",
        "# mailbridge configuration, installed by the Debian package.\n\
         # Put the account's app password below (`password = ...` under [[accounts]]),\n\
         # then: systemctl enable --now mailbridge\n\
         # This file stays readable by the mailbridge group only (0640 root:mailbridge).\n",
    ),
    (
        "# tls_cert = \"certs/localhost.pem\"\n",
        "# tls_cert = \"/etc/mailbridge/certs/localhost.pem\"\n",
    ),
    (
        "# tls_key = \"certs/localhost.key\"\n",
        "# tls_key = \"/etc/mailbridge/certs/localhost.key\"\n",
    ),
    (
        "spool_dir = \"spool\"\n",
        "spool_dir = \"/var/lib/mailbridge/spool\"\n",
    ),
    (
        "# ca_file = \"certs/upstream-ca.pem\"",
        "# ca_file = \"/etc/mailbridge/certs/upstream-ca.pem\"",
    ),
];

/// The packaged unit's header, in place of the from-source install notes.
const UNIT_HEADER: &str = "\
# systemd unit for mailbridge, installed by the Debian package.
# The package creates the mailbridge user, /etc/mailbridge/relay.toml
# (0640 root:mailbridge) and /var/lib/mailbridge/spool (0700 mailbridge).
# Put the app password in /etc/mailbridge/relay.toml, then:
#   systemctl enable --now mailbridge
# Reload after editing relay.toml:  systemctl reload mailbridge
# Queue admin:  sudo -u mailbridge mailbridge -c /etc/mailbridge/relay.toml queue list
";
const UNIT_EDITS: [(&str, &str); 1] = [(
    "ExecStart=/usr/local/bin/mailbridge ",
    "ExecStart=/usr/bin/mailbridge ",
)];

#[derive(Debug, thiserror::Error)]
pub enum PackagingError {
    /// A line the packaged file rewrites is gone from the shipped one.
    #[error("{file} no longer contains {line:?}: update the edits in src/packaging.rs")]
    Drift {
        file: &'static str,
        line: &'static str,
    },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// `mailbridge generate ...` (hidden: for packagers, not admins).
#[derive(Subcommand, Debug, Clone)]
pub enum GenerateCommand {
    /// Write the man pages mailbridge.8 and mailbridge-COMMAND.8 into DIR.
    Man { dir: PathBuf },
    /// Write the completion script for SHELL into DIR.
    Completions { shell: Shell, dir: PathBuf },
    /// Write the packaged relay.toml and mailbridge.service into DIR.
    Packaging { dir: PathBuf },
}

/// Applies `edits` to `text`; every one must match exactly once.
fn apply(
    file: &'static str,
    text: &str,
    edits: &[(&'static str, &'static str)],
) -> Result<String, PackagingError> {
    let mut out = text.to_string();
    for (from, to) in edits {
        if out.matches(from).count() != 1 {
            return Err(PackagingError::Drift { file, line: from });
        }
        out = out.replacen(from, to, 1);
    }
    Ok(out)
}

/// The packaged relay.toml: `shipped` with the packaged paths.
pub fn packaged_config(shipped: &str) -> Result<String, PackagingError> {
    apply("relay.toml", shipped, &CONFIG_EDITS)
}

/// The packaged unit: `shipped` with ExecStart in /usr/bin and the
/// package's notes instead of the from-source install steps.
pub fn packaged_unit(shipped: &str) -> Result<String, PackagingError> {
    const FILE: &str = "packaging/mailbridge.service";
    let body = shipped.find("\n[Unit]\n").ok_or(PackagingError::Drift {
        file: FILE,
        line: "[Unit]",
    })?;
    let text = format!("{UNIT_HEADER}{}", &shipped[body..]);
    apply(FILE, &text, &UNIT_EDITS)
}

/// The packaged relay.toml and unit from the files in this source tree.
pub fn packaged_files() -> Result<[(&'static str, String); 2], PackagingError> {
    Ok([
        (PACKAGED_CONFIG_FILE, packaged_config(SHIPPED_CONFIG)?),
        (PACKAGED_UNIT_FILE, packaged_unit(SHIPPED_UNIT)?),
    ])
}

/// Where the package keeps things, for the man page (the one part of it
/// not taken from the clap definition).
const MAN_FILES: &str = "\
.SH FILES
.TP
\\fI/etc/mailbridge/relay.toml\\fR
The configuration (accounts, listeners, delivery); holds the app password, so
mode 0640, owner root, group mailbridge. \\fBsystemctl reload mailbridge\\fR
applies changes.
.TP
\\fI/var/lib/mailbridge/spool\\fR
Accepted mail waiting for delivery, and failed/ (mode 0700, owner mailbridge).
Inspect it with \\fBsudo \\-u mailbridge mailbridge \\-c /etc/mailbridge/relay.toml queue list\\fR.
.SH ENVIRONMENT
.TP
\\fBMAILBRIDGE_CONFIG\\fR
The configuration file when \\fB\\-\\-config\\fR is not given.
.TP
\\fBRUST_LOG\\fR
Log filter, e.g. \\fBmailbridge=debug\\fR (default: info).
";

/// `page` with [`MAN_FILES`] before its VERSION section (or at the end).
fn with_files_section(page: Vec<u8>) -> Vec<u8> {
    let text = String::from_utf8_lossy(&page);
    let at = text.find(".SH VERSION").unwrap_or(text.len());
    format!("{}{MAN_FILES}{}", &text[..at], &text[at..]).into_bytes()
}

/// mailbridge(8) and one page per command (mailbridge-queue-list(8), ...),
/// rendered from the clap definition: (file name, roff).
pub fn man_pages() -> Vec<(String, Vec<u8>)> {
    fn walk(cmd: clap::Command, pages: &mut Vec<(String, Vec<u8>)>) {
        let subs: Vec<clap::Command> = cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .cloned()
            .collect();
        let top = pages.is_empty();
        let man = clap_mangen::Man::new(cmd)
            .section("8")
            .source(concat!("mailbridge ", env!("CARGO_PKG_VERSION")))
            .manual("System Administration");
        // Rendering into a Vec cannot fail.
        let mut out = Vec::new();
        let _ = man.render(&mut out);
        if top {
            out = with_files_section(out);
        }
        pages.push((man.get_filename(), out));
        for sub in subs {
            walk(sub, pages);
        }
    }
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    walk(cmd, &mut pages);
    pages
}

/// The file name a completion script for `shell` gets under Debian's paths
/// (bash-completion, zsh vendor-completions, fish vendor_completions.d).
pub fn completion_file_name(shell: Shell) -> String {
    match shell {
        Shell::Bash => "mailbridge".into(),
        Shell::Zsh => "_mailbridge".into(),
        Shell::Fish => "mailbridge.fish".into(),
        other => format!("mailbridge.{other}"),
    }
}

/// The completion script for `shell`, from the clap definition.
pub fn completion(shell: Shell) -> Vec<u8> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "mailbridge", &mut out);
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, PackagingError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackagingError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let path = dir.join(name);
    std::fs::write(&path, bytes).map_err(io_err(&path))?;
    Ok(path)
}

/// Writes what `command` asks for; returns the files written.
pub fn generate(command: &GenerateCommand) -> Result<Vec<PathBuf>, PackagingError> {
    match command {
        GenerateCommand::Man { dir } => man_pages()
            .iter()
            .map(|(name, roff)| write(dir, name, roff))
            .collect(),
        GenerateCommand::Completions { shell, dir } => Ok(vec![write(
            dir,
            &completion_file_name(*shell),
            &completion(*shell),
        )?]),
        GenerateCommand::Packaging { dir } => packaged_files()?
            .iter()
            .map(|(name, text)| write(dir, name, text.as_bytes()))
            .collect(),
    }
}

/// `mailbridge generate ...`: prints each file written.
pub fn command(command: &GenerateCommand) -> ExitCode {
    match generate(command) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mailbridge: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packaged_config_has_only_absolute_paths() {
        let text = packaged_config(SHIPPED_CONFIG).unwrap();
        assert!(text.contains(&format!("spool_dir = \"{PACKAGED_SPOOL}\"\n")));
        for line in text.lines() {
            assert!(!line.contains("\"certs/"), "relative path left: {line}");
        }
        // Everything else is the shipped file, line for line.
        let shipped: Vec<&str> = SHIPPED_CONFIG.lines().collect();
        let packaged: Vec<&str> = text.lines().collect();
        let changed = packaged.iter().filter(|l| !shipped.contains(l)).count();
        assert_eq!(changed, 4 + 4, "{text}");
    }

    #[test]
    fn a_renamed_line_is_drift_not_a_silent_copy() {
        let shipped = SHIPPED_CONFIG.replace("spool_dir = \"spool\"", "spool_dir = \"queue\"");
        let e = packaged_config(&shipped).unwrap_err();
        assert!(e.to_string().contains("spool_dir"), "{e}");
        let e = packaged_unit("ExecStart=/usr/local/bin/mailbridge run\n").unwrap_err();
        assert!(e.to_string().contains("[Unit]"), "{e}");
    }

    #[test]
    fn packaged_unit_runs_the_packaged_binary() {
        let text = packaged_unit(SHIPPED_UNIT).unwrap();
        assert!(text.contains(&format!(
            "ExecStart={PACKAGED_BINARY} --config {PACKAGED_CONFIG} run\n"
        )));
        assert!(!text.contains("/usr/local"), "{text}");
        assert!(text.starts_with(UNIT_HEADER));
        assert!(
            text.contains("\nUser=mailbridge\n") && text.contains("\nStateDirectory=mailbridge\n")
        );
    }

    #[test]
    fn man_pages_and_completions_know_every_command() {
        let pages = man_pages();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[0], "mailbridge.8");
        for want in [
            "mailbridge-check.8",
            "mailbridge-queue.8",
            "mailbridge-queue-hold.8",
        ] {
            assert!(names.contains(&want), "{names:?}");
        }
        assert!(!names
            .iter()
            .any(|n| n.contains("generate") || n.contains("help")));
        let man = String::from_utf8(pages[0].1.clone()).unwrap();
        assert!(man.contains(".TH mailbridge 8"), "{man}");
        assert!(man.contains("/etc/mailbridge/relay.toml") && man.contains("MAILBRIDGE_CONFIG"));
        // Every page the top page refers to exists.
        for line in man.lines().filter(|l| l.starts_with("mailbridge\\-")) {
            let file = line.replace("\\-", "-").replace("(8)", ".8");
            assert!(
                names.contains(&file.as_str()),
                "{line} -> {file}: {names:?}"
            );
        }
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = String::from_utf8(completion(shell)).unwrap();
            for word in ["queue", "hash-password", "init", "check", "config"] {
                assert!(script.contains(word), "{shell}: {word}");
            }
        }
        assert!(
            !man.contains("generate"),
            "the hidden command is not documented"
        );
    }
}
