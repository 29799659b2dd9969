//! Percentiles and the result table.

use std::time::Duration;

/// The `p`-th percentile (0..=100) of `samples` (sorted in place).
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

/// The median of `values` (the mean of the middle two for an even count);
/// NaN for none, which meets no bound.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A target's bound: it both prints the target and decides whether a value
/// meets it, so the threshold is written once.
#[derive(Clone, Copy)]
pub enum Bound {
    AtLeast(f64),
    AtMost(f64),
    Below(f64),
}

impl Bound {
    /// NaN (a figure that could not be measured) meets no bound.
    fn met(self, value: f64) -> bool {
        match self {
            Bound::AtLeast(b) => value >= b,
            Bound::AtMost(b) => value <= b,
            Bound::Below(b) => value < b,
        }
    }

    fn describe(self, unit: &str) -> String {
        let (op, b) = match self {
            Bound::AtLeast(b) => (">=", b),
            Bound::AtMost(b) => ("<=", b),
            Bound::Below(b) => ("<", b),
        };
        format!("{op} {b}{unit}")
    }
}

/// One target and whether it was met.
pub struct Target {
    pub figure: String,
    pub value: f64,
    pub target: String,
    pub met: bool,
}

#[derive(Default)]
pub struct Report {
    pub targets: Vec<Target>,
}

impl Report {
    /// Prints one `name=value` line.
    pub fn figure(&self, name: &str, value: f64) {
        println!("{name}={value:.3}");
    }

    /// Prints the figure and records it against `bound` (`unit` as printed
    /// after the bound, e.g. `" ms"`).
    pub fn target(&mut self, name: &str, value: f64, bound: Bound, unit: &str) {
        self.figure(name, value);
        self.targets.push(Target {
            figure: name.into(),
            value,
            target: bound.describe(unit),
            met: bound.met(value),
        });
    }

    pub fn print_table(&self) {
        println!();
        println!("| figure | value | target | met |");
        println!("|---|---:|---|---|");
        for t in &self.targets {
            println!(
                "| {} | {:.3} | {} | {} |",
                t.figure,
                t.value,
                t.target,
                if t.met { "yes" } else { "NO" }
            );
        }
    }
}
