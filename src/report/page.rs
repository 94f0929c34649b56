//! `exp plot`'s report: one HTML file that works offline and in any browser, with a sortable
//! runs table and interactive charts (hover a point for its run tag, parameters and metrics;
//! click a legend entry to show or hide a series; drag to pan, scroll to zoom).
//!
//! The charts are Vega-Lite specifications (what `dvc plots` renders with), rendered to SVG by
//! vega-embed in the page. The three libraries are embedded (`assets/`, unmodified npm builds),
//! so the file needs nothing else. A script error anywhere on the page is written into the
//! element `#exp-errors`, which a test (or a reader) can check is empty.

use serde_json::{json, Value};

const VEGA: &str = include_str!("assets/vega.min.js");
const VEGA_LITE: &str = include_str!("assets/vega-lite.min.js");
const VEGA_EMBED: &str = include_str!("assets/vega-embed.min.js");

/// A table cell: its text, and the number it sorts by when it is one.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// What is shown.
    pub text: String,
    /// The value a column sorts by, when numeric (else the text).
    pub number: Option<f64>,
}

impl Cell {
    /// A text cell.
    pub fn text(text: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            number: None,
        }
    }

    /// A number shown as `text`.
    pub fn number(value: f64, text: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            number: Some(value),
        }
    }
}

/// The runs table: one row per run; a click on a column header sorts by it.
#[derive(Debug, Clone, Default)]
pub struct RunsTable {
    /// Column headers.
    pub columns: Vec<String>,
    /// Rows of cells, one per column.
    pub rows: Vec<Vec<Cell>>,
}

/// One section of the report: a title, charts (Vega-Lite specs) and notes.
#[derive(Debug, Clone, Default)]
pub struct Section {
    /// The heading.
    pub title: String,
    /// Vega-Lite specifications, drawn in order.
    pub charts: Vec<Value>,
    /// Sentences shown under the heading (why a chart is missing, what a colour means).
    pub notes: Vec<String>,
}

