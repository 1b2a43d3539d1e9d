//! End-to-end tests of `warren bench`: runs the built binary.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh, empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "warren-cli-bench-{}-{}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn warren(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .output()
        .expect("run the warren binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The table's data rows, split into trimmed cells.
fn table_rows(stdout: &str) -> Vec<Vec<String>> {
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with("bindings |"));
    let header = lines.next().expect("table header");
    assert_eq!(
        header,
        "bindings | warren ns/route | warren routes/s | linear ns/route | speedup | matches/key"
    );
    let rule = lines.next().expect("table rule");
    assert!(rule.starts_with("---------+"), "{rule}");
    lines
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split('|').map(|c| c.trim().to_owned()).collect())
        .collect()
}

fn assert_svg(path: &Path, with_linear: bool) {
    let svg = fs::read_to_string(path).expect("the SVG plot was written");
    assert!(svg.contains("<svg"), "not an SVG document");
    assert!(
        svg.trim_end().ends_with("</svg>"),
        "SVG document not closed"
    );
    assert!(
        svg.contains("warren trie"),
        "no warren series in the legend"
    );
    assert_eq!(svg.contains("linear scan"), with_linear);
    assert!(svg.contains("bindings (log scale)"));
    assert!(svg.contains("<polyline"), "no lines drawn");
    assert!(svg.contains("<circle"), "no markers drawn");
}

#[test]
fn default_workload_quick() {
    let dir = TempDir::new("default");
    let svg = dir.path("plot.svg");
    let out = warren(&[
        "bench",
        "--quick",
        "--counts",
        "10,100",
        "--svg",
        svg.to_str().expect("utf-8 temp path"),
    ]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );

    let rows = table_rows(&stdout);
    assert_eq!(rows.len(), 2, "{stdout}");
    for (row, count) in rows.iter().zip(["10", "100"]) {
        assert_eq!(row.len(), 6, "{row:?}");
        assert_eq!(row[0], count);
        for cell in [&row[1], &row[3], &row[5]] {
            let v: f64 = cell.parse().unwrap_or_else(|_| panic!("number in {row:?}"));
            assert!(v >= 0.0 && v.is_finite(), "{row:?}");
        }
        assert!(row[4].ends_with('x'), "speedup in {row:?}");
    }
    assert!(stdout.contains("checked: the trie's matches equal the linear scan's"));
    assert!(stdout.contains(&format!("SVG plot written to {}", svg.display())));
    assert_svg(&svg, true);
}

#[test]
fn user_files_and_no_linear() {
    let dir = TempDir::new("files");
    let bindings = dir.path("bindings.txt");
    let keys = dir.path("keys.txt");
    let svg = dir.path("plot.svg");
    // `#` is a pattern, not a comment; blank lines are skipped.
    fs::write(
        &bindings,
        "orders.#\n\n#\n   \n*.eu.*\r\norders.eu.created\n",
    )
    .unwrap();
    fs::write(
        &keys,
        "orders.eu.created\nbilling.us.paid\n\nx.eu.y\norders\n",
    )
    .unwrap();
    let (b, k, s) = (
        bindings.to_str().unwrap(),
        keys.to_str().unwrap(),
        svg.to_str().unwrap(),
    );

    let out = warren(&["bench", "--quick", "--bindings", b, "--keys", k, "--svg", s]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    let rows = table_rows(&stdout);
    // One point: the file's 4 patterns. Matches: 4 + 1 + 2 + 2 over 4 keys.
    assert_eq!(rows.len(), 1, "{stdout}");
    assert_eq!(rows[0][0], "4");
    assert_eq!(rows[0][5], "2.250");
    assert!(stdout.contains("4 keys from"), "{stdout}");
    assert_svg(&svg, true);

    // Subsampled counts, no linear scan.
    let out = warren(&[
        "bench",
        "--quick",
        "--bindings",
        b,
        "--keys",
        k,
        "--counts",
        "1,2,4",
        "--no-linear",
        "--svg",
        s,
    ]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    let rows = table_rows(&stdout);
    let counts: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(counts, ["1", "2", "4"]);
    assert!(rows.iter().all(|r| r[3] == "-" && r[4] == "-"), "{stdout}");
    assert_eq!(rows[2][5], "2.250");
    assert_svg(&svg, false);

    // Bindings only: keys are generated from the patterns.
    let out = warren(&[
        "bench",
        "--quick",
        "--bindings",
        b,
        "--keys-count",
        "50",
        "--svg",
        s,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("50 random keys made from the patterns"));
}

#[test]
fn missing_file_is_a_clear_error() {
    let dir = TempDir::new("missing");
    let missing = dir.path("no-such-bindings.txt");
    let svg = dir.path("plot.svg");
    let out = warren(&[
        "bench",
        "--quick",
        "--bindings",
        missing.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("error: cannot read --bindings file"),
        "{stderr}"
    );
    assert!(stderr.contains("no-such-bindings.txt"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!svg.exists());
}

#[test]
fn bad_arguments_are_clear_errors() {
    let dir = TempDir::new("bad");
    let svg = dir.path("plot.svg");
    let s = svg.to_str().unwrap();
    let bindings = dir.path("bindings.txt");
    fs::write(&bindings, "a.b\n#\n").unwrap();
    let empty = dir.path("empty.txt");
    fs::write(&empty, "\n  \n").unwrap();
    let no_dir = dir.path("no-such-dir").join("plot.svg");

    let cases: [(Vec<&str>, &str); 5] = [
        (vec!["--counts", "10,abc"], "is not a count"),
        (vec!["--counts", "0"], "at least 1"),
        (
            vec!["--bindings", bindings.to_str().unwrap(), "--counts", "3"],
            "has only 2 patterns",
        ),
        (vec!["--keys", empty.to_str().unwrap()], "contains no keys"),
        (vec!["--svg", no_dir.to_str().unwrap()], "does not exist"),
    ];
    for (args, message) in cases {
        let mut all = vec!["bench", "--quick"];
        if !args.contains(&"--svg") {
            all.extend(["--svg", s]);
        }
        all.extend(&args);
        let out = warren(&all);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
