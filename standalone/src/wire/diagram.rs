//! One HBONE connection as an SVG sequence diagram: four lanes — the client
//! pod's application, the proxy serving it (node-1), the proxy serving the
//! server (node-2), the server pod's application — and an arrow for every
//! packet that carries something, labelled with what it carries. The hop
//! between the proxies is what the capture saw; the dashed arrows at the
//! edges are the applications' plain bytes inside their pods, drawn where
//! the DATA frames that carry them cross.

use std::fmt::Write as _;

use hbone_policies::render::xml_escape;

use super::decode::Connection;
use super::ladder::{preview, summary};

const WIDTH: f64 = 1180.0;
const LANES: [f64; 4] = [130.0, 420.0, 760.0, 1050.0];
const ROW: f64 = 26.0;
const TOP: f64 = 96.0;
/// Beyond this many arrows the diagram says how many more there were.
const MAX_ROWS: usize = 40;

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let cut: String = text.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}

struct Arrow {
    from: usize,
    to: usize,
    label: String,
    time_ms: f64,
    dashed: bool,
}

fn arrows(connection: &Connection) -> (Vec<Arrow>, usize) {
    let start = connection.packets.first().map_or(0.0, |p| p.time);
    let mut out = Vec::new();
    let mut dropped = 0;
    for p in &connection.packets {
        let Some(what) = summary(p) else { continue };
        if out.len() >= MAX_ROWS {
            dropped += 1;
            continue;
        }
        let forward = p.src == connection.client;
        let time_ms = (p.time - start) * 1000.0;
        let app_data: Vec<&[u8]> = p
            .frames
            .iter()
            .filter(|f| f.kind == "DATA" && !f.data.is_empty())
            .map(|f| f.data.as_slice())
            .collect();
        if let Some(first) = app_data.first() {
            let (from, to) = if forward { (0, 1) } else { (3, 2) };
            out.push(Arrow {
                from,
                to,
                label: format!("app: \"{}\"", preview(first, 28)),
                time_ms,
                dashed: true,
            });
        }
        let (from, to) = if forward { (1, 2) } else { (2, 1) };
        out.push(Arrow {
            from,
            to,
            label: format!("{} B  {what}", p.len),
            time_ms,
            dashed: false,
        });
        if !app_data.is_empty() {
            let (from, to) = if forward { (2, 3) } else { (1, 0) };
            let bytes: usize = app_data.iter().map(|d| d.len()).sum();
            out.push(Arrow {
                from,
                to,
                label: format!("{bytes} B plain TCP"),
                time_ms,
                dashed: true,
            });
        }
    }
    (out, dropped)
}

/// The diagram of `connection`; `names` are the four lanes' captions.
pub fn svg(connection: &Connection, names: [&str; 4]) -> String {
    let (arrows, dropped) = arrows(connection);
    let height = TOP + ROW * (arrows.len() as f64 + 2.0) + 30.0;
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, sans-serif" font-size="12">
<rect width="100%" height="100%" fill="#ffffff"/>
<defs><marker id="head" markerWidth="8" markerHeight="8" refX="7" refY="4" orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#333"/></marker></defs>
<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>
"##,
        WIDTH / 2.0,
        xml_escape(&format!(
            "One HBONE connection: {} → {} (TCP stream {})",
            connection.client, connection.server, connection.stream
        ))
    );
    for (x, name) in LANES.iter().zip(names) {
        let _ = write!(
            out,
            r##"<rect x="{}" y="40" width="200" height="34" rx="6" fill="#eef3fb" stroke="#5b7db1"/>
<text x="{x}" y="61" text-anchor="middle">{}</text>
<line x1="{x}" y1="74" x2="{x}" y2="{}" stroke="#9aaccc" stroke-dasharray="4 4"/>
"##,
            x - 100.0,
            xml_escape(name),
            height - 20.0
        );
    }
    for (i, a) in arrows.iter().enumerate() {
        let y = TOP + ROW * (i as f64 + 1.0);
        let (x1, x2) = (LANES[a.from], LANES[a.to]);
        let dash = if a.dashed {
            r#" stroke-dasharray="5 3""#
        } else {
            ""
        };
        let colour = if a.dashed { "#777" } else { "#333" };
        let _ = write!(
            out,
            r##"<text x="4" y="{}" fill="#666" font-size="10">+{:.3} ms</text>
<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="{colour}" stroke-width="1.4" marker-end="url(#head)"{dash}/>
<text x="{}" y="{}" text-anchor="middle" font-size="11" fill="{colour}">{}</text>
"##,
            y + 4.0,
            a.time_ms,
            (x1 + x2) / 2.0,
            y - 5.0,
            xml_escape(&shorten(&a.label, if a.dashed { 40 } else { 80 }))
        );
    }
    if dropped > 0 {
        let y = TOP + ROW * (arrows.len() as f64 + 1.5);
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{y}" text-anchor="middle" fill="#666">… and {dropped} more packets (see the ladder)</text>"##,
            WIDTH / 2.0
        );
    }
    out.push_str("</svg>\n");
    out
}
