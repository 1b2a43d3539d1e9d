//! `warren bench`: benchmarks topic routing with warren's compiled
//! [`TopicTrie`] against a linear scan of [`topic_matches`] over the same
//! bindings, prints a summary table and writes an SVG plot.
//!
//! For every binding count, in increasing order, the first `count` patterns of
//! the workload are bound (binding `i` has value `i`), the trie and the linear
//! scan are each timed routing the keys cyclically for a fixed budget (median
//! of several rounds), and the trie's results are checked against the linear
//! scan's on a sample of keys.

mod measure;
mod plot;
mod workload;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use warren::{topic_matches, TopicTrie};

use self::measure::{median_ns_per_route, Budget};
use crate::cli::{CliError, CliResult};

/// Time budget per matcher and binding count, and its number of rounds.
const BUDGET: Budget = Budget {
    total: Duration::from_millis(300),
    rounds: 7,
};
/// The budget with `--quick`.
const QUICK_BUDGET: Budget = Budget {
    total: Duration::from_millis(30),
    rounds: 5,
};
/// Upper bound on `topic_matches` calls spent checking the trie against the
/// linear scan at one binding count (at least one key is always checked).
const CHECK_CALLS: usize = 2_000_000;
const QUICK_CHECK_CALLS: usize = 200_000;

/// Arguments of `warren bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Binding patterns, one per line, taken verbatim. Blank lines are
    /// skipped; there is no comment syntax (`#` is a valid pattern). Without
    /// --counts, all of them are bound (a single measurement).
    #[arg(long, value_name = "FILE")]
    pub bindings: Option<PathBuf>,

    /// Routing keys, one per line, taken verbatim; blank lines are skipped.
    /// Without it, random keys are generated (from the patterns' words when
    /// --bindings is given).
    #[arg(long, value_name = "FILE")]
    pub keys: Option<PathBuf>,

    /// Binding counts to measure, comma-separated (`k`/`M` suffixes allowed).
    /// With --bindings, random subsets of the file of these sizes.
    /// [default: 10,100,1000,10000,100000, or the --bindings file's size]
    #[arg(long, value_name = "N,N,...", value_delimiter = ',', value_parser = parse_count)]
    pub counts: Option<Vec<usize>>,

    /// Number of routing keys: generated ones, or a random sample of --keys.
    /// [default: 1000, or all of the --keys file]
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub keys_count: Option<usize>,

    /// Seed for generating the workload and sampling the files.
    #[arg(long, value_name = "S", default_value_t = 42)]
    pub seed: u64,

    /// Where to write the SVG plot.
    #[arg(long, value_name = "PATH", default_value = "warren-bench.svg")]
    pub svg: PathBuf,

    /// Do not run the linear scan (or check the trie against it).
    #[arg(long)]
    pub no_linear: bool,

    /// Largest binding count at which the linear scan is run; it is slow.
    #[arg(long, value_name = "N", default_value = "100000", value_parser = parse_count)]
    pub linear_max: usize,

    /// Shorter time budget (30 ms instead of 300 ms per measurement) and
    /// fewer checked keys: a smoke test, not a measurement.
    #[arg(long)]
    pub quick: bool,
}

/// Parses a count: digits with optional `_` separators and an optional
/// `k` (thousand) or `M` (million) suffix.
fn parse_count(s: &str) -> Result<usize, String> {
    let cleaned: String = s.trim().chars().filter(|&c| c != '_').collect();
    let (digits, factor) = match cleaned.as_bytes().last() {
        Some(b'k' | b'K') => (&cleaned[..cleaned.len() - 1], 1_000),
        Some(b'm' | b'M') => (&cleaned[..cleaned.len() - 1], 1_000_000),
        _ => (cleaned.as_str(), 1),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("`{s}` is not a count (expected e.g. 1000, 10_000 or 10k)"))
}

/// One line of the summary table.
struct Row {
    count: usize,
    warren_ns: f64,
    linear_ns: Option<f64>,
    matches_per_key: f64,
}

