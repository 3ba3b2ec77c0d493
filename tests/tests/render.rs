//! The DOT and Mermaid texts stay valid whatever a user puts in them: a job name
//! (`#[job(name = "...")]`), a step's error or a run's id with quotes, backslashes, line breaks,
//! NUL and other control characters, Mermaid's own syntax, or 20,000 characters.
//!
//! Each text is checked twice: by a lexer here that mirrors the tool's rules for the parts a user
//! controls (Graphviz's quoted strings; Mermaid's preprocessing and gantt lines), and, for DOT,
//! by Graphviz itself when `dot` is installed (`apt-get install graphviz`); without it that test
//! says so and checks only the mirror.

use std::io::Write as _;
use std::process::{Command, Stdio};

use jobgraph::{Job, JobReport, job};

/// An error whose text is whatever the test wants.
#[derive(Debug)]
struct Raw(String);

impl std::fmt::Display for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raw {}

/// Everything that broke DOT or needs escaping in it, in one string.
const NASTY: &str = "a\0b \"quoted\" back\\slash\r\nnext\tline \u{1b}[31m \u{85} \\";

struct Hostile;

#[job(name = "evil \"job\"\n\0 with a trailing backslash \\")]
impl Hostile {
    #[step]
    async fn nasty(&self) -> Result<u8, Raw> {
        Err(Raw(NASTY.to_owned()))
    }

    #[step]
    async fn long(&self) -> Result<u8, Raw> {
        Err(Raw("x".repeat(20_000)))
    }

    #[step]
    async fn fine(&self) -> u8 {
        1
    }

    /// Skipped: its tooltip says because of `nasty`.
    #[step]
    async fn child(&self, nasty: &u8, fine: &u8) -> u8 {
        nasty + fine
    }
}

/// A run id that tries to add a section and a task to the Gantt chart.
const INJECTING_ID: &str = "r-1\n    section Fake\n    fake task :done, f0, 0, 99999";

/// A run id with a Mermaid directive, comments, entity codes and HTML.
const DIRECTIVE_ID: &str = "r-2\r\n%%{init: {\"theme\": \"dark\"}}%% #quot; ; # <b> %% x";

async fn hostile_report(job_id: &str) -> JobReport<HostileStep> {
    let (result, report) = Hostile.runner().job_id(job_id).run_with_report().await;
    assert!(result.is_err());
    report
}

// ---- DOT -------------------------------------------------------------------------------------

/// Graphviz's lexer (`lib/cgraph/scan.l`) in a quoted string: `\"`, `\\` and a backslash before a
/// line break are read as pairs, any other character alone; NUL ends the input; a quoted string
/// of 16,384 bytes or more (quotes included) is an error. Returns each line of `dot` with its
/// quoted strings replaced by `Q`, and the strings' contents.
fn lex_dot(dot: &str) -> (Vec<String>, Vec<String>) {
    assert!(!dot.contains('\0'), "NUL in the DOT text");
    let mut shapes = Vec::new();
    let mut strings = Vec::new();
    for line in dot.lines() {
        let mut shape = String::new();
        let mut chars = line.char_indices().peekable();
        while let Some((start, c)) = chars.next() {
            if c != '"' {
                shape.push(c);
                continue;
            }
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    '\\' => {
                        if matches!(chars.peek(), Some((_, '"' | '\\'))) {
                            chars.next();
                        }
                    }
                    _ => {}
                }
            }
            let end = end.unwrap_or_else(|| panic!("a quoted string does not end on:\n{line}"));
            let quoted = &line[start..=end];
            assert!(
                quoted.len() < 16_384,
                "a quoted string of {} bytes",
                quoted.len()
            );
            strings.push(line[start + 1..end].to_owned());
            shape.push('Q');
        }
        shapes.push(shape.trim().to_owned());
    }
    (shapes, strings)
}

/// The mirror's verdict: every line is one of the statements jobgraph writes.
fn assert_dot_shape(dot: &str) -> Vec<String> {
    let (shapes, strings) = lex_dot(dot);
    for shape in &shapes {
        let known = matches!(
            shape.as_str(),
            "digraph Q {" | "rankdir=TB;" | "Q;" | "Q -> Q;" | "Q -> Q [style=dashed];" | "}"
        ) || shape.starts_with("node [")
            || (shape.starts_with("Q [fillcolor=") && shape.ends_with(", tooltip=Q];"));
        assert!(known, "unexpected DOT line {shape:?} in\n{dot}");
    }
    strings
}

