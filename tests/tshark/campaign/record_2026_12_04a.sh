#!/bin/sh
# Records the generated captures of the 2026-12-04a campaign (README "How it is checked";
# provenance in 2026-12-04a.tsv): real SIPp 3.6.1 calls, real GStreamer 1.22 RTP/RTCP
# sessions (rtpbin: SR/RR with LSR/DLSR), between two network namespaces joined by a veth
# pair through a third namespace that delays and drops frames (c5/shaper.py), captured with dumpcap on the
# caller's side. Needs root, dumpcap, sipp (sip-tester), gst-launch-1.0 with the base and
# good plugins, iproute2, ethtool, python3.
# The path between them is shaped by c5/shaper.py (no netem in this kernel).
# Usage: sudo sh tests/tshark/campaign/record_2026_12_04a.sh OUTDIR [CAPTURE]  (CAPTURE: only
# that sipp_* capture)
set -e
OUT=$(realpath "${1:?usage: $0 OUTDIR [CAPTURE]}")
ONLY=${2:-}
C5=$(dirname "$(realpath "$0")")/c5
mkdir -p "$OUT"
A=c5a; B=c5b; M=c5m
cleanup() { for n in $A $B $M; do ip netns del $n 2>/dev/null || true; done; }
cleanup
sleep 2 # a namespace's interfaces go some time after it
trap cleanup EXIT
ip netns add $A; ip netns add $B; ip netns add $M
# A -- M -- B: M bridges in user space (c5/shaper.py), delaying and dropping as told.
ip link add va netns $A type veth peer name ma netns $M
ip link add vb netns $B type veth peer name mb netns $M
ip -n $M link set dev lo up; ip -n $M link set dev ma up; ip -n $M link set dev mb up
ip -n $A addr add 10.55.0.1/24 dev va; ip -n $B addr add 10.55.0.2/24 dev vb
ip -n $A -6 addr add fd55::1/64 dev va nodad; ip -n $B -6 addr add fd55::2/64 dev vb nodad
for n in $A $B; do ip -n $n link set dev lo up; done
ip -n $A link set dev va up; ip -n $B link set dev vb up
# No offloads: the frames captured are the ones on the wire (fragments, segments), with
# their checksums computed (the shaper's packet sockets would pass partial ones on).
ip netns exec $A ethtool -K va tx off rx off gro off gso off tso off >/dev/null
ip netns exec $B ethtool -K vb tx off rx off gro off gso off tso off >/dev/null
ip netns exec $M ethtool -K ma tx off rx off gro off gso off tso off >/dev/null
ip netns exec $M ethtool -K mb tx off rx off gro off gso off tso off >/dev/null
sleep 1
inA() { ip netns exec $A "$@"; }
inB() { ip netns exec $B "$@"; }

capture() { # name filter
    ip netns exec $A dumpcap -q -i va -w "$OUT/$1.pcap" -P -f "$2" 2>/dev/null &
    DC=$!
    sleep 1.5
}
stop_capture() { sleep 1; kill $DC; wait $DC 2>/dev/null || true; }

if [ -z "$ONLY" ]; then
# 1. A call whose media is a GStreamer session each way with RTCP, over a shaped path:
#    caller->callee 15 ms; callee->caller 25 ms +-8 ms and 3 % loss.
ip netns exec $M python3 "$C5/shaper.py" ma mb 15 0 0 25 8 0.03 3600 7 &
SH=$!
capture gst_rtcp_netem "udp"
ip netns exec $B sipp -sf "$C5/uas.xml" -i 10.55.0.2 -p 5060 -mi 10.55.0.2 -mp 7000 -m 1 -nostdin >/dev/null 2>&1 &
UAS=$!
sleep 0.5
ip netns exec $A sipp -sf "$C5/uac.xml" 10.55.0.2:5060 -i 10.55.0.1 -p 5060 -mi 10.55.0.1 -mp 7000 -m 1 -d 32000 -nostdin >/dev/null 2>&1 &
UAC=$!
sleep 0.5
ip netns exec $B sh "$C5/gst_end.sh" 10.55.0.2 6000 10.55.0.1 5000 30 >/dev/null 2>&1 &
G1=$!
ip netns exec $A sh "$C5/gst_end.sh" 10.55.0.1 5000 10.55.0.2 6000 30 >/dev/null 2>&1 &
G2=$!
wait $G1 $G2 $UAC || true
stop_capture
kill $SH 2>/dev/null || true
wait $UAS 2>/dev/null || true

fi

# 2. SIP dialog shapes, one call each (SIPp's media port moved off the SDP's), unshaped.
kill $SH 2>/dev/null || true
ip netns exec $M python3 "$C5/shaper.py" ma mb 1 0 0 1 0 0 3600 7 &
SH=$!
sipp_pair() { # capture scenario transport caller-ip callee-ip [uac options]
    cap=$1; name=$2; t=$3; a=$4; b=$5; shift 5
    case "$ONLY" in ""|"$cap") ;; *) return 0;; esac
    capture "$cap" "udp or tcp port 5060 or (ip[6:2] & 0x1fff != 0) or (ip6 and ip6[6] == 44)"
    ip netns exec $B sipp -sf "$C5/uas_$name.xml" -t $t -i $b -p 5060 -mi $b -mp 7000 -m 1 -nostdin >/dev/null 2>&1 &
    S=$!
    sleep 0.5
    case $b in *:*) to="[$b]:5060";; *) to="$b:5060";; esac
    inA timeout 30 sipp -sf "$C5/uac_$name.xml" -t $t "$to" -i $a -p 5060 -mi $a -mp 7000 -m 1 -nostdin "$@" >/dev/null 2>&1 || echo "$cap: sipp uac failed" >&2
    sleep 1
    kill $S 2>/dev/null || true
    stop_capture
}
V4="10.55.0.1 10.55.0.2"; V6="fd55::1 fd55::2"
sipp_pair sipp_fork fork u1 $V4
sipp_pair sipp_cancel_race cancel_race u1 $V4
sipp_pair sipp_cancel_race_tcp cancel_race t1 $V4
sipp_pair sipp_bye_before_ack bye_before_ack u1 $V4
sipp_pair sipp_487_481 487_481 u1 $V4
sipp_pair sipp_compact compact u1 $V4
sipp_pair sipp_compact_tcp compact t1 $V4
sipp_pair sipp_big_udp_fragments big u1 $V4 -d 1000
sipp_pair sipp_big_tcp_segments big t1 $V4 -d 1000
sipp_pair sipp_big_udp_fragments_ipv6 big u1 $V6 -d 1000
sipp_pair sipp_fork_ipv6 fork u1 $V6
sipp_pair sipp_fork_two_answers fork2 u1 $V4
# 3. RTP as SIPp plays it (play_pcap_audio, from the current directory): the shapes of
#    make_rtp_shapes.py from the caller's port 5000; SIPp's g711a.pcap from the callee before
#    and after a re-INVITE that moves the caller's media from port 5000 to 5100.
WORK=$(mktemp -d)
python3 "$C5/make_rtp_shapes.py" "$WORK/rtp_shapes.pcap"
cp /usr/share/sip-tester/g711a.pcap "$WORK/"
cd "$WORK"
sipp_pair sipp_rtp_shapes rtp_shapes u1 $V4 -mp 5000
sipp_pair sipp_reinvite_moves_media reinvite u1 $V4
cd - >/dev/null
rm -r "$WORK"
kill $SH 2>/dev/null || true
ls "$OUT"