/// Runs `warren bench`.
pub fn run(args: &BenchArgs) -> CliResult<()> {
    check_svg_path(&args.svg)?;
    let (budget, check_calls) = if args.quick {
        (QUICK_BUDGET, QUICK_CHECK_CALLS)
    } else {
        (BUDGET, CHECK_CALLS)
    };
    if cfg!(debug_assertions) {
        eprintln!(
            "note: this is a debug build; use `cargo run --release -- bench` for meaningful numbers"
        );
    }

    let workload = workload::build(args)?;
    let keys = &workload.keys;
    let runs_linear = |count: usize| !args.no_linear && count <= args.linear_max;
    let steps = workload
        .counts
        .iter()
        .map(|&c| 1 + u64::from(runs_linear(c)))
        .sum();

    let progress = ProgressBar::with_draw_target(Some(steps), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
    {
        progress.set_style(style);
    }
    progress.enable_steady_tick(Duration::from_millis(100));

    let mut trie: TopicTrie<u32> = TopicTrie::new();
    let mut linear: Vec<(String, u32)> = Vec::new();
    let mut out: Vec<u32> = Vec::new();
    let mut linear_out: Vec<u32> = Vec::new();
    let mut rows = Vec::with_capacity(workload.counts.len());
    let mut checked_keys = 0usize;

    for &count in &workload.counts {
        // Bind patterns up to `count` (counts increase, so only the new ones).
        progress.set_message(format!("warren trie, {count} bindings"));
        for value in linear.len()..count {
            let pattern = &workload.patterns[value];
            // `value` < count <= u32::MAX, checked when the workload was built.
            let value = value as u32;
            trie.insert(pattern, value);
            linear.push((pattern.clone(), value));
        }

        let total_matches: usize = keys
            .iter()
            .map(|key| {
                out.clear();
                trie.matches_into(key, &mut out);
                out.len()
            })
            .sum();
        let matches_per_key = total_matches as f64 / keys.len() as f64;
        let warren_ns = median_ns_per_route(keys, budget, |key| {
            out.clear();
            trie.matches_into(key, &mut out);
            out.len()
        });
        progress.inc(1);

        let linear_ns = if runs_linear(count) {
            progress.set_message(format!("linear scan, {count} bindings"));
            let scan = |key: &str, out: &mut Vec<u32>| {
                out.clear();
                for (pattern, value) in &linear {
                    if topic_matches(pattern, key) {
                        out.push(*value);
                    }
                }
            };
            // Check the trie against the reference on a sample of keys.
            let n_check = (check_calls / count).clamp(1, keys.len());
            for key in &keys[..n_check] {
                out.clear();
                trie.matches_into(key, &mut out);
                scan(key, &mut linear_out);
                if out != linear_out {
                    progress.finish_and_clear();
                    return Err(CliError::new(format!(
                        "warren's trie and the linear scan disagree on key {key:?} with {count} \
                         bindings: the trie matched {} bindings, the linear scan {} (this is a \
                         bug in warren)",
                        out.len(),
                        linear_out.len()
                    )));
                }
            }
            checked_keys += n_check;
            let ns = median_ns_per_route(keys, budget, |key| {
                scan(key, &mut linear_out);
                linear_out.len()
            });
            progress.inc(1);
            Some(ns)
        } else {
            None
        };

        rows.push(Row {
            count,
            warren_ns,
            linear_ns,
            matches_per_key,
        });
    }
    progress.finish_and_clear();

    let mut report = String::new();
    let _ = writeln!(report, "warren bench: topic routing, trie vs linear scan");
    let _ = writeln!(report, "bindings: {}", workload.description[0]);
    let _ = writeln!(report, "keys:     {}", workload.description[1]);
    let _ = writeln!(
        report,
        "timing:   median of {} rounds over ~{} ms per matcher and binding count",
        budget.rounds,
        budget.total.as_millis()
    );
    report.push('\n');
    report.push_str(&table(&rows));
    report.push('\n');
    if checked_keys > 0 {
        let _ = writeln!(
            report,
            "checked: the trie's matches equal the linear scan's on {checked_keys} routed keys"
        );
    }
    if !args.no_linear {
        if let Some(first) = rows.iter().find(|r| r.linear_ns.is_none()) {
            let _ = writeln!(
                report,
                "note: linear scan skipped from {} bindings (above --linear-max {})",
                first.count, args.linear_max
            );
        }
    }

    let warren_points: Vec<(f64, f64)> =
        rows.iter().map(|r| (r.count as f64, r.warren_ns)).collect();
    let linear_points: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| Some((r.count as f64, r.linear_ns?)))
        .collect();
    let svg_result = plot::render_svg(&warren_points, &linear_points).and_then(|svg| {
        std::fs::write(&args.svg, svg).map_err(|err| {
            CliError::new(format!(
                "cannot write the SVG plot to {}: {err}",
                args.svg.display()
            ))
        })
    });
    if svg_result.is_ok() {
        let _ = writeln!(report, "SVG plot written to {}", args.svg.display());
    }

    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(report.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|err| CliError::new(format!("cannot write to stdout: {err}")))?;
    svg_result
}

