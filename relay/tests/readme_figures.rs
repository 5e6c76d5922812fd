//! The README quotes figures from `benches/README.md`; each paragraph that
//! says so (`Figures (`benches/README.md`, "SECTION")`) quotes only
//! figures that are in that section, so that a re-measurement that
//! changes them cannot leave the README telling another story.

// A panic is a test failure report.
#![allow(clippy::unwrap_used)]

/// The figures of `text`: every number with a decimal point or a
/// thousands comma (`0.73`, `6,650`, `30.8`); bare small integers are
/// too common to tie to a source.
fn figures(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let joins = (c == '.' || c == ',')
            && !current.is_empty()
            && chars.peek().is_some_and(char::is_ascii_digit);
        if c.is_ascii_digit() || joins {
            current.push(c);
            continue;
        }
        if current.contains(['.', ',']) {
            found.push(std::mem::take(&mut current));
        }
        current.clear();
    }
    if current.contains(['.', ',']) {
        found.push(current);
    }
    found
}

/// The section of `report` whose `## ` heading holds `title`, up to the
/// next such heading.
fn section<'a>(report: &'a str, title: &str) -> &'a str {
    let start = report
        .find(&format!("## {title}"))
        .unwrap_or_else(|| panic!("benches/README.md has no section {title:?}"));
    let rest = &report[start + 3..];
    rest.find("\n## ").map_or(rest, |end| &rest[..end])
}

#[test]
fn figures_the_readme_quotes_from_the_bench_report_are_in_it() {
    let readme = include_str!("../../README.md");
    let report = include_str!("../../benches/README.md");
    let mut checked = 0;
    for paragraph in readme.split("\n\n") {
        let Some((_, rest)) = paragraph.split_once("Figures (`benches/README.md`, \"") else {
            continue;
        };
        let title = rest.split('"').next().unwrap();
        let source = figures(section(report, title));
        for figure in figures(paragraph) {
            assert!(
                source.contains(&figure),
                "README.md quotes {figure} from benches/README.md's {title:?}, which does not have it:\n{paragraph}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} figures found");
}

#[test]
fn figures_are_read_as_written() {
    assert_eq!(
        figures("6,650 agents, 0.73-0.84x, in 30.8 s, 4 runs; 1.004."),
        ["6,650", "0.73", "0.84", "30.8", "1.004"]
    );
}