/// Graphviz's verdict, if it is installed: it reads `dot` without an error or a warning.
fn graphviz_accepts(dot: &str) -> Option<String> {
    let child = Command::new("dot")
        .arg("-Tcanon")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            eprintln!(
                "skipping the Graphviz check: `dot` could not be run ({e}); \
                 `apt-get install graphviz` installs it"
            );
            return None;
        }
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(dot.as_bytes())
        .expect("writing to dot");
    let out = child.wait_with_output().expect("dot ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "Graphviz rejects the DOT text ({}): {stderr}\n{}",
        out.status,
        dot.chars().take(2_000).collect::<String>()
    );
    Some(String::from_utf8(out.stdout).expect("UTF-8 from dot"))
}

#[tokio::test]
async fn a_runs_dot_is_valid_whatever_the_name_errors_and_id_hold() {
    let report = hostile_report(INJECTING_ID).await;
    let dot = report.dot();
    let strings = assert_dot_shape(&dot);
    assert_eq!(
        strings[0],
        "evil \\\"job\\\"\\n\\\\u{0} with a trailing backslash \\\\"
    );
    let nasty = strings
        .iter()
        .find(|s| s.starts_with("State: failed") && s.contains("a\\\\u{0}b"))
        .unwrap_or_else(|| panic!("no tooltip of `nasty` in\n{dot}"));
    assert!(
        nasty.ends_with(
            "Error: returned an error: a\\\\u{0}b \\\"quoted\\\" back\\\\slash\\nnext line \\\\u{1b}[31m \\\\u{85} \\\\"
        ),
        "{nasty}"
    );
    // The error's 20,019 characters ("returned an error: " and 20,000) are cut at 2,000, and
    // the tooltip says how long it was.
    let long = strings
        .iter()
        .find(|s| s.contains("xxxx"))
        .unwrap_or_else(|| panic!("no tooltip of `long` in\n{dot}"));
    assert!(
        long.ends_with(&format!(
            "Error: returned an error: {}… (20019 characters)",
            "x".repeat(2_000 - 19)
        )),
        "{}",
        long.chars().rev().take(100).collect::<String>()
    );

    if let Some(canon) = graphviz_accepts(&dot) {
        // Graphviz writes long strings back over several lines, each ending with `\`.
        let canon = canon.replace("\\\n", "");
        assert!(canon.contains("… (20019 characters)"), "{canon}");
        assert!(canon.contains("child"), "{canon}");
    }
}

#[test]
fn the_jobs_dot_is_valid_whatever_its_name_holds() {
    let strings = assert_dot_shape(Hostile::DOT);
    assert_eq!(
        strings[0],
        "evil \\\"job\\\"\\n\\\\u{0} with a trailing backslash \\\\"
    );
    assert!(Hostile::DOT.contains("\"nasty\" -> \"child\";"));
    graphviz_accepts(Hostile::DOT);
}

// ---- Mermaid ---------------------------------------------------------------------------------

/// One statement of a Mermaid gantt chart, as its lexer (`parser/gantt.jison`) cuts lines.
#[derive(Debug, PartialEq)]
enum Gantt {
    Header,
    DateFormat,
    AxisFormat,
    Title(String),
    Section(String),
    Task { name: String, data: String },
}

