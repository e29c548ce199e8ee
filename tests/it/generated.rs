//! A generated capture of many calls (the benchmark's generator, small) against TShark run
//! here on the same file: every SIP message TShark decodes, teledge decodes, and the outcomes
//! are the ones the generator wrote.

use std::process::Command;

use teledge::record::Outcome;

use crate::support::replay_bytes;

#[test]
fn generated_capture_matches_tshark() {
    let dir = std::env::temp_dir().join(format!("teledge-gen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("calls.pcap");
    let status = Command::new(crate::support::tool("teledge-gencap"))
        .args(["--calls", "120", "--rtp", "5", "--out"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());

    let tshark = Command::new("tshark")
        .args(["-r"])
        .arg(&path)
        .args([
            "-Y",
            "sip",
            "-T",
            "fields",
            "-E",
            "occurrence=a",
            "-e",
            "sip.Call-ID",
        ])
        .output()
        .expect("tshark is required: run ./scripts/test.sh, which installs it");
    assert!(tshark.status.success());
    let tshark_messages: usize = String::from_utf8(tshark.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split(',').count())
        .sum();

    let (calls, summary, result) = replay_bytes(&std::fs::read(&path).unwrap(), Default::default());
    result.unwrap();
    assert_eq!(summary.decode.sip_messages() as usize, tshark_messages);
    assert_eq!(calls.len(), 120);
    // The generator rotates outcomes over six calls: four answered, one cancelled, one busy.
    for call in &calls {
        let n: u32 = call.call_id[4..call.call_id.find('@').unwrap()]
            .parse()
            .unwrap();
        let expected = match n % 6 {
            0..=3 => Outcome::Answered,
            4 => Outcome::Abandoned,
            _ => Outcome::Busy,
        };
        assert_eq!(call.outcome, expected, "{}", call.call_id);
        assert!(call.complete);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
