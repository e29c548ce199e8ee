//! The code start-up and idle run, placed together at link time (`build.rs`,
//! `link/script.rs`, `link/hot-text.txt`, `scripts/hot-text.sh`). The release build itself is
//! not made here (tests build the dev profile, where build.rs adds nothing); instead a small
//! C program is linked by the host's real `cc` with the script `link/script.rs` makes, and
//! `scripts/hot-text.sh` turns exact names into patterns and counts what the link placed.

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "../../link/script.rs"]
mod script;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn hot_text(args: &[&str], list: Option<&Path>) -> String {
    let mut cmd = Command::new("bash");
    cmd.arg(root().join("scripts/hot-text.sh")).args(args);
    if let Some(list) = list {
        cmd.env("LIST", list);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_list_drops_what_differs_between_builds() {
    let dir = tempfile::tempdir().unwrap();
    let order = dir.path().join("order.txt");
    std::fs::write(
        &order,
        "_ZN7teledge6daemon3run17h0123456789abcdefE\n\
         _ZN7teledge6daemon3run17hfedcba9876543210E.llvm.123\n\
         _RNvMs3_NtCslNYArtu3iFV_5alloc7raw_vecINtB5_6RawVechE8grow_oneB7_\n\
         _RNvMs3_NtCsAb_5alloc7raw_vecINtB5_6RawVechE8grow_oneB6_.llvm.99\n\
         ring_core_0_17_14__LIMB_is_zero\n",
    )
    .unwrap();
    let list = hot_text(&["list", order.to_str().unwrap()], None);
    let patterns: Vec<&str> = list.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        patterns,
        [
            "_ZN7teledge6daemon3run17h*E",
            "_RNvMs3_NtCs*_5alloc7raw_vecINtB*_6RawVechE8grow_oneB*_",
            "ring_core_0_17_14__LIMB_is_zero",
        ]
    );
}

#[test]
fn the_committed_list_makes_a_script() {
    let list = std::fs::read_to_string(root().join("link/hot-text.txt")).unwrap();
    let patterns = list.lines().filter(|l| !l.starts_with('#')).count();
    let script = script::linker_script(&list).expect("no script from link/hot-text.txt");
    // Every pattern line became a rule: none was skipped as malformed.
    assert!(patterns > 1000, "{patterns} patterns");
    assert_eq!(script.matches("*(.text.").count(), patterns);
    assert!(script.ends_with("INSERT BEFORE .text;\n"));
    assert_eq!(script::linker_script("# only a comment\n\n"), None);
}

fn cc() -> Option<PathBuf> {
    ["cc", "gcc"].iter().find_map(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| PathBuf::from(c))
    })
}

/// Function addresses in `bin`, by name (nm).
fn address(bin: &Path, name: &str) -> u64 {
    let out = Command::new("nm").arg(bin).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some(name))
        .unwrap_or_else(|| panic!("{name} not in {text}"));
    u64::from_str_radix(line.split_whitespace().next().unwrap(), 16).unwrap()
}

#[test]
fn the_linker_places_the_listed_functions_first_in_their_order() {
    let Some(cc) = cc() else {
        panic!("no C compiler (cc/gcc): the linker test needs the host's linker");
    };
    let dir = tempfile::tempdir().unwrap();
    // Names shaped like v0 symbols (valid C identifiers), another build's disambiguators in
    // the list; one listed name the program lacks (a stale line); `#[cold]`-like placement
    // in `.text.unlikely.` for one of them.
    let c = dir.path().join("p.c");
    std::fs::write(
        &c,
        r#"
int _RNvCsOther1_7teledge4cold(int x) { return x * 3 + 1; }
int _RNvCsBuild22_7teledge5first(int x) { return x + 7; }
int _RNvCsOther2_7teledge5cold2(int x) { return x * 5 + 2; }
__attribute__((cold)) int _RNvCsBuild22_7teledge6second(int x) { return x - 7; }
int main(int argc, char **argv) {
    (void)argv;
    return (_RNvCsBuild22_7teledge6second(argc) + _RNvCsBuild22_7teledge5first(argc)
        + _RNvCsOther1_7teledge4cold(argc) + _RNvCsOther2_7teledge5cold2(argc)) == 0;
}
"#,
    )
    .unwrap();
    let list = dir.path().join("hot-text.txt");
    std::fs::write(
        &list,
        "# test list\n_RNvCs*_7teledge6second\n_RNvCs*_7teledge9vanished\n_RNvCs*_7teledge5first\n",
    )
    .unwrap();
    let script = dir.path().join("hot-text.ld");
    std::fs::write(
        &script,
        script::linker_script(&std::fs::read_to_string(&list).unwrap()).unwrap(),
    )
    .unwrap();
    let bin = dir.path().join("p");
    let out = Command::new(cc)
        .args(["-O0", "-ffunction-sections", "-Wl,--gc-sections"])
        .arg(format!("-Wl,-T,{}", script.display()))
        .arg(&c)
        .arg("-o")
        .arg(&bin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(Command::new(&bin).status().unwrap().success());
    let second = address(&bin, "_RNvCsBuild22_7teledge6second");
    let first = address(&bin, "_RNvCsBuild22_7teledge5first");
    let cold = address(&bin, "_RNvCsOther1_7teledge4cold");
    let cold2 = address(&bin, "_RNvCsOther2_7teledge5cold2");
    // The list's order, ahead of everything not listed.
    assert!(second < first, "{second:x} {first:x}");
    assert!(
        first < cold && first < cold2,
        "{first:x} {cold:x} {cold2:x}"
    );
    let report = hot_text(&["check", bin.to_str().unwrap()], Some(&list));
    assert!(
        report.starts_with("hot text: 2 of 3 listed functions found and placed first (2 symbols,"),
        "{report}"
    );
}
