//! `exp plot`: a self-contained HTML report with SVG charts drawn by plotters.

use std::fmt::Write as _;

use plotters::prelude::*;

/// One series of (x, y) points with a label.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points.
    pub points: Vec<(f64, f64)>,
}

/// A chart failed to draw.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw {chart}: {message}")]
pub struct PlotError {
    chart: String,
    message: String,
}

fn err(chart: &str) -> impl Fn(String) -> PlotError + '_ {
    move |message| PlotError {
        chart: chart.to_string(),
        message,
    }
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn bounds(series: &[Series]) -> ((f64, f64), (f64, f64)) {
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        if y.is_finite() {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if x0 > x1 {
        return ((0.0, 1.0), (0.0, 1.0));
    }
    let pad_y = ((y1 - y0) * 0.08).max(1e-3);
    let pad_x = if x1 > x0 { 0.0 } else { 0.5 };
    ((x0 - pad_x, x1 + pad_x), (y0 - pad_y, y1 + pad_y))
}

/// A line chart of `series` as an SVG string.
pub fn line_chart(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
) -> Result<String, PlotError> {
    let e = err(title);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
        let ((x0, x1), (y0, y1)) = bounds(series);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|x| e(x.to_string()))?;
        // Runs and epochs are whole numbers: no 1.5th epoch on the axis.
        let formatter = |x: &f64| {
            if (x - x.round()).abs() < 1e-9 {
                format!("{}", x.round() as i64)
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&formatter)
            .y_label_formatter(&|y| format!("{y:.4}"))
            .draw()
            .map_err(|x| e(x.to_string()))?;
        for (i, s) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(|x| e(x.to_string()))?
                .label(s.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|x| e(x.to_string()))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|x| e(x.to_string()))?;
        root.present().map_err(|x| e(x.to_string()))?;
    }
    Ok(svg)
}

/// A sweep's metric against one swept key: every trial a point (seeds side by side), the mean
/// per value a line. `ticks` names the x positions (the values as written); x is their index,
/// so numbers and strings alike stand evenly spaced in the order given.
pub fn sweep_chart(
    title: &str,
    key: &str,
    metric: &str,
    ticks: &[String],
    trials: &[(f64, f64)],
    means: &[(f64, f64)],
) -> Result<String, PlotError> {
    let e = err(title);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
        let all = [
            Series {
                label: String::new(),
                points: trials.to_vec(),
            },
            Series {
                label: String::new(),
                points: means.to_vec(),
            },
        ];
        let ((_, _), (y0, y1)) = bounds(&all);
        let x1 = ticks.len().max(1) as f64 - 0.5;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.5..x1, y0..y1)
            .map_err(|x| e(x.to_string()))?;
        let formatter = |x: &f64| {
            let i = x.round();
            if (x - i).abs() < 1e-9 && i >= 0.0 {
                ticks.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .x_desc(key)
            .y_desc(metric)
            .x_labels(ticks.len().max(2))
            .x_label_formatter(&formatter)
            .y_label_formatter(&|y| format!("{y:.4}"))
            .draw()
            .map_err(|x| e(x.to_string()))?;
        let (dots, line) = (PALETTE[0], PALETTE[1]);
        chart
            .draw_series(trials.iter().map(|&p| Circle::new(p, 4, dots.filled())))
            .map_err(|x| e(x.to_string()))?
            .label("trial (one per seed)")
            .legend(move |(x, y)| Circle::new((x + 9, y), 4, dots.filled()));
        chart
            .draw_series(LineSeries::new(means.iter().copied(), line.stroke_width(2)))
            .map_err(|x| e(x.to_string()))?
            .label("mean over seeds")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], line.stroke_width(2))
            });
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|x| e(x.to_string()))?;
        root.present().map_err(|x| e(x.to_string()))?;
    }
    Ok(svg)
}

/// A confusion matrix heat map (`matrix[true][predicted]`) as an SVG string: each cell shaded
/// by its share of the true class, the count written in it.
pub fn confusion_chart(title: &str, matrix: &[Vec<u64>]) -> Result<String, PlotError> {
    let e = err(title);
    let k = matrix.len().max(1) as i32;
    let cell = 44;
    let (left, top) = (48, 56);
    let (width, height) = ((left + cell * k + 20) as u32, (top + cell * k + 40) as u32);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width.max(320), height)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
        let text = |t: String, at: (i32, i32), size: i32| Text::new(t, at, ("sans-serif", size));
        root.draw(&text(title.to_string(), (left, 10), 18))
            .map_err(|x| e(x.to_string()))?;
        root.draw(&text("predicted →".into(), (left, top - 22), 12))
            .map_err(|x| e(x.to_string()))?;
        root.draw(&text("true ↓".into(), (4, top - 22), 12))
            .map_err(|x| e(x.to_string()))?;
        for (t, row) in matrix.iter().enumerate() {
            let total = row.iter().sum::<u64>().max(1) as f64;
            let y = top + t as i32 * cell;
            root.draw(&text(t.to_string(), (left - 20, y + cell / 2 - 6), 12))
                .map_err(|x| e(x.to_string()))?;
            for (p, &count) in row.iter().enumerate() {
                let x = left + p as i32 * cell;
                if t == 0 {
                    root.draw(&text(p.to_string(), (x + cell / 2 - 4, top - 10), 11))
                        .map_err(|x| e(x.to_string()))?;
                }
                let fade = (255.0 * (1.0 - count as f64 / total)) as u8;
                let color = if t == p {
                    RGBColor(fade, fade.saturating_add(40), 255)
                } else {
                    RGBColor(255, fade, fade)
                };
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    color.filled(),
                ))
                .map_err(|x| e(x.to_string()))?;
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    BLACK.mix(0.15),
                ))
                .map_err(|x| e(x.to_string()))?;
                root.draw(&text(count.to_string(), (x + 4, y + cell / 2 - 6), 11))
                    .map_err(|x| e(x.to_string()))?;
            }
        }
        root.present().map_err(|x| e(x.to_string()))?;
    }
    Ok(svg)
}

/// An HTML report: a title, then sections of (heading, SVG or note).
pub fn html(title: &str, sections: &[(String, String)]) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\n\
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto;color:#222}}\
section{{margin:2em 0}}h2{{font-size:1.1em;border-bottom:1px solid #ddd}}\
p.note{{color:#666}}</style></head><body>\n<h1>{t}</h1>\n",
        t = escape(title)
    );
    for (heading, body) in sections {
        let _ = write!(
            out,
            "<section><h2>{}</h2>\n{}\n</section>\n",
            escape(heading),
            body
        );
    }
    out.push_str("</body></html>\n");
    out
}

/// Escapes text for HTML.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
