//! `entente demo` as a new operator runs it: the built binary, its exit code, and the
//! lines that carry its claims. The table is checked against the agreements the demo
//! describes (written here from their text, not from the demo's code): satellites get
//! everything their group and recipient lists allow, the law-enforcement partner up to
//! AMBER and only network types from headquarters, the read-only researcher GREEN and
//! CLEAR only.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const ENTENTE: &str = env!("CARGO_BIN_EXE_entente");
const DEADLINE: Duration = Duration::from_secs(120);

/// Kills the child when a test ends early (a failed assertion), so no federation is
/// left running.
struct KillOnDrop(Child);

impl KillOnDrop {
    /// `entente demo` with `args`, its output piped (stderr too when `stderr`).
    fn demo(args: &[&str], stderr: bool) -> Self {
        Self(
            Command::new(ENTENTE)
                .arg("demo")
                .args(args)
                .stdout(Stdio::piped())
                .stderr(if stderr {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .spawn()
                .expect("run entente demo"),
        )
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Reads a pipe to its end on a thread.
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// The lines of a pipe, as a thread reads them.
fn lines_of(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The temporary directory the demo names in its first step.
fn demo_dir<'a>(mut lines: impl Iterator<Item = &'a str>) -> Option<PathBuf> {
    lines
        .find(|l| l.starts_with("[1/6]"))
        .and_then(|l| l.rsplit(" in ").next())
        .map(PathBuf::from)
}

/// Waits for `child` to exit within `DEADLINE`; kills it and fails otherwise.
fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for entente demo") {
            return status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("entente demo did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One row of the "who holds what" table.
#[derive(Debug)]
struct Row {
    indicator_type: String,
    value: String,
    tlp: String,
    /// hq, berlin, singapore, police, researcher.
    cells: Vec<String>,
}

fn table(output: &str) -> Vec<Row> {
    let mut lines = output.lines();
    lines
        .by_ref()
        .find(|l| l.contains("item") && l.contains("TLP") && l.contains("researcher"))
        .expect("the table header");
    let mut rows = Vec::new();
    for line in lines {
        if line.trim_start().starts_with("why") {
            break;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        // type value [(revoked)] TLP then five cells, a withheld cell being "- (x)".
        let tlp_at = words
            .iter()
            .position(|w| ["CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED"].contains(w))
            .unwrap_or_else(|| panic!("no TLP in table row {line:?}"));
        let mut cells = Vec::new();
        let mut rest = words[tlp_at + 1..].iter();
        while let Some(word) = rest.next() {
            match *word {
                "hop" | "-" => cells.push(format!("{word} {}", rest.next().unwrap())),
                other => cells.push(other.to_owned()),
            }
        }
        assert_eq!(cells.len(), 5, "five columns in {line:?}");
        rows.push(Row {
            indicator_type: words[0].to_owned(),
            value: words[1].to_owned(),
            tlp: words[tlp_at].to_owned(),
            cells,
        });
    }
    rows
}

fn rank(tlp: &str) -> usize {
    ["CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED"]
        .iter()
        .position(|t| *t == tlp)
        .unwrap()
}

/// What each column should show for `row`, from the agreements the demo describes.
fn expected(row: &Row) -> [String; 5] {
    let berlin_find = row.value.starts_with("login-berlin-office");
    // The second bundle went to the sharing group `satellites` only; the RED one to
    // berlin.office only.
    let group_only = row.value.starts_with("2001:db8") || row.value.ends_with("submit.php");
    let red = row.tlp == "RED";
    let held = |yes: bool| {
        if yes {
            "hop 1".to_owned()
        } else {
            "withheld".to_owned()
        }
    };
    let police = !berlin_find
        && rank(&row.tlp) <= rank("AMBER")
        && ["ipv4", "ipv6", "domain", "url"].contains(&row.indicator_type.as_str())
        && !group_only;
    let researcher = if rank(&row.tlp) <= rank("GREEN") {
        "yes"
    } else {
        "withheld"
    };
    if berlin_find {
        // berlin.office peers with hq only: singapore gets it through hq, at hop 2.
        [
            held(true),
            "origin".into(),
            "hop 2".into(),
            held(police),
            researcher.into(),
        ]
    } else {
        [
            "origin".into(),
            held(true),
            held(!red),
            held(police),
            researcher.into(),
        ]
    }
}

fn normalise(cell: &str) -> String {
    if cell.starts_with('-') {
        "withheld".into()
    } else {
        cell.into()
    }
}

#[test]
fn demo_runs_a_federation_and_every_claim_holds() {
    let mut child = KillOnDrop::demo(&[], true);
    let stdout = drain(child.0.stdout.take().unwrap());
    let stderr = drain(child.0.stderr.take().unwrap());
    let status = wait_exit(&mut child.0);
    let output = stdout.join().unwrap();
    let stderr = stderr.join().unwrap();
    assert!(status.success(), "entente demo failed:\n{output}\n{stderr}");

    // Every step reported, in order.
    let mut at = 0;
    for step in [
        "[1/6]",
        "[2/6]",
        "[3/6]",
        "[4/6] converged in",
        "[5/6]",
        "[6/6]",
    ] {
        let found = output[at..]
            .find(step)
            .unwrap_or_else(|| panic!("no {step:?} after byte {at} in:\n{output}"));
        at += found;
    }

    // Who holds what, against the agreements.
    let rows = table(&output);
    assert_eq!(
        rows.len(),
        14,
        "13 campaign items and berlin's find:\n{output}"
    );
    for row in &rows {
        let want = expected(row);
        let got: Vec<String> = row.cells.iter().map(|c| normalise(c)).collect();
        assert_eq!(got, want, "row {row:?} in:\n{output}");
    }
    assert!(
        rows.iter()
            .any(|r| r.value == "198.51.100.77" && output.contains("198.51.100.77 (revoked)")),
        "the revocation is shown:\n{output}"
    );
    // Every withheld cell has its reason, from the policy's own words.
    for reason in [
        "type md5 is not in allow_types for peer node cyberunit.police",
        "TLP:AMBER+STRICT is above max_tlp AMBER for peer node cyberunit.police",
        "cyberunit.police is not in the bundle's recipient list",
        "singapore.office is not in the bundle's recipient list",
        "forward_third_party is false for peer node cyberunit.police",
        "TLP:AMBER is above max_tlp GREEN for read_only client researcher.uni-x",
    ] {
        assert!(
            output.contains(reason),
            "no reason {reason:?} in:\n{output}"
        );
    }

    // Signatures verified again on every node.
    for node in [
        "redmond.hq",
        "berlin.office",
        "singapore.office",
        "cyberunit.police",
    ] {
        assert!(
            output
                .lines()
                .any(|l| l.trim_start().starts_with(node) && l.contains("digests match")),
            "no signature line for {node}:\n{output}"
        );
    }

    // The rogue's forgery and tampered copy, each rejected with its reason.
    assert!(
        output.contains("rejected by singapore.office")
            && output.contains("claims origin redmond.hq but is signed by rogue.node"),
        "the forgery's rejection:\n{output}"
    );
    assert!(
        output.contains("item does not match its digest"),
        "the tampered copy's rejection:\n{output}"
    );
    assert!(output.contains("neither reached a store"), "{output}");
    assert!(output.contains("Summary: demo passed"), "{output}");

    // The throwaway PKI and stores are gone.
    let dir = demo_dir(output.lines()).expect("the demo directory");
    assert!(!dir.exists(), "{} was left behind", dir.display());
}

#[test]
fn keep_running_leaves_a_federation_the_cli_can_query() {
    let mut guard = KillOnDrop::demo(&["--keep-running"], false);
    let child = &mut guard.0;
    let rx = lines_of(child.stdout.take().unwrap());
    // The printed instructions, up to the ledger line.
    let mut lines = Vec::new();
    let start = Instant::now();
    while !lines.iter().any(|l: &String| l.contains("ledger show")) {
        let left = DEADLINE.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "no instructions from demo --keep-running:\n{}",
                    lines.join("\n")
                );
            }
        }
    }
    let command = |who: &str| -> Vec<String> {
        let line = lines
            .iter()
            .find(|l| l.contains(" query ") && l.contains(who))
            .unwrap_or_else(|| panic!("no query command for {who}"));
        let line = line.split('#').next().unwrap();
        line.split_whitespace().map(String::from).collect()
    };
    let run = |words: Vec<String>| -> String {
        let out = Command::new(&words[0])
            .args(&words[1..])
            .output()
            .expect("run the printed command");
        assert!(
            out.status.success(),
            "{words:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let researcher = run(command("researcher.uni-x.toml"));
    let analyst = run(command("analyst.alice.toml"));
    // The analyst sees the whole campaign; the read-only researcher only GREEN and CLEAR.
    for value in [
        "cdn-telemetry.example.org",
        "192.0.2.150",
        "vpn-portal.example.com",
    ] {
        assert!(analyst.contains(value), "analyst lacks {value}:\n{analyst}");
    }
    assert!(
        researcher.contains("cdn-telemetry.example.org"),
        "{researcher}"
    );
    for value in ["192.0.2.150", "vpn-portal.example.com", "2fd4e1c67a2d"] {
        assert!(
            !researcher.contains(value),
            "the researcher got {value}:\n{researcher}"
        );
    }

    // The operator's wait for a node's sync returns once every link has caught up.
    let waited = {
        let line = lines
            .iter()
            .find(|l| l.contains("status --wait"))
            .expect("a status --wait command");
        let mut words: Vec<String> = line
            .split('#')
            .next()
            .unwrap()
            .split_whitespace()
            .map(String::from)
            .collect();
        words.extend(["--timeout".into(), "60".into()]);
        run(words)
    };
    assert!(waited.contains("redmond.hq: caught up;"), "{waited}");

    // SIGTERM stops it cleanly and removes the throwaway directory.
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = wait_exit(child);
    assert!(status.success(), "demo --keep-running exit: {status:?}");
    let dir = demo_dir(lines.iter().map(String::as_str)).expect("the demo directory");
    assert!(!dir.exists(), "{} was left behind", dir.display());
}

#[test]
fn interrupted_demo_removes_its_directory() {
    let mut guard = KillOnDrop::demo(&[], true);
    let child = &mut guard.0;
    let stdout = child.stdout.take().unwrap();
    let stderr = drain(child.stderr.take().unwrap());
    let rx = lines_of(stdout);
    // Interrupt once the nodes run (the PKI, with the CA's key, is on disk by then).
    let mut dir = None;
    let start = Instant::now();
    loop {
        let line = rx
            .recv_timeout(DEADLINE.saturating_sub(start.elapsed()))
            .expect("the demo reports its steps");
        if dir.is_none() {
            dir = demo_dir(std::iter::once(line.as_str()));
        }
        if line.starts_with("[2/6]") {
            break;
        }
    }
    let dir = dir.expect("the demo directory");
    assert!(dir.exists());
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = wait_exit(child);
    let errors = stderr.join().unwrap();
    // Either the signal arrived in time (an error naming the interruption) or the demo
    // had already finished; in both cases nothing is left behind.
    assert!(
        errors.contains("interrupted") || status.success(),
        "{status:?}: {errors}"
    );
    assert!(!dir.exists(), "{} was left behind", dir.display());
}
