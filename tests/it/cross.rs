//! `cross/build.sh`: its dispatch, through `--dry-run` (the real cross builds take about 20
//! minutes each here and are not part of the test run). The script itself runs: argument
//! parsing, the choice of packages and targets, the runs under qemu (every bundled capture
//! replayed, for comparison with the host's build), the exit status.

use std::path::Path;
use std::process::Command;

fn script(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("cross/build.sh"))
        .args(args)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    (
        out.status
            .code()
            .expect("cross/build.sh killed by a signal"),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn required(stdout: &str) -> Vec<String> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("requires: "))
        .unwrap_or_else(|| panic!("no requires line in\n{stdout}"));
    line.split_whitespace().map(String::from).collect()
}

fn commands(stdout: &str, program: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("+ "))
        .filter(|l| l.split_whitespace().next() == Some(program))
        .map(String::from)
        .collect()
}

/// The capture files in tests/data/ (the script replays each), as the script names them.
fn bundled_captures() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut out: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".pcap") || n.ends_with(".pcapng"))
        .map(|n| format!("tests/data/{n}"))
        .collect();
    out.sort();
    out
}

#[test]
fn syntax_is_valid() {
    let out = Command::new("bash")
        .arg("-n")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("cross/build.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_bad_argument_is_refused_with_usage_before_anything_runs() {
    for args in [&["bogus"][..], &["--dry-run", "x86"], &["aarch64", "armv7"]] {
        let (code, stdout, stderr) = script(args);
        assert_eq!(code, 2, "{args:?}: {stdout}{stderr}");
        assert!(
            stderr.contains("usage: cross/build.sh"),
            "{args:?}: {stderr}"
        );
        assert_eq!(stdout, "", "{args:?}: nothing may run");
    }
}

#[test]
fn one_target_builds_only_that_target_with_only_its_toolchain_and_exits_zero() {
    for (arch, triple, qemu, packages, other) in [
        (
            "aarch64",
            "aarch64-unknown-linux-gnu",
            "qemu-aarch64",
            ["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"],
            "armv7-unknown-linux-gnueabihf",
        ),
        (
            "armv7",
            "armv7-unknown-linux-gnueabihf",
            "qemu-arm",
            ["gcc-arm-linux-gnueabihf", "libc6-dev-armhf-cross"],
            "aarch64-unknown-linux-gnu",
        ),
    ] {
        let (code, stdout, stderr) = script(&["--dry-run", arch]);
        assert_eq!(code, 0, "{arch}: {stdout}{stderr}");
        let mut want: Vec<String> = packages.iter().map(|p| p.to_string()).collect();
        want.push("qemu-user".into());
        assert_eq!(required(&stdout), want, "{arch}");
        assert_eq!(
            commands(&stdout, "rustup"),
            [format!("rustup target add {triple}")]
        );
        // The host's build (the reference for the replays), then the target's, its final
        // link with rust-lld, identical code folded and packed relocations
        // (cross/edge-link.sh).
        let cargo = commands(&stdout, "cargo");
        assert_eq!(cargo.len(), 2, "{stdout}");
        assert_eq!(cargo[0], "cargo build --locked --bin teledge");
        let (build, link) = cargo[1].split_once(" -- ").unwrap();
        assert_eq!(
            build,
            format!("cargo rustc --locked --profile edge --target {triple} --bin teledge")
        );
        assert!(
            link.contains("/bin/gcc-ld -C link-arg=-fuse-ld=lld "),
            "{link}"
        );
        assert!(
            link.ends_with(" -C link-arg=-Wl,--icf=all -C link-arg=-Wl,-z,pack-relative-relocs"),
            "{link}"
        );
        // --version, a replay of every bundled capture, sensors list, check-config: all under
        // this target's qemu, on its binary.
        let runs = commands(&stdout, qemu);
        assert!(runs
            .iter()
            .all(|r| r.contains(&format!("target/{triple}/edge/teledge"))));
        let captures = bundled_captures();
        assert!(captures.len() >= 10, "{captures:?}");
        let replays: Vec<&String> = runs.iter().filter(|r| r.contains(" replay ")).collect();
        assert_eq!(replays.len(), captures.len(), "{stdout}");
        for capture in &captures {
            assert!(
                replays.iter().any(|r| r.ends_with(&format!(" {capture}"))),
                "{arch}: {capture} is not replayed: {stdout}"
            );
        }
        for other in [
            "--version",
            "sensors list",
            "check-config --config teledge.example.toml",
        ] {
            assert_eq!(
                runs.iter().filter(|r| r.contains(other)).count(),
                1,
                "{arch}: {other}: {stdout}"
            );
        }
        assert_eq!(runs.len(), captures.len() + 3, "{stdout}");
        // The unit tests, built for this target and run under its qemu.
        let runner = triple.to_uppercase().replace('-', "_");
        assert_eq!(
            commands(&stdout, "env"),
            [format!(
                "env CARGO_TARGET_{runner}_RUNNER={qemu} -L {} cargo test --locked --target {triple} --lib -q",
                if arch == "armv7" { "/usr/arm-linux-gnueabihf" } else { "/usr/aarch64-linux-gnu" }
            )],
            "{stdout}"
        );
        assert!(
            !stdout.contains(other),
            "{arch} must not touch {other}: {stdout}"
        );
        // An apt-get line, if any (a missing tool), installs only this target's packages.
        for install in commands(&stdout, "apt-get")
            .iter()
            .filter(|l| l.contains("install"))
        {
            for word in install.split_whitespace().skip(4) {
                assert!(want.iter().any(|w| w == word), "{arch}: {install}");
            }
        }
    }
}

#[test]
fn all_and_no_argument_build_both_targets_and_exit_zero() {
    for args in [&["--dry-run"][..], &["--dry-run", "all"]] {
        let (code, stdout, stderr) = script(args);
        assert_eq!(code, 0, "{args:?}: {stdout}{stderr}");
        let cargo = commands(&stdout, "cargo");
        assert_eq!(cargo.len(), 3, "{stdout}");
        assert_eq!(
            cargo[0], "cargo build --locked --bin teledge",
            "the host's, once"
        );
        assert!(cargo[1].contains("--target aarch64-unknown-linux-gnu"));
        assert!(cargo[2].contains("--target armv7-unknown-linux-gnueabihf"));
        // qemu-user once.
        let required = required(&stdout);
        assert_eq!(required.iter().filter(|p| *p == "qemu-user").count(), 1);
        assert_eq!(required.len(), 5, "{required:?}");
    }
}
