//! Shared test support: a CA made at test time, in-process TLS upstream
//! servers (SMTP, IMAP and POP3), the daemon on port 0 (in-process, or the
//! real binary as a child), relay.toml builders, the raw SMTP/IMAP/POP3
//! clients, waiting with a deadline, and a log capture.
#![allow(dead_code)]

pub mod ca;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod imap;
pub mod imap_upstream;
pub mod logs;
pub mod pop3;
pub mod pop3_upstream;
pub mod process;
pub mod smtp;
pub mod smtp_upstream;
pub mod token_endpoint;
pub mod wait;
