//! The output-order check both backends' suites run: a program alternating writes to stdout and
//! stderr, small and large, whose output must come back in the order it was written.

#![allow(dead_code)]

use compilerd::sandbox::{Chunk, StreamKind};

/// 200 alternating lines, then a Go-like mix: a large stdout write, a small stderr line, a large
/// stderr write, a small stdout line (each `dd` is one write() of its whole block).
pub const ORDER_PROGRAM: &str = "for i in $(seq 100); do echo o$i; echo e$i >&2; done
dd if=/dev/zero bs=20000 count=1 2>/dev/null
echo small >&2
{ dd if=/dev/zero bs=30000 count=1 2>/dev/null; } >&2
echo tail
";

/// Runs of one stream, merged, in order.
fn runs(pieces: impl IntoIterator<Item = (StreamKind, Vec<u8>)>) -> Vec<(StreamKind, Vec<u8>)> {
    let mut out: Vec<(StreamKind, Vec<u8>)> = Vec::new();
    for (kind, data) in pieces {
        match out.last_mut() {
            Some((k, d)) if *k == kind => d.extend_from_slice(&data),
            _ => out.push((kind, data)),
        }
    }
    out
}

fn expected() -> Vec<(StreamKind, Vec<u8>)> {
    let mut pieces = Vec::new();
    for i in 1..=100 {
        pieces.push((StreamKind::Stdout, format!("o{i}\n").into_bytes()));
        pieces.push((StreamKind::Stderr, format!("e{i}\n").into_bytes()));
    }
    pieces.push((StreamKind::Stdout, vec![0; 20000]));
    pieces.push((StreamKind::Stderr, b"small\n".to_vec()));
    pieces.push((StreamKind::Stderr, vec![0; 30000]));
    pieces.push((StreamKind::Stdout, b"tail\n".to_vec()));
    runs(pieces)
}

/// Whether `output` is exactly what `ORDER_PROGRAM` wrote, in the order written.
pub fn in_written_order(output: &[Chunk]) -> bool {
    runs(output.iter().map(|c| (c.kind, c.data.clone()))) == expected()
}

/// Where `output` first departs from the written order, for a failure message.
pub fn first_departure(output: &[Chunk]) -> String {
    let got = runs(output.iter().map(|c| (c.kind, c.data.clone())));
    let want = expected();
    let show = |r: Option<&(StreamKind, Vec<u8>)>| {
        r.map(|(k, d)| {
            format!(
                "{}:{:?}",
                k.as_str(),
                String::from_utf8_lossy(&d[..d.len().min(24)])
            )
        })
        .unwrap_or_else(|| "end".into())
    };
    match got.iter().zip(&want).position(|(g, w)| g != w) {
        Some(i) => format!(
            "run {i}: got {} want {}",
            show(got.get(i)),
            show(want.get(i))
        ),
        None => format!("{} runs, {} expected", got.len(), want.len()),
    }
}
