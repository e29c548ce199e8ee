// gzip of uplink batches as `encode_batch` makes them: LINES records per batch, each line
// `{"id":"edge-01:1:<seq>","record":<payload>}`, gzipped at LEVEL; RECORDS records in all.
use std::io::{Read, Write};
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let file = &args[1];
    let level: u32 = args[2].parse().unwrap();
    let records: usize = args[3].parse().unwrap();
    let batch: usize = 500;
    let text = std::fs::read_to_string(file).unwrap();
    let payloads: Vec<&str> = text.lines().filter(|l| l.starts_with('{')).collect();
    let (mut raw, mut gz_bytes, mut seq) = (0usize, 0usize, 0usize);
    let mut check = Vec::new();
    while seq < records {
        let mut chunk = Vec::with_capacity(256 * 1024);
        for _ in 0..batch.min(records - seq) {
            let p = payloads[seq % payloads.len()];
            write!(chunk, "{{\"id\":\"edge-01:1:{seq}\",\"record\":{p}}}\n").unwrap();
            seq += 1;
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(chunk.len() / 3 + 64), flate2::Compression::new(level));
        gz.write_all(&chunk).unwrap();
        let body = gz.finish().unwrap();
        raw += chunk.len();
        gz_bytes += body.len();
        if seq == records {
            // The collector's side: inflate the last batch and check it.
            flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut check).unwrap();
            assert_eq!(check, chunk);
        }
    }
    eprintln!("{records} records, {raw} bytes of lines, {gz_bytes} gzipped at level {level}: ratio {:.2}", raw as f64 / gz_bytes as f64);
}