/// Fails early, before any measuring, if the plot could not be written
/// because its directory does not exist or the path is a directory.
fn check_svg_path(path: &Path) -> CliResult<()> {
    if path.as_os_str().is_empty() {
        return Err(CliError::new("--svg needs a file path"));
    }
    if path.is_dir() {
        return Err(CliError::new(format!(
            "--svg {} is a directory; give a file path such as {}",
            path.display(),
            path.join("warren-bench.svg").display()
        )));
    }
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => Err(CliError::new(format!(
            "cannot write the SVG plot to {}: directory {} does not exist",
            path.display(),
            dir.display()
        ))),
        _ => Ok(()),
    }
}

/// The summary table, columns right-aligned under their headers.
fn table(rows: &[Row]) -> String {
    const HEADERS: [&str; 6] = [
        "bindings",
        "warren ns/route",
        "warren routes/s",
        "linear ns/route",
        "speedup",
        "matches/key",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.count.to_string(),
                ns(r.warren_ns),
                rate(1e9 / r.warren_ns),
                r.linear_ns.map_or_else(|| "-".to_owned(), ns),
                r.linear_ns
                    .map_or_else(|| "-".to_owned(), |l| format!("{:.1}x", l / r.warren_ns)),
                format!("{:.3}", r.matches_per_key),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..HEADERS.len())
        .map(|i| {
            cells
                .iter()
                .map(|row| row[i].chars().count())
                .chain([HEADERS[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |fields: &[String]| -> String {
        let padded: Vec<String> = fields
            .iter()
            .zip(&widths)
            .map(|(f, &w)| format!("{f:>w$}"))
            .collect();
        format!("{}\n", padded.join(" | ").trim_end())
    };
    let mut s = line(&HEADERS.map(str::to_owned));
    let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
    s.push_str(&rule.join("-+-"));
    s.push('\n');
    for row in &cells {
        s.push_str(&line(row));
    }
    s
}

/// Nanoseconds with one decimal below 10 µs, whole above.
fn ns(v: f64) -> String {
    if v < 10_000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// Routes per second as `12.3M`, `456.7k`, `89.0`.
fn rate(v: f64) -> String {
    if !v.is_finite() {
        "-".to_owned()
    } else if v >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.2}k", v / 1e3)
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_parse_with_suffixes() {
        assert_eq!(parse_count("1000"), Ok(1000));
        assert_eq!(parse_count("10_000"), Ok(10_000));
        assert_eq!(parse_count("10k"), Ok(10_000));
        assert_eq!(parse_count("2M"), Ok(2_000_000));
        assert!(parse_count("ten").is_err());
        assert!(parse_count("-1").is_err());
        assert!(parse_count("").is_err());
    }

    #[test]
    fn table_has_a_row_per_count() {
        let rows = [
            Row {
                count: 10,
                warren_ns: 42.0,
                linear_ns: Some(420.0),
                matches_per_key: 0.5,
            },
            Row {
                count: 100_000,
                warren_ns: 1234.5,
                linear_ns: None,
                matches_per_key: 12.0,
            },
        ];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("bindings | warren ns/route"));
        assert!(lines[2].contains("10.0x"), "{t}");
        assert!(lines[3].contains("810.04k"), "{t}");
        assert!(lines[3].trim_start().starts_with("100000 |"), "{t}");
    }
}
