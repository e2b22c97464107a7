//! Tidy checks over `src/` (rust-analyzer style): the module seams that stand in for
//! crate seams, and a few hygiene rules. Each failure names the file and the rule.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Lines of code, without `//` comments, so a comment may name what it avoids.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.split("//").next().unwrap_or("")))
        .filter(|(_, l)| !l.trim().is_empty())
}

#[test]
fn core_never_names_a_platform_an_http_stack_or_a_database() {
    let forbidden = [
        "serenity",
        "slack_morphism",
        "axum",
        "hyper",
        "reqwest",
        "sqlx",
        "crate::store",
        "crate::agent",
        "crate::http",
        "crate::discord",
        "crate::slack",
        // The webhook side's port (`webhook::store`) is not core's business either.
        "crate::webhook",
    ];
    let mut offences = vec![];
    for file in rust_files(&src().join("core")) {
        let text = fs::read_to_string(&file).unwrap();
        for (n, line) in code_lines(&text) {
            for name in forbidden {
                if line.contains(name) {
                    offences.push(format!("{}:{n}: names `{name}`", file.display()));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "core must do I/O only through core::ports:\n{}",
        offences.join("\n")
    );
}

#[test]
fn only_config_reads_the_environment() {
    let mut offences = vec![];
    for file in rust_files(&src()) {
        if file.ends_with("config.rs") {
            continue;
        }
        let text = fs::read_to_string(&file).unwrap();
        for (n, line) in code_lines(&text) {
            if line.contains("env::var") || line.contains("dotenvy") {
                offences.push(format!("{}:{n}", file.display()));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "read configuration through config::Config:\n{}",
        offences.join("\n")
    );
}

#[test]
fn no_println_or_dbg_outside_the_binary() {
    let mut offences = vec![];
    for file in rust_files(&src()) {
        if file.ends_with("main.rs") {
            continue;
        }
        let text = fs::read_to_string(&file).unwrap();
        // Unit tests at the bottom of a file may print.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (n, line) in code_lines(code) {
            let prints = line.replace("eprintln!(", "").contains("println!(");
            if prints || line.contains("dbg!(") {
                offences.push(format!("{}:{n}", file.display()));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "log with tracing instead:\n{}",
        offences.join("\n")
    );
}

#[test]
fn every_module_starts_with_a_doc_header() {
    let mut missing = vec![];
    for file in rust_files(&src()) {
        let text = fs::read_to_string(&file).unwrap();
        if !text.trim_start().starts_with("//!") {
            missing.push(file.display().to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "start each module with a //! header saying what it owns:\n{}",
        missing.join("\n")
    );
}

#[test]
fn platforms_never_import_each_other() {
    let pairs = [("discord", "crate::slack"), ("slack", "crate::discord")];
    let mut offences = vec![];
    for (dir, forbidden) in pairs {
        let path = src().join(dir);
        if !path.exists() {
            continue;
        }
        for file in rust_files(&path) {
            let text = fs::read_to_string(&file).unwrap();
            for (n, line) in code_lines(&text) {
                if line.contains(forbidden)
                    || line.contains("crate::store")
                    || line.contains("crate::agent")
                {
                    offences.push(format!("{}:{n}", file.display()));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "platforms depend on core only:\n{}",
        offences.join("\n")
    );
}

#[test]
fn every_statement_lives_in_the_store_catalogue() {
    // "Where is the SQL for X?" has one answer: `store/sql.rs`. Tests may query freely.
    let statements = [
        "\"SELECT ",
        "\"INSERT INTO",
        "\"UPDATE ",
        "\"DELETE FROM",
        "\"WITH ",
    ];
    let mut offences = vec![];
    for file in rust_files(&src()) {
        if file.ends_with("store/sql.rs") {
            continue;
        }
        let text = fs::read_to_string(&file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (n, line) in code_lines(code) {
            if statements.iter().any(|s| line.contains(s)) {
                offences.push(format!("{}:{n}", file.display()));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "write SQL once, in src/store/sql.rs:\n{}",
        offences.join("\n")
    );
}
