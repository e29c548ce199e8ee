#!/bin/sh
# One end of a GStreamer RTP session with RTCP (rtpbin): PCMA of a 440 Hz tone, 20 ms packets,
# sent from LOCAL_IP:PORT to REMOTE_IP:RPORT (RTCP from PORT+1 to RPORT+1, symmetric), and
# the other end's RTP/RTCP received on the same ports (so its RRs carry LSR/DLSR). The senders
# bind the wildcard address and the receivers LOCAL_IP: Linux gives an arriving datagram to
# the socket bound to its address, so the receivers get them all.
# The receiving branches never end: after SECONDS + 1 it is interrupted, and -e turns that into
# an end of stream (rtpbin then sends its RTCP BYE).
# Usage: gst_end.sh LOCAL_IP PORT REMOTE_IP RPORT SECONDS
exec timeout -s INT -k 3 $(( $5 + 1 )) gst-launch-1.0 -e -q rtpbin name=b \
    audiotestsrc is-live=true wave=sine freq=440 num-buffers=$(( $5 * 50 )) samplesperbuffer=160 \
    ! audio/x-raw,rate=8000,channels=1 ! alawenc ! rtppcmapay pt=8 ! b.send_rtp_sink_0 \
    b.send_rtp_src_0 ! udpsink host=$3 port=$4 bind-address=0.0.0.0 bind-port=$2 sync=false async=false \
    b.send_rtcp_src_0 ! udpsink host=$3 port=$(( $4 + 1 )) bind-address=0.0.0.0 bind-port=$(( $2 + 1 )) sync=false async=false \
    udpsrc address=$1 port=$2 reuse=true caps="application/x-rtp,media=audio,clock-rate=8000,encoding-name=PCMA,payload=8" ! b.recv_rtp_sink_0 \
    b. ! rtppcmadepay ! fakesink \
    udpsrc address=$1 port=$(( $2 + 1 )) reuse=true ! b.recv_rtcp_sink_0
