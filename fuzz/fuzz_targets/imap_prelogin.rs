//! libFuzzer entry for harness/imap_prelogin.rs (also replayed by
//! tests/hardening_fuzz_regressions.rs on stable).
#![no_main]

#[path = "../harness/imap_prelogin.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
