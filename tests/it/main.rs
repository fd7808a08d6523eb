//! The integration tests: one crate, so `tests/it/support` is compiled and
//! the test binary linked once (it was once per file). Each module is one
//! former `tests/<name>.rs`; run one with `cargo test --test it <name>::`.
//!
//! They share one process, so nothing here may change process-wide state
//! that another test sees: log capture goes through the one global
//! subscriber in `support::logs`, umask-sensitive and crash tests run the
//! real binary as a child process (`support::process`), and no test sets
//! environment variables of its own process.
//!
//! To bring in a file written for the old layout (`tests/<name>.rs` with
//! `mod common;`): `git mv` it to `tests/it/<name>.rs`, add `mod <name>;`
//! below, drop its `mod common;`/`mod *_support;` lines and write
//! `crate::support::` for `common::` (`smtp_support` is `support::smtp`,
//! `imap_support` `support::imap`, `pop3_support` `support::pop3`,
//! `delivery_common` `support::delivery`, `hardening_support`
//! `support::process`, with its `Smtp` in `support::smtp` and `poll_until` in
//! `support::wait`).

mod support;

mod cli_check;
mod delivery;
mod delivery_core;
mod delivery_direct;
mod delivery_logs;
mod delivery_logs_escaped;
mod delivery_memory;
mod disconnect_logs;
mod gmail_limits;
mod hardening_crash;
mod hardening_disk;
mod hardening_faults;
mod hardening_files;
mod hardening_fuzz_regressions;
mod hardening_imap_input;
mod hardening_security;
mod hardening_slowloris;
mod hardening_smtp_input;
mod imap_bad_input;
mod imap_legacy_clients;
mod imap_logs;
mod imap_memory;
mod imap_proxy;
mod init_cli;
#[cfg(feature = "legacy-tls")]
mod legacy_tls;
mod lifecycle;
mod local_tls;
mod metrics;
mod notify;
mod oauth2;
mod oauth2_delivery;
mod oauth2_proxy;
mod packaging;
mod pop3_logs;
mod pop3_proxy;
mod queue_cli;
mod queue_hold;
mod sent_copy;
mod smoke;
mod smtp_inbound;
mod smtp_legacy;
mod smtp_legacy_logs;
mod smtp_limits;
mod smtp_secrets;
mod smtp_streaming;
mod spool_reuse;
