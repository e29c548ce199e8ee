#!/bin/sh
# Records tests/data/sip_loopback_sll.pcap: real SIP calls between two SIPp instances on
# loopback, captured with `dumpcap -i any` as `tcpdump -i any` would — Linux cooked capture v1
# frames of hardware type 772 (ARPHRD_LOOPBACK), the case issue 11 item 4 is about.
#
# It runs in a fresh network namespace, so loopback is the only interface and no other
# traffic of the host is captured. Needs root, dumpcap (tshark) and sipp (sip-tester).
# Usage: sudo sh tests/tshark/record_sll_loopback.sh   (writes into a temporary directory,
# prints the path of the capture)
set -e
if [ "$1" != "--in-namespace" ]; then
    exec unshare -n sh "$0" --in-namespace
fi
work=$(mktemp -d)
cd "$work"
# SIPp's uac_pcap scenario plays pcap/g711a.pcap and pcap/dtmf_2833_1.pcap from its cwd.
mkdir pcap && cp /usr/share/sip-tester/*.pcap pcap/
ip link set lo up
dumpcap -q -i any -P -w sip_loopback_sll.pcap \
    -f "portrange 45060-45070 or portrange 16000-16100 or portrange 6000-6100" 2>/dev/null &
DC=$!
sleep 2
sipp -sn uas -i 127.0.0.1 -p 45060 -nostdin >uas.log 2>&1 &
UAS=$!
sipp -sn uas -t t1 -i 127.0.0.1 -p 45064 -nostdin >uas_tcp.log 2>&1 &
UAS_TCP=$!
sleep 0.5
# One call over UDP with RTP (SIPp's G.711 A-law sample and RFC 4733 events), one over TCP.
sipp -sn uac_pcap 127.0.0.1:45060 -i 127.0.0.1 -p 45062 -m 1 -mp 16000 -nostdin >uac_pcap.log 2>&1
sipp -sn uac -t t1 127.0.0.1:45064 -i 127.0.0.1 -p 45066 -m 1 -d 1000 -nostdin >uac_tcp.log 2>&1
sleep 1
kill $UAS $UAS_TCP
sleep 1
kill $DC
wait $DC || true
echo "$work/sip_loopback_sll.pcap"
