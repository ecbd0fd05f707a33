//! A small SVG line chart of state bytes per state change against state size, one line per
//! policy, on a logarithmic byte axis (the policies differ by orders of magnitude).

use std::fmt::Write;

const W: f64 = 720.0;
const H: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 6] = [
    "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02",
];

/// One line of the chart: a policy's name and its (state entries, bytes per change) samples.
pub struct Series<'a> {
    pub policy: &'a str,
    pub samples: &'a [(u64, f64)],
}

pub fn svg(all: &[Series<'_>]) -> String {
    let points = all.iter().flat_map(|f| f.samples.iter());
    let max_x = points.clone().map(|p| p.0).max().unwrap_or(1).max(1) as f64;
    let ys = points.map(|p| p.1).filter(|y| *y > 0.0);
    let min_y = ys.clone().fold(f64::INFINITY, f64::min).max(1.0);
    let max_y = ys.fold(1.0, f64::max);
    let (lo, hi) = (
        min_y.log10().floor(),
        max_y.log10().ceil().max(min_y.log10().floor() + 1.0),
    );
    let x = |v: f64| LEFT + v / max_x * (W - LEFT - RIGHT);
    let y = |v: f64| TOP + (hi - v.max(1.0).log10()) / (hi - lo) * (H - TOP - BOTTOM);
    let mut s = String::new();
    // Writing to a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="14">State bytes per state change (log scale) against state size</text>"#,
        W / 2.0
    );
    for decade in (lo as i32)..=(hi as i32) {
        let v = 10f64.powi(decade);
        let py = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            py + 4.0,
            human(v)
        );
    }
    for i in 0..=5 {
        let v = max_x * f64::from(i) / 5.0;
        let px = x(v);
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#eee"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 16.0,
            human(v)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">entries in the room's state</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 12.0
    );
    for (i, f) in all.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = f
            .samples
            .iter()
            .map(|(sx, sy)| format!("{:.1},{:.1}", x(*sx as f64), y(*sy)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        let ly = TOP + 20.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            W - RIGHT + 10.0,
            W - RIGHT + 30.0,
            W - RIGHT + 36.0,
            ly + 4.0,
            f.policy
        );
    }
    s.push_str("</svg>\n");
    s
}

fn human(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{:.0}M", v / 1e6),
        v if v >= 1e3 => format!("{:.0}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}
