fn main() {
    for line in std::fs::read_to_string("/tmp/rtcp.hex").unwrap().lines() {
        let h = line.replace(':', "");
        let b: Vec<u8> = (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect();
        println!(
            "{} {:?}",
            b.len(),
            teledge::media::packet::decode_rtcp(&b).map(|s| (
                s.sender_ssrc,
                s.reports.len(),
                s.cname
            ))
        );
        println!("{:02x?}", &b[..b.len().min(80)]);
    }
}
