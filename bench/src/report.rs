//! Results: raw per-round figures, medians, ratios against the floor, budgets, the
//! printed table and the JSON file.

use serde::{Deserialize, Serialize};

use crate::util::median;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(tag = "kind", content = "value")]
pub enum Budget {
    /// median over rounds of bridge/floor ≥ x
    RatioAtLeast(f64),
    /// median over rounds of bridge/floor ≤ x (a cost against a baseline: W8)
    RatioAtMost(f64),
    /// median bridge ≤ x
    AtMost(f64),
    /// median bridge < x
    Below(f64),
    /// median bridge ≥ x
    AtLeast(f64),
    /// median over rounds of (bridge − floor) ≤ x
    AddedAtMost(f64),
    /// median over rounds of (bridge − floor) < x
    AddedBelow(f64),
    /// bridge is 1 (ok) in every round
    AllOk,
}

impl Budget {
    pub fn describe(&self, unit: &str) -> String {
        match self {
            Budget::RatioAtLeast(x) => format!("≥ {x}× floor"),
            Budget::RatioAtMost(x) => format!("≤ {x}× floor"),
            Budget::AtMost(x) => format!("≤ {x} {unit}"),
            Budget::Below(x) => format!("< {x} {unit}"),
            Budget::AtLeast(x) => format!("≥ {x} {unit}"),
            Budget::AddedAtMost(x) => format!("added ≤ {x} {unit}"),
            Budget::AddedBelow(x) => format!("added < {x} {unit}"),
            Budget::AllOk => "every round".into(),
        }
    }
    fn uses_diff(&self) -> bool {
        matches!(self, Budget::AddedAtMost(_) | Budget::AddedBelow(_))
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Row {
    pub workload: String,
    pub metric: String,
    pub unit: String,
    /// Raw figures, one per round.
    pub bridge: Vec<f64>,
    pub floor: Vec<f64>,
    pub budget: Option<Budget>,
    pub notes: Vec<String>,
    pub skipped: Option<String>,
    // Filled by `finish`.
    #[serde(default)]
    pub bridge_median: Option<f64>,
    #[serde(default)]
    pub floor_median: Option<f64>,
    /// Median of the per-round ratios (bridge/floor), or of the differences for
    /// "added" budgets.
    #[serde(default)]
    pub relative: Option<f64>,
    #[serde(default)]
    pub pass: Option<bool>,
}

#[derive(Serialize, Deserialize, Default, Debug)]
pub struct Report {
    pub started: String,
    pub finished: String,
    pub nproc: usize,
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub rounds: usize,
    pub bridge_binary: String,
    pub git: String,
    pub settings: serde_json::Value,
    pub rows: Vec<Row>,
    /// Distinct lines the bridge logged (RUST_LOG=warn) and their counts.
    #[serde(default)]
    pub bridge_log: Vec<(String, u64)>,
}

impl Report {
    fn row(&mut self, w: &str, metric: &str, unit: &str, budget: Option<Budget>) -> &mut Row {
        if let Some(i) = self
            .rows
            .iter()
            .position(|r| r.workload == w && r.metric == metric)
        {
            return &mut self.rows[i];
        }
        self.rows.push(Row {
            workload: w.into(),
            metric: metric.into(),
            unit: unit.into(),
            bridge: vec![],
            floor: vec![],
            budget,
            notes: vec![],
            skipped: None,
            bridge_median: None,
            floor_median: None,
            relative: None,
            pass: None,
        });
        self.rows.last_mut().expect("row")
    }

    /// Declares a row (fixes its order in the table).
    pub fn declare(&mut self, w: &str, metric: &str, unit: &str, budget: Option<Budget>) {
        self.row(w, metric, unit, budget);
    }

    pub fn bridge(&mut self, w: &str, metric: &str, v: f64) {
        self.row(w, metric, "", None).bridge.push(v);
    }

    pub fn floor(&mut self, w: &str, metric: &str, v: f64) {
        self.row(w, metric, "", None).floor.push(v);
    }

    pub fn note(&mut self, w: &str, metric: &str, note: String) {
        let r = self.row(w, metric, "", None);
        if !r.notes.contains(&note) {
            r.notes.push(note);
        }
    }

    pub fn skip(&mut self, w: &str, reason: &str) {
        for r in self.rows.iter_mut().filter(|r| r.workload == w) {
            if r.bridge.is_empty() {
                r.skipped = Some(reason.to_owned());
            }
        }
    }

    pub fn finish(&mut self) {
        for r in &mut self.rows {
            finish_row(r);
        }
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "agent-bridge bench — {} — nproc {} — load avg {} (start) / {} (end) — {} round(s), medians\n",
            self.started, self.nproc, self.loadavg_start, self.loadavg_end, self.rounds
        ));
        out.push_str(&format!(
            "bridge: {} ({})\n\n",
            self.bridge_binary, self.git
        ));
        let head = [
            "wl",
            "metric",
            "bridge",
            "floor",
            "ratio/added",
            "budget",
            "result",
        ];
        let mut lines: Vec<[String; 7]> = vec![head.map(String::from)];
        for r in &self.rows {
            let f = |v: Option<f64>| v.map(|x| fmt_num(x, &r.unit)).unwrap_or_else(|| "—".into());
            let rel = match (r.relative, r.budget) {
                (Some(x), Some(b)) if b.uses_diff() => format!("{:+.3}", x),
                (Some(x), _) => format!("{x:.2}×"),
                _ => "—".into(),
            };
            let result = match (&r.skipped, r.pass) {
                (Some(why), _) => format!("skipped: {why}"),
                (None, Some(true)) => "PASS".into(),
                (None, Some(false)) => "FAIL".into(),
                (None, None) => {
                    if r.budget.is_some() {
                        "n/a".into()
                    } else {
                        "info".into()
                    }
                }
            };
            lines.push([
                r.workload.clone(),
                format!("{} [{}]", r.metric, r.unit),
                f(r.bridge_median),
                f(r.floor_median),
                rel,
                r.budget.map(|b| b.describe(&r.unit)).unwrap_or_default(),
                result,
            ]);
        }
        let mut widths = [0usize; 7];
        for l in &lines {
            for (i, c) in l.iter().enumerate() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        for (n, l) in lines.iter().enumerate() {
            let mut s = String::new();
            for (i, c) in l.iter().enumerate() {
                let pad = widths[i] - c.chars().count();
                if (2..=4).contains(&i) {
                    s.push_str(&" ".repeat(pad));
                    s.push_str(c);
                } else {
                    s.push_str(c);
                    if i < 6 {
                        s.push_str(&" ".repeat(pad));
                    }
                }
                if i < 6 {
                    s.push_str("  ");
                }
            }
            out.push_str(s.trim_end());
            out.push('\n');
            if n == 0 {
                out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 12));
                out.push('\n');
            }
        }
        if !self.bridge_log.is_empty() {
            out.push_str("\nbridge log lines (RUST_LOG=warn, all bridge processes of the run, digits as #):\n");
            let mut lines = self.bridge_log.clone();
            lines.sort_by_key(|l| std::cmp::Reverse(l.1));
            for (l, n) in lines.iter().take(12) {
                out.push_str(&format!("  {n:>8}× {l}\n"));
            }
        }
        let noted: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| !r.notes.is_empty() || r.bridge.len() > 1 || r.floor.len() > 1)
            .collect();
        if !noted.is_empty() {
            out.push_str("\nraw figures per round and notes:\n");
            for r in noted {
                out.push_str(&format!(
                    "  {} {}: bridge {:?}",
                    r.workload,
                    r.metric,
                    r.bridge.iter().map(|x| round3(*x)).collect::<Vec<_>>()
                ));
                if !r.floor.is_empty() {
                    out.push_str(&format!(
                        " floor {:?}",
                        r.floor.iter().map(|x| round3(*x)).collect::<Vec<_>>()
                    ));
                }
                out.push('\n');
                for n in &r.notes {
                    out.push_str(&format!("      {n}\n"));
                }
            }
        }
        out
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn fmt_num(x: f64, unit: &str) -> String {
    if unit == "ok" {
        return if x >= 1.0 { "yes".into() } else { "NO".into() };
    }
    if x.abs() >= 1000.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

pub fn finish_row(r: &mut Row) {
    r.bridge_median = median(&r.bridge);
    r.floor_median = median(&r.floor);
    let n = r.bridge.len().min(r.floor.len());
    r.relative = match r.budget {
        Some(b) if b.uses_diff() => {
            median(&(0..n).map(|i| r.bridge[i] - r.floor[i]).collect::<Vec<_>>())
        }
        _ if n > 0 => median(
            &(0..n)
                .filter(|&i| r.floor[i] > 0.0)
                .map(|i| r.bridge[i] / r.floor[i])
                .collect::<Vec<_>>(),
        ),
        _ => None,
    };
    r.pass = if r.skipped.is_some() {
        None
    } else {
        match (r.budget, r.bridge_median, r.relative) {
            (Some(Budget::RatioAtLeast(x)), _, Some(rel)) => Some(rel >= x),
            (Some(Budget::RatioAtMost(x)), _, Some(rel)) => Some(rel <= x),
            (Some(Budget::AddedAtMost(x)), _, Some(rel)) => Some(rel <= x),
            (Some(Budget::AddedBelow(x)), _, Some(rel)) => Some(rel < x),
            (Some(Budget::AtMost(x)), Some(b), _) => Some(b <= x),
            (Some(Budget::Below(x)), Some(b), _) => Some(b < x),
            (Some(Budget::AtLeast(x)), Some(b), _) => Some(b >= x),
            (Some(Budget::AllOk), Some(_), _) => Some(r.bridge.iter().all(|v| *v >= 1.0)),
            _ => None,
        }
    };
}

/// Medians across several result files (each already a median of its rounds).
pub fn summarize(files: &[String]) -> anyhow::Result<Report> {
    let mut reports = Vec::new();
    for f in files {
        let s = std::fs::read_to_string(f)?;
        reports.push(serde_json::from_str::<Report>(&s)?);
    }
    let mut out = Report {
        started: format!("summary of {} run(s)", reports.len()),
        finished: String::new(),
        nproc: reports.first().map(|r| r.nproc).unwrap_or(0),
        loadavg_start: reports
            .iter()
            .map(|r| r.loadavg_start.clone())
            .collect::<Vec<_>>()
            .join(" | "),
        loadavg_end: reports
            .iter()
            .map(|r| r.loadavg_end.clone())
            .collect::<Vec<_>>()
            .join(" | "),
        rounds: reports.iter().map(|r| r.rounds).sum(),
        bridge_binary: reports
            .first()
            .map(|r| r.bridge_binary.clone())
            .unwrap_or_default(),
        git: reports
            .iter()
            .map(|r| r.git.clone())
            .collect::<Vec<_>>()
            .join(" | "),
        settings: serde_json::Value::Null,
        rows: vec![],
        bridge_log: vec![],
    };
    for rep in &reports {
        for r in &rep.rows {
            let row = out.row(&r.workload, &r.metric, &r.unit, r.budget);
            row.unit = r.unit.clone();
            // Each file contributes its own per-round raw figures.
            row.bridge.extend(r.bridge.iter().copied());
            row.floor.extend(r.floor.iter().copied());
            for n in &r.notes {
                if !row.notes.contains(n) {
                    row.notes.push(n.clone());
                }
            }
            if r.skipped.is_some() && r.bridge.is_empty() {
                row.skipped = r.skipped.clone();
            }
        }
    }
    for r in &mut out.rows {
        if !r.bridge.is_empty() {
            r.skipped = None;
        }
    }
    out.finish();
    Ok(out)
}
