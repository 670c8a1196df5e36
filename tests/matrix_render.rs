//! The policy matrix as people see it: `policy check --format svg` rendered
//! by headless Chromium, which measures every column header with the real
//! font and reports whether any two overlap, any is cut off at the edge, or
//! any reaches down into the cells. A screenshot is kept to look at.

mod support;

use std::path::Path;
use std::process::Command;

use support::{hbone_lab_ok, text};

/// The matrix inline in a page whose script measures the headers once laid
/// out and writes its verdict into the page, which `--dump-dom` returns.
const PAGE: &str = r#"<!doctype html><html><body style="margin:0">SVG
<pre id="verdict">pending</pre>
<script>
const svg = document.querySelector("svg");
const frame = svg.getBoundingClientRect();
const firstRow = Math.min(...[...svg.querySelectorAll("rect[stroke-width]")].map(r => r.getBoundingClientRect().top));
const heads = [...svg.querySelectorAll("text.column")];
const problems = [];
const corners = el => {
  // The label's own box, turned as drawn, in page coordinates.
  const b = el.getBBox(), m = el.getScreenCTM();
  return [[b.x, b.y], [b.x + b.width, b.y], [b.x + b.width, b.y + b.height], [b.x, b.y + b.height]]
    .map(([x, y]) => new DOMPoint(x, y).matrixTransform(m));
};
const separated = (a, b) => {
  // Two convex boxes are apart when some edge's normal separates them.
  for (const poly of [a, b]) for (let i = 0; i < 4; i++) {
    const p = poly[i], q = poly[(i + 1) % 4], nx = q.y - p.y, ny = p.x - q.x;
    const proj = s => s.map(c => c.x * nx + c.y * ny);
    const [pa, pb] = [proj(a), proj(b)];
    if (Math.max(...pa) < Math.min(...pb) || Math.max(...pb) < Math.min(...pa)) return true;
  }
  return false;
};
const boxes = heads.map(corners);
boxes.forEach((box, i) => {
  const name = heads[i].textContent;
  if (box.some(c => c.x < frame.left || c.x > frame.right || c.y < frame.top)) problems.push(name + " is cut off");
  if (box.some(c => c.y > firstRow)) problems.push(name + " reaches into the cells");
  boxes.slice(i + 1).forEach((other, j) => {
    if (!separated(box, other)) problems.push(name + " overlaps " + heads[i + 1 + j].textContent);
  });
});
document.getElementById("verdict").textContent =
  heads.length === 0 ? "no column headers" : (problems.length ? problems.join("; ") : "ok " + heads.length);
</script></body></html>"#;

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|exe| {
        Command::new(exe)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn headless(exe: &str, profile: &Path, args: &[String], url: &str) -> std::process::Output {
    Command::new(exe)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
        ])
        .args([
            "--hide-scrollbars",
            "--no-first-run",
            "--window-size=1400,800",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap()
}

#[test]
#[ignore = "needs Chromium (scripts/test.sh installs it and runs this as root)"]
fn every_column_header_of_the_matrix_reads_on_its_own() {
    let exe = chromium().expect("Chromium is missing: scripts/test.sh installs it as root");
    let dir = tempfile::tempdir().unwrap();
    let svg_path = dir.path().join("matrix.svg");
    hbone_lab_ok(&[
        "policy",
        "check",
        "--format",
        "svg",
        "--out",
        svg_path.to_str().unwrap(),
    ]);
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(
        svg.contains("api.cloudflare.com:443"),
        "the long headers are there to measure"
    );
    let page = dir.path().join("check.html");
    std::fs::write(&page, PAGE.replace("SVG", &svg)).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}", page.display());
    let dom = text(&headless(exe, profile.path(), &["--dump-dom".into()], &url).stdout);
    let verdict = dom
        .split("<pre id=\"verdict\">")
        .nth(1)
        .and_then(|rest| rest.split("</pre>").next())
        .unwrap_or("no verdict in the page");
    assert!(verdict.starts_with("ok "), "{verdict}");

    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&out_dir).unwrap();
    let shot = out_dir.join("policy-matrix.png");
    let _ = std::fs::remove_file(&shot);
    let run = headless(
        exe,
        profile.path(),
        &[format!("--screenshot={}", shot.display())],
        &format!("file://{}", svg_path.display()),
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "a screenshot with content"
    );
    eprintln!("screenshot: {}", shot.display());
}
