//! Shared test support: a CA made at test time, in-process TLS upstream
//! servers (SMTP, IMAP and POP3), helpers to start the real daemon on port 0, and
//! a log capture.
#![allow(dead_code)]

pub mod ca;
pub mod daemon;
pub mod imap_upstream;
pub mod logs;
pub mod pop3_upstream;
pub mod smtp_upstream;
