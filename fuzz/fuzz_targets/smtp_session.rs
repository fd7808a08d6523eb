//! libFuzzer entry for harness/smtp_session.rs (also replayed by
//! tests/hardening_fuzz_regressions.rs on stable).
#![no_main]

#[path = "../harness/smtp_session.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
