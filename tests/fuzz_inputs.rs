//! The fuzz targets' checks (`entente::fuzzing`) on the inputs kept with the project:
//! the generated seeds, the seed corpus under `fuzz/seeds/`, and every input a fuzz
//! run found failing, kept under `tests/fixtures/fuzz/<target>/` once fixed.
//!
//! `ENTENTE_FUZZ_SEEDS_OUT=fuzz/seeds cargo test --test fuzz_inputs` rewrites the
//! seed corpus from [`entente::fuzzing::seeds`].

use std::path::Path;

fn check(target: &str) -> fn(&[u8]) {
    match target {
        "bundle" => entente::fuzzing::bundle,
        "bundle_log" => entente::fuzzing::bundle_log,
        "ledger" => entente::fuzzing::ledger,
        "page_token" => entente::fuzzing::page_token,
        "stix" => entente::fuzzing::stix,
        "csv" => entente::fuzzing::csv,
        "list" => entente::fuzzing::list,
        "config" => entente::fuzzing::config,
        "taxii_request" => entente::fuzzing::taxii_request,
        "pattern" => entente::fuzzing::pattern,
        other => panic!("no fuzz target {other}"),
    }
}

const TARGETS: [&str; 10] = [
    "bundle",
    "bundle_log",
    "ledger",
    "page_token",
    "stix",
    "csv",
    "list",
    "config",
    "taxii_request",
    "pattern",
];

#[test]
fn generated_seeds_pass_their_checks() {
    let seeds = entente::fuzzing::seeds();
    for target in TARGETS {
        assert!(
            seeds.iter().any(|(t, _, _)| *t == target),
            "no seed for {target}"
        );
    }
    let out = std::env::var_os("ENTENTE_FUZZ_SEEDS_OUT");
    for (target, name, bytes) in &seeds {
        check(target)(bytes);
        if let Some(out) = &out {
            let dir = Path::new(out).join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

/// Runs every file under `root/<target>/` through its target's check; returns how many.
fn replay(root: &Path) -> usize {
    let mut count = 0;
    for target in TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        let mut paths: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for path in paths {
            let bytes = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(target)(&bytes));
            assert!(outcome.is_ok(), "{} fails its check", path.display());
            count += 1;
        }
    }
    count
}

#[test]
fn the_seed_corpus_passes_its_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    assert!(replay(&root) >= TARGETS.len());
}

#[test]
fn inputs_fuzzing_found_failing_pass_now() {
    replay(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz"));
}
