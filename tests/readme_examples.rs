//! The README's offline examples, run as written against the files in
//! `examples/`, so neither the commands nor the files can drift from what
//! `lanyard` accepts.

mod support;

use std::path::Path;

use support::Scratch;

const README: &str = include_str!("../README.md");

/// One shell command of the README: its words, where stdout is redirected
/// to, and the output the README shows for it (`# allow: ...`), if any.
#[derive(Debug)]
struct Example {
    words: Vec<String>,
    stdout_to: Option<String>,
    shows: Option<String>,
}

/// The commands of the README's `sh` blocks, continuation lines joined and
/// trailing comments dropped.
fn examples(readme: &str) -> Vec<Example> {
    let mut found: Vec<Example> = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in readme.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let line = line.trim();
        if let Some(comment) = line.strip_prefix("# ") {
            if let Some(last) = found.last_mut()
                && last.shows.is_none()
                && (comment.starts_with("allow:") || comment.starts_with("deny:"))
            {
                last.shows = Some(comment.to_string());
            }
            continue;
        }
        if let Some(start) = line.strip_suffix('\\') {
            pending.push_str(start);
            continue;
        }
        pending.push_str(line);
        let command = pending.split(" #").next().unwrap_or_default().to_string();
        pending.clear();
        let (command, stdout_to) = match command.split_once(" > ") {
            Some((command, file)) => (command.to_string(), Some(file.trim().to_string())),
            None => (command, None),
        };
        let words: Vec<String> = command.split_whitespace().map(str::to_string).collect();
        if !words.is_empty() {
            found.push(Example {
                words,
                stdout_to,
                shows: None,
            });
        }
    }
    found
}

/// Whether an example runs with no cluster and no server: `lanyard apply`,
/// `get`, `token` and `policy`.
fn offline(example: &Example) -> bool {
    example.words.first().map(String::as_str) == Some("lanyard")
        && matches!(
            example.words.get(1).map(String::as_str),
            Some("apply" | "get" | "token" | "policy")
        )
}

#[test]
fn the_readmes_offline_examples_run_as_written_on_the_files_in_examples() {
    let scratch = Scratch::new();
    // `./lanyard-state` and `api.token` land in the scratch directory;
    // `examples/` is the repository's own.
    std::os::unix::fs::symlink(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"),
        scratch.path("examples"),
    )
    .unwrap();
    let offline: Vec<Example> = examples(README).into_iter().filter(offline).collect();
    let ran: Vec<String> = offline.iter().map(|e| e.words[..3].join(" ")).collect();
    for expected in [
        "lanyard apply --state-dir",
        "lanyard get certificates",
        "lanyard token create",
        "lanyard policy validate",
        "lanyard policy test",
    ] {
        assert!(
            ran.iter().any(|r| r.starts_with(expected)),
            "the README has no `{expected}` example: {ran:?}"
        );
    }
    for example in &offline {
        let args: Vec<&str> = example.words[1..].iter().map(String::as_str).collect();
        let out = scratch.lanyard(&args).success();
        if let Some(file) = &example.stdout_to {
            scratch.write(file, &out.stdout);
        }
        if let Some(shows) = &example.shows {
            // The README abbreviates with `...`: each part must be there,
            // in order.
            let mut rest = out.stdout.as_str();
            for part in shows.split("...") {
                let at = rest
                    .find(part)
                    .unwrap_or_else(|| panic!("`{part}` of `{shows}` not in:\n{}", out.stdout));
                rest = &rest[at + part.len()..];
            }
        }
    }
}

#[test]
fn every_file_in_examples_is_named_by_the_readme_and_is_valid() {
    let scratch = Scratch::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    let mut dirs = vec![root.join("examples")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    assert!(!files.is_empty());
    for file in files {
        let relative = file.strip_prefix(root).unwrap().display().to_string();
        let named = README.contains(&relative)
            || file.parent().is_some_and(|dir| {
                README.contains(&format!("{}/", dir.strip_prefix(root).unwrap().display()))
            });
        assert!(named, "the README does not point at {relative}");
        let text = std::fs::read_to_string(&file).unwrap();
        let path = file.display().to_string();
        if text.contains("policy.linkerd.io/") {
            // Policy references other objects: it is valid with the rest
            // of its directory, as the README's `validate -f` reads it.
            let dir = file.parent().unwrap().display().to_string();
            scratch
                .lanyard(&["policy", "validate", "-f", &dir])
                .success();
        } else {
            scratch
                .lanyard(&["apply", "--state-dir", "state", "-f", &path])
                .success();
        }
    }
}