/// The whole page as one HTML string.
pub fn render(title: &str, table: Option<&RunsTable>, sections: &[Section]) -> String {
    let mut body = String::new();
    body.push_str(&format!("<h1>{}</h1>\n", escape(title)));
    if let Some(table) = table {
        body.push_str("<h2>Runs</h2>\n");
        body.push_str(&table_html(table));
    }
    let mut specs = Vec::new();
    for section in sections {
        body.push_str(&format!("<h2>{}</h2>\n", escape(&section.title)));
        for note in &section.notes {
            body.push_str(&format!("<p class=\"note\">{}</p>\n", escape(note)));
        }
        for spec in &section.charts {
            body.push_str(&format!(
                "<div class=\"chart\" id=\"chart-{}\"></div>\n",
                specs.len()
            ));
            specs.push(spec.clone());
        }
    }
    // `</` inside a JSON string in a script element would end the element: escape the slash.
    let specs = serde_json::to_string(&specs)
        .unwrap_or_else(|_| "[]".into())
        .replace("</", "<\\/");
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<script>
window.expErrors = [];
function expError(message) {{
  window.expErrors.push(String(message));
  var box = document.getElementById('exp-errors');
  if (box) {{ box.textContent = window.expErrors.join('\n'); box.hidden = false; }}
}}
window.onerror = function (message, source, line) {{ expError(message + ' (' + source + ':' + line + ')'); }};
window.addEventListener('unhandledrejection', function (e) {{ expError(e.reason); }});
</script>
<style>
body {{ font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1100px; padding: 0 16px; color: #1d1d1f; }}
h1 {{ font-size: 24px; }} h2 {{ font-size: 19px; margin-top: 32px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }}
table.runs {{ border-collapse: collapse; font-size: 14px; width: 100%; }}
table.runs th, table.runs td {{ padding: 4px 8px; border-bottom: 1px solid #eee; text-align: left; white-space: nowrap; }}
table.runs th {{ cursor: pointer; background: #f6f6f6; position: sticky; top: 0; }}
table.runs th:hover {{ background: #e8e8e8; }}
table.runs td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.note {{ color: #555; }}
.chart {{ margin: 12px 0 24px; }}
#exp-errors {{ color: #b00020; white-space: pre-wrap; border: 1px solid #b00020; padding: 8px; }}
</style>
</head>
<body>
<pre id="exp-errors" hidden></pre>
{body}
<script>{VEGA}</script>
<script>{VEGA_LITE}</script>
<script>{VEGA_EMBED}</script>
<script>
var expSpecs = {specs};
var expDrawn = 0;
expSpecs.forEach(function (spec, i) {{
  vegaEmbed('#chart-' + i, spec, {{ renderer: 'svg', actions: false }})
    .then(function () {{ expDrawn += 1; document.body.setAttribute('data-charts-drawn', expDrawn); }})
    .catch(expError);
}});
document.querySelectorAll('table.runs th').forEach(function (th, column) {{
  th.addEventListener('click', function () {{
    var body = th.closest('table').tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var down = th.getAttribute('data-order') !== 'desc';
    th.setAttribute('data-order', down ? 'desc' : 'asc');
    var key = function (row) {{
      var cell = row.cells[column];
      var n = cell.getAttribute('data-value');
      return n === null ? cell.textContent : parseFloat(n);
    }};
    rows.sort(function (a, b) {{
      var x = key(a), y = key(b);
      var c = (typeof x === 'number' && typeof y === 'number') ? x - y : String(x).localeCompare(String(y));
      return down ? -c : c;
    }});
    rows.forEach(function (row) {{ body.appendChild(row); }});
  }});
}});
</script>
</body>
</html>
"#,
        title = escape(title),
    )
}

fn table_html(table: &RunsTable) -> String {
    let mut out = String::from("<table class=\"runs\">\n<thead><tr>");
    for column in &table.columns {
        out.push_str(&format!(
            "<th title=\"click to sort\">{}</th>",
            escape(column)
        ));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in &table.rows {
        out.push_str("<tr>");
        for cell in row {
            match cell.number {
                Some(n) if n.is_finite() => out.push_str(&format!(
                    "<td class=\"num\" data-value=\"{n}\">{}</td>",
                    escape(&cell.text)
                )),
                _ => out.push_str(&format!("<td>{}</td>", escape(&cell.text))),
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
    out
}

/// One run as a point of the "metric across runs" chart.
#[derive(Debug, Clone)]
pub struct RunPoint {
    /// The branch it is drawn for.
    pub branch: String,
    /// Its place among the branch's runs, from 1.
    pub index: usize,
    /// Its run tag (or short commit).
    pub run: String,
    /// Commit date.
    pub date: String,
    /// The charted metric's value.
    pub value: f64,
    /// The parameters that differ between runs, `key=value` joined.
    pub params: String,
    /// Every metric, `name=value` joined.
    pub metrics: String,
}

/// Interactive settings every chart shares: a legend that toggles its series, pan and zoom.
fn toggle_and_zoom(field: &str) -> Value {
    json!([
        { "name": "pick", "select": { "type": "point", "fields": [field] }, "bind": "legend" },
        { "name": "zoom", "select": "interval", "bind": "scales" }
    ])
}

/// The base configuration: readable text (13–14 px), legends outside the plot.
fn config() -> Value {
    json!({
        "font": "system-ui, sans-serif",
        "axis": { "labelFontSize": 13, "titleFontSize": 14 },
        "legend": { "labelFontSize": 13, "titleFontSize": 14, "orient": "right", "labelLimit": 420 },
        "title": { "fontSize": 16, "anchor": "start" }
    })
}

/// A metric across the runs of each branch: a line per branch, every run a point labelled with
/// its number, overlapping branches kept apart by shape and dash (a branch drawn exactly under
/// another stays visible), the run's tag, parameters and metrics on hover.
pub fn across_runs(title: &str, metric: &str, points: &[RunPoint]) -> Value {
    // Branches share their history, so their lines would lie exactly on one another and the
    // one drawn last would hide the rest: each branch is moved sideways a little (a dodge).
    let mut branches: Vec<&str> = points.iter().map(|p| p.branch.as_str()).collect();
    branches.sort();
    branches.dedup();
    let dodge = |branch: &str| {
        let i = branches.iter().position(|b| *b == branch).unwrap_or(0) as f64;
        (i - (branches.len() as f64 - 1.0) / 2.0) * 0.06
    };
    let values: Vec<Value> = points
        .iter()
        .map(|p| {
            json!({
                "branch": p.branch, "run number": p.index as f64 + dodge(&p.branch),
                "run": p.run, "date": p.date,
                "value": p.value, "parameters": p.params, "metrics": p.metrics,
                "label": format!("#{}", p.index)
            })
        })
        .collect();
    let tooltip = json!([
        { "field": "run" }, { "field": "branch" }, { "field": "date" },
        { "field": "value", "title": metric, "format": ".4f" },
        { "field": "parameters" }, { "field": "metrics" }
    ]);
    let most = points.iter().map(|p| p.index).max().unwrap_or(1);
    let x = json!({ "field": "run number", "type": "quantitative",
        "scale": { "domain": [0.6, most as f64 + 0.4] },
        "axis": { "values": (1..=most).collect::<Vec<_>>(), "format": "d",
                  "title": "run on the branch (oldest first)" } });
    let y = json!({ "field": "value", "type": "quantitative", "title": metric,
        "scale": { "zero": false, "padding": 12 } });
    let color = json!({ "field": "branch", "type": "nominal", "title": "branch" });
    let opacity = json!({ "condition": { "param": "pick", "value": 1 }, "value": 0.12 });
    json!({
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": title, "width": 760, "height": 320, "config": config(),
        "data": { "values": values },
        "encoding": { "x": x, "y": y, "color": color, "opacity": opacity },
        "layer": [
            { "params": toggle_and_zoom("branch"),
              "mark": { "type": "line", "strokeWidth": 2 },
              "encoding": { "strokeDash": { "field": "branch", "type": "nominal", "legend": null } } },
            { "mark": { "type": "point", "filled": true, "size": 80 },
              "encoding": { "tooltip": tooltip } },
            { "mark": { "type": "text", "dy": -12, "fontSize": 12 },
              "encoding": { "text": { "field": "label" } } }
        ]
    })
}

/// One epoch of one run's training curves.
#[derive(Debug, Clone)]
pub struct CurvePoint {
    /// The run.
    pub run: String,
    /// The epoch, from 1.
    pub epoch: usize,
    /// The value.
    pub value: f64,
}

/// A per-epoch curve of several runs (one line and its points each; a one-epoch run is a
/// point), the runs toggled from the legend.
pub fn curves(title: &str, y_title: &str, points: &[CurvePoint]) -> Value {
    let epochs = points.iter().map(|p| p.epoch).max().unwrap_or(1);
    let values: Vec<Value> = points
        .iter()
        .map(|p| json!({ "run": p.run, "epoch": p.epoch, "value": p.value }))
        .collect();
    json!({
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": title, "width": 760, "height": 280, "config": config(),
        "data": { "values": values },
        "encoding": {
            "x": { "field": "epoch", "type": "quantitative",
                   "scale": { "domain": [0.8, epochs as f64 + 0.2] },
                   "axis": { "values": (1..=epochs).collect::<Vec<_>>(), "format": "d" } },
            "y": { "field": "value", "type": "quantitative", "title": y_title,
                   "scale": { "zero": false } },
            "color": { "field": "run", "type": "nominal", "title": "run" },
            "opacity": { "condition": { "param": "pick", "value": 1 }, "value": 0.12 },
            "tooltip": [ { "field": "run" }, { "field": "epoch" },
                         { "field": "value", "title": y_title, "format": ".4f" } ]
        },
        "layer": [
            { "params": toggle_and_zoom("run"), "mark": { "type": "line", "strokeWidth": 2 } },
            { "mark": { "type": "point", "filled": true, "size": 60 } }
        ]
    })
}

/// A confusion matrix: each cell coloured by its share of the true class's examples (so the
/// errors of a small class show as well as a large one's), its count written on it in a
/// colour that reads on the cell, hover for count and share.
pub fn confusion(title: &str, matrix: &[Vec<u64>]) -> Value {
    let mut values = Vec::new();
    for (truth, row) in matrix.iter().enumerate() {
        let total: u64 = row.iter().sum();
        for (predicted, &count) in row.iter().enumerate() {
            let share = if total == 0 {
                0.0
            } else {
                count as f64 / total as f64
            };
            values.push(json!({
                "true class": truth.to_string(), "predicted class": predicted.to_string(),
                "count": count, "share of the true class": share,
                "kind": if truth == predicted { "correct" } else { "error" }
            }));
        }
    }
    let classes: Vec<String> = (0..matrix.len()).map(|c| c.to_string()).collect();
    let side = (36 * matrix.len()).clamp(240, 720);
    json!({
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": title, "width": side, "height": side, "config": config(),
        "data": { "values": values },
        "encoding": {
            "x": { "field": "predicted class", "type": "ordinal", "sort": classes },
            "y": { "field": "true class", "type": "ordinal", "sort": classes },
            "tooltip": [ { "field": "true class" }, { "field": "predicted class" },
                         { "field": "count" },
                         { "field": "share of the true class", "format": ".1%" } ]
        },
        "layer": [
            { "mark": "rect",
              "encoding": { "color": {
                  "field": "share of the true class", "type": "quantitative",
                  // A root scale: a 1 % error rate is a visible tint, not white.
                  "scale": { "scheme": "blues", "type": "pow", "exponent": 0.35, "domain": [0, 1] },
                  "legend": { "format": ".0%", "title": "share of true class" } } } },
            { "mark": { "type": "text", "fontSize": 12 },
              "encoding": {
                  "text": { "field": "count" },
                  "color": { "condition": { "test": "datum['share of the true class'] > 0.45",
                                            "value": "white" },
                             "value": "#111" } } }
        ]
    })
}

/// A sweep: the metric against one swept value (`ticks`, in order), every trial a point, the
/// mean over the trials of each value a line.
pub fn sweep(
    title: &str,
    key: &str,
    metric: &str,
    ticks: &[String],
    trials: &[(String, f64, String)],
) -> Value {
    let values: Vec<Value> = trials
        .iter()
        .map(|(x, y, trial)| json!({ "x": x, "value": y, "trial": trial }))
        .collect();
    let x = json!({ "field": "x", "type": "ordinal", "title": key, "sort": ticks,
                    "axis": { "labelAngle": 0 } });
    let y = json!({ "field": "value", "type": "quantitative", "title": metric,
                    "scale": { "zero": false } });
    json!({
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": title, "width": 760, "height": 300, "config": config(),
        "data": { "values": values },
        "layer": [
            { "mark": { "type": "point", "filled": true, "size": 70 },
              "encoding": { "x": x, "y": y,
                  "tooltip": [ { "field": "trial" }, { "field": "x", "title": key },
                               { "field": "value", "title": metric, "format": ".4f" } ] } },
            { "mark": { "type": "line", "strokeWidth": 2, "color": "#d62728" },
              "encoding": { "x": x, "y": { "aggregate": "mean", "field": "value",
                                           "type": "quantitative" } } }
        ]
    })
}

/// Escapes text for HTML.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained_and_escapes_what_it_shows() {
        let table = RunsTable {
            columns: vec!["run".into(), "accuracy".into()],
            rows: vec![vec![
                Cell::text("run/<b>/x/1"),
                Cell::number(0.97, "0.9700"),
            ]],
        };
        let chart = across_runs(
            "x </script>",
            "accuracy",
            &[RunPoint {
                branch: "develop".into(),
                index: 1,
                run: "run/x/1".into(),
                date: "2026-12-04".into(),
                value: 0.97,
                params: String::new(),
                metrics: "accuracy=0.9700".into(),
            }],
        );
        let page = render(
            "exp report",
            Some(&table),
            &[Section {
                title: "x".into(),
                charts: vec![chart],
                notes: vec![],
            }],
        );
        assert!(page.contains("run/&lt;b&gt;/x/1"));
        assert!(page.contains("data-value=\"0.97\""));
        assert!(page.contains("<div class=\"chart\" id=\"chart-0\">"));
        // The title inside the spec cannot close the script element.
        assert!(!page.contains("x </script>"));
        assert!(page.contains("x <\\/script>"));
        // No external resource: the libraries are inline.
        assert!(!page.contains("src=\"http"));
        assert!(page.contains("vegaEmbed"));
    }

    #[test]
    fn confusion_colour_is_the_share_of_the_true_class() {
        let spec = confusion("c", &[vec![90, 10], vec![0, 5]]);
        let values = spec["data"]["values"].as_array().unwrap();
        assert_eq!(values.len(), 4);
        assert_eq!(values[1]["share of the true class"], 0.1);
        assert_eq!(values[3]["share of the true class"], 1.0);
        assert_eq!(values[1]["kind"], "error");
    }
}
