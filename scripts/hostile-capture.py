#!/usr/bin/env python3
"""Writes a hostile capture (classic pcap, Ethernet, UDP) for memory and CPU tests of the
correlation's bounds: `python3 scripts/hostile-capture.py SCENARIO N OUT.pcap`.

Scenarios (N messages or flows, 5,000 a second of capture time, seeded: same bytes each run):
invite (INVITEs with SDP under random Call-IDs, a 200-byte User-Agent), invite_nosdp,
invite_small, bigsdp (200 m-lines each), options (random non-INVITE methods, random
Call-IDs), responses (responses to nothing), rtp (random SSRCs to random ports, 6 packets
each), samessrc (one SSRC from ever new addresses, 3 packets each), rtcp (RTCP to random
ports), vias (600 Via and Record-Route lines an INVITE).

Peak RSS: `/usr/bin/time -f %M target/release/teledge replay --no-progress OUT.pcap`; all
three floods at once: `mergecap -F pcap -w all.pcap invite.pcap rtp.pcap options.pcap`
(they share one start time). The README's threat-model section has the 2026-12-03 readings
(before and after the media state's byte bound, alternating in one run).
"""
import struct, random, sys
random.seed(1)
def ip_csum(h):
    s=sum(struct.unpack('!10H',h)); s=(s>>16)+(s&0xffff); s+=s>>16; return (~s)&0xffff
def udp_frame(src,sport,dst,dport,payload):
    udp=struct.pack('!HHHH',sport,dport,8+len(payload),0)+payload
    h=struct.pack('!BBHHHBBH4s4s',0x45,0,20+len(udp),0,0,64,17,0,bytes(src),bytes(dst))
    h=h[:10]+struct.pack('!H',ip_csum(h))+h[12:]
    return b'\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x08\x00'+h+udp
class Pcap:
    def __init__(s,path):
        s.f=open(path,'wb'); s.f.write(struct.pack('<IHHiIII',0xa1b2c3d4,2,4,0,0,65535,1))
    def add(s,t_us,frame):
        s.f.write(struct.pack('<IIII',t_us//1000000,t_us%1000000,len(frame),len(frame))+frame)
T0=1767225600*1000000
def rip(): return [10,random.randrange(256),random.randrange(256),random.randrange(1,255)]
def sdp(ip,port,mlines=1):
    ipt='.'.join(map(str,ip))
    s=f"v=0\r\no=- 1 1 IN IP4 {ipt}\r\ns=-\r\nc=IN IP4 {ipt}\r\nt=0 0\r\n"
    for k in range(mlines):
        s+=f"m=audio {port+2*k} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    return s
scen=sys.argv[1]; n=int(sys.argv[2]); out=sys.argv[3]
p=Pcap(out)
pbx=[192,0,2,10]
for i in range(n):
    t=T0+i*200  # 5000/s
    src=rip(); cid=f"{random.getrandbits(64):x}@x"
    if scen=='invite':
        body=sdp(src,10000+2*(i%20000))
        m=f"INVITE sip:{i}@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK{i}\r\nFrom: <sip:{random.getrandbits(40)}@x>;tag={i}\r\nTo: <sip:1@y>\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\nUser-Agent: {'A'*200}\r\nContent-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}"
        p.add(t,udp_frame(src,5060,pbx,5060,m.encode()))
    elif scen=='invite_nosdp':
        m=f"INVITE sip:{i}@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK{i}\r\nFrom: <sip:{random.getrandbits(40)}@x>;tag={i}\r\nTo: <sip:1@y>\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\nUser-Agent: {'A'*200}\r\nContent-Length: 0\r\n\r\n"
        p.add(t,udp_frame(src,5060,pbx,5060,m.encode()))
    elif scen=='invite_small':
        m=f"INVITE sip:1@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK{i}\r\nFrom: <sip:1@x>;tag={i}\r\nTo: <sip:1@y>\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        p.add(t,udp_frame(src,5060,pbx,5060,m.encode()))
    elif scen=='bigsdp':
        body=sdp(src,10000,200)
        m=f"INVITE sip:{i}@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK{i}\r\nFrom: <sip:{random.getrandbits(40)}@x>;tag={i}\r\nTo: <sip:1@y>\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}"
        p.add(t,udp_frame(src,5060,pbx,5060,m.encode()))
    elif scen=='options':
        meth=random.choice(['OPTIONS','REGISTER','SUBSCRIBE','MESSAGE','NOTIFY','INFO','BYE','UPDATE','PRACK','REFER','PUBLISH'])
        m=f"{meth} sip:{i}@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK{i}\r\nFrom: <sip:{random.getrandbits(40)}@x>;tag={i}\r\nTo: <sip:1@y>;tag=b{i}\r\nCall-ID: {cid}\r\nCSeq: 1 {meth}\r\nContent-Length: 0\r\n\r\n"
        p.add(t,udp_frame(src,5060,pbx,5060,m.encode()))
    elif scen=='responses':
        code=random.choice([100,180,183,200,486,487,401,503])
        m=f"SIP/2.0 {code} X\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK{i}\r\nFrom: <sip:{random.getrandbits(40)}@x>;tag={i}\r\nTo: <sip:1@y>;tag=b{i}\r\nCall-ID: {cid}\r\nCSeq: 1 {random.choice(['INVITE','REGISTER','BYE'])}\r\nContent-Length: 0\r\n\r\n"
        p.add(t,udp_frame(pbx,5060,src,5060,m.encode()))
    elif scen=='rtp':
        # random SSRCs to random ports, 6 packets each (past probation)
        ssrc=random.getrandbits(32); sport=random.randrange(1024,65535)&~1; dport=random.randrange(1024,65535)&~1
        for k in range(6):
            pkt=struct.pack('!BBHII',0x80,0,k,k*160,ssrc)+b'\xff'*160
            p.add(t+k*20,udp_frame(src,sport,pbx,dport,pkt))
    elif scen=='samessrc':
        # one SSRC from ever new addresses, 3 packets each (past probation)
        src2=[10,(i>>16)&255,(i>>8)&255,i&255]
        for k in range(3):
            pkt=struct.pack('!BBHII',0x80,0,k,k*160,0x5555)+b'\xff'*20
            p.add(t+k*100,udp_frame(src2,4000,[10,9,9,9],5000,pkt))
    elif scen=='rtcp':
        ssrc=random.getrandbits(32); sport=random.randrange(1024,65535)|1; dport=random.randrange(1024,65535)|1
        pkt=struct.pack('!BBHI',0x81,201,7,ssrc)+struct.pack('!IIIIII',random.getrandbits(32),0,random.getrandbits(32),0,0,0)
        p.add(t,udp_frame(src,sport,pbx,dport,pkt))
    elif scen=='vias':
        body=''
        vias=''.join(f"Via: SIP/2.0/UDP 10.{k%250}.0.1;branch=z9hG4bK{k}\r\nRecord-Route: <sip:10.{k%250}.0.1;lr>\r\n" for k in range(600))
        m=f"INVITE sip:{i}@192.0.2.10 SIP/2.0\r\n{vias}From: <sip:{random.getrandbits(40)}@x>;tag={i}\r\nTo: <sip:1@y>\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        p.add(t,udp_frame(src,5060,pbx,5060,m.encode()[:65000]))
p.f.close()
