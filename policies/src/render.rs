//! The matrix for people and for programs: an aligned terminal table,
//! Markdown, JSON rows, and an SVG grid whose colours say at a glance which
//! layer stopped what.

use std::fmt::Write;

use crate::matrix::{Row, Verdict};

/// Output formats of `policy check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An aligned plain-text table for the terminal.
    Table,
    /// The rows as pretty-printed JSON, checks and reasons included.
    Json,
    /// A Markdown table.
    Markdown,
    /// An SVG grid, coloured by which layer refused.
    Svg,
    /// The verdict columns only, one JSON row per line: an `--expect` file.
    Expected,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            "markdown" | "md" => Ok(Format::Markdown),
            "svg" => Ok(Format::Svg),
            "expected" => Ok(Format::Expected),
            other => Err(format!(
                "unknown format `{other}`: use table, json, markdown, svg or expected"
            )),
        }
    }
}

/// Writes the matrix in the given format.
pub fn render(rows: &[Row], format: Format) -> String {
    match format {
        Format::Table => table(rows),
        Format::Json => serde_json::to_string_pretty(rows).expect("rows serialize") + "\n",
        Format::Markdown => markdown(rows),
        Format::Svg => svg(rows),
        Format::Expected => expected(rows),
    }
}

fn expected(rows: &[Row]) -> String {
    let lines: Vec<String> = rows
        .iter()
        .map(|r| {
            let quoted = |text: &str| serde_json::Value::from(text).to_string();
            format!(
                r#"{{"src": {}, "dst": {}, "port": {}, "cilium": "{}", "istio": "{}", "verdict": "{}"}}"#,
                quoted(&r.src),
                quoted(&r.dst),
                r.port,
                r.cilium.as_str(),
                r.istio.as_str(),
                r.verdict.as_str()
            )
        })
        .collect();
    format!("[\n  {}\n]\n", lines.join(",\n  "))
}

fn target(r: &Row) -> String {
    format!("{}:{}", r.dst, r.port)
}

fn mark(v: Verdict) -> &'static str {
    match v {
        Verdict::Allow => "allow",
        Verdict::Deny => "DENY",
    }
}

/// Why, in a line: the refusing checks' rules, or every rule that allowed.
fn why(r: &Row) -> String {
    r.deciding()
        .iter()
        .map(|c| format!("{}: {}", c.layer, c.by))
        .collect::<Vec<_>>()
        .join("; ")
}

fn table(rows: &[Row]) -> String {
    let header = [
        "SOURCE",
        "DESTINATION",
        "WIRE",
        "CILIUM",
        "ISTIO",
        "VERDICT",
        "DECIDED BY",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.src.clone(),
                target(r),
                r.wire_port.to_string(),
                mark(r.cilium).into(),
                mark(r.istio).into(),
                mark(r.verdict).into(),
                why(r),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cols: &[&str]| {
        let mut text = String::new();
        for (i, c) in cols.iter().enumerate() {
            if i + 1 == cols.len() {
                text.push_str(c);
            } else {
                let _ = write!(text, "{c:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &cells {
        let cols: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cols);
    }
    let allowed = rows.iter().filter(|r| r.verdict.allowed()).count();
    let _ = writeln!(
        out,
        "\n{} connections: {allowed} allowed, {} denied. WIRE is the port Cilium sees (15008 for meshed traffic).",
        rows.len(),
        rows.len() - allowed
    );
    out
}

fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| source | destination | wire port | Cilium | Istio | verdict | decided by |\n|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | **{}** | {} |",
            r.src,
            target(r),
            r.wire_port,
            r.cilium.as_str(),
            r.istio.as_str(),
            r.verdict.as_str(),
            why(r).replace('|', "\\|")
        );
    }
    out
}

/// Text made safe for XML (SVG) content and attributes.
pub fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Colour and label of a cell: which layers refused.
fn cell_style(r: &Row) -> (&'static str, &'static str) {
    match (r.cilium.allowed(), r.istio.allowed()) {
        (true, true) => ("#b7e4c7", "allow"),
        (false, true) => ("#a9cce3", "Cilium"),
        (true, false) => ("#f9c784", "Istio"),
        (false, false) => ("#f4a3a3", "both"),
    }
}

