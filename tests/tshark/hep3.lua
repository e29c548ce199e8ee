-- Minimal HEPv3 deframer for TShark 4.0 (which has no HEP dissector), used only to produce the
-- reference files: it walks the chunks of a frame and hands the payload (chunk 0x000f, or
-- chunk 0x0010 inflated by Wireshark's own zlib) of SIP frames (type 1) to TShark's SIP
-- dissector. Everything SIP in the reference is TShark's decoding, not ours.
local hep3 = Proto("hep3", "HEPv3 (test deframer)")
local f_type = ProtoField.uint8("hep3.proto_type", "Protocol type")
local f_cid = ProtoField.string("hep3.correlation_id", "Correlation id")
hep3.fields = { f_type, f_cid }

function hep3.dissector(tvb, pinfo, tree)
    if tvb:len() < 6 then return 0 end
    local magic = tvb(0, 4):string()
    if magic ~= "HEP3" and magic ~= "EEP3" then return 0 end
    local total = tvb(4, 2):uint()
    local sub = tree:add(hep3, tvb(0, total))
    local offset = 6
    local proto, payload
    while offset + 6 <= total do
        local vendor = tvb(offset, 2):uint()
        local ctype = tvb(offset + 2, 2):uint()
        local clen = tvb(offset + 4, 2):uint()
        if clen < 6 or offset + clen > total then break end
        local body = clen > 6 and tvb(offset + 6, clen - 6) or nil
        if vendor == 0 and body then
            if ctype == 0x0b then
                proto = body:uint()
                sub:add(f_type, body)
            elseif ctype == 0x11 then
                sub:add(f_cid, body)
            elseif ctype == 0x0f then
                payload = body:tvb()
            elseif ctype == 0x10 and payload == nil then
                local inflated = body:uncompress("HEP payload")
                payload = inflated and inflated:tvb()
            end
        end
        offset = offset + clen
    end
    if proto == 1 and payload then
        Dissector.get("sip"):call(payload, pinfo, tree)
    end
    return total
end

DissectorTable.get("udp.port"):add(9060, hep3)
