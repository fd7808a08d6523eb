//! libFuzzer entry for harness/pop3_prelogin.rs (also replayed by
//! tests/hardening_fuzz_regressions.rs on stable).
#![no_main]

#[path = "../harness/pop3_prelogin.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