fn svg(rows: &[Row]) -> String {
    let mut sources: Vec<&str> = Vec::new();
    let mut targets: Vec<String> = Vec::new();
    for r in rows {
        if !sources.contains(&r.src.as_str()) {
            sources.push(&r.src);
        }
        if !targets.contains(&target(r)) {
            targets.push(target(r));
        }
    }
    // Column headers are turned 40° so that long ones (`api.cloudflare.com:443`)
    // read on their own: parallel labels one column apart are
    // cell_w·sin 40° ≈ 85 px apart across their direction, far more than a
    // line of text, however long they are. The header is as tall, and the
    // picture as wide, as the longest label needs.
    let (label_w, cell_w, cell_h) = (150, 132, 40);
    let (sin, cos) = (0.643, 0.766);
    let longest = targets.iter().map(|t| t.chars().count()).max().unwrap_or(0) as f64 * 8.0;
    let head_h = 64 + (longest * sin) as usize + 16;
    let width = label_w + cell_w * targets.len() + 20 + (longest * cos) as usize;
    let height = head_h + cell_h * sources.len() + 110;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(
        out,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        out,
        r#"<text x="10" y="24" font-size="17" font-weight="bold">Who may reach whom: Cilium (L3/L4) and Istio (identity)</text>"#
    );
    let _ = writeln!(
        out,
        r##"<text x="10" y="44" fill="#555">Rows: sources. Columns: destination:port. A connection needs both layers.</text>"##
    );
    for (i, t) in targets.iter().enumerate() {
        let x = label_w + cell_w * i + cell_w / 2 - 10;
        let y = head_h - 10;
        let _ = writeln!(
            out,
            r#"<text class="column" x="{x}" y="{y}" transform="rotate(-40 {x} {y})" font-weight="bold">{}</text>"#,
            xml_escape(t)
        );
    }
    for (j, s) in sources.iter().enumerate() {
        let y = head_h + cell_h * j;
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end" font-weight="bold">{}</text>"#,
            label_w - 10,
            y + cell_h / 2 + 5,
            xml_escape(s)
        );
        for (i, t) in targets.iter().enumerate() {
            let x = label_w + cell_w * i;
            let found = rows.iter().find(|r| r.src == *s && target(r) == *t);
            let (fill, label, title) = match found {
                Some(r) => {
                    let (fill, label) = cell_style(r);
                    let title = format!(
                        "{} → {}: {}. {}",
                        r.src,
                        t,
                        r.verdict.as_str(),
                        r.reasons.join(" | ")
                    );
                    (fill, label, title)
                }
                None => ("#eeeeee", "", String::from("not applicable")),
            };
            let _ = writeln!(
                out,
                r##"<g><title>{}</title><rect x="{x}" y="{y}" width="{}" height="{}" fill="{fill}" stroke="#ffffff" stroke-width="2"/><text x="{}" y="{}" text-anchor="middle">{}</text></g>"##,
                xml_escape(&title),
                cell_w,
                cell_h,
                x + cell_w / 2,
                y + cell_h / 2 + 5,
                match label {
                    "allow" => "✓ allowed".to_string(),
                    "" => String::new(),
                    who => format!("✗ {who}"),
                }
            );
        }
    }
    let legend_y = head_h + cell_h * sources.len() + 30;
    let legend = [
        ("#b7e4c7", "allowed by both layers"),
        ("#a9cce3", "✗ Cilium: refused on the wire"),
        ("#f9c784", "✗ Istio: refused by identity"),
        ("#f4a3a3", "✗ both: refused by both layers"),
    ];
    for (k, (fill, text)) in legend.iter().enumerate() {
        let y = legend_y + 20 * k;
        let _ = writeln!(
            out,
            r##"<rect x="10" y="{}" width="14" height="14" fill="{fill}"/><text x="30" y="{}">{}</text>"##,
            y,
            y + 12,
            xml_escape(text)
        );
    }
    out.push_str("</svg>\n");
    out
}