/// Mermaid's reading of a gantt chart, for the parts a user controls:
///
/// - preprocessing (`preprocessDiagram`, `encodeEntities`): `\r\n` and `\r` become `\n`; a
///   `%%{...}%%` directive anywhere is configuration, and refused here; entity codes (`#35;`,
///   `#quot;`) are replaced before lexing and shown as their characters;
/// - the gantt lexer, line by line, first rule first: `%%` and `#` start comments; `title\s` and
///   `section\s` take the rest of the line (older versions stop a title at `#` or `;`, which is
///   refused here); `dateFormat\s`, `axisFormat\s`; anything else is a task `[^:\n]+` followed by
///   its data `:[^#\n;]+`.
fn lex_gantt(text: &str) -> Vec<Gantt> {
    assert!(!text.contains("%%{"), "a directive in\n{text}");
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut out = Vec::new();
    for raw in text.split('\n') {
        let line = encode_entities(raw.trim_start());
        if line.trim().is_empty() || line.starts_with("%%") || line.starts_with('#') {
            continue;
        }
        let rest = |keyword: &str| {
            line.strip_prefix(keyword)
                .filter(|r| r.starts_with(char::is_whitespace))
                .map(|r| r[1..].to_owned())
        };
        let statement = if line == "gantt" {
            Gantt::Header
        } else if rest("dateFormat").is_some() {
            Gantt::DateFormat
        } else if rest("axisFormat").is_some() {
            Gantt::AxisFormat
        } else if let Some(title) = rest("title") {
            assert!(
                !title.contains(['#', ';']),
                "older Mermaid ends this title early: {title:?}"
            );
            Gantt::Title(decode_entities(&title))
        } else if let Some(section) = rest("section") {
            Gantt::Section(section)
        } else {
            let (name, data) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("not a statement: {line:?} in\n{text}"));
            assert!(
                !data.contains(['#', ';']),
                "task data cut short: {line:?} in\n{text}"
            );
            Gantt::Task {
                name: name.trim().to_owned(),
                data: data.trim().to_owned(),
            }
        };
        out.push(statement);
    }
    out
}

/// Mermaid's `encodeEntities`: `#name;` and `#123;` are set aside before lexing; here they become
/// `\u{1}name\u{2}`, which the lexer rules above treat as text.
fn encode_entities(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(at) = rest.find('#') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let word = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if word > 0 && after[word..].starts_with(';') {
            out.push('\u{1}');
            out.push_str(&after[..word]);
            out.push('\u{2}');
            rest = &after[word + 1..];
        } else {
            out.push('#');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// What the chart shows for an encoded entity: the character of a numeric code.
fn decode_entities(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('\u{1}') {
        out.push_str(&rest[..at]);
        let (code, after) = rest[at + 1..].split_once('\u{2}').expect("closed");
        let c = code
            .parse::<u32>()
            .ok()
            .and_then(char::from_u32)
            .unwrap_or_else(|| panic!("jobgraph writes numeric codes only, not #{code};"));
        out.push(c);
        rest = after;
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn a_crafted_job_id_adds_nothing_to_the_gantt_chart() {
    for id in [INJECTING_ID, DIRECTIVE_ID] {
        gantt_has_only_its_own_statements(id).await;
    }
}

async fn gantt_has_only_its_own_statements(id: &str) {
    let report = hostile_report(id).await;
    let gantt = report.mermaid_gantt();
    let statements = lex_gantt(&gantt);
    let started = report
        .steps()
        .iter()
        .filter(|r| r.started().is_some())
        .count();
    assert_eq!(started, 3);
    assert_eq!(statements.len(), 4 + started, "{statements:#?}\n{gantt}");
    assert_eq!(
        statements[..4],
        [
            Gantt::Header,
            Gantt::Title(format!("{} run {id}", Hostile::NAME)),
            Gantt::DateFormat,
            Gantt::AxisFormat,
        ]
    );
    let tasks: Vec<&str> = statements[4..]
        .iter()
        .map(|s| match s {
            Gantt::Task { name, data } => {
                assert!(data.starts_with("crit, ") || data.starts_with("done, "));
                name.as_str()
            }
            other => panic!("not a task: {other:?} in\n{gantt}"),
        })
        .collect();
    assert_eq!(tasks, ["nasty", "long", "fine"]);
}

#[tokio::test]
async fn a_long_job_id_is_cut_in_the_gantt_title() {
    let id = "i".repeat(20_000);
    let gantt = hostile_report(&id).await.mermaid_gantt();
    let statements = lex_gantt(&gantt);
    assert_eq!(
        statements[1],
        Gantt::Title(format!(
            "{} run {}… (20000 characters)",
            Hostile::NAME,
            "i".repeat(2_000)
        ))
    );
}
