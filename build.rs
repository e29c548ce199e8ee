//! Link layout of the `teledge` binary (issue 14 goal 5, idle memory; docs/performance.md,
//! "Idle and start-up").
//!
//! Contract: in the release-like profiles (`release`, `bench`, `edge`: cargo's `PROFILE` is
//! `release`), the functions listed in `link/hot-text.txt` (what `teledge run` executes from
//! start to READY=1 and while idle, as hash-free symbol patterns made by
//! `scripts/hot-text.sh list`) are placed first, together, in an output section
//! `.text.start_idle` just before `.text`: a linker script (`SECTIONS … INSERT BEFORE .text`,
//! written to `OUT_DIR`) with one input-section rule per pattern, in the list's order, passed
//! to the `teledge` binary's link only. The kernel maps program text in 64 KiB windows, so
//! gathering the ~4.5 MiB of code start-up and idle run, instead of leaving it scattered over
//! 17 MB, is what keeps the idle daemon's resident text small.
//!
//! The linker does the matching (globs over the `.text.<symbol>` sections that rustc's
//! function sections give every function), so the list needs no build's exact symbol names:
//! a pattern that matches nothing (a stale list, another target's inlining) is ignored and
//! the function stays where the default layout puts it; an empty or missing list adds no
//! script at all. Only the layout changes: the same code, the same symbols, `--gc-sections`
//! and identical code folding as before. GNU ld (bfd) and lld both honour `INSERT`; gold and
//! mold do not, so a `-fuse-ld=gold`/`mold` in the rust flags skips the script, as does
//! `TELEDGE_HOT_TEXT=0` (the default layout, for measuring the difference).

use std::env;
use std::fs;
use std::path::PathBuf;

#[path = "link/script.rs"]
mod script;

const LIST: &str = "link/hot-text.txt";

fn main() {
    println!("cargo:rerun-if-changed={LIST}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link/script.rs");
    println!("cargo:rerun-if-env-changed=TELEDGE_HOT_TEXT");
    if env::var("PROFILE").as_deref() != Ok("release") {
        return;
    }
    if env::var("TELEDGE_HOT_TEXT").as_deref() == Ok("0") {
        return;
    }
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if ["fuse-ld=gold", "fuse-ld=mold", "fuse-ld=wild"]
        .iter()
        .any(|l| flags.contains(l))
    {
        println!("cargo:warning=teledge: {LIST} not applied (the linker chosen in RUSTFLAGS has no INSERT in its linker scripts)");
        return;
    }
    let Ok(list) = fs::read_to_string(LIST) else {
        println!("cargo:warning=teledge: no {LIST}: the default text layout");
        return;
    };
    let Some(out_dir) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        return;
    };
    let Some(script) = script::linker_script(&list) else {
        return;
    };
    let path = out_dir.join("hot-text.ld");
    if let Err(e) = fs::write(&path, script) {
        println!(
            "cargo:warning=teledge: cannot write {}: {e}; the default text layout",
            path.display()
        );
        return;
    }
    println!("cargo:rustc-link-arg-bin=teledge=-Wl,-T,{}", path.display());
}
