//! Tables and the HTML report (with an SVG Pareto plot) that `sweep` and `demo` produce.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;
use stopwise_core::replay::Summary;
use stopwise_core::sweep::pareto_frontier;

/// One row of a report: a rule at one setting, or the oracle.
pub struct Row {
    pub label: String,
    /// How the plot draws it: a family name (a point of that family's frontier), or one of
    /// [`PRESET`], [`ORACLE`], [`CERTIFIED`] (labelled points).
    pub group: String,
    pub summary: Summary,
    pub on_frontier: bool,
}

pub const PRESET: &str = "preset";
pub const ORACLE: &str = "oracle";
pub const CERTIFIED: &str = "certified";

pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<44} {:>6} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8}  pareto",
        "rule", "items", "EM full", "EM stop", "EM drop", "agree", "tok saved", "probe"
    );
    for r in rows {
        let s = &r.summary;
        let p = percentages(s);
        let _ = writeln!(
            out,
            "{:<44} {:>6} {:>7.1}% {:>7.1}% {:>7.1}% {:>8.1}% {:>8.1}% {:>7.1}%  {}",
            truncate(&r.label, 44),
            s.items,
            p[0],
            p[1],
            p[2],
            p[3],
            p[4],
            p[5],
            if r.on_frontier { "*" } else { "" }
        );
    }
    out
}

/// The percentage columns every report shows, in order: EM full, EM stopped, EM drop,
/// agreement, token reduction, probe overhead.
fn percentages(s: &Summary) -> [f64; 6] {
    [s.em_full, s.em_stopped, s.em_drop, s.agreement, s.token_reduction, s.probe_overhead].map(|x| 100.0 * x)
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        s.chars().take(n - 1).chain(['…']).collect()
    }
}

/// Writes `report.html` (table + SVG plot of token reduction vs EM after stopping) into `dir`.
pub fn write_html(dir: &Path, title: &str, rows: &[Row], oracle: &Summary) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let svg = pareto_svg(rows, oracle)?;
    let mut html = format!(
        "<!doctype html><meta charset=utf-8><title>{title}</title><style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 8px;text-align:right}}td:first-child{{text-align:left}}</style><h1>{title}</h1>{svg}<table><tr><th>rule<th>items<th>EM full<th>EM stopped<th>EM drop<th>agreement<th>token reduction<th>probe overhead<th>Pareto</tr>"
    );
    for r in rows {
        let s = &r.summary;
        let p = percentages(s);
        let _ = write!(
            html,
            "<tr><td>{}<td>{}<td>{:.1}%<td>{:.1}%<td>{:.1}%<td>{:.1}%<td>{:.1}%<td>{:.1}%<td>{}</tr>",
            escape(&r.label),
            s.items,
            p[0],
            p[1],
            p[2],
            p[3],
            p[4],
            p[5],
            if r.on_frontier { "★" } else { "" }
        );
    }
    html.push_str("</table>");
    let path = dir.join("report.html");
    stopwise_store::write_file(&path, html.as_bytes())?;
    Ok(path)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// What the plot's y axis shows: EM after stopping when items have gold, else agreement.
fn quality(s: &Summary) -> f64 {
    if s.items_with_gold > 0 {
        s.em_stopped
    } else {
        s.agreement
    }
}

fn pareto_svg(rows: &[Row], oracle: &Summary) -> Result<String> {
    let with_gold = rows.iter().any(|r| r.summary.items_with_gold > 0);
    let point = |s: &Summary| (s.token_reduction, quality(s));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (820, 540)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let x_min = rows.iter().map(|r| r.summary.token_reduction).fold(0.0f64, f64::min).max(-1.0);
        let y_max = rows.iter().map(|r| quality(&r.summary)).fold(quality(oracle), f64::max);
        let y_max = (y_max * 1.15).clamp(0.05, 1.0);
        let mut chart = ChartBuilder::on(&root)
            .caption("tokens saved vs quality after stopping", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(x_min..1.0f64, 0.0..y_max)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("token reduction (probe tokens counted)")
            .y_desc(if with_gold { "EM after stopping" } else { "agreement with the full answer" })
            .draw()
            .map_err(plot_error)?;
        let mut families: Vec<&str> = Vec::new();
        for r in rows {
            if ![PRESET, ORACLE, CERTIFIED].contains(&r.group.as_str()) && !families.contains(&r.group.as_str()) {
                families.push(&r.group);
            }
        }
        for (k, family) in families.iter().enumerate() {
            let color = Palette99::pick(k).to_rgba();
            let members: Vec<&Row> = rows.iter().filter(|r| r.group == *family).collect();
            chart
                .draw_series(members.iter().map(|r| Circle::new(point(&r.summary), 2, color.mix(0.35).filled())))
                .map_err(plot_error)?;
            let summaries: Vec<Summary> = members.iter().map(|r| r.summary).collect();
            let mut frontier: Vec<(f64, f64)> =
                pareto_frontier(&summaries).into_iter().map(|i| point(&summaries[i])).collect();
            frontier.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(frontier, color.stroke_width(2)))
                .map_err(plot_error)?
                .label(*family)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
        }
        // Presets often sit on top of each other: each label goes up to the first row where it
        // overlaps no label placed before (boxes in pixels, text about 6.5 px per character).
        let mut boxes: Vec<(i32, i32, i32)> = Vec::new();
        let mut labelled =
            |chart: &mut ChartContext<'_, SVGBackend<'_>, _>, at: (f64, f64), text: &str, style: ShapeStyle| {
                let (px, py) = chart.backend_coord(&at);
                let width = (text.chars().count() as f64 * 6.5) as i32;
                let free = |dy: i32| {
                    let (left, top) = (px + 6, py + dy);
                    boxes.iter().all(|&(l, t, w)| left + width <= l || l + w <= left || top + 13 <= t || t + 13 <= top)
                };
                let dy = (0..12).map(|level| -12 - 13 * level).find(|&dy| free(dy)).unwrap_or(-12);
                boxes.push((px + 6, py + dy, width));
                chart
                    .draw_series([EmptyElement::at(at)
                        + TriangleMarker::new((0, 0), 6, style)
                        + Text::new(text.to_owned(), (6, dy), ("sans-serif", 12))])
                    .map(|_| ())
                    .map_err(plot_error)
            };
        for r in rows.iter().filter(|r| r.group == PRESET) {
            labelled(&mut chart, point(&r.summary), &r.label, BLACK.mix(0.7).filled())?;
        }
        for r in rows.iter().filter(|r| r.group == CERTIFIED) {
            labelled(&mut chart, point(&r.summary), &format!("certified: {}", r.label), RED.filled())?;
        }
        chart
            .draw_series([EmptyElement::at(point(oracle))
                + Cross::new((0, 0), 6, BLACK.stroke_width(2))
                + Text::new("oracle (bound)", (8, 4), ("sans-serif", 12))])
            .map_err(plot_error)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("cannot draw the plot: {e:?}")
}
