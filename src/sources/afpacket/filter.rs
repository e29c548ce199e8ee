//! The classic BPF program the kernel runs before a frame takes room in the ring.

use crate::decode::link::ETHERTYPES_CARRYING_IP;

/// A program that takes no frame: a socket *held* while its ring is set up beside another
/// (see `grow`), bound and in its fanout group but receiving nothing.
pub(super) fn drop_all_program() -> Vec<libc::sock_filter> {
    vec![libc::sock_filter {
        code: 0x06, // BPF_RET | BPF_K: return 0 bytes
        jt: 0,
        jf: 0,
        k: 0,
    }]
}

/// Classic BPF: accept the frames whose EtherType at offset 12 (for a tag the kernel
/// stripped, the inner type) is one the decode path finds IP behind
/// ([`ETHERTYPES_CARRYING_IP`]: IPv4, IPv6, VLAN tags, MPLS, PPPoE session), drop the rest.
/// One list for both, so the live capture never drops what a capture file would decode.
pub(super) fn ip_only_program() -> Vec<libc::sock_filter> {
    const LDH_ABS: u16 = 0x28; // BPF_LD | BPF_H | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const TYPES: [u16; ETHERTYPES_CARRYING_IP.len()] = ETHERTYPES_CARRYING_IP;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let mut program = vec![op(LDH_ABS, 0, 0, 12)];
    for (i, ethertype) in TYPES.iter().enumerate() {
        // Jump over the remaining tests and the drop to the accept at the end.
        let to_accept = (TYPES.len() - i) as u8;
        program.push(op(JEQ_K, to_accept, 0, u32::from(*ethertype)));
    }
    program.push(op(RET_K, 0, 0, 0));
    program.push(op(RET_K, 0, 0, u32::MAX));
    program
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ethernet_frame(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0xaa; 6];
        frame.extend([0xbb; 6]);
        frame.extend(ethertype.to_be_bytes());
        frame.extend(payload);
        frame
    }

    /// Runs the classic BPF program on a frame, as far as its instructions go.
    fn bpf_accepts(program: &[libc::sock_filter], frame: &[u8]) -> bool {
        let mut pc = 0;
        let mut a = 0u32;
        loop {
            let i = program[pc];
            match i.code {
                0x28 => match frame.get(i.k as usize..i.k as usize + 2) {
                    Some(b) => a = u32::from(u16::from_be_bytes([b[0], b[1]])),
                    None => return false,
                },
                0x15 => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                0x06 => return i.k != 0,
                other => panic!("unexpected BPF opcode {other:#x}"),
            }
            pc += 1;
        }
    }

    #[test]
    fn ip_only_filter_keeps_ip_vlan_mpls_and_pppoe_frames() {
        let program = ip_only_program();
        for kept in [
            0x0800, 0x86dd, 0x8100, 0x88a8, 0x9100, 0x8847, 0x8848, 0x8864,
        ] {
            assert!(
                bpf_accepts(&program, &ethernet_frame(kept, b"x")),
                "{kept:#x}"
            );
        }
        for dropped in [0x0806, 0x88cc, 0x8863, 0x0000, 0xffff] {
            assert!(
                !bpf_accepts(&program, &ethernet_frame(dropped, b"x")),
                "{dropped:#x}"
            );
        }
        assert!(!bpf_accepts(&program, &[0; 10]));
    }
}
