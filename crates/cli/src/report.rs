//! Tables and the HTML report (with an SVG Pareto plot) that `sweep` and `demo` produce.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;
use stopwise_core::replay::Summary;

/// One row of a report: a rule at one setting, or the oracle.
pub struct Row {
    pub label: String,
    pub summary: Summary,
    pub on_frontier: bool,
}

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
    std::fs::write(&path, html).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(path)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn pareto_svg(rows: &[Row], oracle: &Summary) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let x_min = rows.iter().map(|r| r.summary.token_reduction).fold(0.0f64, f64::min).max(-1.0);
        let mut chart = ChartBuilder::on(&root)
            .caption("tokens saved vs EM after stopping", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(x_min..1.0f64, 0.0..1.0f64)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("token reduction (probe tokens counted)")
            .y_desc("EM after stopping")
            .draw()
            .map_err(plot_error)?;
        chart
            .draw_series(
                rows.iter()
                    .map(|r| Circle::new((r.summary.token_reduction, r.summary.em_stopped), 2, BLUE.mix(0.4).filled())),
            )
            .map_err(plot_error)?;
        let mut frontier: Vec<(f64, f64)> =
            rows.iter().filter(|r| r.on_frontier).map(|r| (r.summary.token_reduction, r.summary.em_stopped)).collect();
        frontier.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart.draw_series(LineSeries::new(frontier, RED.stroke_width(2))).map_err(plot_error)?.label("Pareto frontier");
        chart
            .draw_series([Cross::new((oracle.token_reduction, oracle.em_stopped), 6, BLACK.stroke_width(2))])
            .map_err(plot_error)?
            .label("oracle");
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("cannot draw the plot: {e:?}")
}
