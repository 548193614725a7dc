//! Runs every fuzz target's check without libFuzzer: over the seeds, over the files of
//! `fuzz/corpus/<target>/` and `fuzz/artifacts/<target>/` when they exist (what `cargo fuzz`
//! found), and over `ITERATIONS` inputs mutated from the seeds by a seeded generator.
//!
//! Usage: `smoke [ITERATIONS] [SEED]` (defaults: 100000, 1). A failing input is printed in hex
//! and the process exits with status 1. `smoke --write-seeds` writes the seeds to
//! `fuzz/corpus/<target>/` (a starting corpus for `cargo fuzz run`) and exits.

use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::time::Instant;

use fdloop_fuzz::{mutate, seeds, Check, Rng, TARGETS};

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

fn run_one(target: &str, check: Check, data: &[u8], origin: &str) {
    if panic::catch_unwind(AssertUnwindSafe(|| check(data))).is_err() {
        eprintln!(
            "{target}: failing input ({origin}, {} bytes): {}",
            data.len(),
            hex(data)
        );
        std::process::exit(1);
    }
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| {
            Some((
                e.path().display().to_string(),
                std::fs::read(e.path()).ok()?,
            ))
        })
        .collect();
    out.sort();
    out
}

fn write_seeds(root: &Path) {
    for (target, _) in TARGETS {
        let dir = root.join("corpus").join(target);
        std::fs::create_dir_all(&dir).expect("create the corpus directory");
        for (i, s) in seeds(target).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), s).expect("write a seed");
        }
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--write-seeds") {
        write_seeds(root);
        return;
    }
    let iterations: usize = args
        .next()
        .map(|a| a.parse().expect("ITERATIONS must be a number"))
        .unwrap_or(100_000);
    let seed: u64 = args
        .next()
        .map(|a| a.parse().expect("SEED must be a number"))
        .unwrap_or(1);
    for (target, check) in TARGETS {
        let start = Instant::now();
        let seeds = seeds(target);
        for (i, s) in seeds.iter().enumerate() {
            run_one(target, check, s, &format!("seed {i}"));
        }
        let mut saved = 0;
        for sub in ["corpus", "artifacts"] {
            for (path, data) in files(&root.join(sub).join(target)) {
                run_one(target, check, &data, &path);
                saved += 1;
            }
        }
        let mut rng = Rng::new(seed);
        let mut bytes = 0usize;
        for i in 0..iterations {
            let data = mutate(&mut rng, &seeds);
            bytes += data.len();
            run_one(target, check, &data, &format!("seed {seed}, iteration {i}"));
        }
        println!(
            "{target}: {} seeds, {saved} saved inputs, {iterations} generated inputs \
             ({bytes} bytes) in {:.2} s: ok",
            seeds.len(),
            start.elapsed().as_secs_f64()
        );
    }
}
