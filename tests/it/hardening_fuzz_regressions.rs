//! Replays the fuzz harnesses (fuzz/harness/*.rs, the same code libFuzzer
//! drives) on stable over the committed seeds and every input that once
//! broke an invariant (fuzz/regressions/<target>/), plus a deterministic
//! pseudo-random sweep, so CI keeps them fixed without the nightly fuzzer.

#[path = "../../fuzz/harness/imap_prelogin.rs"]
mod imap_prelogin;
#[path = "../../fuzz/harness/pop3_prelogin.rs"]
mod pop3_prelogin;
#[path = "../../fuzz/harness/smtp_session.rs"]
mod smtp_session;

use std::path::Path;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for kind in ["seeds", "regressions"] {
        let Ok(rd) = std::fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        for e in rd.flatten() {
            out.push((
                e.path().display().to_string(),
                std::fs::read(e.path()).unwrap(),
            ));
        }
    }
    assert!(!out.is_empty(), "no seeds for {target}");
    out
}

/// xorshift: reproducible mutations of the seeds without a crate.
fn mutations(seeds: &[(String, Vec<u8>)], n: usize) -> Vec<Vec<u8>> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let alphabet: &[u8] = b"\r\n.\0\xff{}+ \"\\<>:=*AZaz09";
    (0..n)
        .map(|_| {
            let mut v = seeds[(next() as usize) % seeds.len()].1.clone();
            for _ in 0..(next() % 8) {
                let pos = (next() as usize) % (v.len() + 1);
                match next() % 3 {
                    0 => v.insert(pos, alphabet[(next() as usize) % alphabet.len()]),
                    1 if pos < v.len() => {
                        v.remove(pos);
                    }
                    _ => {
                        let b = (next() & 0xff) as u8;
                        v.insert(pos, b);
                    }
                }
            }
            v
        })
        .collect()
}

#[test]
fn smtp_session_seeds_regressions_and_mutations() {
    let seeds = inputs("smtp_session");
    for (name, data) in &seeds {
        println!("{name}");
        smtp_session::run(data);
    }
    for m in mutations(&seeds, 5000) {
        smtp_session::run(&m);
    }
}

#[test]
fn imap_prelogin_seeds_regressions_and_mutations() {
    let seeds = inputs("imap_prelogin");
    for (name, data) in &seeds {
        println!("{name}");
        imap_prelogin::run(data);
    }
    for m in mutations(&seeds, 2000) {
        imap_prelogin::run(&m);
    }
}

#[test]
fn pop3_prelogin_seeds_regressions_and_mutations() {
    let seeds = inputs("pop3_prelogin");
    for (name, data) in &seeds {
        println!("{name}");
        pop3_prelogin::run(data);
    }
    for m in mutations(&seeds, 2000) {
        pop3_prelogin::run(&m);
    }
}
